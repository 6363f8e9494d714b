"""Fast-dLLM's KV caches on the CPU: the native LLaDA with ``upo_fast.generate(cache=None|"prefix"|"dual")`` against
Fast-dLLM's own samplers (NVlabs/Fast-dLLM at commit 24cc59e: ``generate``, ``generate_with_prefix_cache``,
``generate_with_dual_cache`` of ``llada/generate.py``) on the same random weights, in one process, one thread.

Models. Two LLaDA shapes are built from Fast-dLLM's ``llada/model`` code (``bench_native_models.import_official``)
with seeded random weights (``bench_native_models.randomize``), saved with ``save_pretrained`` and read back with
``upo_fast.load_model(folder, dtype=torch.float32)``:

    head-heavy   d 256, 4 layers, 8 heads, MLP 768, LLaDA's vocabulary of 126,464 tokens (mask id 126336)
    body-heavy   d 512, 8 layers, 8 heads, MLP 1536, a 32,000-token vocabulary (mask id 31999)

A random head gives flat token distributions (no confidence near 0.9), so the head is sharpened before saving: the
output rows of the first ``SHARP_ROWS`` token ids are multiplied by ``head_scale`` (a frequent-token set, as a real
LM has), and the mask token's row is zeroed (it is then never the argmax; Fast-dLLM does not exclude it, ours does).
Multiplying the whole head instead puts most logits far below the maximum, where fp32/fp64 ``exp`` takes a slow path
on this CPU and both samplers slow down by up to 4x for reasons that have nothing to do with caching.

Measured (rows are medians over round-robin repeats, ``time.perf_counter``, the peak memory beside the time):

1. ``op=step``: one step's cost at L = prompt + 256 = 512, block [256, 288), batch 1 and 8. Ours:
   ``model.final_hidden_states`` over every row (no cache), over rows [block start, L) with a filled cache (prefix),
   over the block only (dual), and the step's token statistics of the block's 32 rows (``ops.fused_head_stats``,
   the CPU reference the loop runs). Fast-dLLM (batch 1): its model's forward with its own cache inputs (logits
   included; it has no headless forward). ``block_stats`` is what the loop computes for the max-confidence order
   (token and confidence only); ``block_stats_all`` adds the policy features (margin, entropy, top-8 probabilities)
   and the reference term, what a policy or a recording step computes. ``ratio_vs_no_cache``: median of the
   per-round ratios to the no-cache row of the same implementation. Peak memory: ``peak_alloc_mb``
   (``bench_native_models.peak_alloc_mb``: bytes held by torch's CPU allocator above the start of one call, from
   the profiler's memory events).
2. ``op=generate``: end to end, prompt + ``--gen`` tokens, block 32, threshold None (steps = gen length: one token a
   step) and 0.9, cache None / prefix / dual, temperature 0. Batch 1: the 256-token prompt; ours is
   ``upo_fast.generate(..., fused_head=True)`` (impl ``ours``: the forward stops at the final hidden states and the
   statistics are computed for the block's rows only; faster on the CPU than full logits) and, once per case,
   ``fused_head=None`` (``ours_unfused``, full logits for the rows the forward runs) to check the tokens; Fast-dLLM
   is its sampler called as its ``main()`` does. Batch 8: eight prompts of 256 - pads tokens (row 0 unpadded, the
   others 1-40 pads); ours runs them as one left-padded batch with ``model.mask_padding = True`` (the official
   LLaDA, and ours by default, attend to pad positions: a padded row would then not be what its prompt gives
   alone); Fast-dLLM's samplers take one prompt, so ``fastdllm_loop`` calls them on the eight unpadded prompts one
   by one (the time is the sum). ``forwards``: model calls counted by a forward pre-hook on the first block (both
   implementations; Fast-dLLM's returned ``nfe`` is kept beside it); ``forwards_per_sample``: forwards a sample
   went through (ours: the batch's forwards, each carries every row; the loop: the mean over prompts).
   ``peak_heap_mb``: malloc's in-use bytes (glibc ``mallinfo2``, where torch's CPU tensors live) above their value
   at the start of the run, polled every millisecond by a thread during the timed run (the profiler would slow it;
   resident memory misses what malloc reuses); transients shorter than a millisecond can be missed.
   Token checks: batch 1, ours (fused and not) against Fast-dLLM for every case; batch 8, every row of our batch
   (pads dropped) against Fast-dLLM's batch-1 run of that prompt (where a row differs, ours is also run alone on
   that prompt to tell batching from sampler). ``threshold_fraction``: the share of committed tokens that the
   threshold committed, i.e. beyond the one first pick per forward: (gen - nfe) / gen over Fast-dLLM's runs.
3. ``ratios``: Fast-dLLM's time over ours per case (> 1: ours faster), and the goals: dual cache + threshold 0.9
   at batch 1 at least 1.2x faster per token than ``generate_with_dual_cache`` with the same tokens; batch 8 at
   least 5x the throughput of Fast-dLLM looping over the 8 prompts.

Exact command (repository root; the venv has transformers 4.49, which Fast-dLLM's code needs; 44 minutes on 2
shared CPU cores, most of it Fast-dLLM's uncached loop at batch 8)::

    /tmp/venv-tf449/bin/python benchmarks/bench_cache.py --official /tmp/fastdllm \\
        --out benchmarks/results/cache_cpu_20261207 --gen 64 --repeats 2

``--official DIR`` is a folder holding Fast-dLLM's ``llada/model`` and ``llada/generate.py``, imported at run time
and never copied into this repository. Without it the script measures ours only (the test suite's ``--quick``
smoke run; the batch-8 rows are then checked against our own batch-1 runs, timed as ``ours_loop``). ``--quick``:
a tiny model (d 64, 2 layers, vocab 4096), prompt 32, batch 1 and 4, one or two repeats. Writes
``DIR/bench_cache.{json,csv}``, rewritten after every section, so that an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_native_models import LLADA, import_official, peak_alloc_mb, randomize  # noqa: E402
from common import PeakHeap, finish, git_commit, metadata, round_robin, summary, write_results  # noqa: E402

import upo_fast  # noqa: E402
from upo_fast import ops  # noqa: E402
from upo_fast.models.kv_cache import allocate_cache  # noqa: E402
from upo_fast.sampling.scorers import SCORERS  # noqa: E402

SEED = 1234
BLOCK = 32
THRESHOLD = 0.9
SHAPES = {
    "head-heavy": dict(d_model=256, n_layers=4, n_heads=8, mlp_hidden_size=768, vocab=126464, mask_id=126336,
                       eos_id=126081, head_scale=15.0),
    "body-heavy": dict(d_model=512, n_layers=8, n_heads=8, mlp_hidden_size=1536, vocab=32000, mask_id=31999,
                       eos_id=31998, head_scale=16.0),
}
QUICK_SHAPES = {
    "tiny": dict(d_model=64, n_layers=2, n_heads=4, mlp_hidden_size=192, vocab=4096, mask_id=4093, eos_id=4094,
                 head_scale=10.0),
}
SHARP_ROWS = 4096  # head rows multiplied by head_scale (the quick model: a quarter of its vocabulary)
LLADA_8B = dict(d_model=4096, n_layers=32, mlp_hidden_size=12288, vocab=126464)  # for the body:head FLOP ratio
CASES = [(threshold, cache) for threshold in (None, THRESHOLD) for cache in (None, "prefix", "dual")]


@dataclass(frozen=True)
class Plan:
    prompt: int  # prompt tokens of the batch-1 prompt (and the longest of the batch)
    gen: int  # generated tokens end to end
    step_length: int  # L of the single-step rows (prompt + 256)
    max_pads: int  # pads of rows 1..7 of the batch: 1..max_pads
    batches: tuple[int, ...]  # single steps; end to end: batch 1 and the last one (8; the quick run 4)
    step_warmup: int
    step_repeats: int
    e2e_repeats: int  # batch-1 rounds (ours, Fast-dLLM)
    batch_repeats: int  # batch-8 rounds (ours' batch, Fast-dLLM's loop)


def make_plan(args) -> Plan:
    if args.quick:
        return Plan(prompt=32, gen=64, step_length=96, max_pads=5, batches=(1, 4), step_warmup=1, step_repeats=2,
                    e2e_repeats=1, batch_repeats=1)
    return Plan(prompt=256, gen=args.gen, step_length=512, max_pads=40, batches=(1, 8), step_warmup=args.warmup,
                step_repeats=args.step_repeats, e2e_repeats=args.repeats, batch_repeats=args.batch_repeats)


# ----------------------------------------------------------------------------------------------------------- models

def model_config(shape: dict) -> dict:
    """The LLaDA config (Fast-dLLM's field names, which ours reads too) of a shape."""
    return dict(LLADA, d_model=shape["d_model"], n_heads=shape["n_heads"], n_kv_heads=shape["n_heads"],
                n_layers=shape["n_layers"], mlp_hidden_size=shape["mlp_hidden_size"], vocab_size=shape["vocab"],
                embedding_size=shape["vocab"], max_sequence_length=1024, mask_token_id=shape["mask_id"],
                eos_token_id=shape["eos_id"], pad_token_id=shape["eos_id"])


@torch.no_grad()
def sharpen(model, shape: dict) -> int:
    """Scale the head rows of the first token ids so that some confidences pass the threshold; zero the mask row."""
    weight = model.model.transformer.ff_out.weight  # both implementations: a ModuleDict entry, read as attribute
    rows = min(SHARP_ROWS, shape["vocab"] // 4)
    weight[:rows] *= shape["head_scale"]
    weight[shape["mask_id"]] = 0.0
    return rows


def build_models(name: str, shape: dict, official: str | None, gen: torch.Generator):
    """(Fast-dLLM's model or None, ours loaded from what it saved, sharpened rows)."""
    cfg = model_config(shape)
    torch.manual_seed(SEED)
    if official is not None:
        config_cls, model_cls = import_official(official, "llada")
        source = model_cls(config_cls(**cfg)).float().eval()
    else:  # ours only: the same weights saved by our own class
        from upo_fast.models.llada import LLaDAConfig, LLaDAModelLM

        source = LLaDAModelLM(LLaDAConfig(**cfg)).float().eval()
    randomize(source, gen)
    rows = sharpen(source, shape)
    with tempfile.TemporaryDirectory(prefix=f"bench_cache_{name}_") as folder:
        source.save_pretrained(folder, safe_serialization=True)
        ours = upo_fast.load_model(folder, dtype=torch.float32)
    return (source if official is not None else None), ours, rows


def import_fastdllm_samplers(official: str) -> dict:
    """Fast-dLLM's three LLaDA samplers by cache mode, from ``official/llada/generate.py`` (run time only)."""
    folder = os.path.join(official, "llada")
    path = os.path.join(folder, "generate.py")
    if not os.path.isfile(path):
        raise SystemExit(f"--official {official}: no llada/generate.py")
    spec = importlib.util.spec_from_file_location("fastdllm_llada_generate", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, folder)  # its ``from model.modeling_llada import ...`` (already imported by import_official)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return {None: module.generate, "prefix": module.generate_with_prefix_cache,
            "dual": module.generate_with_dual_cache}


class ForwardCounter:
    """Counts model calls: a forward pre-hook on the first transformer block."""

    def __init__(self, model):
        self.count = 0
        model.model.transformer.blocks[0].register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.count += 1


def flop_ratio(d_model: int, n_layers: int, mlp_hidden_size: int, vocab: int, length: int) -> dict:
    """Multiply-adds per token of the body (projections, SwiGLU MLP, attention over ``length`` keys) and the head."""
    body = n_layers * (4 * d_model * d_model + 3 * d_model * mlp_hidden_size + 2 * length * d_model)
    head = d_model * vocab
    return dict(body_macs_per_token=body, head_macs_per_token=head, body_over_head=body / head)


# ------------------------------------------------------------------------------------------------------ measurement

def run_once(fn, counters: list[ForwardCounter]) -> dict:
    """One timed call of ``fn`` (no grad): ms, forwards counted, peak heap above the start, the output."""
    for c in counters:
        c.count = 0
    with torch.no_grad(), PeakHeap() as mem:
        t0 = time.perf_counter()
        out = fn()
        ms = (time.perf_counter() - t0) * 1e3
    return dict(ms=ms, forwards=sum(c.count for c in counters), heap_mb=mem.mb, out=out)


# ------------------------------------------------------------------------------------------------- 1. single steps

def step_calls(ref, ours, x: torch.Tensor, shape: dict, plan: Plan) -> dict:
    """The calls timed for one batch ``x`` [B, L], keyed (impl, part, cache, rows run)."""
    length, start = x.shape[1], plan.prompt
    end = start + BLOCK
    weight, bias, scale = ours.output_head()
    suppress = torch.tensor([shape["mask_id"]])
    scorer = SCORERS["max_confidence"]  # what the loop computes for it: token and confidence (no features, no ref)
    stats = dict(logit_scale=scale, topk=8, suppress=suppress, exclude=suppress, check=False, backend="torch")
    with torch.no_grad():
        cache = allocate_cache(ours, x.shape[0], length)
        ours.final_hidden_states(x, cache=cache, start=0)  # filled as a block's first step fills it
        block_hidden = ours.final_hidden_states(x)[:, start:end].contiguous()
    calls = {
        ("ours", "body", "none", length): lambda: ours.final_hidden_states(x),
        ("ours", "body", "prefix", length - start): lambda: ours.final_hidden_states(
            x[:, start:], cache=cache, start=start),
        ("ours", "body", "dual", BLOCK): lambda: ours.final_hidden_states(x[:, start:end], cache=cache, start=start),
        ("ours", "block_stats", "any", BLOCK): lambda: ops.fused_head_stats(
            block_hidden, weight, bias, need_ref=scorer.needs_ref, features=scorer.needs_features, **stats),
        ("ours", "block_stats_all", "any", BLOCK): lambda: ops.fused_head_stats(  # a policy's or a recorder's step
            block_hidden, weight, bias, need_ref=True, features=True, **stats),
    }
    if ref is not None and x.shape[0] == 1:  # Fast-dLLM's forward (with logits) with its own cache inputs
        with torch.no_grad():
            past = ref(x, use_cache=True).past_key_values
        prefix_past = [tuple(t[:, :, :start] for t in layer) for layer in past]
        replace = torch.zeros_like(x, dtype=torch.bool)
        replace[:, start:end] = True
        calls.update({
            ("fastdllm", "forward", "none", length): lambda: ref(x).logits,
            ("fastdllm", "forward", "prefix", length - start): lambda: ref(
                x[:, start:], past_key_values=prefix_past, use_cache=True).logits,
            ("fastdllm", "forward", "dual", BLOCK): lambda: ref(
                x[:, start:end], past_key_values=past, use_cache=True, replace_position=replace).logits,
        })
    return calls


def bench_steps(name: str, ref, ours, shape: dict, plan: Plan, gen: torch.Generator) -> list[dict]:
    length, mask = plan.step_length, shape["mask_id"]
    rows = []
    for batch in plan.batches:
        x = torch.randint(0, min(mask, shape["eos_id"]), (batch, length), generator=gen)
        x[:, plan.prompt:] = mask
        calls = step_calls(ref, ours, x, shape, plan)
        times = round_robin(calls, plan.step_warmup, plan.step_repeats)
        for key, fn in calls.items():
            impl, part, cache_mode, rows_run = key
            base = times[(impl, "body" if impl == "ours" else "forward", "none", length)]
            with torch.no_grad():
                peak = peak_alloc_mb(fn)
            row = dict(op="step", impl=impl, model=name, batch=batch, length=length, part=part, cache=cache_mode,
                       rows_run=rows_run, **summary(times[key]), warmup=plan.step_warmup, peak_alloc_mb=peak,
                       ratio_vs_no_cache=statistics.median(a / b for a, b in zip(times[key], base, strict=True)))
            rows.append(row)
            print(f"step {name:10s} B={batch} {impl:8s} {part:11s} {cache_mode:6s} rows {rows_run:3d} "
                  f"{row['median_ms']:9.2f} ms (p20 {row['p20_ms']:.2f}, p80 {row['p80_ms']:.2f}) "
                  f"peak {peak:7.1f} MiB  / no cache {row['ratio_vs_no_cache']:.3f}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------- 2. end to end

def make_prompts(shape: dict, plan: Plan, gen: torch.Generator):
    """The batch (8 prompts): row 0 has ``plan.prompt`` tokens, the others 1..max_pads fewer, left-padded."""
    n = plan.batches[-1]
    ids = torch.randint(0, min(shape["mask_id"], shape["eos_id"]), (n, plan.prompt), generator=gen)
    attn = torch.ones(n, plan.prompt, dtype=torch.long)
    pads = [0] + torch.randint(1, plan.max_pads + 1, (n - 1,), generator=gen).tolist()
    for row, p in enumerate(pads):
        ids[row, :p] = shape["eos_id"]
        attn[row, :p] = 0
    return ids, attn, pads


def case_label(threshold, cache) -> str:
    return f"thr={threshold} cache={cache}"


class E2E:
    """The end-to-end runs of one shape: ours (and Fast-dLLM when given) on the same prompts."""

    def __init__(self, name: str, ref, ours, samplers: dict | None, shape: dict, plan: Plan, gen: torch.Generator):
        self.name, self.ref, self.ours, self.samplers, self.shape, self.plan = name, ref, ours, samplers, shape, plan
        self.ids, self.attn, self.pads = make_prompts(shape, plan, gen)
        self.ours_count = ForwardCounter(ours)
        self.ref_count = ForwardCounter(ref) if ref is not None else None

    def prompt(self, row: int) -> torch.Tensor:
        return self.ids[row:row + 1, self.pads[row]:]

    def ours_call(self, ids, attn, threshold, cache, fused=True):
        plan = self.plan
        return lambda: upo_fast.generate(self.ours, ids, attn, gen_length=plan.gen, block_length=BLOCK,
                                         steps=plan.gen, threshold=threshold, cache=cache,
                                         fused_head=True if fused else None)

    def fd_call(self, row, threshold, cache):
        plan, prompt = self.plan, self.prompt(row)
        sampler = self.samplers[cache]
        return lambda: sampler(self.ref, prompt, steps=plan.gen, gen_length=plan.gen, block_length=BLOCK,
                               threshold=threshold, mask_id=self.shape["mask_id"])

    def row(self, impl, batch, threshold, cache, runs: list[dict], forwards_per_sample, **extra) -> dict:
        plan = self.plan
        times = [r["ms"] for r in runs]
        row = dict(op="generate", impl=impl, model=self.name, batch=batch, prompt=plan.prompt, gen=plan.gen,
                   block=BLOCK, threshold=threshold, cache=cache, **summary(times),
                   ms_per_token=statistics.median(times) / (batch * plan.gen),
                   forwards=runs[0]["forwards"], forwards_per_sample=forwards_per_sample,
                   peak_heap_mb=max((r["heap_mb"] for r in runs if r["heap_mb"] is not None), default=None), **extra)
        print(f"gen  {self.name:10s} B={batch} {impl:14s} {case_label(threshold, cache):22s} "
              f"{row['median_ms']:10.1f} ms  {row['ms_per_token']:8.2f} ms/token  forwards/sample "
              f"{forwards_per_sample:6.1f}  peak heap {row['peak_heap_mb'] or 0:7.1f} MiB", flush=True)
        return row

    def batch1(self, threshold, cache, checks: list) -> list[dict]:
        """Batch 1, prompt 0: ours (fused head) and Fast-dLLM round-robin, then ours unfused once."""
        plan, prompt = self.plan, self.prompt(0)
        calls = {"ours": (self.ours_call(prompt, None, threshold, cache), [self.ours_count])}
        if self.ref is not None:
            calls["fastdllm"] = (self.fd_call(0, threshold, cache), [self.ref_count])
        runs = {impl: [] for impl in calls}
        for _ in range(plan.e2e_repeats):
            for impl, (fn, counters) in calls.items():
                runs[impl].append(run_once(fn, counters))
        unfused = run_once(self.ours_call(prompt, None, threshold, cache, fused=False), [self.ours_count])
        ours_out = runs["ours"][0]["out"]
        check = dict(model=self.name, batch=1, threshold=threshold, cache=cache,
                     ours_repeatable=all(torch.equal(r["out"], ours_out) for r in runs["ours"]),
                     unfused_equals_fused=torch.equal(unfused["out"], ours_out))
        rows = [self.row("ours", 1, threshold, cache, runs["ours"], runs["ours"][0]["forwards"],
                         fused_head=True),
                self.row("ours_unfused", 1, threshold, cache, [unfused], unfused["forwards"], fused_head=False)]
        if self.ref is not None:
            fd_out, nfe = runs["fastdllm"][0]["out"]
            differ = (ours_out != fd_out).sum().item() if ours_out.shape == fd_out.shape else -1
            check.update(equals_fastdllm=differ == 0, positions_differing=differ, fastdllm_nfe=nfe,
                         fastdllm_repeatable=all(torch.equal(r["out"][0], fd_out) for r in runs["fastdllm"]),
                         unfused_equals_fastdllm=torch.equal(unfused["out"], fd_out),
                         threshold_fraction=(plan.gen - nfe) / plan.gen if threshold is not None else 0.0)
            rows.append(self.row("fastdllm", 1, threshold, cache, [{**r, "out": None} for r in runs["fastdllm"]],
                                 runs["fastdllm"][0]["forwards"], nfe=nfe))
            rows[0]["tokens_equal_fastdllm"] = differ == 0
            rows[1]["tokens_equal_fastdllm"] = check["unfused_equals_fastdllm"]
        checks.append(check)
        print("check", check, flush=True)
        return rows

    def batched(self, threshold, cache, checks: list) -> list[dict]:
        """Ours on the left-padded batch (mask_padding) against the same prompts one by one (Fast-dLLM's loop,
        or ours alone without Fast-dLLM)."""
        plan, n = self.plan, self.ids.shape[0]
        ours_runs, loop_runs = [], []
        self.ours.mask_padding = True
        try:
            for _ in range(plan.batch_repeats):
                ours_runs.append(run_once(self.ours_call(self.ids, self.attn, threshold, cache), [self.ours_count]))
                loop = [run_once(self.fd_call(r, threshold, cache), [self.ref_count]) if self.ref is not None
                        else run_once(self.ours_call(self.prompt(r), None, threshold, cache), [self.ours_count])
                        for r in range(n)]
                loop_runs.append(loop)
        finally:
            self.ours.mask_padding = False
        loop = loop_runs[0]
        singles = [r["out"][0] if self.ref is not None else r["out"] for r in loop]
        nfes = [r["out"][1] for r in loop] if self.ref is not None else [r["forwards"] for r in loop]
        batch_out = ours_runs[0]["out"]
        differing = [r for r in range(n) if not torch.equal(batch_out[r:r + 1, self.pads[r]:], singles[r])]
        check = dict(model=self.name, batch=n, threshold=threshold, cache=cache, pads=self.pads,
                     rows_equal_batch1=n - len(differing), rows_differing=differing,
                     reference="fastdllm batch-1 runs" if self.ref is not None else "ours batch-1 runs")
        if differing and self.ref is not None:  # batching or sampler? ours alone on those prompts tells
            alone = {r: run_once(self.ours_call(self.prompt(r), None, threshold, cache), [self.ours_count])["out"]
                     for r in differing}
            check["differing_rows_equal_ours_alone"] = {
                r: torch.equal(batch_out[r:r + 1, self.pads[r]:], alone[r]) for r in differing}
        if threshold is not None:
            check["threshold_fraction_per_prompt"] = [(plan.gen - f) / plan.gen for f in nfes]
        checks.append(check)
        print("check", check, flush=True)
        loop_impl = "fastdllm_loop" if self.ref is not None else "ours_loop"
        loop_totals = [dict(ms=sum(r["ms"] for r in rs), forwards=sum(r["forwards"] for r in rs),
                            heap_mb=max((r["heap_mb"] for r in rs if r["heap_mb"] is not None), default=None))
                       for rs in loop_runs]
        equal = not differing
        return [self.row("ours", n, threshold, cache, ours_runs, ours_runs[0]["forwards"], fused_head=True,
                         mask_padding=True, rows_equal_batch1=equal),
                self.row(loop_impl, n, threshold, cache, loop_totals, statistics.mean(nfes),
                         prompts_run_one_by_one=n, rows_equal_batch1=equal)]


# --------------------------------------------------------------------------------------------------------- 3. ratios

def ratios(results: list[dict]) -> tuple[list[dict], list[dict]]:
    """Per (model, batch, threshold, cache): the other implementation's time over ours; and the two goals."""
    gen_rows = [r for r in results if r["op"] == "generate"]
    out, goals = [], []
    keys = sorted({(r["model"], r["batch"], str(r["threshold"]), str(r["cache"])) for r in gen_rows})
    for model, batch, threshold, cache in keys:
        rows = {r["impl"]: r for r in gen_rows if (r["model"], r["batch"], str(r["threshold"]), str(r["cache"]))
                == (model, batch, threshold, cache)}
        other = next((rows[k] for k in ("fastdllm", "fastdllm_loop", "ours_loop") if k in rows), None)
        if "ours" not in rows or other is None:
            continue
        entry = dict(model=model, batch=batch, threshold=rows["ours"]["threshold"], cache=rows["ours"]["cache"],
                     versus=other["impl"], ours_ms_per_token=rows["ours"]["ms_per_token"],
                     other_ms_per_token=other["ms_per_token"],
                     speedup=other["median_ms"] / rows["ours"]["median_ms"],
                     ours_forwards_per_sample=rows["ours"]["forwards_per_sample"],
                     other_forwards_per_sample=other["forwards_per_sample"],
                     tokens_equal=rows["ours"].get("tokens_equal_fastdllm", rows["ours"].get("rows_equal_batch1")))
        out.append(entry)
        if other["impl"] == "fastdllm" and entry["threshold"] == THRESHOLD and entry["cache"] == "dual":
            goals.append(dict(goal="dual cache + threshold 0.9, batch 1: >= 1.2x faster per token than "
                                   "generate_with_dual_cache, same tokens", model=model, value=entry["speedup"],
                              tokens_equal=entry["tokens_equal"],
                              met=bool(entry["speedup"] >= 1.2 and entry["tokens_equal"])))
        if other["impl"] == "fastdllm_loop":
            label = case_label(entry["threshold"], entry["cache"])
            goals.append(dict(goal=f"batch 8 throughput >= 5x Fast-dLLM looping ({label})", model=model,
                              value=entry["speedup"], tokens_equal=entry["tokens_equal"],
                              met=bool(entry["speedup"] >= 5)))
    return out, goals


def print_tables(results: list[dict], rat: list[dict], goals: list[dict]) -> None:
    print("\n| model | batch | impl | part | cache | rows | median ms | p20-p80 ms | peak alloc MiB | / no cache |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if r["op"] == "step":
            print(f"| {r['model']} | {r['batch']} | {r['impl']} | {r['part']} | {r['cache']} | {r['rows_run']} | "
                  f"{r['median_ms']:.2f} | {r['p20_ms']:.2f}-{r['p80_ms']:.2f} | {r['peak_alloc_mb']:.1f} | "
                  f"{r['ratio_vs_no_cache']:.3f} |")
    print("\n| model | batch | threshold | cache | impl | median ms | ms/token | forwards/sample | peak heap MiB |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if r["op"] == "generate":
            heap = "-" if r["peak_heap_mb"] is None else f"{r['peak_heap_mb']:.0f}"
            print(f"| {r['model']} | {r['batch']} | {r['threshold']} | {r['cache']} | {r['impl']} | "
                  f"{r['median_ms']:.0f} | {r['ms_per_token']:.2f} | {r['forwards_per_sample']:.1f} | {heap} |")
    print("\n| model | batch | threshold | cache | versus | speedup (their time / ours) | tokens equal |\n"
          "|---|---|---|---|---|---|---|")
    for e in rat:
        print(f"| {e['model']} | {e['batch']} | {e['threshold']} | {e['cache']} | {e['versus']} | "
              f"{e['speedup']:.2f} | {e['tokens_equal']} |")
    for g in goals:
        print(f"goal [{g['model']}] {g['goal']}: {g['value']:.2f}x -> {'met' if g['met'] else 'NOT met'}")


# ------------------------------------------------------------------------------------------------------------ main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", help="folder holding Fast-dLLM's llada/model and llada/generate.py")
    ap.add_argument("--out", required=True, help="where bench_cache.{json,csv} are written")
    ap.add_argument("--gen", type=int, default=64, help="generated tokens end to end (a multiple of 32)")
    ap.add_argument("--repeats", type=int, default=2, help="batch-1 end-to-end rounds")
    ap.add_argument("--batch-repeats", type=int, default=1, help="batch-8 end-to-end rounds")
    ap.add_argument("--step-repeats", type=int, default=10, help="single-step rounds")
    ap.add_argument("--warmup", type=int, default=2, help="single-step warmup calls")
    ap.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated: " + ", ".join(SHAPES))
    ap.add_argument("--batch8-cases", choices=("all", "cached"), default="all",
                    help="'cached': batch 8 only with prefix/dual caches (Fast-dLLM's no-cache loop is the longest)")
    ap.add_argument("--quick", action="store_true", help="smoke run: a tiny model, prompt 32, 1-2 repeats")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1 for stable timings)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.gen % BLOCK:
        raise SystemExit(f"--gen must be a multiple of {BLOCK}")
    plan = make_plan(a)
    shapes = QUICK_SHAPES if a.quick else {k: SHAPES[k] for k in a.shapes.split(",")}
    samplers = import_fastdllm_samplers(a.official) if a.official else None
    meta = dict(commit=git_commit(),  # at the start: the code this process imported, whatever is committed later
                official="NVlabs/Fast-dLLM@24cc59e" if a.official else None,
                official_dir=os.path.abspath(a.official) if a.official else None, plan=asdict(plan),
                sharp_rows=SHARP_ROWS, threshold=THRESHOLD, block=BLOCK)
    try:
        import transformers

        meta["transformers"] = transformers.__version__
    except ImportError:
        pass
    results, checks, extra = [], [], dict(shapes={}, flops={})
    started = time.perf_counter()

    def save(section: str) -> None:
        rat, goals = ratios(results)
        extra.update(checks=checks, ratios=rat, goals=goals, last_section=section,
                     elapsed_s=time.perf_counter() - started)
        write_results(a.out, "bench_cache", results, {**metadata("cpu"), "quick": a.quick, **meta}, extra)
        print(f"[{time.perf_counter() - started:7.0f} s] section done: {section}", flush=True)

    gen = torch.Generator().manual_seed(SEED)
    runners = {}
    for name, shape in shapes.items():
        ref, ours, rows = build_models(name, shape, a.official, gen)
        extra["shapes"][name] = dict(shape, sharpened_rows=rows, config=model_config(shape))
        extra["flops"][name] = flop_ratio(shape["d_model"], shape["n_layers"], shape["mlp_hidden_size"],
                                          shape["vocab"], plan.step_length)
        print(f"{name}: ours {type(ours).__module__}.{type(ours).__name__} (attn {ours.attn_backend}), "
              f"Fast-dLLM {type(ref).__module__ if ref is not None else None}; {extra['flops'][name]}", flush=True)
        results.extend(bench_steps(name, ref, ours, shape, plan, gen))
        save(f"{name} steps")
        runner = runners[name] = E2E(name, ref, ours, samplers, shape, plan, gen)
        with torch.no_grad():  # warm both samplers' code paths on a short generation
            short = runner.prompt(0)[:, -BLOCK:]
            upo_fast.generate(ours, short, gen_length=BLOCK, block_length=BLOCK, steps=BLOCK, threshold=THRESHOLD,
                              cache="dual", fused_head=True)
            if ref is not None:
                samplers["dual"](ref, short, steps=BLOCK, gen_length=BLOCK, block_length=BLOCK,
                                 threshold=THRESHOLD, mask_id=shape["mask_id"])
        for threshold, cache in CASES:
            results.extend(runner.batch1(threshold, cache, checks))
            save(f"{name} batch 1 {case_label(threshold, cache)}")
    extra["flops"]["LLaDA-8B"] = flop_ratio(**LLADA_8B, length=plan.step_length)
    order = [c for c in CASES if c[1] is not None] + [c for c in CASES if c[1] is None]  # cached cases first
    if a.batch8_cases == "cached":
        order = [c for c in order if c[1] is not None]
    for threshold, cache in order:
        for name, runner in runners.items():
            results.extend(runner.batched(threshold, cache, checks))
            save(f"{name} batch 8 {case_label(threshold, cache)}")
    rat, goals = ratios(results)
    print_tables(results, rat, goals)
    extra.update(checks=checks, ratios=rat, goals=goals, last_section="done",
                 elapsed_s=time.perf_counter() - started)
    return finish(a, "bench_cache", results, "cpu", extra, meta=meta)


if __name__ == "__main__":
    sys.exit(main())
