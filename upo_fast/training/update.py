"""One GRPO update of the unmasking policy from recorded rollouts.

``update_policy`` runs ``inner_iters`` optimizer steps on one rollout batch. The old log-probs are the behavior
log-probs recorded at rollout time (the policy that sampled, at the temperature it sampled at), read once; they
are never recomputed per inner iteration. Each optimizer step accumulates gradients over row chunks (all steps of
a row in one chunk, which the sequence-level KL needs), normalizes by the *global* number of steps, and — when
launched by torchrun — all-reduces the gradients, so N processes with 1/N of the rows each take exactly the
step one process takes with all rows.

Its settings travel as one :class:`UpdateOptions` (frozen, checked once when built; ``TrainConfig.update_options()``
builds the trainer's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from upo_fast.training.distributed import SINGLE_PROCESS, ProcessGroup
from upo_fast.training.finite_steps import drop_new_state, finite_flag, step_where_finite
from upo_fast.training.losses import grpo_loss, sequence_kl_surrogate, step_log_probs
from upo_fast.training.references import Reference, get_reference
from upo_fast.training.rollout import Trajectories
from upo_fast.validation import field_check

KL_MODES = ("exact", "sequence")  # the exact per-step divergence, or the paper's sequence-level surrogate


@dataclass(frozen=True)
class UpdateOptions:
    """The settings of :func:`update_policy`, checked once here (a ValueError names the field).

    reference: the reference policy (a name, resolved to its :class:`Reference`); beta: the regularizer's weight
    (0: the ablation without it); position_temperature: the temperature the positions were sampled at, and so are
    scored at; clip_eps / clip_eps_high: the clip range (clip_eps_high None: clip_eps); inner_iters: optimizer steps
    per rollout batch; grad_clip: max gradient norm (0: none); kl_mode: "exact" per-step divergence or the paper's
    "sequence"-level surrogate; topk: K of the Top-K reference; chunk_states: recorded states per policy forward and
    backward (a memory bound: it regroups the same sums); certain_threshold / certain_keep: forced moves and their
    subsampling rate (see :func:`update_policy`).
    """

    reference: Reference | str
    beta: float
    position_temperature: float
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    inner_iters: int = 1
    grad_clip: float = 1.0
    kl_mode: str = "exact"
    topk: int = 5
    chunk_states: int = 256
    certain_threshold: float = 0.999
    certain_keep: float = 1.0

    def __post_init__(self):
        check = field_check(self)

        reference = get_reference(self.reference)
        object.__setattr__(self, "reference", reference)  # frozen: the name is resolved once, here
        for name in ("beta", "position_temperature", "clip_eps", "clip_eps_high", "grad_clip", "certain_threshold",
                     "certain_keep"):
            value = getattr(self, name)
            check(value is None or (isinstance(value, (int, float)) and math.isfinite(value)), name,
                  "a finite number")
        for name in ("inner_iters", "topk", "chunk_states"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "an int >= 1")
        check(self.beta >= 0, "beta", ">= 0")
        check(self.position_temperature > 0, "position_temperature", "> 0")
        check(0 < self.clip_eps < 1, "clip_eps", "in (0, 1)")
        check(self.clip_eps_high is None or self.clip_eps_high > 0, "clip_eps_high", "None or > 0")
        check(self.grad_clip >= 0, "grad_clip", ">= 0")
        check(self.kl_mode in KL_MODES, "kl_mode", f"one of {', '.join(KL_MODES)}")
        check(not (self.kl_mode == "sequence" and not reference.sequence_kl and self.beta > 0), "kl_mode",
              f"'exact' with the {reference.name} reference (its one-hot g_ref has no finite sequence log-ratio)")
        check(0 < self.certain_keep <= 1, "certain_keep", "in (0, 1] (1 keeps every step)")
        check(0 < self.certain_threshold <= 1, "certain_threshold", "in (0, 1]")


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


def _step_weights(traj: Trajectories, rows, options: UpdateOptions, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(active [S, B] bool: the steps the token mean runs over, weight [S, B]: each step's weight in it)."""
    active = traj.active if rows is None else traj.active & rows.to(traj.active.device)[None, :]
    weight = active.float()
    keep = options.certain_keep
    if keep < 1 and options.kl_mode == "exact":
        best = torch.where(traj.candidates, traj.confidence, torch.zeros_like(traj.confidence)).amax(-1)
        certain = active & (best >= options.certain_threshold)
        draw = torch.rand(*active.shape, generator=torch.Generator().manual_seed(seed)).to(weight.device)
        weight = torch.where(certain, (draw < keep).float() / keep, weight)
    return active, weight


