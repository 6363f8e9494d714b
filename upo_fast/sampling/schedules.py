"""Unmasking schedules: how many positions each step commits. Computed before the step loop, so that a step never
has to ask the device how many masks are left; the factor rule of parallel unmasking adds commits on the device."""

from __future__ import annotations

import torch


def llada_block_counts(num_masked: int, steps: int) -> list[int]:
    """LLaDA's linear schedule: ``num_masked // steps`` per step, the remainder spread over the first steps."""
    base, remainder = divmod(num_masked, steps)
    return [base + (1 if i < remainder else 0) for i in range(steps)]


def row_counts(num_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """The same linear schedule per row, on the device: [B] mask counts -> [B, steps] int64 counts."""
    base = torch.div(num_masked, steps, rounding_mode="floor")
    remainder = num_masked - base * steps
    step_index = torch.arange(steps, device=num_masked.device)
    return base[:, None] + (step_index[None, :] < remainder[:, None]).long()


def dream_timesteps(steps: int, eps: float, device) -> torch.Tensor:
    """Dream's timesteps ``linspace(1, eps, steps + 1)``, made on the sampling device, as the reference makes
    them (linspace is not bitwise the same on every device, and the transfer counts depend on its float32 values)."""
    return torch.linspace(1, eps, steps + 1, device=device)


def factor_select(scores: torch.Tensor, candidates: torch.Tensor, confidence: torch.Tensor,
                  factor: float) -> torch.Tensor:
    """[B, W] bool: the factor rule of parallel unmasking (Fast-dLLM's, along the scorer's order). Walking the
    candidates by descending score, the n-th one (1-based) is committed while (n + 1) * (1 - its confidence) <
    ``factor`` holds for it and every earlier one; the caller adds the scorer's own pick (at least one a step)."""
    keys = scores.float().masked_fill(~candidates, float("-inf"))
    order = keys.argsort(dim=-1, descending=True, stable=True)
    conf = torch.where(candidates, confidence.float(), torch.zeros_like(confidence, dtype=torch.float32))
    conf = conf.gather(1, order)
    n = torch.arange(1, keys.shape[-1] + 1, device=keys.device, dtype=torch.float32)
    ok = ((n + 1) * (1 - conf) < factor) & candidates.gather(1, order)
    prefix = ok.to(torch.int8).cumprod(-1).bool()
    return torch.zeros_like(candidates).scatter(1, order, prefix)
