"""Cost of one MDM forward (what every sampler step pays): the native LLaDA / Dream of ``upo_fast.models`` against
the official modeling code (NVlabs/Fast-dLLM at commit 24cc59e), on the same random weights, on the CPU.

For each family the official model is built from its own config class with seeded random weights, saved with
``save_pretrained`` to a temporary folder, and the native model is loaded from that folder with
``upo_fast.load_model(folder, dtype=torch.float32)`` (which also checks that the loader reads what the official
code saves). Shapes are the tiny-LLaDA / tiny-Dream ones: hidden 256, 4 layers, 8 heads (Dream: 2 KV heads), MLP
768, vocab 4096; a sequence is a 64-token prompt and 64 masked tokens (L = 128); batch 1 and 8. Inputs are
left-padded as the samplers pass them: LLaDA gets the 2-D ``[B, L]`` mask (both implementations); Dream gets the
4-D boolean outer-product mask and the position ids its sampler builds (the official Fast-dLLM Dream ignores
``position_ids`` and rotates by 0..L-1; the native one applies them; RoPE scores depend only on position
differences and pad keys are masked, so the logits agree up to rounding).

Rows per (family, batch):
- ``official_forward``: the official model's forward (logits);
- ``native_forward``: the native model's forward (full logits);
- ``native_final_hidden``: ``model.final_hidden_states`` (what the fused head path calls: no vocab projection).

The three calls are timed round-robin (one of each per round through ``common.time_ms``, ``time.perf_counter``, one
thread, after warmup), so that load from other jobs on a shared machine falls on all alike. Each row has the median,
20th and 80th percentile over the rounds, the median per-round ratio to the official forward, and the peak memory
of one call (``peak_mem_mb``: bytes held by torch's CPU allocator above the start, from ``torch.profiler``'s memory
events; ``common.measure`` reads CUDA memory only, and peak RSS stays flat once freed pages are reused). Official
and native logits are compared in the same run (max abs difference; for Dream also against the native model with
default positions, which is what the official code computes).

Exact command (from the repository root; the venv has transformers 4.49, which the official code needs)::

    /tmp/venv-tf449/bin/python benchmarks/bench_native_models.py --official /tmp/official \\
        --out benchmarks/results/native_models_cpu_20261129

``--official DIR`` is a folder holding ``llada/model`` and ``dream/model`` extracted from Fast-dLLM. That code is
imported at run time from there and is never copied into or committed to this repository. Both upstream packages
are named ``model``: they are imported one at a time, and the first is dropped from ``sys.modules`` before the
second is imported. Writes ``DIR/bench_native_models.{json,csv}``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import _quantile, finish, time_ms  # noqa: E402

import upo_fast  # noqa: E402

SEED = 1234
PROMPT, GEN = 64, 64
LLADA = dict(
    d_model=256, n_heads=8, n_kv_heads=8, n_layers=4, mlp_ratio=4, mlp_hidden_size=768,
    vocab_size=4096, embedding_size=4096, max_sequence_length=512, rope=True, rope_theta=500000.0,
    rope_full_precision=True, block_type="llama", block_group_size=1, layer_norm_type="rms",
    layer_norm_with_affine=True, bias_for_layer_norm=False, rms_norm_eps=1e-5, activation_type="silu",
    include_bias=False, include_qkv_bias=False, weight_tying=False, scale_logits=False, input_emb_norm=False,
    alibi=False, alibi_bias_max=8.0, flash_attention=False, attention_layer_norm=False,
    attention_layer_norm_with_affine=True, attention_dropout=0.0, residual_dropout=0.0, embedding_dropout=0.0,
    multi_query_attention=None, init_device="cpu", init_fn="mitchell", init_std=0.02, precision="amp_bf16",
    mask_token_id=4093, eos_token_id=4094, pad_token_id=4094,
)
DREAM = dict(
    vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
    num_key_value_heads=2, max_position_embeddings=512, rope_theta=1000000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=False, mask_token_id=4093, pad_token_id=4094, bos_token_id=4092, eos_token_id=4094,
)
FAMILIES = {"llada": LLADA, "dream": DREAM}


def import_official(official: str, family: str):
    """(Config, Model) classes of one family's official code; the other family's ``model`` package is dropped."""
    for name in [m for m in sys.modules if m == "model" or m.startswith("model.")]:
        del sys.modules[name]
    path = os.path.join(official, family)
    if not os.path.isdir(os.path.join(path, "model")):
        raise SystemExit(f"--official {official}: no {family}/model folder")
    sys.path.insert(0, path)
    try:
        if family == "llada":
            from model.configuration_llada import LLaDAConfig as config_cls
            from model.modeling_llada import LLaDAModelLM as model_cls
        else:
            from model.configuration_dream import DreamConfig as config_cls
            from model.modeling_dream import DreamModel as model_cls
    finally:
        sys.path.remove(path)
    return config_cls, model_cls


@torch.no_grad()
def randomize(model, gen: torch.Generator) -> None:
    """Seeded weights with O(1) activations and non-flat logits (as the official fixtures use)."""
    for name, p in model.named_parameters():
        if name.endswith(("wte.weight", "embed_tokens.weight")):
            w = torch.randn(p.shape, generator=gen)
        elif p.ndim == 2:
            w = torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1])
        elif name.endswith("bias"):
            w = torch.randn(p.shape, generator=gen) * 0.1
        else:  # norm weights
            w = 1.0 + torch.randn(p.shape, generator=gen) * 0.1
        p.copy_(w)


def make_inputs(batch: int, cfg: dict, gen: torch.Generator):
    """A left-padded batch: prompts of 64 slots (row 0 unpadded, the others 0-40 pad tokens), 64 mask tokens."""
    length = PROMPT + GEN
    ids = torch.randint(0, 4000, (batch, length), generator=gen)
    ids[:, PROMPT:] = cfg["mask_token_id"]
    attn = torch.ones(batch, length, dtype=torch.long)
    pads = [0] + torch.randint(1, 41, (batch - 1,), generator=gen).tolist()
    for row, n in enumerate(pads):
        ids[row, :n] = cfg["pad_token_id"]
        attn[row, :n] = 0
    return ids, attn, pads


def dream_padding_inputs(attn: torch.Tensor):
    """The 4-D boolean mask and position ids Dream's sampler builds for a left-padded batch."""
    pos = attn.long().cumsum(-1) - 1
    pos.masked_fill_(attn == 0, 1)
    mask4d = torch.logical_and(attn[:, None, None, :].bool(), attn[:, None, :, None].bool())
    return mask4d, pos