def _prepare_chunks(traj: Trajectories, weight: torch.Tensor, pg_rows: torch.Tensor | None,
                    advantages: torch.Tensor, totals: tuple[torch.Tensor, torch.Tensor],
                    options: UpdateOptions) -> list[_Chunk]:
    """Everything of the loss that does not depend on the policy's parameters, once per update (one host read per
    chunk, for its state count)."""
    S, B = weight.shape
    chunks = []
    for rows in _row_chunks(B, S, options.chunk_states):
        rows_t = torch.arange(rows.start, rows.stop, device=weight.device)
        step_idx, row_local = (weight[:, rows_t] > 0).nonzero(as_tuple=True)
        if step_idx.numel() == 0:
            continue
        index = (step_idx, rows_t[row_local])
        cand, w = traj.candidates[index], weight[index]
        pg_w = None if pg_rows is None else w * pg_rows[index[1]]
        g_ref = cand_ref = None
        if options.beta > 0:
            g_ref, cand_ref = options.reference.terms(cand, confidence=traj.confidence[index],
                                                      ref_logsumexp=traj.ref_logsumexp[index], K=options.topk)
        chunks.append(_Chunk(index, row_local, len(rows), cand, traj.chosen[index], traj.behavior_logp[index],
                             advantages[index[1]], w, pg_w, totals, g_ref, cand_ref))
    return chunks


