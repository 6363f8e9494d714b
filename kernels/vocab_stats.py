"""Per-row statistics of a token distribution, computed in one pass over the vocabulary.

Shapes: ``logits`` is ``[R, V]`` (or ``[B, L, V]``, flattened to ``[B*L, V]``); ``rows`` optionally picks the flat
rows that matter (the masked positions of the active block) so the other rows are never read. Every statistic is
per selected row:

    token          [N] int64    argmax at temperature 0, else a Gumbel-max sample at that temperature
    confidence     [N] float32  softmax probability of ``token`` (at temperature 1, as LLaDA and Dream use it)
    margin         [N] float32  top-1 minus top-2 probability
    entropy        [N] float32  -sum p log p
    topk_probs     [N, k] f32   the k largest probabilities, descending, ``exclude`` ids left out (normalization
                                still over the whole vocabulary)
    ref_logsumexp  [N] float32  log sum_v exp(p_v / ref_tau): the log of the softmax-confidence reference weight

This file holds the fused Triton kernel with its launcher, ``vocab_stats_triton`` (fp32 accumulation, an online
softmax over BLOCK_V tiles, one program per row), and the pure-PyTorch reference, ``vocab_stats_ref``, that the CPU
path runs and the tests compare against. The public entry point choosing between them is ``upo_fast.ops``.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from upo_fast.kernels.triton_support import (
    check_flat_rows,
    deferred_kernels,
    id_tensor,
    require_runnable,
    seed_tensor,
    triton_next_pow2,
)
from upo_fast.validation import check_finite


class VocabStats(NamedTuple):
    token: torch.Tensor
    confidence: torch.Tensor
    margin: torch.Tensor
    entropy: torch.Tensor
    topk_probs: torch.Tensor
    ref_logsumexp: torch.Tensor


def _check_and_flatten(logits: torch.Tensor, rows: torch.Tensor | None, topk: int, temperature: float,
                       ref_tau: float) -> torch.Tensor:
    if not torch.is_tensor(logits) or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got {type(logits).__name__}")
    if logits.dim() not in (2, 3):
        raise ValueError(f"logits must be [R, V] or [B, L, V], got shape {tuple(logits.shape)}")
    flat = logits.reshape(-1, logits.shape[-1])
    vocab = flat.shape[-1]
    if not isinstance(topk, int) or isinstance(topk, bool) or not 1 <= topk <= vocab:
        raise ValueError(f"topk must be in [1, V={vocab}], got {topk}")
    check_finite(temperature, "temperature", low=0)
    check_finite(ref_tau, "ref_tau", low=0, low_inclusive=False)
    if rows is not None:
        if rows.dim() != 1 or rows.dtype not in (torch.int32, torch.int64):
            raise ValueError("rows must be a 1-D integer tensor of flat row indices")
        flat = flat.index_select(0, rows.to(device=flat.device, dtype=torch.int64))
    return flat


def gumbel_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gumbel noise of ``x``'s shape in float64 (low-precision Gumbel noise biases the samples)."""
    u = torch.rand(x.shape, dtype=torch.float64, device=x.device, generator=generator)
    # clamp away from 0 so that -log(-log u) stays finite
    return -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float64).tiny)))


