"""What every kernel file needs around its Triton code: whether Triton can run here, the backend choice of the
public ops, and the input checks their launchers share. Triton itself is imported only where a kernel launches."""

from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("auto", "triton", "torch")


def triton_available() -> bool:
    """Whether triton is installed (found, not imported: importing it is slow)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a blocked or half-removed triton
        return False


def triton_interpreting() -> bool:
    """True when TRITON_INTERPRET asks triton to run kernels on the CPU (numpy) instead of compiling them."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes", "y")


def interpreter_ready() -> bool:
    """Whether triton's own library (tl.max, tl.randint, ...) can run in the interpreter in this process: only if
    TRITON_INTERPRET was set before triton.language was first imported (torch._dynamo, which transformers
    loads, imports it)."""
    import triton.language

    return type(triton.language.zeros).__name__ == "InterpretedFunction"


def triton_next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def require_runnable(device: torch.device, reference: str) -> None:
    """Triton on CPU tensors only runs in the interpreter; say so instead of failing inside triton."""
    if device.type == "cpu" and not (triton_interpreting() and interpreter_ready()):
        raise ValueError("Triton on CPU tensors needs TRITON_INTERPRET=1 set before triton is first imported (torch."
                         f"_dynamo imports it); use {reference} or backend='auto' instead")


def use_triton(backend: str, device: torch.device, supported: bool = True) -> bool:
    """The backend rule of the public ops: "torch" -> the reference; "triton" -> the kernel (an error if it cannot
    run here); "auto" -> the kernel for CUDA tensors when triton is installed and the call is ``supported``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if backend == "triton":
        if not triton_available():
            raise ValueError("backend='triton' needs the triton package (pip install triton; Linux only)")
        require_runnable(device, "backend='torch'")
        return True
    return backend == "auto" and device.type == "cuda" and supported and triton_available()


def check_flat_rows(rows, device: torch.device, n_flat: int, source: str, check: bool) -> None:
    """rows: None or a non-empty 1-D int tensor of flat row indices of ``source`` on ``device``. The range check
    reads the device, so it runs only when ``check``."""
    if rows is None:
        return
    if not torch.is_tensor(rows) or rows.dim() != 1 or rows.dtype not in (torch.int32, torch.int64):
        raise ValueError("rows must be a 1-D int32/int64 tensor of flat row indices")
    if rows.device != device:
        raise ValueError(f"rows is on {rows.device} but {source} is on {device}")
    if rows.numel() == 0:
        raise ValueError("rows is empty: select at least one row")
    if check and bool(((rows < 0) | (rows >= n_flat)).any()):
        raise ValueError(f"rows holds indices outside [0, {n_flat}) (the flat rows of {source})")


def id_tensor(ids, name: str, vocab: int, device: torch.device, check: bool) -> tuple[torch.Tensor, int]:
    """Token ids [S] as int32 on ``device``, and S; ids must be in [0, V) (tensors are checked only when ``check``,
    lists always). No ids gives a one-element placeholder that kernels never read (S = 0)."""
    if ids is None:
        return torch.full((1,), -1, dtype=torch.int32, device=device), 0
    if torch.is_tensor(ids):
        if ids.dtype not in (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64) or ids.dim() > 1:
            raise ValueError(f"{name} must be a list or a 0-D/1-D integer tensor of token ids, got {ids.dtype} "
                             f"of shape {tuple(ids.shape)}")
        out = ids.to(device=device, dtype=torch.int32).reshape(-1)
        bad = check and out.numel() > 0 and bool(((out < 0) | (out >= vocab)).any())
    else:
        values = [int(i) for i in ids]
        bad = any(not 0 <= i < vocab for i in values)
        out = torch.tensor(values, dtype=torch.int32, device=device)
    if bad:
        raise ValueError(f"{name} holds token ids outside the vocabulary [0, {vocab})")
    if out.numel() == 0:
        return torch.full((1,), -1, dtype=torch.int32, device=device), 0
    return out, out.numel()


def seed_tensor(seed, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """The kernels' Philox seed as a [1] int64 tensor on ``device``: kernels read it from memory, so a sampling loop
    can keep one seed tensor on the GPU and advance it in place (no host value baked into a CUDA graph).

    seed: an int (copied to the device), a 1-element int64 tensor on ``device`` (used as is, not read), or None (a
    fresh seed drawn on the host from ``generator`` or torch's global CPU generator; a device sync only if
    ``generator`` lives on the GPU)."""
    if torch.is_tensor(seed):
        if seed.dtype != torch.int64 or seed.numel() != 1 or seed.device != device:
            raise ValueError(f"seed must be an int or a 1-element int64 tensor on {device}, got {seed.dtype} "
                             f"of shape {tuple(seed.shape)} on {seed.device}")
        return seed.reshape(1)
    if seed is None:
        gen_device = generator.device if generator is not None else "cpu"
        seed = int(torch.randint(0, 2**31 - 1, (), generator=generator, device=gen_device).item())
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int or a 1-element int64 tensor, got {type(seed).__name__}")
    return torch.tensor([seed % 2**63], dtype=torch.int64, device=device)
