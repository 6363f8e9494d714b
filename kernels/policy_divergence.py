"""The UPO regularizer over the positions of one block: reference distributions g_ref and the divergence between
the policy g = softmax(scores / T) over the candidates and g_ref, on the ``[B, L]`` layout of
``position_select.py`` (whose conventions hold here too).

    reference_distribution  [B, L] f32   g_ref: max_confidence, softmax_confidence or topk
    policy_divergence       [B] f32      KL(g || g_ref) or CE(g_ref, g), differentiable w.r.t. the scores

A row with no candidate with a finite score has no distribution: its KL is 0, its CE is 0 if the reference is zero
on the row's candidates (+inf otherwise), with zero gradients. Pure-PyTorch ``<op>_ref`` beside Triton kernels
registered with ``torch.library``; the divergence's backward is a Triton kernel too (``register_autograd``).
"""

from __future__ import annotations

import types

import torch

from upo_fast.kernels.position_select import (
    _check_K,
    _check_rows,
    _check_temperature,
    _log_softmax_rows,
    _masked_logits,
    as_bytes,
    launch_rows,
    topk_candidates,
    topk_candidates_ref,
)
from upo_fast.kernels.triton_support import deferred_kernels, use_triton

REFERENCE_KINDS = ("max_confidence", "softmax_confidence", "topk")
DIVERGENCES = ("kl", "ce")

def _uniform(mask: torch.Tensor) -> torch.Tensor:
    return mask.float() / mask.sum(-1, keepdim=True).clamp_min(1)


def reference_distribution_ref(kind: str, candidates, *, confidence=None, ref_logsumexp=None, K=None):
    _check_kind(kind, candidates, confidence, ref_logsumexp, K)
    if kind == "softmax_confidence":
        return _log_softmax_rows(_masked_logits(ref_logsumexp, candidates, 1.0)).exp().float()
    if kind == "topk":
        return _uniform(topk_candidates_ref(confidence, candidates, K))
    c = _masked_logits(confidence, candidates, 1.0)
    return _uniform(candidates & (c == c.amax(-1, keepdim=True)))  # exact ties share the mass


def policy_divergence_ref(scores, candidates, reference, kind: str = "kl", temperature: float = 1.0):
    """[B] KL(g || reference) or CE = -sum r log g, g = softmax(scores / T) over the candidates; differentiable
    w.r.t. ``scores`` by autograd (the reference is a constant). fp64 scores are computed in fp64."""
    _check_divergence(scores, candidates, reference, kind, temperature)
    logg = _log_softmax_rows(_masked_logits(scores, candidates, temperature))
    r = reference.detach().to(logg.dtype)
    if kind == "ce":
        return -torch.where(r > 0, r * logg, torch.zeros_like(r)).sum(-1)
    g = logg.exp()
    pos = g > 0  # terms with g = 0 are 0; written so that no 0 * inf reaches the autograd graph
    zero = torch.zeros_like(g)
    logr = torch.where(pos, r.log(), zero)
    return torch.where(pos, g * (torch.where(pos, logg, zero) - logr), zero).sum(-1)


def _check_kind(kind, candidates, confidence, ref_logsumexp, K) -> None:
    if kind not in REFERENCE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, REFERENCE_KINDS))}, got {kind!r}")
    needed = "ref_logsumexp" if kind == "softmax_confidence" else "confidence"
    values = ref_logsumexp if kind == "softmax_confidence" else confidence
    if values is None:
        raise ValueError(f"kind={kind!r} needs {needed}")
    _check_rows(values, candidates, needed)
    if kind == "topk":
        _check_K(K)


def _check_divergence(scores, candidates, reference, kind, temperature) -> None:
    _check_rows(scores, candidates)
    if kind not in DIVERGENCES:
        raise ValueError(f"kind must be one of {', '.join(map(repr, DIVERGENCES))}, got {kind!r}")
    if not torch.is_tensor(reference) or not reference.is_floating_point() or reference.shape != scores.shape:
        got = tuple(reference.shape) if torch.is_tensor(reference) else type(reference).__name__
        raise ValueError(f"reference must be a floating-point tensor of the shape of scores, got {got}")
    if reference.device != scores.device:
        raise ValueError(f"reference is on {reference.device} but scores is on {scores.device}")
    _check_temperature(temperature)