def vocab_stats_ref(logits: torch.Tensor, rows: torch.Tensor | None = None, *, topk: int = 8,
                    temperature: float = 0.0, generator: torch.Generator | None = None,
                    suppress: torch.Tensor | list[int] | None = None,
                    exclude: torch.Tensor | list[int] | None = None, ref_tau: float = 0.05,
                    need_ref: bool = True, features: bool = True) -> VocabStats:
    """Reference statistics in fp32 (fp64 for the Gumbel sample). See the module docstring for shapes.
    ``need_ref=False`` skips ``ref_logsumexp`` (NaN then, as the kernel leaves it): a pass over V that only the
    softmax-confidence reference reads. ``features=False`` skips margin, entropy and the top-k probabilities (NaN):
    on the CPU each is another pass over V, which the token and its confidence (all that max-confidence and the
    commit rules read) do not need; the kernels compute everything in their one pass.

    ``suppress`` token ids are set to -inf before anything else (they can be neither chosen nor counted).
    Rows whose logits are all -inf (after suppression) yield token 0 and NaN statistics; callers that can meet
    such rows check for them (the samplers turn them into a ValueError).
    """
    flat = _check_and_flatten(logits, rows, topk, temperature, ref_tau).float()
    if suppress is not None:
        flat = flat.clone()
        flat[:, torch.as_tensor(suppress, device=flat.device, dtype=torch.long)] = float("-inf")
    logp = torch.log_softmax(flat, dim=-1)
    if temperature == 0:
        token = flat.argmax(dim=-1)
    else:
        noisy = flat.double() / temperature + gumbel_like(flat, generator)
        token = noisy.argmax(dim=-1)
    confidence = logp.gather(-1, token[:, None]).squeeze(-1).exp()  # = probs.gather(...): exp is elementwise
    probs = logp.exp() if features or need_ref else None
    nan = torch.full_like(confidence, float("nan"))
    if features:
        margin, entropy, topk_probs = _features_ref(probs, logp, topk, exclude)
    else:
        margin, entropy, topk_probs = nan, nan.clone(), nan[:, None].expand(-1, topk).contiguous()
    ref_logsumexp = torch.logsumexp(probs / ref_tau, dim=-1) if need_ref else nan.clone()
    return VocabStats(token, confidence, margin, entropy, topk_probs, ref_logsumexp)


def _features_ref(probs, logp, topk: int, exclude):
    """(margin, entropy, top-k probabilities with the ``exclude`` ids left out) of each row."""
    top2 = probs.topk(min(2, probs.shape[-1]), dim=-1).values
    margin = top2[:, 0] - top2[:, 1] if top2.shape[-1] > 1 else top2[:, 0]
    # 0 * log 0 is taken as 0: where p == 0, log p is -inf (a suppressed token) or finite (an underflow), and
    # clamping it to the lowest finite value makes the product 0 in both cases (the same sum, one pass fewer)
    entropy = -(probs * logp.clamp_min(torch.finfo(logp.dtype).min)).sum(-1)
    if exclude is not None:
        kept = probs.clone()
        kept[:, torch.as_tensor(exclude, device=probs.device, dtype=torch.long)] = -1.0
        return margin, entropy, kept.topk(topk, dim=-1).values.clamp_min(0.0)
    return margin, entropy, probs.topk(topk, dim=-1).values


# ----------------------------------------------------------------------------------------------------------------
# Triton kernel, decorated on the first launch (triton_support.deferred_kernels: this file imports without triton).
# ----------------------------------------------------------------------------------------------------------------
tl = gumbel_scores = merge_topk = None  # bound by _jitted (merge_topk, gumbel_scores: triton_support's helpers)


