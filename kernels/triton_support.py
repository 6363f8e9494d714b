"""What every kernel file needs around its Triton code: whether Triton can run here, the backend choice of the
public ops, the launch target the launchers pick their tiles for, the input checks their launchers share, the
deferred ``triton.jit`` decoration of every file's kernels (``deferred_kernels``), and the ``@triton.jit`` helpers
several kernels call (Gumbel noise, the running top-K merge), so that they cannot drift apart. Triton itself is
imported only where a kernel launches."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import types
from collections.abc import Callable
from typing import Any, NamedTuple

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


class LaunchTarget(NamedTuple):
    """What a launcher picks its launch configuration for. ``gpu``: the CUDA configuration (tile sizes, dot dtypes,
    V splits for ``sm_count`` multiprocessors) instead of the interpreter's small tiles; ``interpreter``: the kernel
    runs in triton's interpreter, whose bf16/fp16 ``tl.dot`` is wrong (triton 3.9), so dots run on fp32 copies of
    the inputs there (bf16/fp16 products are exact in fp32: the GPU's MMA computes the same sums)."""
    gpu: bool
    sm_count: int
    interpreter: bool


_forced_target: LaunchTarget | None = None


def launch_target(device: torch.device) -> LaunchTarget:
    """The target of a launch on ``device``: CUDA tensors -> the GPU; CPU tensors -> the interpreter, unless
    ``force_launch_target`` says otherwise (the compile check, and the tests that run the CUDA configuration in
    the interpreter)."""
    if device.type == "cuda":
        return LaunchTarget(True, torch.cuda.get_device_properties(device).multi_processor_count, False)
    return _forced_target or LaunchTarget(False, 1, True)


@contextlib.contextmanager
def force_launch_target(target: LaunchTarget):
    """Launches on CPU tensors use ``target`` inside the block. ``interpreter=False`` is only meaningful with a
    stand-in triton driver that compiles without launching (``upo_fast.kernels.compile_check``)."""
    global _forced_target
    previous, _forced_target = _forced_target, target
    try:
        yield target
    finally:
        _forced_target = previous


def require_runnable(device: torch.device, reference: str) -> None:
    """Triton on CPU tensors only runs in the interpreter (or compiles for a stand-in GPU target); say so instead
    of failing inside triton."""
    if device.type == "cpu" and _forced_target is not None and not _forced_target.interpreter:
        return
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


# ----------------------------------------------------------------------------------------------------------------
# Deferred Triton. A kernel file imports without triton (the CPU sampler imports it for the reference, and macOS has
# no triton): its kernels are plain functions whose global `tl` (and the shared helpers they call) is a None
# placeholder until the first launch. Kernels are decorated with triton.jit then, once per TRITON_INTERPRET value,
# because triton decides between compiling and interpreting when it decorates.
# ----------------------------------------------------------------------------------------------------------------
def deferred_kernels(*shared: str) -> Callable[[Callable], Callable[[], Any]]:
    """Decorates a kernel file's ``define(triton)``, which applies ``triton.jit`` to the file's kernels and returns
    them (one kernel, or a namespace of several). The result is ``jitted()``: on its first call per TRITON_INTERPRET
    value it imports triton, binds ``tl`` and the ``shared`` helpers of this file (``"gumbel_scores"``,
    ``"merge_topk"``) as globals of ``define``'s module (triton resolves the names in a kernel by its module's
    globals), runs ``define`` and caches what it returns. The module declares those names as None placeholders."""
    unknown = set(shared) - set(_SHARED_HELPERS)
    if unknown:
        raise ValueError(f"no shared triton helper named {', '.join(sorted(unknown))}; known: {_SHARED_HELPERS}")

    def wrap(define: Callable) -> Callable[[], Any]:
        module_globals = define.__globals__

        @functools.cache
        def for_mode(interpret: bool):
            import triton
            import triton.language

            module_globals["tl"] = triton.language
            if shared:
                helpers = device_helpers()
                for name in shared:
                    module_globals[name] = getattr(helpers, name)
            return define(triton)

        @functools.wraps(define)
        def jitted():
            return for_mode(triton_interpreting())

        return jitted

    return wrap


# Shared device helpers, decorated like the kernels; a kernel file names those it calls in its `deferred_kernels`
tl = None
_SHARED_HELPERS = ("gumbel_scores", "merge_topk")


def _gumbel_scores(x, seed, counter, temperature):
    """Gumbel-max keys ``x - T log E`` with E ~ Exp(1) drawn by Philox from (seed, counter): the argmax is a sample
    of softmax(x / T) (the same order as x / T + Gumbel, without overflow at tiny T). Keyed by a counter, not a
    stream, so a draw is independent of the tiling, the grid and which other rows are selected."""
    bits = tl.randint(seed, counter)
    v = (bits.to(tl.float32) + 0.5) * 2.3283064365386963e-10  # uniform in (0, 1], fine near 0
    w = 1.0 - v
    # E = -log(1 - v), via the log1p trick: exact near v = 0, where the Gumbel tail lives
    expo = tl.where(w == 1.0, v, -tl.log(w) * (v / tl.where(w == 1.0, 1.0, 1.0 - w)))
    return x - temperature * tl.log(expo)


def _merge_topk(top, xe, lane, slot, K: tl.constexpr):
    """top [R, K_PAD]: each row's running top-K (descending, -inf padded); xe [R, BLOCK]: this tile's candidates at
    lanes ``lane``. Returns the top-K of both by K rounds of max-extraction, each removing the extracted entry
    from its source (-1 matches no lane or slot)."""
    merged = tl.full(top.shape, float("-inf"), tl.float32)
    for i in tl.static_range(K):
        ta, ia = tl.max(top, axis=1, return_indices=True)
        tb, ib = tl.max(xe, axis=1, return_indices=True)
        from_tile = tb > ta
        merged = tl.where(slot[None, :] == i, tl.maximum(ta, tb)[:, None], merged)
        xe = tl.where(lane[None, :] == tl.where(from_tile, ib, -1)[:, None], float("-inf"), xe)
        top = tl.where(slot[None, :] == tl.where(from_tile, -1, ia)[:, None], float("-inf"), top)
    return merged


@deferred_kernels()
def device_helpers(triton) -> types.SimpleNamespace:
    """The shared helpers as triton functions (per TRITON_INTERPRET value, like the kernels)."""
    return types.SimpleNamespace(gumbel_scores=triton.jit(_gumbel_scores), merge_topk=triton.jit(_merge_topk))
