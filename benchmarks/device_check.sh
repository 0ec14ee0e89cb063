#!/usr/bin/env bash
# Where a GPU's time goes in kd, as one prepared call of the device tool (benchmarks/README.md, "When a GPU is lent"):
#
#   bash benchmarks/device_check.sh fetch   # here, with network: the wheels the GPU machine lacks, kd's own too, in .whl/
#   bash benchmarks/device_check.sh run     # there: device tool, carry [".whl"], timeout_s 600; ends within 8 minutes
#   bash benchmarks/device_check.sh dry     # a CPU: fetch into a tmp dir, then the same steps in tiny form (CI)
#
# `run` installs kd and its pure-Python dependencies from .whl/ (no network there; its own torch), then runs each
# step under its own time limit, so that a slow step cannot eat the others' time (seconds, run / dry):
#   install         30 /  60   pip install of .whl/ into $SITE, and the imports
#   tests           80 / 300   pytest -m cuda, the files that hold CUDA tests; passed/failed from its JUnit XML
#   gpu_benchmark  190 / 300   benchmarks/gpu.py, ways (a)-(d), --budget-s 140 / 280 so that whole columns finish
#   multirun        70 / 300   benchmarks/multirun.py: a real `kd.train -m` digits grid, timed, its compile share
#   profile         90 / 300   benchmarks/profile_step.py: a torch.profiler summary of 5 steps per way (dry: 2)
#   report          20 /  60   benchmarks/device_report.py: the results JSON and the table
# 480 s in all on a GPU (dry: gpu.py, profile_step.py and multirun.py --quick, on the CPU). Compile caches (inductor,
# triton) live under KD_HOME, so a second run recompiles nothing. $OUT gets 7 files (the device tool brings back 8 at
# most): the results JSON <date>-<gpu>.json, summary.txt (environment, install, each step's exit and time, the table),
# the logs of tests, gpu_benchmark, multirun and profile, and raw.tar.gz (the steps' own JSON, pytest's XML, the
# profiler's Chrome traces). The script exits non-zero when a step failed.
set -uo pipefail
SCRIPT=$(realpath "$0")
cd "$(dirname "$SCRIPT")/.."
WHL=${WHL:-.whl}

fetch() {
    # Pure-Python wheels at the versions installed here (wandb stays behind: the checks run without a logger);
    # antlr4's 4.9.3 (omegaconf's pin) exists on PyPI only as a source archive, so its wheel is built here, and so
    # is kd's, from this working tree. COMMIT names the tree the wheel was built from (the GPU machine has no git).
    rm -rf "$WHL" && mkdir -p "$WHL"
    local pins
    pins=$(python3 -c 'from importlib.metadata import version as v
print(" ".join(f"{name}=={v(name)}" for name in ("hydra-core", "omegaconf", "submitit", "hydra-submitit-launcher")))') || {
        echo "fetch: run it from kd's venv (source .venv/bin/activate)" >&2; return 1; }
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d "$WHL" $pins &&
    python3 -m pip wheel -q --no-deps -w "$WHL" antlr4-python3-runtime==4.9.3 &&
    rm -rf build && python3 -m pip wheel -q --no-deps -w "$WHL" . &&  # build/: no stale module slips into the wheel
    commit > "$WHL/COMMIT" &&
    ls -l "$WHL"
}

commit() {  # the checkout's commit, -dirty when tracked files changed; else the one fetch recorded
    if git rev-parse -q HEAD 2>/dev/null; then
        git diff --quiet HEAD 2>/dev/null || echo "-dirty"
    else
        cat "$WHL/COMMIT" 2>/dev/null || echo unknown
    fi | tr -d '\n'
}

step() {  # step NAME SECONDS COMMAND...: under a timeout, its output to $OUT/NAME.log (short ones: summary.txt)
    local name=$1 limit=$2 log=$OUT/$1.log; shift 2
    case $name in install|report) log=$OUT/summary.txt ;; esac
    echo "== $name (at most ${limit}s): $*" | tee -a "$log"
    local began=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - began))s (limit ${limit}s)" | tee -a "$OUT/summary.txt"
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - began))" "$limit" >> "$WORK/steps.tsv"
    [ "$rc" = 0 ] || FAILED=1
}

