"""One GRPO update of the unmasking policy from recorded rollouts.

``update_policy`` runs ``inner_iters`` optimizer steps on one rollout batch. The old log-probs are the behavior
log-probs recorded at rollout time (the policy that sampled, at the temperature it sampled at), read once; they
are never recomputed per inner iteration. Each optimizer step accumulates gradients over row chunks (all steps of
a row in one chunk, which the sequence-level KL needs), normalizes by the *global* number of steps, and — when
launched by torchrun — all-reduces the gradients, so N processes with 1/N of the rows each take exactly the
step one process takes with all rows.
"""

from __future__ import annotations

import math

import torch

from upo_fast.checkpoints import all_finite, step_if_finite
from upo_fast.distributed import SINGLE_PROCESS, ProcessGroup
from upo_fast.training.losses import (
    REFERENCE_DIVERGENCE,
    grpo_loss,
    reference_divergence,
    reference_for,
    sequence_kl_surrogate,
    step_log_probs,
)
from upo_fast.training.rollout import Trajectories


def _row_chunks(rows: int, steps: int, chunk_states: int) -> list[range]:
    per_chunk = max(1, chunk_states // max(steps, 1))
    return [range(i, min(i + per_chunk, rows)) for i in range(0, rows, per_chunk)]


def update_policy(policy, optimizer, traj: Trajectories, advantages: torch.Tensor, *, reference: str, beta: float,
                  position_temperature: float, clip_eps: float = 0.2, clip_eps_high: float | None = None,
                  inner_iters: int = 1, grad_clip: float = 1.0, kl_mode: str = "exact", topk: int = 5,
                  chunk_states: int = 2048, certain_threshold: float = 0.999, certain_keep: float = 1.0,
                  seed: int = 0, rows: torch.Tensor | None = None, group: ProcessGroup = SINGLE_PROCESS) -> dict:
    """``inner_iters`` clipped-GRPO steps on one rollout batch; returns float metrics of the last step.

    traj: this process's recorded rollouts ([S, B, ...]); advantages: [B], one per row (its group's r - mean);
    rows: optional [B] bool, the rows to learn from (e.g. without the groups whose rewards are all equal, which
    carry no advantage: DAPO's dynamic sampling); the token mean runs over the steps of these rows.
    An inner step whose loss or gradients are not finite is skipped (parameters and optimizer state untouched);
    ``skipped_nonfinite`` counts them. An optimizer step that leaves a non-finite parameter is undone (parameters
    and optimizer state restored to before it); ``undone_nonfinite`` counts those.

    Forced moves: at a step where the MDM is certain of some candidate (its confidence >= ``certain_threshold``),
    the order among the certain cells barely matters, yet such steps are most of a Sudoku rollout. With
    ``certain_keep`` = q < 1 they are subsampled at rate q (a fixed draw per rollout batch from ``seed``) and the
    kept ones weighted 1/q: an unbiased estimate of the full token mean at a fraction of the cost. q = 1 uses
    every step. The sequence-level KL needs whole trajectories and always uses every step.
    """
    if reference not in REFERENCE_DIVERGENCE:
        raise ValueError(f"reference must be one of {', '.join(REFERENCE_DIVERGENCE)}, got {reference!r}")
    S, B = traj.active.shape
    if advantages.shape != (B,):
        raise ValueError(f"advantages must be [B={B}] (one per recorded row), got {tuple(advantages.shape)}")
    params = [p for p in policy.parameters() if p.requires_grad]
    active = traj.active if rows is None else traj.active & rows.to(traj.active.device)[None, :]
    counts = group.sum(torch.stack([active.sum().double(), active.any(0).sum().double()]))
    total_steps, total_rows = float(counts[0]), float(counts[1])
    if total_steps == 0:  # nothing to learn from on any process (e.g. every group had equal rewards)
        return dict(loss=0.0, policy_loss=0.0, clip_ratio=0.0, divergence=0.0, ratio_mean=1.0, grad_norm=0.0,
                    skipped_nonfinite=0, undone_nonfinite=0, update_steps=0, update_rows=0, update_states_used=0)
    weight = active.float()
    if certain_keep < 1 and kl_mode == "exact":
        best = torch.where(traj.candidates, traj.confidence, torch.zeros_like(traj.confidence)).amax(-1)
        certain = active & (best >= certain_threshold)
        draw = torch.rand(S, B, generator=torch.Generator().manual_seed(seed)).to(weight.device)
        weight = torch.where(certain, (draw < certain_keep).float() / certain_keep, weight)
    used = float(group.sum((weight > 0).sum().double().view(1)))
    chunks = _row_chunks(B, S, chunk_states)
    policy.train()
    metrics: dict[str, float] = {}
    skipped_steps = undone_steps = 0
    for _ in range(inner_iters):
        optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(5, dtype=torch.float64)  # loss, policy loss, clip count, divergence, ratio (weighted)
        for rows in chunks:
            sums += _accumulate(policy, traj, weight, advantages, rows, reference, beta, position_temperature,
                                clip_eps, clip_eps_high, kl_mode, topk, total_steps, group.world)
        group.average_gradients(params)
        sums = group.sum(sums)
        grads_ok = all_finite([p.grad for p in params if p.grad is not None])
        skipped = not (grads_ok and math.isfinite(float(sums[0])))
        grad_norm = float("nan")
        if not skipped:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf")))
            # A step that leaves NaN / inf in a parameter (e.g. a huge lr) is undone: params + optimizer state.
            # All processes decide together (they hold the same parameters; a disagreement must not split them).
            if not step_if_finite(optimizer, agree=lambda ok: bool(group.sum(ok.double().view(1)) == group.world)):
                undone_steps += 1
        optimizer.zero_grad(set_to_none=True)
        skipped_steps += int(skipped)
        metrics = dict(loss=float(sums[0]), policy_loss=float(sums[1]), clip_ratio=float(sums[2]),
                       divergence=float(sums[3]), ratio_mean=float(sums[4]), grad_norm=grad_norm,
                       skipped_nonfinite=skipped_steps, undone_nonfinite=undone_steps,
                       update_steps=int(total_steps), update_rows=int(total_rows), update_states_used=int(used))
    policy.eval()
    return metrics


def _accumulate(policy, traj, weight, advantages, rows, reference, beta, temperature, clip_eps, clip_eps_high,
                kl_mode, topk, total_steps, world) -> torch.Tensor:
    """Backward of this chunk's share of the global loss; returns its weighted metric sums (float64 [5])."""
    rows_t = torch.arange(rows.start, rows.stop, device=traj.active.device)
    step_idx, row_local = (weight[:, rows_t] > 0).nonzero(as_tuple=True)
    row_idx = rows_t[row_local]
    n = step_idx.numel()
    if n == 0:
        return torch.zeros(5, dtype=torch.float64)
    index = (step_idx, row_idx)
    cand = traj.candidates[index]
    scores = policy(traj.hidden[index], traj.stats(index), cand)
    chosen = traj.chosen[index]
    new_logp = step_log_probs(scores, cand, chosen, temperature, check=False)
    divergence, seq_term = None, None
    if beta > 0:
        g_ref, cand_ref = reference_for(reference, cand, confidence=traj.confidence[index],
                                        ref_logsumexp=traj.ref_logsumexp[index], K=topk)
        if kl_mode == "exact":
            divergence = reference_divergence(reference, scores, cand_ref, g_ref, temperature)
        else:
            ref_logp = g_ref.gather(1, chosen[:, None]).squeeze(1).clamp_min(1e-30).log()
            seq = sequence_kl_surrogate(new_logp, ref_logp, row_local, len(rows), old_logp=traj.behavior_logp[index],
                                        check=False)
            seq_term = seq.sum()
    w = weight[index]
    loss, m = grpo_loss(new_logp, traj.behavior_logp[index], advantages[row_idx], divergence, w, clip_eps=clip_eps,
                        beta=beta if divergence is not None else 0.0, clip_eps_high=clip_eps_high)
    share = float(w.sum()) / total_steps  # token-level mean over every step of every process
    if seq_term is not None:  # the per-trajectory KL sums over steps: per-step scale like the exact mode
        loss = loss + beta * seq_term / n
        m["divergence"] = seq_term.detach() / n
    (loss * share * world).backward()  # DDP-style gradient averaging divides by world again
    with torch.no_grad():
        parts = [loss, m["policy_loss"], m["clip_ratio"], m["divergence"], m["ratio_mean"]]
        return torch.stack([p.detach().double().cpu() for p in parts]) * share
