"""Public entry points of the token-statistics ops, choosing between the Triton kernels and the references.
Importing this module registers the Triton paths as ``torch.ops.upo_fast.*`` (torch.library custom ops).

``import upo_fast.ops`` works without triton (macOS): triton is imported only when a Triton backend runs.
"""

from __future__ import annotations

import torch

from upo_fast.kernels.fused_head import fused_head_stats_ref, fused_head_stats_triton
from upo_fast.kernels.triton_support import BACKENDS, triton_available, use_triton
from upo_fast.kernels.vocab_stats import MAX_TOPK, VocabStats, vocab_stats_ref, vocab_stats_triton
from upo_fast.validation import check_finite


def _route(backend, x, topk, temperature, seed, generator):
    """(use the kernel?, seed, generator) for the statistics ops: the kernel takes a seed, the reference a
    generator; whichever the caller gave is turned into what the chosen path needs."""
    if seed is not None and generator is not None:
        raise ValueError("pass seed or generator, not both")
    check_finite(temperature, "temperature", low=0)  # before `temperature > 0` below; the paths check the rest
    device = x.device if torch.is_tensor(x) else torch.device("cpu")
    if use_triton(backend, device, supported=topk <= MAX_TOPK):
        if temperature > 0 and seed is None and generator is not None:
            seed = int(torch.randint(0, 2**31 - 1, (), generator=generator, device=generator.device).item())
        return True, seed, None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(int(seed))
    return False, None, generator


def vocab_stats(logits: torch.Tensor, rows: torch.Tensor | None = None, *, topk: int = 8,
                temperature: float = 0.0, seed: int | None = None, generator: torch.Generator | None = None,
                suppress: torch.Tensor | list[int] | None = None, exclude: torch.Tensor | list[int] | None = None,
                ref_tau: float = 0.05, need_ref: bool = True, features: bool = True, check: bool = True,
                backend: str = "auto") -> VocabStats:
    """Per-row token statistics of ``logits`` [R, V] or [B, L, V] for the flat rows ``rows`` [N] (default all):
    token [N], confidence [N], margin [N], entropy [N], topk_probs [N, topk], ref_logsumexp [N]
    (see ``upo_fast.kernels.vocab_stats``; ``need_ref=False``: ``ref_logsumexp`` is NaN, one pass over V fewer;
    ``features=False``: margin, entropy and topk_probs may be NaN, which saves the reference three passes over V).

    backend: "torch" runs the reference; "triton" the fused kernel (CUDA tensors, or CPU tensors in triton's
    interpreter when TRITON_INTERPRET=1 was set before triton was first imported; else a ValueError); "auto" picks
    Triton for CUDA tensors when triton is installed and topk <= 16, else the reference.

    Sampling (temperature > 0) takes ``seed`` or ``generator``, not both. The two backends use different random
    streams: the same seed gives reproducible but backend-dependent tokens. With ``generator`` the Triton backend
    draws its seed from it on the host (a device sync if the generator lives on the GPU); with neither it draws
    from torch's global CPU generator. ``seed`` may be a [1] int64 device tensor (read by the kernel; the reference
    reads it on the host). ``check=False`` skips the range checks of ``rows`` and tensor ids that read the device.
    """
    kernel, seed, generator = _route(backend, logits, topk, temperature, seed, generator)
    if kernel:
        return vocab_stats_triton(logits, rows, topk=topk, temperature=temperature, seed=seed, suppress=suppress,
                                  exclude=exclude, ref_tau=ref_tau, need_ref=need_ref, check_rows=check)
    return vocab_stats_ref(logits, rows, topk=topk, temperature=temperature, generator=generator,
                           suppress=suppress, exclude=exclude, ref_tau=ref_tau, need_ref=need_ref, features=features)


def fused_head_stats(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                     rows: torch.Tensor | None = None, logit_scale: float = 1.0, topk: int = 8,
                     temperature: float = 0.0, seed: int | None = None, generator: torch.Generator | None = None,
                     suppress: torch.Tensor | list[int] | None = None,
                     exclude: torch.Tensor | list[int] | None = None, ref_tau: float = 0.05,
                     need_ref: bool = True, features: bool = True, check: bool = True,
                     backend: str = "auto") -> VocabStats:
    """``vocab_stats`` of the logits ``(hidden @ weight.T + bias) * logit_scale`` without materializing them
    (``hidden`` [R, d] or [B, L, d] with flat ``rows``, ``weight`` [V, d], ``bias`` [V]); see
    ``upo_fast.kernels.fused_head``. Backends, seeds and generators follow ``vocab_stats``; ``need_ref=False``
    skips what ``ref_logsumexp`` costs (the kernel's second matmul, the reference's pass over V; it is then NaN);
    ``features`` and ``check`` as in ``vocab_stats``.
    """
    kernel, seed, generator = _route(backend, hidden, topk, temperature, seed, generator)
    if kernel:
        return fused_head_stats_triton(hidden, weight, bias, rows=rows, logit_scale=logit_scale, topk=topk,
                                       temperature=temperature, seed=seed, suppress=suppress, exclude=exclude,
                                       ref_tau=ref_tau, need_ref=need_ref, check_rows=check)
    return fused_head_stats_ref(hidden, weight, bias, rows=rows, logit_scale=logit_scale, topk=topk,
                                temperature=temperature, generator=generator, suppress=suppress, exclude=exclude,
                                ref_tau=ref_tau, need_ref=need_ref, features=features)


# Position ops over per-position scores [B, L] (selection, reference distributions, KL / CE); each takes
# backend="auto" | "triton" | "torch" with the same rule as above. They live with their kernels.
from upo_fast.kernels.policy_divergence import policy_divergence, reference_distribution  # noqa: E402
from upo_fast.kernels.position_select import position_log_softmax, select_positions, topk_candidates  # noqa: E402

__all__ = ["vocab_stats", "fused_head_stats", "position_log_softmax", "select_positions", "topk_candidates",
           "reference_distribution", "policy_divergence", "BACKENDS", "triton_available"]
