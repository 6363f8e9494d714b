"""Benchmark of the token-statistics kernels: vocab_stats and fused_head_stats, each as the PyTorch reference, the
reference under torch.compile, and the Triton kernel, at LLaDA-8B (V 126464, d 4096) and Dream-7B (V 152064,
d 3584) head sizes for R in {32, 256, 4096} rows, plus two yardsticks on the same rows:

- the device-to-device copy bandwidth of the [R, V] bf16 logits (target: vocab_stats >= 80% of it), and
- the bare bf16 matmul hidden @ weight.T (target: fused_head_stats with need_ref=False <= 1.15x its time).

Usage:  python benchmarks/bench_kernels.py --out DIR          (a GPU; a few minutes)
        python benchmarks/bench_kernels.py --quick --out DIR  (CPU smoke run, tiny sizes, Triton interpreted)
Writes DIR/bench_kernels.{json,csv} with the run's metadata and DIR/bench_kernels.png.
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

from upo_fast.kernels.fused_head import fused_head_stats_ref, fused_head_stats_triton  # noqa: E402
from upo_fast.kernels.vocab_stats import vocab_stats_ref, vocab_stats_triton  # noqa: E402

FULL_MODELS = [("llada", 126464, 4096), ("dream", 152064, 3584)]
FULL_ROWS = (32, 256, 4096)
QUICK_MODELS = [("tiny", 300, 32)]
QUICK_ROWS = (4, 16)


def run(args) -> tuple[list, dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models, row_counts = (QUICK_MODELS, QUICK_ROWS) if args.quick else (FULL_MODELS, FULL_ROWS)
    warmup, repeats = (1, 3) if args.quick else (args.warmup, args.repeats)
    use_triton = triton_usable(device)
    # compiling on the CPU takes longer than the whole smoke run: --quick skips it unless --compile is given
    use_compile = args.compile or not args.quick
    compiled_vocab = torch.compile(vocab_stats_ref, dynamic=True) if use_compile else None
    compiled_head = torch.compile(fused_head_stats_ref, dynamic=True) if use_compile else None
    dtype = torch.bfloat16
    results, summary = [], {}
    started = time.perf_counter()
    for model, vocab, dim in models:
        g = torch.Generator(device=device).manual_seed(0)
        weight = (torch.randn(vocab, dim, device=device, generator=g) / dim**0.5).to(dtype)
        for n in row_counts:
            hidden = torch.randn(n, dim, device=device, generator=g).to(dtype)
            logits = hidden @ weight.t()  # [n, V] bf16: vocab_stats's input
            common = dict(model=model, rows=n, vocab=vocab, dim=dim, device=device, warmup=warmup, repeats=repeats)
            logit_bytes = logits.numel() * logits.element_size()
            copy = measure(results, lambda logits=logits: logits.clone(), op="copy", impl="torch",
                           bytes_read=2 * logit_bytes, note="read + write bytes", **common)
            mm = measure(results, lambda h=hidden, w=weight: h @ w.t(), op="matmul", impl="torch",
                         flops=2 * n * dim * vocab, **common)
            # vocab_stats: GB/s counts the logits read once (the ref_logsumexp pass reads them a second time)
            vs = dict(op="vocab_stats", bytes_read=logit_bytes, **common)
            measure(results, lambda x=logits: vocab_stats_ref(x), impl="torch", **vs)
            if compiled_vocab is not None and time.perf_counter() - started < args.compile_budget_s:
                measure(results, lambda x=logits: compiled_vocab(x), impl="torch.compile", **vs)
            tri_vs = {}
            if use_triton:
                tri_vs = measure(results, lambda x=logits: vocab_stats_triton(x), impl="triton", **vs)
                measure(results, lambda x=logits: vocab_stats_triton(x, need_ref=False), impl="triton_noref", **vs)
            # fused head: TFLOP/s counts the matmuls actually run (two with ref_logsumexp, one without)
            fh = dict(op="fused_head_stats", **common)
            flops = 2 * n * dim * vocab
            measure(results, lambda h=hidden, w=weight: fused_head_stats_ref(h, w), impl="torch", flops=flops, **fh)
            if compiled_head is not None and time.perf_counter() - started < args.compile_budget_s:
                measure(results, lambda h=hidden, w=weight: compiled_head(h, w), impl="torch.compile",
                        flops=flops, **fh)
            tri_fh = {}
            if use_triton:
                measure(results, lambda h=hidden, w=weight: fused_head_stats_triton(h, w), impl="triton",
                        flops=2 * flops, **fh)
                tri_fh = measure(results, lambda h=hidden, w=weight: fused_head_stats_triton(h, w, need_ref=False),
                                 impl="triton_noref", flops=flops, **fh)
            key = f"{model}_R{n}"
            summary[key] = dict(
                vocab_stats_over_copy_bw=(tri_vs["gb_per_s"] / copy["gb_per_s"]
                                          if "gb_per_s" in tri_vs and "gb_per_s" in copy else None),
                fused_head_noref_over_matmul=(tri_fh["median_ms"] / mm["median_ms"]
                                              if "median_ms" in tri_fh and "median_ms" in mm else None))
            del hidden, logits
        if device.type == "cuda":
            torch.cuda.empty_cache()
    summary["targets"] = dict(vocab_stats_over_copy_bw=">= 0.8", fused_head_noref_over_matmul="<= 1.15")
    return results, dict(summary=summary, device_type=device.type)


def plot(results: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = [op for op in ("vocab_stats", "fused_head_stats") if any(r["op"] == op for r in results)]
    fig, axes = plt.subplots(1, len(ops), figsize=(7 * len(ops), 4.5), squeeze=False)
    for ax, op in zip(axes[0], ops):
        mine = [r for r in results if r["op"] == op and "median_ms" in r]
        groups = list(dict.fromkeys(f"{r['model']}\nR={r['rows']}" for r in mine))
        impls = list(dict.fromkeys(r["impl"] for r in mine))
        yard = "copy" if op == "vocab_stats" else "matmul"
        impls.append(yard)
        width = 0.8 / len(impls)
        for i, impl in enumerate(impls):
            source = [r for r in results if r["op"] == yard and "median_ms" in r] if impl == yard else \
                [r for r in mine if r["impl"] == impl]
            times = {f"{r['model']}\nR={r['rows']}": r["median_ms"] for r in source}
            xs = [j + i * width for j, grp in enumerate(groups) if grp in times]
            ax.bar(xs, [times[grp] for grp in groups if grp in times], width, label=impl)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], groups, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("median ms (log)")
        ax.set_title(op)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/local", help="folder for the JSON, CSV and PNG")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a CPU smoke run that takes seconds")
    parser.add_argument("--compile", action="store_true", help="with --quick: also time torch.compile")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--compile-budget-s", type=float, default=180.0,
                        help="stop adding torch.compile entries once the run has taken this long")
    args = parser.parse_args(argv)
    results, extra = run(args)
    for key, value in extra["summary"].items():
        print(f"{key}: {value}")
    return finish(args, "bench_kernels", results, "cuda" if torch.cuda.is_available() else "cpu", extra, plot=plot)


if __name__ == "__main__":
    sys.exit(main())