def _vocab_stats_kernel(logits_ptr, rows_ptr, suppress_ptr, exclude_ptr,
                        token_ptr, conf_ptr, margin_ptr, entropy_ptr, topk_ptr, ref_ptr,
                        V, L, stride_b, stride_l, n_suppress, n_exclude, temperature, inv_tau, seed_ptr,
                        HAS_ROWS: tl.constexpr, SAMPLE: tl.constexpr, NEED_REF: tl.constexpr,
                        K: tl.constexpr, K_PAD: tl.constexpr, BLOCK_V: tl.constexpr):
    """One program per selected row; pass 1 streams the row once in BLOCK_V tiles with an online softmax."""
    pid = tl.program_id(0)
    if HAS_ROWS:
        row = tl.load(rows_ptr + pid).to(tl.int64)
    else:
        row = pid.to(tl.int64)
    # [B, L, V] with any row strides: the flat row r is (r // L, r % L); a 2-D input passes L = R, stride_b = 0
    base = logits_ptr + (row // L) * stride_b + (row % L) * stride_l
    lane = tl.arange(0, BLOCK_V)
    slot = tl.arange(0, K_PAD)
    NEG = float("-inf")

    m = tl.full((), NEG, tl.float32)  # running max logit
    z = tl.zeros((), tl.float32)  # sum exp(l - m)
    t = tl.zeros((), tl.float32)  # sum exp(l - m) * (l - m): entropy = log z - t / z, no cancellation against m
    second = tl.full((), NEG, tl.float32)  # second largest logit (a tied maximum counts twice, like topk)
    tok = tl.zeros((), tl.int32)  # stays 0 on an all -inf row: comparisons below are strict
    best = tl.full((), NEG, tl.float32)  # best Gumbel score so far (SAMPLE)
    tok_logit = tl.full((), NEG, tl.float32)  # logit of the sampled token (SAMPLE)
    top = tl.full((K_PAD,), NEG, tl.float32)  # running top-K logits with `exclude` left out, descending
    if SAMPLE:
        seed = tl.load(seed_ptr)  # from memory, not an argument: a CUDA graph replays with the current seed
    for start in range(0, V, BLOCK_V):
        offs = start + lane
        x = tl.load(base + offs, mask=offs < V, other=NEG).to(tl.float32)
        for j in range(n_suppress):  # few ids: one compare per id and tile is cheaper than a lookup table
            x = tl.where(offs == tl.load(suppress_ptr + j), NEG, x)
        t1, i1 = tl.max(x, axis=0, return_indices=True)  # ties: first index, like torch.argmax
        t2 = tl.max(tl.where(lane == i1, NEG, x), axis=0)
        if not SAMPLE:
            tok = tl.where(t1 > m, start + i1, tok)
        second = tl.maximum(tl.minimum(m, t1), tl.maximum(second, t2))
        m_new = tl.maximum(m, t1)
        shift = tl.where(m_new > NEG, m_new, 0.0)  # all -inf so far: any finite shift keeps every term at 0
        alpha = tl.exp(m - shift)
        e = tl.exp(x - shift)
        t = alpha * (t + tl.where(m > NEG, m - shift, 0.0) * z) + tl.sum(e * tl.where(x > NEG, x - shift, 0.0), 0)
        z = alpha * z + tl.sum(e, axis=0)
        m = m_new
        if SAMPLE:
            # Gumbel-max keyed by (seed, flat row, token id), shared with fused_head.py and position_select.py
            score = gumbel_scores(x, seed, row * V + offs, temperature)
            s1, si = tl.max(score, axis=0, return_indices=True)
            hit = s1 > best
            tok = tl.where(hit, start + si, tok)
            tok_logit = tl.where(hit, tl.max(tl.where(lane == si, x, NEG), axis=0), tok_logit)
            best = tl.maximum(best, s1)
        xe = x
        for j in range(n_exclude):
            xe = tl.where(offs == tl.load(exclude_ptr + j), NEG, xe)
        kth = tl.min(tl.where(slot < K, top, float("inf")), axis=0)
        if tl.max(xe, axis=0) > kth:  # most tiles of a long row cannot enter the top-K: skip the merge
            # the fused head's merge on a tile of one row
            top = tl.reshape(merge_topk(top[None, :], xe[None, :], lane, slot, K), (K_PAD,))

    valid = m > NEG  # an all -inf row gets token 0 and NaN statistics, like the reference
    nan = float("nan")
    if SAMPLE:
        conf = tl.exp(tok_logit - m) / z
    else:
        conf = 1.0 / z
    tl.store(token_ptr + pid, tok.to(tl.int64))
    tl.store(conf_ptr + pid, tl.where(valid, conf, nan))
    tl.store(margin_ptr + pid, tl.where(valid, (1.0 - tl.exp(second - m)) / z, nan))
    tl.store(entropy_ptr + pid, tl.where(valid, tl.log(z) - t / z, nan))
    tl.store(topk_ptr + pid * K + slot, tl.where(valid, tl.exp(top - m) / z, nan), mask=slot < K)

    ref = tl.full((), nan, tl.float32)
    if NEED_REF:
        # Pass 2: sum_v exp(p_v / tau) needs the final m and z, so the row is read a second time. The largest
        # term, p_max / tau = 1 / (z tau), is known exactly and factored out so that a small tau cannot overflow.
        pmax = 1.0 / z
        acc = tl.zeros((), tl.float32)
        for start in range(0, V, BLOCK_V):
            offs = start + lane
            x = tl.load(base + offs, mask=offs < V, other=NEG).to(tl.float32)
            for j in range(n_suppress):
                x = tl.where(offs == tl.load(suppress_ptr + j), NEG, x)
            p = tl.exp(x - m) / z
            acc += tl.sum(tl.where(offs < V, tl.exp((p - pmax) * inv_tau), 0.0), axis=0)
        ref = tl.where(valid, pmax * inv_tau + tl.log(acc), nan)
    tl.store(ref_ptr + pid, ref)


MAX_TOPK = 16  # the kernel keeps the running top-k in registers
# fp32 limits of the kernels (the references take any finite value): T * log(noise) stays finite up to T ~ 1e37;
# above ~1e30 the Gumbel noise swamps any logit gap anyway, so the sampler passes min(T, MAX_TEMPERATURE). 1/ref_tau
# must stay finite in fp32.
MAX_TEMPERATURE = 1e30
MIN_REF_TAU = 1e-30
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@deferred_kernels("gumbel_scores", "merge_topk")
def _jitted(triton):
    return triton.jit(_vocab_stats_kernel)


def vocab_stats_triton(logits: torch.Tensor, rows: torch.Tensor | None = None, *, topk: int = 8,
                       temperature: float = 0.0, seed: int | torch.Tensor | None = None,
                       suppress: torch.Tensor | list[int] | None = None,
                       exclude: torch.Tensor | list[int] | None = None, ref_tau: float = 0.05,
                       need_ref: bool = True, check_rows: bool = True, block_v: int | None = None) -> VocabStats:
    """Fused statistics of ``logits`` [R, V] or [B, L, V] (fp16/bf16/fp32/fp64, any row strides) for the flat rows
    ``rows`` [N] (default: all R = B*L rows), same outputs as ``vocab_stats_ref`` (see the module docstring).

    - temperature > 0 samples by Gumbel-max with triton's Philox keyed by (``seed``, flat row, token id), so a row's
      token depends neither on ``block_v`` nor on which other rows are selected. ``seed`` is an int, a [1] int64
      tensor on the device (read by the kernel: what a CUDA graph needs), or None (drawn from torch's global CPU
      generator on the host; no device sync). The Gumbel noise is fp32 from 32 random bits: its upper tail is cut
      at ~22.9 (probability ~1e-10 per token).
    - ``need_ref=False`` skips the second pass over V that ``ref_logsumexp`` needs (it then holds NaN).
    - ``check_rows`` checks ``rows`` and tensor ``suppress``/``exclude`` ids against their ranges: a device sync;
      switch it off inside CUDA graphs or hot loops once the indices are known to be valid.
    - ``block_v`` (a power of two >= 16) sets the tile width; the default is min(next_pow2(V), 1024).
    - A row with every logit -inf (after ``suppress``) gets token 0 and NaN statistics, like the reference; a NaN
      logit makes the row's statistics NaN (through the sum z) and its token some id in [0, V).
    CPU tensors run in triton's interpreter, which needs TRITON_INTERPRET=1 set before triton is first imported.
    """
    if not torch.is_tensor(logits) or logits.dtype not in _FLOAT_DTYPES:
        got = logits.dtype if torch.is_tensor(logits) else type(logits).__name__
        raise ValueError(f"logits must be a float16/bfloat16/float32/float64 tensor, got {got}")
    if logits.dim() not in (2, 3):
        raise ValueError(f"logits must be [R, V] or [B, L, V], got shape {tuple(logits.shape)}")
    vocab, n_flat = logits.shape[-1], logits.shape[:-1].numel()
    if vocab < 1 or n_flat < 1:
        raise ValueError(f"logits must hold at least one row and one vocabulary entry, got {tuple(logits.shape)}")
    check_stat_options(topk, vocab, temperature, ref_tau)
    if block_v is not None and (block_v < 16 or block_v & (block_v - 1)):
        raise ValueError(f"block_v must be a power of two >= 16, got {block_v}")
    device = logits.device
    require_runnable(device, "vocab_stats_ref")
    check_flat_rows(rows, device, n_flat, "logits", check_rows)
    sup, n_sup = id_tensor(suppress, "suppress", vocab, device, check_rows)
    exc, n_exc = id_tensor(exclude, "exclude", vocab, device, check_rows)
    sample = temperature > 0
    seed_t = seed_tensor(seed, device) if sample else sup  # a placeholder the kernel never reads
    block = block_v or min(max(triton_next_pow2(vocab), 16), 1024)
    return VocabStats(*torch.ops.upo_fast.vocab_stats(
        logits, rows, sup, exc, seed_t, n_sup, n_exc, topk, float(temperature), float(ref_tau), need_ref, block))


# Registered with torch.library so that torch.compile traces through the launch (as one opaque op with a fake
# implementation for shapes) and CUDA-graph capture sees plain kernel launches. Inputs arrive checked.
@torch.library.custom_op("upo_fast::vocab_stats", mutates_args=())
def _vocab_stats_op(logits: torch.Tensor, rows: torch.Tensor | None, suppress: torch.Tensor, exclude: torch.Tensor,
                    seed: torch.Tensor, n_suppress: int, n_exclude: int, topk: int, temperature: float,
                    ref_tau: float, need_ref: bool, block_v: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                       torch.Tensor, torch.Tensor, torch.Tensor]:
    out = empty_stats(logits, rows, topk)
    if logits.stride(-1) != 1:  # rows may be strided, entries inside a row must not be
        logits = logits.contiguous()
    n_flat = logits.shape[:-1].numel()
    if logits.dim() == 2:
        length, stride_b, stride_l = n_flat, 0, logits.stride(0)
    else:
        length, stride_b, stride_l = logits.shape[1], logits.stride(0), logits.stride(1)
    sample = temperature > 0
    kernel = _jitted()
    with torch.cuda.device(logits.device) if logits.is_cuda else contextlib.nullcontext():
        kernel[(out[0].numel(),)](logits, out[0] if rows is None else rows, suppress, exclude, *out,
                                  logits.shape[-1], length, stride_b, stride_l, n_suppress, n_exclude,
                                  max(temperature, 1e-30) if sample else 0.0,  # 1e-30: T must not round to 0 in fp32
                                  1.0 / ref_tau, seed, HAS_ROWS=rows is not None, SAMPLE=sample, NEED_REF=need_ref,
                                  K=topk, K_PAD=max(2, triton_next_pow2(topk)), BLOCK_V=block_v,
                                  num_warps=4 if block_v <= 1024 else 8)
    return tuple(out)


def check_stat_options(topk, vocab: int, temperature, ref_tau) -> None:
    """The option checks both Triton launchers (vocab_stats, fused_head_stats) share."""
    if not isinstance(topk, int) or not 1 <= topk <= min(vocab, MAX_TOPK):
        raise ValueError(f"topk must be an int in [1, min(V={vocab}, {MAX_TOPK})], got {topk!r}")
    # The kernels compute in fp32: T * log(noise) and 1 / ref_tau must stay finite there
    check_finite(temperature, "temperature", low=0, high=MAX_TEMPERATURE)
    check_finite(ref_tau, "ref_tau", low=MIN_REF_TAU)


def empty_stats(logits, rows, topk):
    """Output tensors of the statistics ops for the flat rows of ``logits`` (or of hidden states: same leading
    shape); also their fake implementation under torch.compile."""
    n = logits.shape[:-1].numel() if rows is None else rows.shape[0]
    f32 = dict(dtype=torch.float32, device=logits.device)
    return (torch.empty(n, dtype=torch.int64, device=logits.device), torch.empty(n, **f32), torch.empty(n, **f32),
            torch.empty(n, **f32), torch.empty(n, topk, **f32), torch.empty(n, **f32))


@_vocab_stats_op.register_fake
def _(logits, rows, suppress, exclude, seed, n_suppress, n_exclude, topk, temperature, ref_tau, need_ref, block_v):
    return empty_stats(logits, rows, topk)
