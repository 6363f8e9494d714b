#!/usr/bin/env bash
# GPU check of the token-statistics kernels, under 8 minutes on one H100/H200:
#   1. the GPU-only tests (pytest -m gpu) and the kernel tests compiled for the GPU,
#   2. the kernel and sampler benchmarks, whose JSON/CSV/PNG land in $OUT (default benchmarks/results/<date>).
# Time limits per part sum to 480 s.
# Usage: OUT=/some/dir bash benchmarks/gpu_check.sh        (PYTHON overrides the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-benchmarks/results/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"

"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: nothing to check")'
# the device image has torch/triton/transformers but not this package; no network there, so no build isolation
"$PYTHON" -c 'import upo_fast.kernels' 2>/dev/null || "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e .
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/nvidia_smi.csv" || true

# pytest exits 5 when no test carries the gpu mark: not a failure
rc=0
timeout 60 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider || rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi
timeout 100 "$PYTHON" -m pytest -q -p no:cacheprovider --junitxml="$OUT/kernel_tests.xml" \
    tests/test_vocab_stats_triton.py tests/test_fused_head.py tests/test_position_policy.py \
    tests/test_torch_library.py tests/test_sampler_kernels.py
timeout 120 "$PYTHON" benchmarks/bench_kernels.py --out "$OUT" --compile-budget-s 60
timeout 40 "$PYTHON" benchmarks/bench_position_ops.py --out "$OUT" --compile-budget-s 20
timeout 100 "$PYTHON" benchmarks/bench_sampler.py --out "$OUT"
timeout 60 "$PYTHON" benchmarks/bench_trainer.py --out "$OUT"
echo "results in $OUT"
