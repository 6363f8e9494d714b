"""One GRPO update of the unmasking policy from recorded rollouts.

``update_policy`` runs ``inner_iters`` optimizer steps on one rollout batch. The old log-probs are the behavior
log-probs recorded at rollout time (the policy that sampled, at the temperature it sampled at), read once; they
are never recomputed per inner iteration. Each optimizer step accumulates gradients over row chunks (all steps of
a row in one chunk, which the sequence-level KL needs), normalizes by the *global* number of steps, and — when
launched by torchrun — all-reduces the gradients, so N processes with 1/N of the rows each take exactly the
step one process takes with all rows.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from upo_fast.checkpoints import drop_new_state, finite_flag, step_where_finite
from upo_fast.training.distributed import SINGLE_PROCESS, ProcessGroup
from upo_fast.training.losses import (
    REFERENCE_DIVERGENCE,
    grpo_loss,
    reference_divergence,
    reference_for,
    sequence_kl_surrogate,
    step_log_probs,
)
from upo_fast.training.rollout import Trajectories


class _Chunk(NamedTuple):
    """The states of a few whole rows that the loss uses, gathered once per update (index, constants and the
    reference's terms); only the hidden states and features are read from the rollout's buffers per inner step."""

    index: tuple[torch.Tensor, torch.Tensor]  # (steps, rows) of the used states, [n] each
    row_local: torch.Tensor  # [n] row within the chunk (the sequence KL's trajectory id)
    rows: int
    candidates: torch.Tensor  # [n, W]
    chosen: torch.Tensor  # [n]
    old_logp: torch.Tensor  # [n] behavior log-probs recorded at rollout
    advantages: torch.Tensor  # [n]
    weight: torch.Tensor  # [n] the step's weight in the regularizer's mean
    pg_weight: torch.Tensor | None  # [n] ... in the policy-gradient mean (None: the same)
    totals: tuple[torch.Tensor, torch.Tensor]  # the global (policy-gradient, regularizer) step counts
    g_ref: torch.Tensor | None  # [n, W] reference distribution (beta > 0)
    ref_candidates: torch.Tensor | None  # [n, W] the reference's action set (beta > 0)


def _row_chunks(rows: int, steps: int, chunk_states: int) -> list[range]:
    per_chunk = max(1, chunk_states // max(steps, 1))
    return [range(i, min(i + per_chunk, rows)) for i in range(0, rows, per_chunk)]


def _step_weights(traj: Trajectories, rows, kl_mode: str, certain_keep: float, certain_threshold: float,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(active [S, B] bool: the steps the token mean runs over, weight [S, B]: each step's weight in it)."""
    active = traj.active if rows is None else traj.active & rows.to(traj.active.device)[None, :]
    weight = active.float()
    if certain_keep < 1 and kl_mode == "exact":
        best = torch.where(traj.candidates, traj.confidence, torch.zeros_like(traj.confidence)).amax(-1)
        certain = active & (best >= certain_threshold)
        draw = torch.rand(*active.shape, generator=torch.Generator().manual_seed(seed)).to(weight.device)
        weight = torch.where(certain, (draw < certain_keep).float() / certain_keep, weight)
    return active, weight


def _prepare_chunks(traj: Trajectories, weight: torch.Tensor, pg_rows: torch.Tensor | None,
                    advantages: torch.Tensor, totals: tuple[torch.Tensor, torch.Tensor], chunk_states: int,
                    reference: str, beta: float, topk: int) -> list[_Chunk]:
    """Everything of the loss that does not depend on the policy's parameters, once per update (one host read per
    chunk, for its state count)."""
    S, B = weight.shape
    chunks = []
    for rows in _row_chunks(B, S, chunk_states):
        rows_t = torch.arange(rows.start, rows.stop, device=weight.device)
        step_idx, row_local = (weight[:, rows_t] > 0).nonzero(as_tuple=True)
        if step_idx.numel() == 0:
            continue
        index = (step_idx, rows_t[row_local])
        cand, w = traj.candidates[index], weight[index]
        pg_w = None if pg_rows is None else w * pg_rows[index[1]]
        g_ref = cand_ref = None
        if beta > 0:
            g_ref, cand_ref = reference_for(reference, cand, confidence=traj.confidence[index],
                                            ref_logsumexp=traj.ref_logsumexp[index], K=topk)
        chunks.append(_Chunk(index, row_local, len(rows), cand, traj.chosen[index], traj.behavior_logp[index],
                             advantages[index[1]], w, pg_w, totals, g_ref, cand_ref))
    return chunks


def update_policy(policy, optimizer, traj: Trajectories, advantages: torch.Tensor, *, reference: str, beta: float,
                  position_temperature: float, clip_eps: float = 0.2, clip_eps_high: float | None = None,
                  inner_iters: int = 1, grad_clip: float = 1.0, kl_mode: str = "exact", topk: int = 5,
                  chunk_states: int = 256, certain_threshold: float = 0.999, certain_keep: float = 1.0,
                  seed: int = 0, rows: torch.Tensor | None = None, pg_rows: torch.Tensor | None = None,
                  group: ProcessGroup = SINGLE_PROCESS) -> dict:
    """``inner_iters`` clipped-GRPO steps on one rollout batch; returns float metrics of the last step.

    traj: this process's recorded rollouts ([S, B, ...]); advantages: [B], one per row (its group's r - mean);
    rows: optional [B] bool, the rows in the loss at all (default every row). pg_rows: optional [B] bool, the rows
    in the policy-gradient term (e.g. without the groups whose rewards are all equal, which carry no advantage:
    DAPO's dynamic sampling); its token mean runs over their steps, while the regularizer's runs over every row in
    the loss, so it still holds the other rows near the reference. With beta = 0 the other rows are left out.
    An inner step whose loss or gradients are not finite is skipped (parameters and optimizer state untouched);
    ``skipped_nonfinite`` counts them. An optimizer step that leaves a non-finite parameter is undone (parameters
    and optimizer state restored to before it); ``undone_nonfinite`` counts those. Both are decided on the device:
    the inner steps hold no host read; the metrics are read once, at the end.

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
    if pg_rows is not None and beta == 0:  # rows outside the policy gradient would carry nothing
        rows = pg_rows if rows is None else rows & pg_rows
        pg_rows = None
    pg_rows = None if pg_rows is None else pg_rows.to(traj.active.device)
    active, weight = _step_weights(traj, rows, kl_mode, certain_keep, certain_threshold, seed)
    pg_active = active if pg_rows is None else active & pg_rows[None, :]
    counts = group.sum(torch.stack([active.sum(), active.any(0).sum(), (weight > 0).sum(), pg_active.sum()]).double())
    total_steps, total_rows, used, pg_steps = (float(c) for c in counts)  # the one host read before the inner steps
    if total_steps == 0:  # nothing to learn from on any process (e.g. every group had equal rewards and beta = 0)
        return dict(loss=0.0, policy_loss=0.0, clip_ratio=0.0, divergence=0.0, ratio_mean=1.0, grad_norm=0.0,
                    skipped_nonfinite=0, undone_nonfinite=0, update_steps=0, update_rows=0, update_states_used=0,
                    update_pg_steps=0)
    totals = (counts[3].to(weight.device, torch.float32), counts[0].to(weight.device, torch.float32))
    chunks = _prepare_chunks(traj, weight, pg_rows, advantages, totals, chunk_states, reference, beta, topk)
    loss_options = dict(beta=beta, temperature=position_temperature, clip_eps=clip_eps, clip_eps_high=clip_eps_high,
                        kl_mode=kl_mode, reference=reference, world=group.world)
    agree = (lambda kept: group.sum(kept.double().view(1)).squeeze(0) == group.world) if group.world > 1 else None
    had_state = set(optimizer.state)
    policy.train()
    counters = torch.zeros(2, dtype=torch.long, device=weight.device)  # skipped, undone
    for _ in range(inner_iters):
        optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(5, dtype=torch.float64, device=weight.device)
        for chunk in chunks:
            sums = sums + _chunk_backward(policy, traj, chunk, **loss_options)
        group.average_gradients(params)
        sums = group.sum(sums)
        grads_ok = finite_flag([p.grad for p in params if p.grad is not None]) & torch.isfinite(sums[0])
        max_norm = grad_clip if grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.zeros(())
        kept = step_where_finite(optimizer, ok=grads_ok, agree=agree)
        optimizer.zero_grad(set_to_none=True)
        counters += torch.stack([~grads_ok, grads_ok & ~kept]).to(counters.device).long()
        grad_norm = torch.where(grads_ok, grad_norm.to(grads_ok.device), torch.full_like(grad_norm, float("nan")))
    policy.eval()
    last = torch.cat([sums.double().cpu(), grad_norm.double().view(1).cpu(), counters.double().cpu()]).tolist()
    if last[6] + last[7] == inner_iters:  # no step kept: leave no optimizer state the update created (zeroed)
        drop_new_state(optimizer, had_state)
    return dict(loss=last[0], policy_loss=last[1], clip_ratio=last[2], divergence=last[3], ratio_mean=last[4],
                grad_norm=last[5], skipped_nonfinite=int(last[6]), undone_nonfinite=int(last[7]),
                update_steps=int(total_steps), update_rows=int(total_rows), update_states_used=int(used),
                update_pg_steps=int(pg_steps))


def _chunk_backward(policy, traj: Trajectories, chunk: _Chunk, *, beta, temperature, clip_eps, clip_eps_high,
                    kl_mode, reference, world) -> torch.Tensor:
    """Backward of this chunk's share of the global loss; returns its shares of the metrics (float64 [5], on the
    device: loss, policy loss, clip ratio, divergence, ratio mean)."""
    scores = policy(traj.hidden[chunk.index], traj.stats(chunk.index), chunk.candidates)
    new_logp = step_log_probs(scores, chunk.candidates, chunk.chosen, temperature, check=False)
    divergence, seq_term = None, None
    if beta > 0 and kl_mode == "exact":
        divergence = reference_divergence(reference, scores, chunk.ref_candidates, chunk.g_ref, temperature)
    elif beta > 0:
        ref_logp = chunk.g_ref.gather(1, chunk.chosen[:, None]).squeeze(1).clamp_min(1e-30).log()
        seq_term = sequence_kl_surrogate(new_logp, ref_logp, chunk.row_local, chunk.rows, old_logp=chunk.old_logp,
                                         check=False).sum()
    loss, m = grpo_loss(new_logp, chunk.old_logp, chunk.advantages, divergence, chunk.weight, clip_eps=clip_eps,
                        beta=beta if divergence is not None else 0.0, clip_eps_high=clip_eps_high,
                        pg_weight=chunk.pg_weight, totals=chunk.totals)
    if seq_term is not None:  # the per-trajectory KL sums over steps: per-step scale like the exact mode
        loss = loss + beta * seq_term / chunk.totals[1]
        m["divergence"] = seq_term.detach() / chunk.totals[1]
    (loss * world).backward()  # DDP-style gradient averaging divides by world again
    with torch.no_grad():
        parts = [loss, m["policy_loss"], m["clip_ratio"], m["divergence"], m["ratio_mean"]]
        return torch.stack([p.detach().double() for p in parts])
