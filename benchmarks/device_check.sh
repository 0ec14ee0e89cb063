#!/usr/bin/env bash
# kd's GPU checks as one prepared call of the device tool (benchmarks/README.md, "When a GPU is lent"):
#
#   bash benchmarks/device_check.sh fetch     # here, once: the wheels the GPU machine lacks, into .whl/
#   bash benchmarks/device_check.sh run       # there: device tool, carry [".whl"], timeout_s 600
#
# `run` fits in 9 minutes, each step under its own timeout, so a slow step cannot eat the others' time:
#   1. the CUDA tests (pytest -m cuda): the sync-free step, graph capture vs eager, a real job's device
#      log and speed switches (bf16, compile, channels_last as shipped);
#   2. benchmarks/gpu.py, the four ways (a)-(d), with --budget-s so that whole columns finish;
#   3. benchmarks/parity.py --compare speed (bf16 + compile + NHWC vs fp32), 2 seeds of fcra.
# Everything lands in $OUT (the device tool brings it back); the summary is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."

fetch() {
    # Pure-Python wheels at the versions installed here (wandb stays behind: the checks run without a logger);
    # antlr4's 4.9.3 (omegaconf's pin) exists on PyPI only as a source archive, so its wheel is built here.
    rm -rf .whl && mkdir -p .whl
    local pins
    pins=$(python3 -c 'from importlib.metadata import version as v
print(" ".join(f"{name}=={v(name)}" for name in ("hydra-core", "omegaconf", "submitit", "hydra-submitit-launcher")))') || {
        echo "fetch: run it from kd's venv (source .venv/bin/activate)" >&2; return 1; }
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d .whl $pins &&
    python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3 &&
    ls -l .whl
}

step() {  # step NAME SECONDS COMMAND...: run it under a timeout, its output to $OUT/NAME.log and the screen
    local name=$1 limit=$2; shift 2
    echo "== $name (at most ${limit}s): $*"
    local began=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - began))s" | tee -a "$OUT/summary.txt"
}

run() {
    OUT=${OUT:-/tmp/kd-device-out}
    mkdir -p "$OUT" && : > "$OUT/summary.txt"
    if compgen -G ".whl/*.whl" > /dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/kd-site \
            .whl/*.whl || { echo "run: installing .whl/ failed" >&2; return 1; }
        export PYTHONPATH=/tmp/kd-site
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 KD_HOME=/tmp/kd-home WANDB_MODE=disabled
    python3 -c 'import hydra, omegaconf, kd.train' || { echo "run: kd does not import; run 'fetch' first" >&2; return 1; }
    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
      python3 -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN",
                  torch.backends.cudnn.version(), "GPU", torch.cuda.is_available())'
      nproc; } 2>&1 | tee "$OUT/environment.txt"

    # Only the files that hold CUDA tests: some others import wandb, which stays behind.
    step tests 170 python3 -m pytest -m cuda -q -p no:cacheprovider $(grep -l "pytest.mark.cuda" tests/test_*.py)
    TORCH_LOGS=recompiles step gpu_benchmark 250 python3 benchmarks/gpu.py --budget-s 180 \
        --json "$OUT/gpu_benchmark.json"
    step parity_speed 110 python3 benchmarks/parity.py --compare speed --device cuda --seeds 0 1 --augs fcra

    echo; echo "== summary"; cat "$OUT/summary.txt"
    grep -E "passed|failed|error" "$OUT/tests.log" | tail -3
    sed -n '/^cell-images/,$p' "$OUT/gpu_benchmark.log"
    sed -n '/^final top-1/,$p' "$OUT/parity_speed.log"
}

case "${1:-}" in
    fetch) fetch ;;
    run) run ;;
    *) echo "usage: bash benchmarks/device_check.sh fetch|run" >&2; exit 2 ;;
esac
