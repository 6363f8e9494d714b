"""What the steps of one sampling call write (:class:`StepState`): preallocated device tensors updated in place, which
CUDA-graph capture (``upo_fast.sampling.cuda_graphs``) saves and restores field by field."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from upo_fast.kernels.triton_support import seed_tensor


@dataclass(frozen=True)
class StepState:
    """What the steps of one call write: preallocated device tensors, updated in place and never re-assigned
    (frozen), since a captured CUDA graph replays into the addresses it saw at capture. Capture saves and restores
    every tensor field (``snapshot`` / ``restore`` list them from the dataclass), so a buffer added here is covered
    without another edit."""

    x: torch.Tensor  # [B, L] token ids, their masks filled step by step
    row_steps: torch.Tensor  # [B] forwards in which a row still had a candidate (unmask's return_steps)
    # the non-finite checks, recorded on the device (a host read per step would stall the loop), read by finish():
    step_index: torch.Tensor  # () steps taken over the whole call
    bad_step: torch.Tensor  # () first step with non-finite logits at a candidate, -1 = never
    policy_bad_step: torch.Tensor  # () first step with non-finite policy scores at a candidate, -1 = never
    # the Triton path's Philox seeds ([1] int64), advanced in place by each step so a graph replay draws fresh
    # noise; None on the reference path, which draws from the torch generator instead
    token_seed: torch.Tensor | None = None
    position_seed: torch.Tensor | None = None

    @classmethod
    def start(cls, x: torch.Tensor, *, seeds: bool, generator=None) -> StepState:
        """The state of a call filling ``x`` (used in place); seeds: draw the two Philox seeds from ``generator``
        (token seed first), one host draw each, here rather than inside a step."""
        def counter(value: int) -> torch.Tensor:
            return torch.full((), value, dtype=torch.long, device=x.device)

        drawn = {}
        if seeds:
            drawn = {name: seed_tensor(None, x.device, generator) for name in ("token_seed", "position_seed")}
        return cls(x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device), counter(0), counter(-1),
                   counter(-1), **drawn)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every field that holds a tensor, by name (found from the dataclass, not a list kept by hand)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if torch.is_tensor(getattr(self, f.name))}

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {name: t.clone() for name, t in self.tensors().items()}

    def restore(self, saved: dict[str, torch.Tensor]) -> None:
        """Write ``saved`` (a ``snapshot``) back in place: the buffers keep their addresses for the graphs."""
        for name, t in self.tensors().items():
            t.copy_(saved[name])
