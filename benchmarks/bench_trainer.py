"""Time and peak memory of one GRPO iteration (rollouts + update) on the Sudoku TinyMDM: upo_fast's trainer pieces
against a paraphrase of the paper code's loop, same model, same puzzles, same process.

    paper_loop   one trajectory at a time (batch size 1); per step a full forward, two full-vocabulary softmaxes,
                 the policy over every position, bf16 Gumbel noise at position temperature 0.8, a clone of the
                 state and hidden states stacked per step; the update recomputes the old log-probs (at
                 temperature 1) in every inner iteration and backpropagates trajectory by trajectory
    upo_fast     rollout() of all P x G trajectories as one batch with preallocated recording, then
                 update_policy() (old log-probs recorded once, chunked forward/backward)

Usage:  python benchmarks/bench_trainer.py --out DIR [--prompts 8 --group 8]   (CPU or GPU)
        python benchmarks/bench_trainer.py --quick --out DIR                   (smoke run)
Writes DIR/bench_trainer.{json,csv}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import measure, metadata, write_results  # noqa: E402
from upo_fast.kernels.vocab_stats import VocabStats  # noqa: E402

from upo_fast.adapters import MDMAdapter  # noqa: E402
from upo_fast.evaluation import HELD_OUT_SEED, load_model  # noqa: E402
from upo_fast.policy import UnmaskingPolicy  # noqa: E402
from upo_fast.tasks import get_task  # noqa: E402
from upo_fast.training.losses import group_advantages  # noqa: E402
from upo_fast.training.rollout import rollout  # noqa: E402
from upo_fast.training.update import update_policy  # noqa: E402


def _paper_scores(mdm, adapter, policy, x, mask_id):
    logits = mdm(x).logits
    probs = F.softmax(logits, dim=-1)
    no_mask = probs.clone()
    no_mask[..., mask_id] = 0.0
    top8 = no_mask.topk(min(8, probs.shape[-1]), dim=-1).values
    ref = torch.logsumexp(F.softmax(logits, dim=-1) / 0.05, dim=-1)
    zeros = torch.zeros_like(ref)
    stats = VocabStats(no_mask.argmax(-1), top8[..., 0], zeros, zeros, top8, ref)
    masked = x == mask_id
    scores = policy(hidden=adapter.last_hidden, stats=stats, candidates=masked)
    return scores.masked_fill(~masked, -1e9), no_mask.argmax(-1), adapter.last_hidden, stats, masked


def paper_iteration(mdm, adapter, policy, optimizer, x_all, mask_id, group, inner_iters=2):
    trajectories = []
    with torch.no_grad():
        for b in range(x_all.shape[0]):  # batch size 1
            x = x_all[b:b + 1].clone()
            states = []
            while (x == mask_id).any():
                scores, tokens, hidden, stats, masked = _paper_scores(mdm, adapter, policy, x, mask_id)
                u = torch.rand_like(scores, dtype=torch.bfloat16).float().clamp(1e-6, 1 - 1e-6)
                pos = int((scores / 0.8 - torch.log(-torch.log(u))).argmax())  # bf16 Gumbel at T = 0.8
                states.append((hidden.clone(), stats, masked.clone(), pos))
                x[0, pos] = tokens[0, pos]
            trajectories.append((x, states))
    rewards = torch.rand(len(trajectories)).view(-1, group)  # the reward function is not what is measured
    adv = group_advantages(rewards).flatten()
    for _ in range(inner_iters):
        optimizer.zero_grad()
        for (_final, states), a in zip(trajectories, adv):
            hidden = torch.stack([s[0] for s in states])[:, 0]
            stats = VocabStats(*(torch.stack([s[1][i] for s in states])[:, 0] for i in range(6)))
            masked = torch.stack([s[2] for s in states])[:, 0]
            chosen = torch.tensor([s[3] for s in states], device=hidden.device)
            with torch.no_grad():  # old log-probs recomputed every inner iteration, at temperature 1
                old = torch.log_softmax(policy(hidden=hidden, stats=stats, candidates=masked).masked_fill(
                    ~masked, -1e9), -1).gather(1, chosen[:, None])
            new = torch.log_softmax(policy(hidden=hidden, stats=stats, candidates=masked).masked_fill(
                ~masked, -1e9), -1).gather(1, chosen[:, None])
            loss = -(torch.exp(new - old) * a).mean()
            loss.backward()
        optimizer.step()


def upo_fast_iteration(mdm, policy, optimizer, x_all, group, inner_iters=2):
    _, traj = rollout(mdm, x_all, policy=policy, position_temperature=0.8,
                      generator=torch.Generator(device=x_all.device).manual_seed(0))
    rewards = torch.rand(x_all.shape[0]).view(-1, group)
    adv = group_advantages(rewards).flatten().to(x_all.device)
    update_policy(policy, optimizer, traj, adv, reference="max_confidence", beta=0.01, position_temperature=0.8,
                  inner_iters=inner_iters)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/local")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prompts, group = (1, 2) if args.quick else (args.prompts, args.group)
    task = get_task("sudoku9")
    mdm = load_model(None, task, str(device)).eval().requires_grad_(False)
    puzzles, _ = task.make_puzzles(prompts, blanks=10 if args.quick else None, seed=HELD_OUT_SEED)
    x = task.encode(puzzles).to(device).repeat_interleave(group, 0)
    torch.manual_seed(0)
    timing = dict(device=device, warmup=0 if args.quick else 1, repeats=1 if args.quick else args.repeats)
    fields = dict(model="sudoku9", prompts=prompts, group=group, blanks=int((puzzles == 0).sum(axis=(1, 2))[0]))
    results = []
    policy = UnmaskingPolicy.for_mdm(mdm, anchor="confidence", block_init="copy").to(device)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    adapter = MDMAdapter(mdm)
    adapter.capture_last_block_input()
    measure(results, lambda: paper_iteration(mdm, adapter, policy, optimizer, x, task.mask_id, group),
            op="grpo_iteration", impl="paper_loop", **fields, **timing)
    adapter.capture_last_block_input(False)
    measure(results, lambda: upo_fast_iteration(mdm, policy, optimizer, x, group), op="grpo_iteration",
            impl="upo_fast", **fields, **timing)
    paper, ours = (r.get("median_ms") for r in results)
    extra = {"speedup": paper / ours if paper and ours else None}
    print(extra)
    paths = write_results(args.out, "bench_trainer", results, {**metadata(device), "quick": args.quick}, extra)
    print("wrote", ", ".join(paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