# Triton kernels, one program per row, decorated on the first launch (triton_support.deferred_kernels).
tl = None


def _refdist_kernel(L, v_ptr, c_ptr, out_ptr, MODE: tl.constexpr, BLOCK_L: tl.constexpr):
    """MODE 0: one-hot on the max (ties share); 1: softmax; 2: uniform over the candidates."""
    NEG = float("-inf")
    base = tl.program_id(0).to(tl.int64) * L
    offs = tl.arange(0, BLOCK_L)
    cand = tl.load(c_ptr + base + offs, mask=offs < L, other=0) != 0
    x = tl.where(cand, tl.load(v_ptr + base + offs, mask=offs < L, other=0.0).to(tl.float32), NEG)
    m = tl.max(x, axis=0)
    if MODE == 1:
        w = tl.exp(x - tl.where(m > NEG, m, 0.0))
    elif MODE == 0:
        w = (cand & (x == m)).to(tl.float32)
    else:
        w = cand.to(tl.float32)
    total = tl.sum(w, axis=0)
    tl.store(out_ptr + base + offs, w / tl.where(total > 0, total, 1.0), mask=offs < L)


def _divergence_kernel(L, s_ptr, c_ptr, r_ptr, div_ptr, gout_ptr, grad_ptr, temperature,
                       KL: tl.constexpr, BACKWARD: tl.constexpr, BLOCK_L: tl.constexpr):
    """Forward: div[row]. Backward: grad = gout[row] / T * (KL: g (log g - log r - KL); CE: g sum(r) - r)."""
    NEG = float("-inf")
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_L)
    inb = offs < L
    cand = tl.load(c_ptr + row * L + offs, mask=inb, other=0) != 0
    x = tl.where(cand, tl.load(s_ptr + row * L + offs, mask=inb, other=0.0).to(tl.float32) / temperature, NEG)
    r = tl.load(r_ptr + row * L + offs, mask=inb, other=0.0).to(tl.float32)
    m = tl.max(x, axis=0)
    shift = tl.where(m > NEG, m, 0.0)
    e = tl.exp(x - shift)
    z = tl.sum(e, axis=0)
    g = e / tl.where(z > 0, z, 1.0)
    logg = tl.where(x > NEG, x - shift - tl.log(z), NEG)
    if KL:
        logr = tl.log(tl.where(g > 0, r, 1.0))
        dlog = tl.where(g > 0, logg, 0.0) - logr
        if BACKWARD:
            div = tl.load(div_ptr + row)
            grad = tl.where(g > 0, g * (dlog - div), 0.0)
        else:
            div = tl.sum(tl.where(g > 0, g * dlog, 0.0), axis=0)
    else:
        if BACKWARD:
            total = tl.sum(tl.where(cand, r, 0.0), axis=0)
            grad = tl.where(cand, g * total - r, 0.0)
        else:
            div = -tl.sum(tl.where(r > 0, r * logg, 0.0), axis=0)
    if BACKWARD:
        tl.store(grad_ptr + row * L + offs, grad * (tl.load(gout_ptr + row).to(tl.float32) / temperature), mask=inb)
    else:
        tl.store(div_ptr + row, div)


@deferred_kernels()
def _jitted(triton):
    return types.SimpleNamespace(refdist=triton.jit(_refdist_kernel), divergence=triton.jit(_divergence_kernel))


@torch.library.custom_op("upo_fast::reference_distribution", mutates_args=())
def _refdist_op(values: torch.Tensor, candidates: torch.Tensor, mode: int) -> torch.Tensor:
    out = torch.empty(values.shape, dtype=torch.float32, device=values.device)
    launch_rows(_jitted().refdist, values, values.contiguous(), as_bytes(candidates), out, MODE=mode)
    return out


@_refdist_op.register_fake
def _(values, candidates, mode):
    return torch.empty(values.shape, dtype=torch.float32, device=values.device)


