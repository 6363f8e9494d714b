"""A paraphrase of the paper code's GRPO iteration (the loop that ``bench_trainer.py`` compares against): one
trajectory at a time (batch size 1); per step a full forward, two full-vocabulary softmaxes, the policy over every
position, bf16 Gumbel noise at position temperature 0.8, a clone of the state and hidden states stacked per step;
the update recomputes the old log-probs (at temperature 1) in every inner step and backpropagates trajectory by
trajectory. Written from reading the official code's structure, not copied from it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from upo_fast.kernels.vocab_stats import VocabStats
from upo_fast.sampling.adapters import MDMAdapter
from upo_fast.training.losses import group_advantages


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


def _paper_rollouts(mdm, adapter, policy, x_all, mask_id) -> list:
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
    return trajectories


def paper_iteration(mdm, policy, optimizer, x_all, mask_id, group, inner_iters=2):
    adapter = MDMAdapter(mdm)
    adapter.capture_last_block_input()
    try:
        trajectories = _paper_rollouts(mdm, adapter, policy, x_all, mask_id)
    finally:
        adapter.capture_last_block_input(False)
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
