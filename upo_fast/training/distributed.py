"""The process group that torchrun (or ``accelerate launch``) describes in the environment: rank, world size and
the few collectives the trainer and the lm-evaluation-harness model need (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessGroup:
    """rank / world size of this process; ``world == 1`` means no process group (plain single-process training)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, device: str) -> ProcessGroup:
        """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on GPU)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over processes (a copy on the input's device; the input is left alone). NCCL reduces
        CUDA tensors only, so a CPU tensor (rewards, a flag) travels through this process's GPU there."""
        out = values.clone()
        if self.world == 1:
            return out
        if dist.get_backend() == "nccl" and not out.is_cuda:
            moved = out.to(f"cuda:{self.local_rank}")
            dist.all_reduce(moved)
            return moved.to(values.device)
        dist.all_reduce(out)
        return out

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is True on any: a decision all of them must take at the same step
        (e.g. stopping on a time limit, which each process reads from its own clock)."""
        if self.world == 1:
            return bool(flag)
        return bool(self.sum(torch.tensor([float(flag)], dtype=torch.float64)) > 0)

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if self.world == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])  # one collective instead of one per tensor
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """The ``tensor`` of every process, concatenated along dim 0 in rank order (0-dim tensors as one row)."""
        rows = tensor.reshape(1) if tensor.dim() == 0 else tensor
        if self.world == 1:
            return rows.clone()
        parts = [torch.empty_like(rows) for _ in range(self.world)]
        dist.all_gather(parts, rows.contiguous())
        return torch.cat(parts)

    def gather_object(self, obj, dst: int = 0) -> list | None:
        """Every process's ``obj`` as a list in rank order on ``dst``, None on the others."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world if self.rank == dst else None
        dist.gather_object(obj, out, dst=dst)
        return out


SINGLE_PROCESS = ProcessGroup()  # the group of a plain, single-process run
