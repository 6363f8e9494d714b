#!/usr/bin/env bash
# The first GPU run, one call, under 8 minutes on one H100/H200:
#   1. the compile check on the device's own arch (benchmarks/compile_table.py --matrix ci: registers, spills,
#      shared memory; sm_90 and sm_80 only, another arch is noted and skipped),
#   2. the GPU-only tests (pytest -m gpu) and the kernel tests on the GPU,
#   3. the kernel, position-op, sampler and trainer benchmarks.
# Everything lands in $OUT (default benchmarks/results/<date>): each step's log, the compile table, junit XML,
# the benchmarks' JSON/CSV/PNG, and summary.txt. A failing step does not stop the later ones; the script exits
# non-zero if any step failed. Time limits per step sum to 480 s.
# Usage: OUT=/some/dir bash benchmarks/gpu_check.sh        (PYTHON overrides the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-benchmarks/results/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
failed=()

# step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, remember a failure and go on
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1
    local rc=$?
    # pytest exits 5 when no test carries the requested mark: not a failure
    if [ "$rc" -ne 0 ] && ! { [ "$rc" -eq 5 ] && [ "$name" = gpu_tests ]; }; then
        failed+=("$name (exit $rc)")
    fi
}

finish() {
    { echo "date: $(date -u +%FT%TZ)"; echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
      if [ ${#failed[@]} -eq 0 ]; then echo "all steps passed"; else printf 'FAILED: %s\n' "${failed[@]}"; fi
    } | tee "$OUT/summary.txt"
    echo "results in $OUT"
    [ ${#failed[@]} -eq 0 ]
    exit $?
}

if ! "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    failed+=("no CUDA device: nothing to check")
    finish
fi
# the device image has torch/triton/transformers but not this package; no network there, so no build isolation
"$PYTHON" -c 'import upo_fast.kernels' 2>/dev/null || "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e .
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/nvidia_smi.csv" || true
ARCH=$("$PYTHON" -c 'import torch; major, minor = torch.cuda.get_device_capability(); print(major * 10 + minor)')

if [ "$ARCH" = 90 ] || [ "$ARCH" = 80 ]; then
    step compile_check 110 "$PYTHON" benchmarks/compile_table.py --arch "$ARCH" --matrix ci --out "$OUT"
else
    echo "compile check: sm_$ARCH is not in the checked arches (sm_90, sm_80); skipped" | tee "$OUT/compile_check.log"
fi
step gpu_tests 50 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml"
step kernel_tests 90 "$PYTHON" -m pytest -q -p no:cacheprovider --junitxml="$OUT/kernel_tests.xml" \
    tests/test_vocab_stats_triton.py tests/test_fused_head.py tests/test_position_policy.py \
    tests/test_torch_library.py tests/test_sampler_kernels.py tests/test_kernels_cuda_config.py
step bench_kernels 90 "$PYTHON" benchmarks/bench_kernels.py --out "$OUT" --compile-budget-s 45
step bench_position_ops 30 "$PYTHON" benchmarks/bench_position_ops.py --out "$OUT" --compile-budget-s 15
step bench_sampler 60 "$PYTHON" benchmarks/bench_sampler.py --out "$OUT"
step bench_trainer 60 "$PYTHON" benchmarks/bench_trainer.py --out "$OUT" --tasks sudoku4 --shapes 16x8,64x8
finish