install() {  # kd and its pure-Python dependencies from $WHL into $SITE; kd must then import from there
    compgen -G "$WHL/kd-*.whl" > /dev/null || { echo "install: no kd wheel in $WHL; run 'fetch' first" >&2; return 1; }
    rm -rf "$SITE" &&
    python3 -m pip install -q --no-deps --no-index --no-build-isolation --no-compile --no-cache-dir --root-user-action ignore \
        --target "$SITE" "$WHL"/*.whl &&
    cd "$WORK" && python3 -c 'import sys, importlib.metadata, hydra, omegaconf, kd.train
assert kd.__file__.startswith(sys.argv[1]), f"kd imports from {kd.__file__}, not {sys.argv[1]}"
print("kd", importlib.metadata.version("kd"), "from", kd.__file__)' "$SITE"
}

run() {
    local dry=${1:-}
    OUT=${OUT:-/tmp/kd-device-out}
    WORK=$(mktemp -d /tmp/kd-device-work.XXXX) SITE=$(mktemp -d /tmp/kd-site.XXXX) FAILED=0
    export KD_HOME=${KD_HOME:-/tmp/kd-home} PYTHONUNBUFFERED=1 WANDB_MODE=disabled
    export TORCHINDUCTOR_CACHE_DIR=$KD_HOME/inductor TRITON_CACHE_DIR=$KD_HOME/triton PYTHONPATH=$SITE
    export WHL SITE WORK
    mkdir -p "$OUT" && rm -f "$OUT"/*.log "$OUT/raw.tar.gz" && : > "$OUT/summary.txt"
    local limits budget quick=()
    if [ -n "$dry" ]; then
        limits=(60 300 300 300 300 60) budget=280 quick=(--quick --device cpu)
        echo "DRY RUN on the CPU: the steps in tiny form; every figure is this CPU's" | tee -a "$OUT/summary.txt"
    else
        limits=(30 80 190 70 90 20) budget=140
    fi
    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
      python3 -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN",
                  torch.backends.cudnn.version(), "GPU", torch.cuda.is_available())'
      echo "cores $(nproc)"; } 2>&1 | tee -a "$OUT/summary.txt"

    step install "${limits[0]}" bash "$SCRIPT" install
    # From outside the checkout, so that `import kd` finds the installed package, not the checkout's kd/ through
    # the current directory on sys.path (python -m, pytest). The checkout's benchmarks and tests run as files.
    local repo=$PWD
    cd "$WORK" || return 1
    if [ "$FAILED" = 0 ]; then
        # Only the files that hold CUDA tests: some others import wandb, which stays behind.
        step tests "${limits[1]}" python3 -m pytest -m cuda -q -p no:cacheprovider --rootdir "$repo" \
            -c "$repo/pyproject.toml" --junitxml="$WORK/tests.xml" $(grep -l "pytest.mark.cuda" "$repo"/tests/test_*.py)
        step gpu_benchmark "${limits[2]}" python3 "$repo/benchmarks/gpu.py" --budget-s "$budget" \
            --json "$WORK/gpu_benchmark.json" "${quick[@]}"
        step multirun "${limits[3]}" python3 "$repo/benchmarks/multirun.py" --json "$WORK/multirun.json" \
            --work-dir "$WORK/multirun" "${quick[@]}"
        step profile "${limits[4]}" python3 "$repo/benchmarks/profile_step.py" --json "$WORK/profile.json" \
            --trace-dir "$WORK/traces" "${quick[@]}"
    fi
    step report "${limits[5]}" python3 "$repo/benchmarks/device_report.py" --work "$WORK" --out "$OUT" \
        --commit "$(cd "$repo" && commit)" ${dry:+--dry}
    tar -czf "$OUT/raw.tar.gz" -C "$WORK" --exclude=multirun .
    echo "steps, exit codes and times: $OUT/summary.txt"
    return "$FAILED"
}

case "${1:-}" in
    fetch) fetch ;;
    install) install ;;  # run's first step (it runs it under its time limit)
    run) if [ "${2:-}" = --dry ]; then run dry; else run; fi ;;
    dry) WHL=$(mktemp -d /tmp/kd-device-whl.XXXX) && fetch > /dev/null && run dry ;;
    *) echo "usage: bash benchmarks/device_check.sh fetch|run|dry" >&2; exit 2 ;;
esac
