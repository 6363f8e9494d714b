"""Losses of UPO's KL-regularized GRPO over unmasking steps.

Shapes: a rollout group is G samples of one prompt, P prompts a batch, so rewards are ``[P, G]``. The steps of all
trajectories are flattened to N rows (padding rows carry weight 0); a row holds the policy's scores over the W
positions of the active region, the candidate mask and the chosen position:

    group_advantages     rewards [P, G] -> advantages [P, G]
    step_log_probs       scores [N, W], candidates [N, W], chosen [N] -> log g(a_n | x_n) [N]
    grpo_loss            per-step [N] log-probs, advantages, divergences, weights -> (loss [], metrics)
    sequence_kl_surrogate per-step [N] log-probs and trajectory ids -> per-trajectory KL surrogate [T]

The reference policies (g_ref, its candidate restriction and its regularizer D_n) are objects in
``upo_fast.training.references``.

Everything runs on CPU or GPU tensors and reads no device value unless a ``check`` flag asks for it.
"""

from __future__ import annotations

import torch

from upo_fast.ops import position_log_softmax


def _check_1d(name: str, x, n: int | None = None, floating: bool = True) -> int:
    if not torch.is_tensor(x) or x.dim() != 1 or (floating and not x.is_floating_point()):
        kind = "floating-point " if floating else ""
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{name} must be a 1-D [N] {kind}tensor, got {got}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name} must have N={n} entries (one per step), got {x.shape[0]}")
    return x.shape[0]


def _check_rewards(rewards) -> torch.Tensor:
    if not torch.is_tensor(rewards) or rewards.dim() != 2 or rewards.shape[1] < 1:
        got = tuple(rewards.shape) if torch.is_tensor(rewards) else type(rewards).__name__
        raise ValueError(f"rewards must be a [P, G] tensor (P prompts, G >= 1 samples each), got {got}")
    return rewards if rewards.is_floating_point() else rewards.float()


def group_advantages(rewards: torch.Tensor, scale_by_std: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """rewards [P, G] -> advantages [P, G]: r - mean over the group, divided by (std + eps) if ``scale_by_std``.

    The std is the population std (no Bessel correction), so a group of one sample gets advantage 0, not NaN.
    Integer or bool rewards are promoted to float32.
    """
    rewards = _check_rewards(rewards)
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps must be > 0, got {eps!r}")
    adv = rewards - rewards.mean(dim=1, keepdim=True)
    if scale_by_std:
        adv = adv / (rewards.std(dim=1, correction=0, keepdim=True) + eps)
    return adv


def zero_std_ratio(rewards: torch.Tensor) -> torch.Tensor:
    """rewards [P, G] -> scalar float32: the fraction of groups whose rewards are all equal. Those groups have zero
    advantage everywhere and teach the policy nothing (only the regularizer acts on them)."""
    rewards = _check_rewards(rewards)
    if rewards.shape[0] == 0:
        return torch.zeros((), dtype=torch.float32, device=rewards.device)
    return (rewards.amax(dim=1) == rewards.amin(dim=1)).float().mean()


def _check_rows(scores, candidates) -> None:
    if not torch.is_tensor(scores) or scores.dim() != 2 or not scores.is_floating_point():
        got = tuple(scores.shape) if torch.is_tensor(scores) else type(scores).__name__
        raise ValueError(f"scores must be a [N, W] floating-point tensor, got {got}")
    if not torch.is_tensor(candidates) or candidates.dtype != torch.bool or candidates.shape != scores.shape:
        got = (candidates.dtype, tuple(candidates.shape)) if torch.is_tensor(candidates) else type(candidates)
        raise ValueError(f"candidates must be a bool tensor of the shape of scores {tuple(scores.shape)}, got {got}")


def step_log_probs(scores: torch.Tensor, candidates: torch.Tensor, chosen: torch.Tensor, temperature: float = 1.0,
                   *, check: bool = True, backend: str = "auto") -> torch.Tensor:
    """scores [N, W], candidates [N, W] bool, chosen [N] int64 -> [N] float32 log g(chosen_n | x_n), where
    g = softmax(scores / temperature) over the candidates. Differentiable w.r.t. ``scores``.

    The temperature must be the one the positions were sampled at, or g_old is not the behavior policy (a defect
    of the paper's code: sampled at 0.8, scored at 1). ``check`` (host syncs) raises a ValueError for a row with no
    candidate or a chosen position that is not a candidate; with ``check=False`` such rows give -inf (give them
    weight 0 in :func:`grpo_loss`). The Triton log-softmax has no backward, so when ``scores`` needs a gradient
    ``backend="auto"`` runs the torch path and ``backend="triton"`` is refused.
    """
    _check_rows(scores, candidates)
    n = _check_1d("chosen", chosen, scores.shape[0], floating=False)
    if chosen.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"chosen must hold int64 positions, got dtype {chosen.dtype}")
    if scores.requires_grad and torch.is_grad_enabled():
        if backend == "triton":
            raise ValueError("backend='triton' has no backward for position_log_softmax; use 'auto' or 'torch'")
        backend = "torch"
    chosen = chosen.long()
    if check and n:
        if not bool(candidates.any(-1).all()):
            raise ValueError("candidates has a row with no candidate: its position distribution is undefined")
        if bool(((chosen < 0) | (chosen >= scores.shape[1])).any()):
            raise ValueError(f"chosen must hold positions in [0, W={scores.shape[1]})")
        if not bool(candidates.gather(1, chosen[:, None]).all()):
            raise ValueError("chosen holds a position that is not a candidate of its row")
    logp = position_log_softmax(scores, candidates, temperature, check=False, backend=backend)  # checked above
    return logp.gather(1, chosen.clamp(0, max(scores.shape[1] - 1, 0))[:, None]).squeeze(1)