@torch.library.custom_op("upo_fast::policy_divergence", mutates_args=())
def _divergence_op(scores: torch.Tensor, candidates: torch.Tensor, reference: torch.Tensor, kl: bool,
                   temperature: float) -> torch.Tensor:
    out = torch.empty(scores.shape[:1], dtype=torch.float32, device=scores.device)
    launch_rows(_jitted().divergence, scores, scores.contiguous(), as_bytes(candidates),
                reference.contiguous(), out, out, out, temperature, KL=kl, BACKWARD=False)
    return out


@_divergence_op.register_fake
def _(scores, candidates, reference, kl, temperature):
    return torch.empty(scores.shape[:1], dtype=torch.float32, device=scores.device)


@torch.library.custom_op("upo_fast::policy_divergence_backward", mutates_args=())
def _divergence_backward_op(scores: torch.Tensor, candidates: torch.Tensor, reference: torch.Tensor,
                            divergence: torch.Tensor, grad_out: torch.Tensor, kl: bool,
                            temperature: float) -> torch.Tensor:
    grad = torch.empty(scores.shape, dtype=torch.float32, device=scores.device)
    launch_rows(_jitted().divergence, scores, scores.contiguous(), as_bytes(candidates),
                reference.contiguous(), divergence.contiguous(), grad_out.float().contiguous(), grad, temperature,
                KL=kl, BACKWARD=True)
    return grad.to(scores.dtype)


@_divergence_backward_op.register_fake
def _(scores, candidates, reference, divergence, grad_out, kl, temperature):
    return torch.empty(scores.shape, dtype=scores.dtype, device=scores.device)


def _setup_context(ctx, inputs, output):
    scores, candidates, reference, kl, temperature = inputs
    ctx.save_for_backward(scores, candidates, reference, output)
    ctx.kl, ctx.temperature = kl, temperature


def _backward(ctx, grad_out):
    scores, candidates, reference, divergence = ctx.saved_tensors
    grad = torch.ops.upo_fast.policy_divergence_backward(scores, candidates, reference, divergence, grad_out, ctx.kl,
                                                         ctx.temperature)
    return grad, None, None, None, None


_divergence_op.register_autograd(_backward, setup_context=_setup_context)


def reference_distribution(kind: str, candidates, *, confidence=None, ref_logsumexp=None, K=None,
                           backend: str = "auto") -> torch.Tensor:
    """[B, L] float32 reference distribution g_ref over the candidates (zero elsewhere and on empty rows):
    "max_confidence" one-hot on the most confident candidate (exact ties share the mass), "softmax_confidence"
    softmax of ``ref_logsumexp``, "topk" uniform over ``topk_candidates(confidence, candidates, K)``."""
    _check_kind(kind, candidates, confidence, ref_logsumexp, K)
    values = ref_logsumexp if kind == "softmax_confidence" else confidence
    if not use_triton(backend, values.device):
        return reference_distribution_ref(kind, candidates, confidence=confidence, ref_logsumexp=ref_logsumexp, K=K)
    if kind == "topk":
        candidates = topk_candidates(confidence, candidates, K, backend="triton")
    return torch.ops.upo_fast.reference_distribution(values, candidates, REFERENCE_KINDS.index(kind))


def policy_divergence(scores, candidates, reference, kind: str = "kl", temperature: float = 1.0, *,
                      backend: str = "auto") -> torch.Tensor:
    """[B] divergence per row between g = softmax(scores / temperature) over the candidates and ``reference``
    [B, L]: "kl" = KL(g || r) = sum_a g_a (log g_a - log r_a) (terms with g_a = 0 are 0; +inf where r_a = 0 < g_a,
    so restrict the candidates to the top-K for the topk reference), "ce" = -sum_a r_a log g_a (+inf where r_a > 0
    = g_a). Differentiable w.r.t. ``scores`` (not ``reference``, a constant): d/ds_a = g_a / T (log g_a - log r_a -
    KL) for KL and (g_a sum_c r_c - r_a) / T for CE (sum over the candidates). The Triton path is a registered
    op whose backward is a Triton kernel; the torch path is autograd of the reference. float32 output (float64 for
    float64 scores on the torch path)."""
    _check_divergence(scores, candidates, reference, kind, temperature)
    if not use_triton(backend, scores.device):
        return policy_divergence_ref(scores, candidates, reference, kind, temperature)
    return torch.ops.upo_fast.policy_divergence(scores, candidates, reference.detach(), kind == "kl",
                                                float(temperature))
