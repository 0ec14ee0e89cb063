"""Write a synthetic ImageNet-layout folder of JPEGs for the streaming benchmark (benchmarks/bench_stream.py).

    PYTHONPATH=. python benchmarks/make_imagenet_folder.py /tmp/inet --train 5000 --test 500 --classes 10

ROOT/train/<class>/<n>.JPEG and ROOT/test/<class>/<n>.JPEG (kd's folder layout; --val-as-test names the second
split val/, data=imagenet's layout). Each image's size is drawn around ImageNet's (mean about 400x350 px) and its
content is smooth colour fields plus grain, ~60-120 kB at JPEG quality 90 as a photo is: decode cost grows with
pixels and with entropy, and both are ImageNet-like. The images are the tests' (tests/image_folders.py); a seed
fixes every one.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tests.image_folders import write_photo_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-as-test", action="store_true", help="name the second split val/ (data=imagenet)")
    args = parser.parse_args()
    test = "val" if args.val_as_test else "test"
    write_photo_folder(args.root, {"train": args.train, test: args.test}, args.classes, args.seed)
    print(f"wrote {args.train} + {args.test} images in {args.classes} classes under {args.root}")


if __name__ == "__main__":
    main()
