"""Benchmark of the position ops over [B, L] scores (selection and the UPO regularizer), each as the PyTorch
reference, the reference under torch.compile, and the Triton kernel:

- select_positions: Gumbel-top-k (k = 2 per row) at temperature 1, what a sampling step runs;
- policy_divergence: KL(g || softmax-confidence reference), forward + backward, what a training step runs.

Rows B in {8, 64, 4096} (a sampling batch, a GRPO batch, a flattened trajectory buffer) and L in {32, 256} (the
block length of LLaDA runs; 81 for 9x9 Sudoku lies between).

Usage:  python benchmarks/bench_position_ops.py --out DIR          (a GPU; under a minute)
        python benchmarks/bench_position_ops.py --quick --out DIR  (CPU smoke run, Triton interpreted)
Writes DIR/bench_position_ops.{json,csv}.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():  # the Triton rows run in the interpreter, which must be on before triton loads
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish, measure, triton_usable  # noqa: E402

from upo_fast.kernels.policy_divergence import policy_divergence, policy_divergence_ref  # noqa: E402
from upo_fast.kernels.position_select import select_positions, select_positions_ref  # noqa: E402

FULL = [(b, n) for b in (8, 64, 4096) for n in (32, 256)]
QUICK = [(2, 16), (4, 33)]


def _divergence_step(fn, scores, cand, ref):
    x = scores.detach().requires_grad_(True)
    fn(x, cand, ref).sum().backward()
    return x.grad


def bench_shape(results: list, b: int, n: int, timing: dict, tri: bool, select_c, div_c) -> None:
    """Every implementation of both ops on [b, n] scores (the compiled references when given)."""
    device = timing["device"]
    g = torch.Generator(device=device).manual_seed(0)
    scores = torch.randn(b, n, device=device, generator=g)
    cand = torch.rand(b, n, device=device, generator=g) < 0.7
    cand[:, 0] = True
    ref = torch.softmax(torch.randn(b, n, device=device, generator=g).masked_fill(~cand, float("-inf")), -1)
    k = torch.full((b,), 2, dtype=torch.int64, device=device)
    sel = dict(op="select_positions", rows=b, length=n, **timing)
    measure(results, lambda: select_positions_ref(scores, cand, k, check=False), impl="torch", **sel)
    if select_c is not None:
        measure(results, lambda: select_c(scores, cand, k, check=False), impl="torch.compile", **sel)
    if tri:
        measure(results, lambda: select_positions(scores, cand, k, seed=1, check=False, backend="triton"),
                impl="triton", **sel)
    div = dict(op="policy_divergence_fwd_bwd", rows=b, length=n, **timing)
    measure(results, lambda: _divergence_step(policy_divergence_ref, scores, cand, ref), impl="torch", **div)
    if div_c is not None:
        measure(results, lambda: _divergence_step(div_c, scores, cand, ref), impl="torch.compile", **div)
    if tri:
        tri_div = lambda s, c, r: policy_divergence(s, c, r, backend="triton")  # noqa: E731
        measure(results, lambda: _divergence_step(tri_div, scores, cand, ref), impl="triton", **div)


def run(args) -> tuple[list, dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    warmup, repeats = (1, 3) if args.quick else (args.warmup, args.repeats)
    tri = triton_usable(device)
    use_compile = args.compile or not args.quick
    select_c = torch.compile(select_positions_ref, dynamic=True) if use_compile else None
    div_c = torch.compile(policy_divergence_ref, dynamic=True) if use_compile else None
    results, started = [], time.perf_counter()
    within_budget = lambda: time.perf_counter() - started < args.compile_budget_s  # noqa: E731
    for b, n in QUICK if args.quick else FULL:
        bench_shape(results, b, n, dict(device=device, warmup=warmup, repeats=repeats), tri,
                    select_c if within_budget() else None, div_c if within_budget() else None)
    return results, dict(device_type=device.type)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/local", help="folder for the JSON and CSV")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a CPU smoke run")
    parser.add_argument("--compile", action="store_true", help="with --quick: also time torch.compile")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--compile-budget-s", type=float, default=90.0)
    args = parser.parse_args(argv)
    results, extra = run(args)
    return finish(args, "bench_position_ops", results, "cuda" if torch.cuda.is_available() else "cpu", extra)


if __name__ == "__main__":
    sys.exit(main())