def _weights(weight, n: int, like: torch.Tensor) -> torch.Tensor:
    if weight is None:
        return torch.ones(n, dtype=like.dtype, device=like.device)
    _check_1d("weight", weight, n, floating=False)
    return weight.to(like.dtype)


def grpo_loss(new_logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
              divergence: torch.Tensor | None = None, weight: torch.Tensor | None = None, *, clip_eps: float = 0.2,
              beta: float = 0.0, clip_eps_high: float | None = None, pg_weight: torch.Tensor | None = None,
              totals: tuple[torch.Tensor, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-level clipped surrogate with a reference regularizer; all inputs [N] (one entry per step).

        loss = -sum_n v_n min(rho_n A_n, clip(rho_n, 1 - eps, 1 + eps_high) A_n) / sum_n v_n
               + beta * sum_n w_n D_n / sum_n w_n,            rho_n = exp(new_logp_n - old_logp_n)

    with v = ``pg_weight`` (default: w). A step with v_n = 0 < w_n counts in the regularizer only: the steps of a
    group whose rewards are all equal carry no advantage, yet the regularizer must still hold them near the
    reference. ``totals`` = (pg, divergence) replaces the two denominators, e.g. by the global step counts when
    these N steps are one chunk of a larger batch (then the returned loss and metrics are this chunk's shares).

    new_logp: log g_phi(a_n | x_n) (differentiable); old_logp: log g_old at the same action, recorded during the
    rollout (a constant: detached); advantages: A of the step's trajectory (a constant); divergence: D_n
    (differentiable; may be None when beta == 0); weight: >= 0, 0 on padding steps (default all 1). Entries with
    weight 0 are replaced by 0 before any arithmetic, so -inf / NaN there reach neither the loss nor the gradient.
    beta == 0 skips the divergence entirely. clip_eps_high: the upper clip (default clip_eps; "clip-higher").

    Returns (loss scalar, metrics) where metrics are detached scalar tensors (no host sync): ``policy_loss``,
    ``clip_ratio`` (weighted fraction of steps whose gradient the clip removed), ``ratio_mean``, ``divergence``
    (weighted mean of D, 0 without it). All are 0 when every weight is 0.
    """
    n = _check_1d("new_logp", new_logp)
    _check_1d("old_logp", old_logp, n)
    _check_1d("advantages", advantages, n)
    if divergence is not None:
        _check_1d("divergence", divergence, n)
    if not (isinstance(clip_eps, (int, float)) and 0 < clip_eps < 1):
        raise ValueError(f"clip_eps must be in (0, 1), got {clip_eps!r}")
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    if not (isinstance(eps_high, (int, float)) and eps_high > 0):
        raise ValueError(f"clip_eps_high must be > 0 or None, got {clip_eps_high!r}")
    if not (isinstance(beta, (int, float)) and beta >= 0):
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    if beta > 0 and divergence is None:
        raise ValueError("beta > 0 needs divergence (the per-step regularizer D_n)")

    w = _weights(weight, n, new_logp)
    valid = w > 0
    zero = torch.zeros_like(new_logp)
    v = w if pg_weight is None else torch.where(valid, _weights(pg_weight, n, new_logp), zero)
    # torch.where (not w * x) so padding's -inf / NaN cannot turn into NaN through 0 * inf, in value or gradient
    new = torch.where(valid, new_logp, zero)
    old = torch.where(valid, old_logp.detach().to(new.dtype), zero)
    adv = torch.where(valid, advantages.detach().to(new.dtype), zero)
    pg_total, div_total = (v.sum(), w.sum()) if totals is None else totals
    pg_denom, div_denom = (torch.where(t > 0, t, torch.ones_like(t))  # no weight at all: every term is 0
                           for t in (torch.as_tensor(x, dtype=new.dtype, device=new.device)
                                     for x in (pg_total, div_total)))

    rho = torch.exp(new - old)
    surrogate = torch.minimum(rho * adv, rho.clamp(1 - clip_eps, 1 + eps_high) * adv)
    policy_loss = -(v * surrogate).sum() / pg_denom
    loss = policy_loss
    div_mean = torch.zeros((), dtype=new.dtype, device=new.device)
    if divergence is not None:
        div = torch.where(valid, divergence.to(new.dtype), zero)
        div_mean = (w * div).sum() / div_denom
        if beta > 0:
            loss = loss + beta * div_mean

    with torch.no_grad():
        clipped = ((rho < 1 - clip_eps) & (adv < 0)) | ((rho > 1 + eps_high) & (adv > 0))
        metrics = {
            "policy_loss": policy_loss.detach(),
            "clip_ratio": (v * clipped.to(v.dtype)).sum() / pg_denom,
            "ratio_mean": (v * rho).sum() / pg_denom,
            "divergence": div_mean.detach(),
        }
    return loss, metrics


def sequence_kl_surrogate(new_logp: torch.Tensor, ref_logp: torch.Tensor, trajectory: torch.Tensor,
                          num_trajectories: int, weight: torch.Tensor | None = None,
                          old_logp: torch.Tensor | None = None, *, check: bool = True) -> torch.Tensor:
    """Per-trajectory surrogate [T] of the sequence-level KL(G_phi || G_ref), the paper's score-function option.

    Inputs [N], one entry per step: new_logp = log g_phi(a_n | x_n) (differentiable), ref_logp = log g_ref(a_n | x_n)
    at the sampled action (e.g. ``log reference.gather(1, chosen[:, None])``), trajectory = the step's trajectory id
    in [0, T), weight > 0 marks real steps (only as a mask: a sequence log-probability is an unweighted sum),
    old_logp = log g_old(a_n | x_n) of the behavior policy that sampled the steps (default: new_logp detached,
    i.e. on-policy).

    The MDM's transitions do not depend on phi, so the trajectory log-ratio is R = sum_n (new_logp_n - ref_logp_n)
    and KL = E_{tau ~ G_phi}[R]. With L = sum_n new_logp_n and L_old = sum_n old_logp_n, this returns

        S_t = exp(L_t - L_old_t) * R_t

    an importance-weighted estimate with E_{tau ~ G_old}[S] = KL(G_phi || G_ref) and
    E_{tau ~ G_old}[grad S] = grad KL, exactly. On-policy (old = new) S_t = R_t in value and
    grad S_t = R_t grad L_t + grad R_t: the score-function term plus sum_n grad log g_phi(a_n), which has zero
    mean and is kept because it is part of the exact gradient. Use ``beta * S.mean()`` as the regularizer (with
    grpo_loss's own beta at 0). The importance weight is a product over a whole trajectory and can be large once
    phi moves away from g_old: keep the number of inner iterations small.

    ref_logp must be finite on real steps, so this pairs with the softmax_confidence and topk references (with
    topk the actions lie inside the top K); with the one-hot max_confidence reference use grpo_loss's CE term.
    ``check`` (a host sync) raises a ValueError for non-finite ref_logp on real steps or ids outside [0, T).
    """
    n = _check_1d("new_logp", new_logp)
    _check_1d("ref_logp", ref_logp, n)
    _check_1d("trajectory", trajectory, n, floating=False)
    if trajectory.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"trajectory must hold int64 trajectory ids, got dtype {trajectory.dtype}")
    if isinstance(num_trajectories, bool) or not isinstance(num_trajectories, int) or num_trajectories < 1:
        raise ValueError(f"num_trajectories must be an int >= 1, got {num_trajectories!r}")
    if old_logp is not None:
        _check_1d("old_logp", old_logp, n)
    valid = _weights(weight, n, new_logp) > 0
    if check and n:
        if bool(((trajectory < 0) | (trajectory >= num_trajectories)).any()):
            raise ValueError(f"trajectory must hold ids in [0, num_trajectories={num_trajectories})")
        if not bool(torch.isfinite(ref_logp[valid]).all()):
            raise ValueError("ref_logp is not finite on a real step: the sequence KL is infinite (a one-hot "
                             "reference? use the CE regularizer of grpo_loss instead)")

    zero = torch.zeros_like(new_logp)
    new = torch.where(valid, new_logp, zero)
    ref = torch.where(valid, ref_logp.detach().to(new.dtype), zero)
    old = new.detach() if old_logp is None else torch.where(valid, old_logp.detach().to(new.dtype), zero)
    index = trajectory.long()

    def per_trajectory(x: torch.Tensor) -> torch.Tensor:  # [N] -> [T] sums (differentiable, no host sync)
        return torch.zeros(num_trajectories, dtype=x.dtype, device=x.device).index_add(0, index, x)

    log_ratio_old = per_trajectory(new) - per_trajectory(old)  # L - L_old
    return torch.exp(log_ratio_old) * per_trajectory(new - ref)


__all__ = ["group_advantages", "zero_std_ratio", "step_log_probs", "grpo_loss", "sequence_kl_surrogate"]
