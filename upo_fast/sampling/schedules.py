"""Unmasking schedules: how many positions each step commits. Computed before the step loop, so that a step never
has to ask the device how many masks are left."""

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
