#!/usr/bin/env bash
# Everything minicaffe checks on a real NVIDIA GPU, in one command:
#
#   tools/gpu_check.sh [--no-bench] [--bench-only] [--dry-run] [-- extra pytest args]
#
# 1. CuPy: used when it imports and sees a device; otherwise installs the
#    package's CUDA extra, .[cuda13] when the driver supports CUDA 13 (nvidia-smi),
#    else .[cuda12].
# 2. The tests in GPU mode on the device (MINICAFFE_TEST_MODE=gpu: tests/conformance.py
#    and tests/gpu_support.gpu_mode() use the real GPU instead of tests/fake_cupy.py):
#    every Caffe conformance case (layers and nets via tests/test_gpu_conformance.py,
#    solvers), the CPU/GPU parity tests
#    (tests/test_gpu_*.py, including the `gpu`-marked ones that need a device) and
#    the nvcc kernel build checks.  Tests marked `slow` are left out.
#    tests/test_gpu_nccl.py is among them: one NCCL rank must train exactly as the
#    plain GPU path, and on 2 or 4 GPUs `minicaffe train --gpu all` must reproduce
#    Caffe's one-process run of the whole batch.
# 3. benchmarks/bench_gpu.py: minicaffe on the GPU against PyTorch/cuDNN (when installed);
#    with 2 or more GPUs also benchmarks/bench_scaling.py --gpu (NCCL ranks 1, 2, .. N).
#
# Environment: PYTHON (default python), GPU (device id, default 0), BENCH_ITERATIONS
# (default 20), OUT (folder for gpu_tests.xml and bench_gpu.json, default runs/gpu_check).
# --dry-run prints the commands instead of running them.
# Exit status: the tests' (or the benchmark's, with --bench-only); non-zero if either failed.
set -u -o pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
GPU=${GPU:-0}
BENCH_ITERATIONS=${BENCH_ITERATIONS:-20}
OUT=${OUT:-runs/gpu_check}
RUN_TESTS=1
RUN_BENCH=1
DRY=0
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --no-bench) RUN_BENCH=0 ;;
        --bench-only) RUN_TESTS=0 ;;
        --dry-run) DRY=1 ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

run() {
    echo "+ $*"
    if [ "$DRY" = 0 ]; then "$@"; fi
}

cupy_ok() {
    "$PYTHON" - <<'EOF' 2>/dev/null
import cupy
assert cupy.cuda.runtime.getDeviceCount() > 0
EOF
}

cuda_extra() {
    # The driver's highest supported CUDA version, from nvidia-smi's header.
    local v
    v=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9]*\)\..*/\1/p' | head -n 1)
    if [ -n "$v" ] && [ "$v" -ge 13 ]; then echo cuda13; else echo cuda12; fi
}

if [ "$DRY" = 0 ]; then mkdir -p "$OUT"; fi
if [ "$DRY" = 1 ] || cupy_ok; then
    :
else
    extra=$(cuda_extra)
    echo "CuPy is missing or sees no device: installing .[$extra]"
    run "$PYTHON" -m pip install -q -e ".[$extra]" || exit 1
    if ! cupy_ok; then
        echo "gpu_check.sh: CuPy still cannot use a CUDA device; nvidia-smi says:" >&2
        nvidia-smi >&2 || true
        exit 1
    fi
fi
if [ "$DRY" = 0 ]; then
    "$PYTHON" - <<'EOF'
import cupy
d = cupy.cuda.runtime.getDeviceProperties(0)
print('CuPy %s, %d device(s); device 0: %s, compute capability %d.%d'
      % (cupy.__version__, cupy.cuda.runtime.getDeviceCount(), d['name'].decode(),
         d['major'], d['minor']))
EOF
fi

status=0
if [ "$RUN_TESTS" = 1 ]; then
    # shellcheck disable=SC2206
    gpu_tests=(tests/test_gpu_*.py)
    run env MINICAFFE_TEST_MODE=gpu "$PYTHON" -m pytest -q -m 'not slow' \
        -o junit_family=xunit2 --junitxml="$OUT/gpu_tests.xml" \
        tests/test_conformance_solvers.py \
        tests/test_cuda_kernels.py "${gpu_tests[@]}" "${EXTRA[@]}"
    status=$?
    if [ "$DRY" = 0 ]; then echo "GPU tests exit status: $status"; fi
fi
if [ "$RUN_BENCH" = 1 ]; then
    run "$PYTHON" benchmarks/bench_gpu.py --gpu "$GPU" --iterations "$BENCH_ITERATIONS" \
        --json "$OUT/bench_gpu.json"
    b=$?
    if [ "$status" = 0 ]; then status=$b; fi
    ngpu=$("$PYTHON" -c 'import cupy; print(cupy.cuda.runtime.getDeviceCount())' 2>/dev/null || echo 1)
    if [ "$DRY" = 1 ] && [ "$ngpu" -lt 2 ]; then ngpu=2; fi     # show it as on 2 GPUs
    if [ "$ngpu" -ge 2 ]; then
        ranks=$(seq -s, 1 "$ngpu")
        run "$PYTHON" benchmarks/bench_scaling.py --gpu --ranks "$ranks" --json "$OUT/bench_scaling_gpu.json"
        b=$?
        if [ "$status" = 0 ]; then status=$b; fi
    fi
fi
exit $status
