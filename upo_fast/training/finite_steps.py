"""The optimizer step kept only where it leaves finite parameters, decided on the device (no host read inside a
step): the non-finite guard of both trainers (MDM pretraining, the UPO update)."""

from __future__ import annotations

import copy

import torch


def finite_flag(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A 0-dim bool tensor: True when no tensor holds NaN or inf. One reduction per tensor on their device and
    no host read (``bool()`` of the result is the one read)."""
    flags = [torch.isfinite(t.detach()).all() for t in tensors if t.is_floating_point() or t.is_complex()]
    if not flags:
        return torch.tensor(True)
    return torch.stack([f.to(flags[0].device) for f in flags]).all()


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """True when no tensor holds NaN or inf (one host read in all)."""
    return bool(finite_flag(tensors))


def step_where_finite(optimizer, ok: torch.Tensor | None = None, agree=None) -> torch.Tensor:
    """``optimizer.step()``, kept only where it is safe, decided on the device: no host read (CUDA-graph and
    overlap friendly). Returns a 0-dim bool tensor, True when the step was kept.

    The step is undone (parameters and tensor optimizer state put back with ``torch.where``) when ``ok`` (e.g.
    "the loss and the gradients were finite") is False or when it leaves a NaN or inf in a parameter.
    ``agree(kept) -> kept`` makes several processes take the same decision (an all-reduce of the flag). Optimizer
    state that did not exist before the step is zeroed when undone, which for AdamW is the same as no state.
    Parameters and state are copied before every step, so this suits small models (the policy, TinyMDM).
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    before = [p.detach().clone() for p in params]
    state = {p: {k: v.clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in optimizer.state[p].items()}
             for p in params if p in optimizer.state}
    optimizer.step()
    kept = finite_flag(params)
    if ok is not None:
        kept = kept & ok.to(kept.device)
    if agree is not None:
        kept = agree(kept)
    on_host = None  # read at most once, only for state that lives elsewhere (e.g. AdamW's CPU step count)
    with torch.no_grad():
        for p, saved in zip(params, before):
            p.copy_(torch.where(kept.to(p.device), p, saved))
        for p in params:
            for key, value in optimizer.state.get(p, {}).items():
                old = state.get(p, {}).get(key)
                if torch.is_tensor(value) and value.device == kept.device:
                    value.copy_(torch.where(kept, value, old if old is not None else torch.zeros_like(value)))
                    continue
                on_host = bool(kept) if on_host is None else on_host
                if not on_host:
                    fresh = torch.zeros_like(value) if torch.is_tensor(value) else value
                    optimizer.state[p][key] = old if old is not None else fresh
    return kept


def step_if_finite(optimizer, agree=None) -> bool:
    """:func:`step_where_finite` with one host read: returns whether the step was kept, and an undone first step
    leaves no optimizer state behind. ``agree(ok: bool tensor) -> bool tensor`` as there."""
    had_state = set(optimizer.state)
    kept = bool(step_where_finite(optimizer, agree=agree))
    if not kept:
        drop_new_state(optimizer, had_state)
    return kept


def drop_new_state(optimizer, had_state: set) -> None:
    """Forget the optimizer state of parameters that had none in ``had_state`` (after undone steps only: the
    state :func:`step_where_finite` zeroed, so that nothing shows a step that was never kept)."""
    for p in [p for p in optimizer.state if p not in had_state]:
        optimizer.state.pop(p)
