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
    """Dream's timesteps ``linspace(1, eps, steps + 1)``, made on the sampling device (linspace is not bitwise
    the same on every device) and returned on the host."""
    return torch.linspace(1, eps, steps + 1, device=device).cpu()


def dream_counts(num_masked_per_row: int, batch: int, timesteps: torch.Tensor) -> list[int]:
    """Dream's transfer counts when every row holds the same number of masks.

    The reference computes ``int(mask_index.sum() / B * (1 - s / t))`` in float32 each step (all remaining masks
    on the last step); replaying those float32 operations on the host gives the same integers without a sync.
    """
    steps = timesteps.numel() - 1
    remaining = num_masked_per_row
    counts = []
    for i in range(steps):
        mean = torch.tensor(remaining * batch, dtype=torch.int64) / batch  # float32, like the reference
        if i < steps - 1:
            k = int(mean * (1 - timesteps[i + 1] / timesteps[i]))
        else:
            k = int(mean)
        k = min(k, remaining)
        counts.append(k)
        remaining -= k
    return counts