def update_policy(policy, optimizer, traj: Trajectories, advantages: torch.Tensor, options: UpdateOptions, *,
                  seed: int, rows: torch.Tensor | None = None, pg_rows: torch.Tensor | None = None,
                  group: ProcessGroup = SINGLE_PROCESS) -> dict:
    """``options.inner_iters`` clipped-GRPO steps on one rollout batch; returns float metrics of the last step.

    traj: this process's recorded rollouts ([S, B, ...]); advantages: [B], one per row (its group's r - mean);
    seed: the forced moves' subsampling draw (the trainer's: step seed + rank); rows: optional [B] bool, the rows
    in the loss at all (default every row). pg_rows: optional [B] bool, the rows in the policy-gradient term (e.g.
    without the groups whose rewards are all equal, which carry no advantage: DAPO's dynamic sampling); its token
    mean runs over their steps, while the regularizer's runs over every row in the loss, so it still holds the
    other rows near the reference. With beta = 0 the other rows are left out.
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
    if not isinstance(options, UpdateOptions):
        raise ValueError(f"options must be an UpdateOptions, got {type(options).__name__}")
    S, B = traj.active.shape
    if advantages.shape != (B,):
        raise ValueError(f"advantages must be [B={B}] (one per recorded row), got {tuple(advantages.shape)}")
    if pg_rows is not None and options.beta == 0:  # rows outside the policy gradient would carry nothing
        rows = pg_rows if rows is None else rows & pg_rows
        pg_rows = None
    pg_rows = None if pg_rows is None else pg_rows.to(traj.active.device)
    active, weight = _step_weights(traj, rows, options, seed)
    pg_active = active if pg_rows is None else active & pg_rows[None, :]
    counts = group.sum(torch.stack([active.sum(), active.any(0).sum(), (weight > 0).sum(), pg_active.sum()]).double())
    total_steps, total_rows, used, pg_steps = (float(c) for c in counts)  # the one host read before the inner steps
    sizes = dict(update_steps=int(total_steps), update_rows=int(total_rows), update_states_used=int(used),
                 update_pg_steps=int(pg_steps))
    if total_steps == 0:  # nothing to learn from on any process (e.g. every group had equal rewards and beta = 0)
        return dict(loss=0.0, policy_loss=0.0, clip_ratio=0.0, divergence=0.0, ratio_mean=1.0, grad_norm=0.0,
                    skipped_nonfinite=0, undone_nonfinite=0, **sizes)
    totals = (counts[3].to(weight.device, torch.float32), counts[0].to(weight.device, torch.float32))
    chunks = _prepare_chunks(traj, weight, pg_rows, advantages, totals, options)
    return {**_inner_steps(policy, optimizer, traj, chunks, options, group, weight.device), **sizes}


def _inner_steps(policy, optimizer, traj: Trajectories, chunks: list[_Chunk], options: UpdateOptions,
                 group: ProcessGroup, device: torch.device) -> dict:
    """The optimizer steps of :func:`update_policy` on prepared chunks; the metrics of the last step, read once."""
    params = [p for p in policy.parameters() if p.requires_grad]
    agree = (lambda kept: group.sum(kept.double().view(1)).squeeze(0) == group.world) if group.world > 1 else None
    had_state = set(optimizer.state)
    policy.train()
    counters = torch.zeros(2, dtype=torch.long, device=device)  # skipped, undone
    for _ in range(options.inner_iters):
        optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(5, dtype=torch.float64, device=device)
        for chunk in chunks:
            sums = sums + _chunk_backward(policy, traj, chunk, options, group.world)
        group.average_gradients(params)
        sums = group.sum(sums)
        grads_ok = finite_flag([p.grad for p in params if p.grad is not None]) & torch.isfinite(sums[0])
        max_norm = options.grad_clip if options.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.zeros(())
        kept = step_where_finite(optimizer, ok=grads_ok, agree=agree)
        optimizer.zero_grad(set_to_none=True)
        counters += torch.stack([~grads_ok, grads_ok & ~kept]).to(counters.device).long()
        grad_norm = torch.where(grads_ok, grad_norm.to(grads_ok.device), torch.full_like(grad_norm, float("nan")))
    policy.eval()
    last = torch.cat([sums.double().cpu(), grad_norm.double().view(1).cpu(), counters.double().cpu()]).tolist()
    if last[6] + last[7] == options.inner_iters:  # no step kept: leave no optimizer state the update created (zeroed)
        drop_new_state(optimizer, had_state)
    return dict(loss=last[0], policy_loss=last[1], clip_ratio=last[2], divergence=last[3], ratio_mean=last[4],
                grad_norm=last[5], skipped_nonfinite=int(last[6]), undone_nonfinite=int(last[7]))


def _chunk_backward(policy, traj: Trajectories, chunk: _Chunk, options: UpdateOptions, world: int) -> torch.Tensor:
    """Backward of this chunk's share of the global loss; returns its shares of the metrics (float64 [5], on the
    device: loss, policy loss, clip ratio, divergence, ratio mean)."""
    beta, temperature = options.beta, options.position_temperature
    scores = policy(traj.hidden[chunk.index], candidates=chunk.candidates, topk_probs=traj.topk_probs[chunk.index])
    new_logp = step_log_probs(scores, chunk.candidates, chunk.chosen, temperature, check=False)
    divergence, seq_term = None, None
    if beta > 0 and options.kl_mode == "exact":
        divergence = options.reference.regularizer(scores, chunk.ref_candidates, chunk.g_ref, temperature)
    elif beta > 0:
        ref_logp = chunk.g_ref.gather(1, chunk.chosen[:, None]).squeeze(1).clamp_min(1e-30).log()
        seq_term = sequence_kl_surrogate(new_logp, ref_logp, chunk.row_local, chunk.rows, old_logp=chunk.old_logp,
                                         check=False).sum()
    loss, m = grpo_loss(new_logp, chunk.old_logp, chunk.advantages, divergence, chunk.weight,
                        clip_eps=options.clip_eps, beta=beta if divergence is not None else 0.0,
                        clip_eps_high=options.clip_eps_high, pg_weight=chunk.pg_weight, totals=chunk.totals)
    if seq_term is not None:  # the per-trajectory KL sums over steps: per-step scale like the exact mode
        loss = loss + beta * seq_term / chunk.totals[1]
        m["divergence"] = seq_term.detach() / chunk.totals[1]
    (loss * world).backward()  # DDP-style gradient averaging divides by world again
    with torch.no_grad():
        parts = [loss, m["policy_loss"], m["clip_ratio"], m["divergence"], m["ratio_mean"]]
        return torch.stack([p.detach().double() for p in parts])
