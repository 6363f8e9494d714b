"""Per-step cost of an unmasking step, upo_fast against paraphrases of the reference samplers, on the same model in
one process:

    llada_ref_bf16   LLaDA's generate() step: full [B, L, V] logits, softmax in the logits' dtype, gather, a
                     per-row torch.topk loop over the block
    llada_ref_fp64   the same with the float64 softmax that Fast-dLLM keeps
    paper_rollout    the UPO paper code's rollout step: two full-vocabulary softmaxes (token and reference), a copy
                     of the mask column, top-8 over V, the policy block over every position, a per-row loop
    upo_fast_eager   upo_fast's step (sampler._Loop.step): statistics for the region's rows only (fused head on
                     CUDA), batched selection, no host sync
    floor            what no sampler can avoid: the MDM body + the head on the block's positions

Models: (a) ``llada8b`` — a TinyMDM with LLaDA-8B's dimensions (d 4096, 32 layers, 32 heads, SwiGLU 12288,
V 126464, RoPE), random bf16 weights, prompt 256 + generation 256, block 32, batch 1 and 8 (GPU only); (b) the
shipped 9x9 Sudoku TinyMDM on held-out puzzles, batch 1 and 64 (one cell per step). CUDA-graph replay of the
step is not implemented yet, so it has no row.

Usage:  python benchmarks/bench_sampler.py --out DIR           (GPU: both models; CPU: Sudoku only)
        python benchmarks/bench_sampler.py --quick --out DIR   (CPU smoke run: a tiny model)
Writes DIR/bench_sampler.{json,csv}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish, measure  # noqa: E402

from upo_fast.models import TinyMDM, TinyMDMConfig  # noqa: E402
from upo_fast.policy import UnmaskingPolicy  # noqa: E402
from upo_fast.sampling.adapters import MDMAdapter  # noqa: E402
from upo_fast.sampling.loop import SamplingOptions, _Loop  # noqa: E402


def llada_ref_step(model, x, mask_id, start, end, k, fp64=False):
    logits = model(x).logits
    x0 = logits.argmax(-1)
    p = F.softmax(logits.to(torch.float64) if fp64 else logits, dim=-1)
    conf = torch.gather(p, -1, x0[..., None]).squeeze(-1)
    conf[:, end:] = float("-inf")
    masked = x == mask_id
    conf = torch.where(masked, conf, torch.full_like(conf, float("-inf")))
    x0 = torch.where(masked, x0, x)
    transfer = torch.zeros_like(x0, dtype=torch.bool)
    for j in range(conf.shape[0]):  # LLaDA's per-row loop
        _, picked = torch.topk(conf[j], k=k)
        transfer[j, picked] = True
    x[transfer] = x0[transfer]
    return x


def paper_rollout_step(model, policy, adapter, x, mask_id, start, end):
    logits = model(x).logits
    probs = F.softmax(logits.float(), dim=-1)  # token distribution
    no_mask = probs.clone()
    no_mask[..., mask_id] = 0.0  # the mask-column copy
    top8 = no_mask.topk(8, dim=-1).values  # top-8 over V for the features
    ref = torch.logsumexp(F.softmax(logits.float(), dim=-1) / 0.05, dim=-1)  # a second full softmax (reference)
    x0 = no_mask.argmax(-1)
    masked = x == mask_id
    hidden = adapter.last_hidden
    from upo_fast.kernels.vocab_stats import VocabStats

    zeros = torch.zeros_like(ref)
    stats = VocabStats(x0, top8[..., 0], zeros, zeros, top8, ref)
    scores = policy(hidden=hidden.float(), stats=stats, candidates=masked)  # the policy over every position
    for j in range(x.shape[0]):  # per-row selection
        row = torch.where(masked[j, start:end], scores[j, start:end], torch.full_like(scores[j, start:end], -1e9))
        pos = start + int(row.argmax())
        x[j, pos] = x0[j, pos]
    return x


def floor_step(adapter, x, prepared, start, end, head):
    hidden = adapter.final_hidden(x, prepared)[:, start:end]
    return head(hidden)


def run_model(results, name, model, x_prompt, mask_id, start, end, timing, policy, fused):
    """All variants on one (model, batch): x_prompt [B, L] holds the masked region [start, end)."""
    adapter = MDMAdapter(model)
    batch = x_prompt.shape[0]
    fields = dict(model=name, batch=batch, length=x_prompt.shape[1], block=end - start, **timing)

    def fresh():
        return x_prompt.clone()

    for impl, fn in [
        ("llada_ref_bf16", lambda: llada_ref_step(model, fresh(), mask_id, start, end, 1)),
        ("llada_ref_fp64", lambda: llada_ref_step(model, fresh(), mask_id, start, end, 1, fp64=True)),
    ]:
        measure(results, fn, op="step", impl=impl, **fields)
    adapter.capture_last_block_input()
    measure(results, lambda: paper_rollout_step(model, policy, adapter, fresh(), mask_id, start, end),
            op="step", impl="paper_rollout", **fields)
    k = torch.ones(batch, dtype=torch.long, device=x_prompt.device)
    for scorer in ("max_confidence", "policy"):
        options = SamplingOptions(scorer=scorer, topk=5, position_temperature=0.0, fused_head=fused)
        loop = _Loop(adapter, fresh(), None, options, policy=policy if scorer == "policy" else None)

        def step(loop=loop):
            loop.x.copy_(x_prompt)
            loop.step(start, end, k)
        measure(results, step, op="step", impl=f"upo_fast_eager[{scorer}]", **fields)
    adapter.capture_last_block_input(False)
    prepared = adapter.prepare_attention(None, *x_prompt.shape)
    head = model.lm_head
    measure(results, lambda: floor_step(adapter, fresh(), prepared, start, end, head), op="step", impl="floor",
            **fields)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/local")
    parser.add_argument("--quick", action="store_true", help="a tiny model, CPU smoke run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    timing = dict(device=device, warmup=1 if args.quick else args.warmup, repeats=3 if args.quick else args.repeats)
    results = []
    torch.manual_seed(0)
    if args.quick:
        config = TinyMDMConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=48, mask_token_id=39)
        runs = [("tiny", TinyMDM(config).to(device).eval(), 16, 32, (1, 4))]
    else:
        from upo_fast.assets import load_task_model
        from upo_fast.evaluation.grids import HELD_OUT_SEED
        from upo_fast.tasks import get_task

        task = get_task("sudoku9")
        sudoku = load_task_model(None, task, str(device))
        puzzles, _ = task.make_puzzles(64, seed=HELD_OUT_SEED)
        runs = [("sudoku9", sudoku, 0, 81, (1, 64), task.encode(puzzles).to(device))]
        if device.type == "cuda":
            config = TinyMDMConfig(vocab_size=126464, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                   intermediate_size=12288, max_position_embeddings=512, position_embedding="rope",
                                   mask_token_id=126336)
            with torch.device(device):
                big = TinyMDM(config).to(torch.bfloat16).eval()
            runs.append(("llada8b", big, 256, 288, (1, 8)))
    for run in runs:
        name, model, start, end, batches = run[:5]
        policy = UnmaskingPolicy.for_mdm(model, anchor="confidence").to(device).eval()
        vocab, mask_id = model.config.vocab_size, model.config.mask_token_id
        for batch in batches:
            if len(run) > 5:
                x = run[5][:batch].clone()
            else:
                x = torch.randint(0, vocab - 1, (batch, end), device=device)
                x[:, start:end] = mask_id
                if name == "llada8b":  # prompt 256 + generation 256: the active block is the first 32 of 256
                    x = torch.cat([x[:, :256], torch.full((batch, 256), mask_id, device=device)], 1)
            with torch.no_grad():
                run_model(results, name, model, x, mask_id, start, end, timing, policy,
                          fused=device.type == "cuda")
        del model
    return finish(args, "bench_sampler", results, device)


if __name__ == "__main__":
    sys.exit(main())
