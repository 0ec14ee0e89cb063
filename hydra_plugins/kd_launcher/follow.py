"""The local launcher's packs run as submitit processes that write to .submitit/ files: echo their lines here.

Without it, `hydra/launcher=local_gpus` printed nothing while a pack trained (no epoch lines, no progress, no
warnings); the basic and packed launchers print them. Each line is prefixed with its pack, since packs run
side by side.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO


class PackLogFollower:
    """Prints the new complete lines of each pack's stdout and stderr files since the last call."""

    def __init__(self, packs: int) -> None:
        self.packs = packs
        self.read_to: dict[Path, int] = {}

    def echo(self, index: int, job: Any, final: bool = False) -> None:
        """Pack `index`'s new lines; `final` also prints a last line without its newline."""
        for path, stream in ((Path(job.paths.stdout), sys.stdout), (Path(job.paths.stderr), sys.stderr)):
            self._echo_file(path, stream, f"[pack {index + 1}/{self.packs}] ", final)

    def _echo_file(self, path: Path, stream: TextIO, prefix: str, final: bool) -> None:
        if not path.is_file():
            return  # the process has not opened it yet
        start = self.read_to.get(path, 0)
        with path.open("rb") as f:
            f.seek(start)
            chunk = f.read()
        end = len(chunk) if final else chunk.rfind(b"\n") + 1  # a line still being written waits for its end
        if end <= 0:
            return
        self.read_to[path] = start + end
        for line in chunk[:end].decode(errors="replace").splitlines():
            print(prefix + line, file=stream, flush=True)