def peak_alloc_mb(fn) -> float:
    """Peak of the bytes torch's CPU allocator holds during one call of ``fn``, above what was held before (MiB):
    the profiler's per-op self allocations and frees, summed in time order (an op's net change counts at its start).
    ``common.peak_memory_bytes`` reads CUDA statistics only, and peak RSS does not move once the allocator reuses
    freed pages, so this is the CPU counterpart."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return peak / 2**20


def make_calls(family: str, ref, native, ids: torch.Tensor, attn: torch.Tensor):
    """(official forward, native forward, native final hidden states) with the inputs the samplers pass."""
    if family == "llada":  # keywords: the official forward's second parameter is ``inputs_embeds``
        kw = dict(input_ids=ids, attention_mask=attn)
    else:
        mask4d, pos = dream_padding_inputs(attn)
        kw = dict(input_ids=ids, attention_mask=mask4d, position_ids=pos)
    return (lambda: ref(**kw).logits, lambda: native(**kw).logits, lambda: native.final_hidden_states(**kw))


def bench_family(family: str, official: str, batches: list[int], results: list, checks: list, timing: dict) -> None:
    cfg = FAMILIES[family]
    config_cls, model_cls = import_official(official, family)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    ref = model_cls(config_cls(**cfg)).float().eval()
    randomize(ref, gen)
    with tempfile.TemporaryDirectory(prefix=f"bench_native_{family}_") as folder:
        ref.save_pretrained(folder, safe_serialization=True)
        native = upo_fast.load_model(folder, dtype=torch.float32)
    print(f"{family}: official {type(ref).__module__}.{type(ref).__name__}, native "
          f"{type(native).__module__}.{type(native).__name__} (attn backend {getattr(native, 'attn_backend', '?')})",
          flush=True)
    for batch in batches:
        ids, attn, pads = make_inputs(batch, cfg, gen)
        ref_call, nat_call, hid_call = make_calls(family, ref, native, ids, attn)
        fields = dict(model=family, batch=batch, length=PROMPT + GEN, pads=" ".join(map(str, pads)))
        with torch.no_grad():
            want, got = ref_call(), nat_call()
            hidden = hid_call()
            weight, bias, scale = native.output_head()
            check = dict(model=family, batch=batch, logits_maxabs=(want - got).abs().max().item(),
                         logits_std=want.std().item(),
                         head_of_final_hidden_maxabs=(F.linear(hidden, weight, bias) * scale - got).abs().max().item())
            if family == "dream":  # what the official code computes: positions 0..L-1 whatever position_ids say
                default = native(input_ids=ids, attention_mask=dream_padding_inputs(attn)[0]).logits
                check["logits_maxabs_native_default_positions"] = (want - default).abs().max().item()
                check["logits_maxabs_unpadded_rows"] = (want - got)[attn.bool().all(-1)].abs().max().item()
                check["official_has_nan"] = bool(want.isnan().any())
        checks.append(check)
        print("check", check, flush=True)
        calls = {"official_forward": ref_call, "native_forward": nat_call, "native_final_hidden": hid_call}
        results.extend(interleaved(calls, timing, fields))


def interleaved(calls: dict, timing: dict, fields: dict) -> list[dict]:
    """Time the calls round-robin (one call of each per round, each through ``common.time_ms``), so that load from
    other jobs on a shared machine falls on all of them alike; one row per call, as ``common.measure`` writes them,
    plus the median over rounds of each call's time divided by the official forward's time in the same round."""
    warmup, repeats = timing["warmup"], timing["repeats"]

    def no_grad(fn):
        def call():
            with torch.no_grad():
                return fn()
        return call

    calls = {impl: no_grad(fn) for impl, fn in calls.items()}
    times: dict[str, list[float]] = {impl: [] for impl in calls}
    for call in calls.values():
        time_ms(call, warmup=warmup, repeats=1)
    for _ in range(repeats):
        for impl, call in calls.items():
            times[impl].append(time_ms(call, warmup=0, repeats=1)["median_ms"])
    rows = []
    for impl, call in calls.items():
        t = times[impl]
        row = dict(op="mdm_forward", impl=impl, **fields, median_ms=statistics.median(t), p20_ms=_quantile(t, 0.2),
                   p80_ms=_quantile(t, 0.8), repeats=repeats, warmup=warmup, device=timing["device"],
                   peak_mem_mb=peak_alloc_mb(call),
                   paired_ratio_vs_official=statistics.median(
                       a / b for a, b in zip(t, times["official_forward"], strict=True)))
        rows.append(row)
        print(f"{fields['model']:6s} B={fields['batch']} {impl:20s} {row['median_ms']:8.2f} ms "
              f"(p20 {row['p20_ms']:.2f}, p80 {row['p80_ms']:.2f}) peak {row['peak_mem_mb']:.1f} MiB "
              f"paired/official {row['paired_ratio_vs_official']:.3f}", flush=True)
    return rows


def ratios(results: list) -> list[dict]:
    """native/official per (model, batch): the ratio of the medians and the median of the per-round ratios."""
    out = []
    for family in FAMILIES:
        for batch in sorted({r["batch"] for r in results if r["model"] == family}):
            rows = {r["impl"]: r for r in results if r["model"] == family and r["batch"] == batch}
            base = rows["official_forward"]["median_ms"]
            entry = dict(model=family, batch=batch)
            for impl in ("native_forward", "native_final_hidden"):
                entry[f"{impl}_over_official"] = rows[impl]["median_ms"] / base
                entry[f"{impl}_over_official_paired"] = rows[impl]["paired_ratio_vs_official"]
            out.append(entry)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True, help="folder holding llada/model and dream/model (Fast-dLLM)")
    ap.add_argument("--out", required=True, help="where bench_native_models.{json,csv} are written")
    ap.add_argument("--repeats", type=int, default=40, help="timed rounds after warmup (at least 20 advised)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smoke run: batch 1 only, 3 repeats, 1 warmup")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1 for stable timings)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    batches = [1] if a.quick else [1, 8]
    repeats, warmup = (3, 1) if a.quick else (a.repeats, a.warmup)
    import transformers

    meta = dict(transformers=transformers.__version__, official="NVlabs/Fast-dLLM@24cc59e",
                official_dir=os.path.abspath(a.official))
    timing = dict(device="cpu", warmup=warmup, repeats=repeats)
    results, checks = [], []
    for family in FAMILIES:
        bench_family(family, a.official, batches, results, checks, timing)
    rat = ratios(results)
    print("\n| model | batch | impl | median ms | p20-p80 ms | peak alloc MiB | / official (paired) |\n"
          "|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['batch']} | {r['impl']} | {r['median_ms']:.2f} | "
              f"{r['p20_ms']:.2f}-{r['p80_ms']:.2f} | {r['peak_mem_mb']:.1f} | {r['paired_ratio_vs_official']:.3f} |")
    print("\n| model | batch | logits max abs diff (official vs native) | logits std |\n|---|---|---|---|")
    for c in checks:
        print(f"| {c['model']} | {c['batch']} | {c['logits_maxabs']:.3g} | {c['logits_std']:.3f} |")
    return finish(a, "bench_native_models", results, "cpu", dict(checks=checks, ratios=rat), meta=meta)


if __name__ == "__main__":
    sys.exit(main())
