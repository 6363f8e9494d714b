"""Token statistics straight from hidden states and the LM head, without writing the [R, V] logits.

``fused_head_stats(hidden, weight, bias)`` returns the same ``VocabStats`` as ``vocab_stats`` applied to
``logits = (hidden @ weight.T + bias) * logit_scale``: ``hidden`` is [R, d] (or [B, L, d] with flat ``rows``),
``weight`` the head in nn.Linear layout [V, d] (tied or untied), ``bias`` [V] or None.

Triton plan (``fused_head_stats_triton``):
  1. stats kernel, grid (row tiles of BLOCK_R, V splits): each program walks its V range in BLOCK_V tiles, computes
     the tile's logits with tl.dot over BLOCK_D slices of d (fp32 accumulation), and folds them into per-row
     online-softmax states (max, sum-exp, entropy accumulator, argmax or Gumbel winner and its logit, top-2,
     running top-k logits) that it writes to small fp32 buffers [.., splits, N].
  2. a torch combine (a handful of [splits, N] reductions, no host sync) merges the splits into the final
     statistics.
  3. ``ref_logsumexp`` needs the final max and normalizer of every row, so the same kernel runs a second time
     (REF_PASS) recomputing each tile's logits: this doubles the matmul FLOPs. ``need_ref=False`` skips it.
Memory traffic is the weight (read once per row tile, shared through L2 by the programs of one split) and the
hidden rows; nothing of size [R, V] is stored.

The pure-PyTorch reference ``fused_head_stats_ref`` materializes the fp32 logits and runs ``vocab_stats_ref``.
"""

from __future__ import annotations

import contextlib

import torch

from upo_fast.kernels.triton_support import (
    check_flat_rows,
    deferred_kernels,
    id_tensor,
    launch_target,
    require_runnable,
    seed_tensor,
    triton_next_pow2,
)
from upo_fast.kernels.vocab_stats import VocabStats, check_stat_options, empty_stats, vocab_stats_ref

_DOT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def head_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                rows: torch.Tensor | None = None, logit_scale: float = 1.0) -> torch.Tensor:
    """The fp32 logits [N, V] that the fused op never materializes: ``(hidden @ weight.T + bias) * logit_scale``."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    if rows is not None:
        flat = flat.index_select(0, rows.to(device=flat.device, dtype=torch.int64))
    logits = flat.float() @ weight.float().t()
    if bias is not None:
        logits = logits + bias.float()
    return logits * logit_scale


def fused_head_stats_ref(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                         rows: torch.Tensor | None = None, logit_scale: float = 1.0, topk: int = 8,
                         temperature: float = 0.0, generator: torch.Generator | None = None,
                         suppress: torch.Tensor | list[int] | None = None,
                         exclude: torch.Tensor | list[int] | None = None, ref_tau: float = 0.05,
                         need_ref: bool = True, features: bool = True) -> VocabStats:
    """``vocab_stats_ref`` on the materialized fp32 logits of the selected rows."""
    logits = head_logits(hidden, weight, bias, rows, logit_scale)
    return vocab_stats_ref(logits, topk=topk, temperature=temperature, generator=generator, suppress=suppress,
                           exclude=exclude, ref_tau=ref_tau, need_ref=need_ref, features=features)


# ----------------------------------------------------------------------------------------------------------------
# Triton kernel, decorated on the first launch (triton_support.deferred_kernels: this file imports without triton).
# ----------------------------------------------------------------------------------------------------------------
tl = gumbel_scores = merge_topk = None  # bound by _jitted (merge_topk, gumbel_scores: triton_support's helpers)


def _fused_head_kernel(h_ptr, w_ptr, b_ptr, rows_ptr, sup_ptr, exc_ptr, part_ptr, tok_ptr, top_ptr, mz_ptr, acc_ptr,
                       N, V, D, L, s_hb, s_hl, s_hd, s_wv, s_wd, chunk, n_sup, n_exc,
                       scale, temperature, inv_tau, seed_ptr,
                       HAS_ROWS: tl.constexpr, HAS_BIAS: tl.constexpr, SAMPLE: tl.constexpr, REF_PASS: tl.constexpr,
                       IEEE: tl.constexpr, DOT_F32: tl.constexpr, K: tl.constexpr, K_PAD: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program (row tile, V split): online statistics of BLOCK_R rows over V range [split*chunk, +chunk)."""
    pid_r = tl.program_id(0)
    split = tl.program_id(1)
    n_split = tl.num_programs(1)
    NEG = float("-inf")
    r_local = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r_local < N
    if HAS_ROWS:
        row = tl.load(rows_ptr + r_local, mask=r_ok, other=0).to(tl.int64)
    else:
        row = r_local.to(tl.int64)
    h_base = (row // L) * s_hb + (row % L) * s_hl  # [B, L, d] with any strides; 2-D passes L = R, s_hb = 0
    lane = tl.arange(0, BLOCK_V)
    dd = tl.arange(0, BLOCK_D)
    slot = tl.arange(0, K_PAD)

    m = tl.full((BLOCK_R,), NEG, tl.float32)  # running max logit
    z = tl.zeros((BLOCK_R,), tl.float32)  # sum exp(l - m)
    t = tl.zeros((BLOCK_R,), tl.float32)  # sum exp(l - m) * (l - m)
    second = tl.full((BLOCK_R,), NEG, tl.float32)  # second largest logit (a tied maximum counts twice)
    tok = tl.zeros((BLOCK_R,), tl.int32)
    best = tl.full((BLOCK_R,), NEG, tl.float32)  # best Gumbel score (SAMPLE)
    tok_logit = tl.full((BLOCK_R,), NEG, tl.float32)  # logit of the sampled token (SAMPLE)
    top = tl.full((BLOCK_R, K_PAD), NEG, tl.float32)  # running top-K logits, `exclude` left out, descending
    if REF_PASS:
        big_m = tl.load(mz_ptr + r_local, mask=r_ok, other=0.0)
        big_z = tl.load(mz_ptr + N + r_local, mask=r_ok, other=1.0)
        pmax = 1.0 / big_z
    ref_acc = tl.zeros((BLOCK_R,), tl.float32)
    if SAMPLE:
        seed = tl.load(seed_ptr)  # from memory (see vocab_stats.py)

    v_lo = split * chunk
    v_hi = tl.minimum(v_lo + chunk, V)
    for start in range(v_lo, v_hi, BLOCK_V):
        offs = start + lane
        v_ok = offs < v_hi
        acc = tl.zeros((BLOCK_R, BLOCK_V), tl.float32)
        for k0 in range(0, D, BLOCK_D):
            kk = k0 + dd
            a = tl.load(h_ptr + h_base[:, None] + kk[None, :] * s_hd, mask=r_ok[:, None] & (kk < D)[None, :],
                        other=0.0)
            b = tl.load(w_ptr + offs[None, :].to(tl.int64) * s_wv + kk[:, None] * s_wd,
                        mask=(kk < D)[:, None] & v_ok[None, :], other=0.0)
            if DOT_F32:  # the interpreter's bf16 tl.dot is wrong (triton 3.9); bf16 products are exact in fp32
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            if IEEE:  # fp32 inputs: tl.dot would default to tf32 on GPUs, ~1e-3 relative error
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
        x = acc
        if HAS_BIAS:
            x += tl.load(b_ptr + offs, mask=v_ok, other=0.0).to(tl.float32)[None, :]
        x = tl.where(v_ok[None, :], x * scale, NEG)
        for j in range(n_sup):
            x = tl.where(offs[None, :] == tl.load(sup_ptr + j), NEG, x)
        if REF_PASS:
            p = tl.exp(x - big_m[:, None]) / big_z[:, None]
            ref_acc += tl.sum(tl.where(v_ok[None, :], tl.exp((p - pmax[:, None]) * inv_tau), 0.0), axis=1)
        else:
            t1, i1 = tl.max(x, axis=1, return_indices=True)  # ties: first index, like torch.argmax
            t2 = tl.max(tl.where(lane[None, :] == i1[:, None], NEG, x), axis=1)
            if not SAMPLE:
                tok = tl.where(t1 > m, start + i1, tok)
            second = tl.maximum(tl.minimum(m, t1), tl.maximum(second, t2))
            m_new = tl.maximum(m, t1)
            shift = tl.where(m_new > NEG, m_new, 0.0)
            alpha = tl.exp(m - shift)
            e = tl.exp(x - shift[:, None])
            t = alpha * (t + tl.where(m > NEG, m - shift, 0.0) * z) + tl.sum(
                e * tl.where(x > NEG, x - shift[:, None], 0.0), axis=1)
            z = alpha * z + tl.sum(e, axis=1)
            m = m_new
            if SAMPLE:
                # the same counter-based Gumbel as vocab_stats_triton, keyed by (seed, flat row, token id), so both
                # ops draw the same token from the same logits
                score = gumbel_scores(x, seed, row[:, None] * V + offs[None, :], temperature)
                s1, si = tl.max(score, axis=1, return_indices=True)
                hit = s1 > best
                tok = tl.where(hit, start + si, tok)
                tok_logit = tl.where(hit, tl.max(tl.where(lane[None, :] == si[:, None], x, NEG), axis=1), tok_logit)
                best = tl.maximum(best, s1)
            xe = x
            for j in range(n_exc):
                xe = tl.where(offs[None, :] == tl.load(exc_ptr + j), NEG, xe)
            kth = tl.min(tl.where(slot[None, :] < K, top, float("inf")), axis=1)
            if tl.sum((tl.max(xe, axis=1) > kth).to(tl.int32), axis=0) > 0:  # skip tiles no row's top-K takes
                top = merge_topk(top, xe, lane, slot, K)

    at = split * N + r_local
    if REF_PASS:
        tl.store(acc_ptr + at, ref_acc, mask=r_ok)
    else:
        plane = n_split * N  # part is [6, splits, N]
        tl.store(part_ptr + at, m, mask=r_ok)
        tl.store(part_ptr + plane + at, z, mask=r_ok)
        tl.store(part_ptr + 2 * plane + at, t, mask=r_ok)
        tl.store(part_ptr + 3 * plane + at, second, mask=r_ok)
        tl.store(part_ptr + 4 * plane + at, best, mask=r_ok)
        tl.store(part_ptr + 5 * plane + at, tok_logit, mask=r_ok)
        tl.store(tok_ptr + at, tok, mask=r_ok)
        tl.store(top_ptr + at[:, None] * K + slot[None, :], top, mask=r_ok[:, None] & (slot[None, :] < K))


@deferred_kernels("gumbel_scores", "merge_topk")
def _jitted(triton):
    return triton.jit(_fused_head_kernel)


def _combine(part: torch.Tensor, tok: torch.Tensor, top: torch.Tensor, sample: bool):
    """Merge the per-split states [splits, N] into final per-row statistics (torch ops, no host sync)."""
    m, z, t, second, best, tok_logit = part.unbind(0)
    neg = float("-inf")
    big_m = m.max(0).values
    shift = torch.where(big_m > neg, big_m, torch.zeros_like(big_m))
    alpha = torch.exp(m - shift)
    big_z = (alpha * z).sum(0)
    big_t = (alpha * (t + torch.where(m > neg, m - shift, torch.zeros_like(m)) * z)).sum(0)
    pick = (best if sample else m).argmax(0, keepdim=True)  # first split on ties: the lower token ids
    token = tok.gather(0, pick).squeeze(0).long()
    if sample:
        confidence = torch.exp(tok_logit.gather(0, pick).squeeze(0) - big_m) / big_z
    else:
        confidence = 1.0 / big_z
    second_all = torch.cat([m, second], 0).topk(2, dim=0).values[1]
    margin = (1.0 - torch.exp(second_all - big_m)) / big_z
    entropy = torch.log(big_z) - big_t / big_z
    k = top.shape[-1]
    top_all = top.permute(1, 0, 2).reshape(top.shape[1], -1).topk(k, dim=-1).values
    topk_probs = torch.exp(top_all - big_m[:, None]) / big_z[:, None]
    valid = big_m > neg
    nan = torch.tensor(float("nan"), device=m.device)
    fill = lambda s: torch.where(valid if s.dim() == 1 else valid[:, None], s, nan)
    return (token, fill(confidence), fill(margin), fill(entropy), fill(topk_probs)), big_m, big_z, valid


def _tiles(target, n: int, dtype: torch.dtype, block_r, block_v, block_d) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_V, BLOCK_D) for ``n`` rows: the given ones, else small tiles in the interpreter (its tl.dot
    is slow), and on the GPU the largest tiles that ptxas compiles without register spills for sm_80 and sm_90 at
    every flag combination (``benchmarks/results/compile_table/``; tests/test_kernels_compile.py keeps it so). The
    earlier tiles spilled with sampling on (the top-K merge and Philox live beside the tile): [64, 128] with 8
    warps 16 bytes on sm_90 and 372 on sm_80 (20 in its reference pass), [32, 128] with 4 warps 36-48 bytes on
    sm_90; [64, 64] and [32, 128] with 8 warps do not. fp32 hidden states take IEEE fp32 dots (FMA, no MMA),
    whose operands need twice the registers: [16 or 32, 128] with BLOCK_D 32 (BLOCK_D 64 spilled 44-552 bytes on
    sm_90 and up to 11.7 KB on sm_80; [16, 64, 32] 8 bytes on sm_80)."""
    if not target.gpu:
        return block_r or 16, block_v or 32, block_d or 32
    if dtype == torch.float32:
        return block_r or (16 if n <= 16 else 32), block_v or 128, block_d or 32
    br = block_r or (16 if n <= 16 else 32 if n <= 32 else 64)
    return br, block_v or (64 if br >= 64 else 128), block_d or 64


def _num_warps(br: int, bv: int, dtype: torch.dtype, ref_pass: bool) -> int:
    """4 warps up to 2048 logits per tile, else 8 (the [32, 128] first pass spilled with 4); but the bf16/fp16
    [32, 128] reference pass takes 4 (with 8, ptxas spilled 20 bytes on sm_90 at 80 registers)."""
    if ref_pass and (br, bv) == (32, 128) and dtype != torch.float32:
        return 4
    return 4 if br * bv <= 2048 else 8


def fused_head_stats_triton(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                            rows: torch.Tensor | None = None, logit_scale: float = 1.0, topk: int = 8,
                            temperature: float = 0.0, seed: int | torch.Tensor | None = None,
                            suppress: torch.Tensor | list[int] | None = None,
                            exclude: torch.Tensor | list[int] | None = None, ref_tau: float = 0.05,
                            need_ref: bool = True, check_rows: bool = True, block_r: int | None = None,
                            block_v: int | None = None, block_d: int | None = None,
                            v_splits: int | None = None) -> VocabStats:
    """``VocabStats`` of ``(hidden @ weight.T + bias) * logit_scale`` for the flat rows ``rows`` (default all).

    hidden [R, d] or [B, L, d] (any strides), weight [V, d], bias [V]: fp16/bf16/fp32, one dtype, one device.
    Sampling, ``need_ref``, ``check_rows``, ``suppress``/``exclude`` behave as in ``vocab_stats_triton``; the
    Gumbel noise is the same, so both ops draw the same token from the same logits and seed (up to the rounding
    of the logits, which decides near-ties). ``block_r``/``block_v``/``block_d`` (powers of two >= 16) set the tile
    sizes and ``v_splits`` the number of programs sharing one row tile's vocabulary (default: enough programs to
    fill the GPU). fp32 inputs use an IEEE fp32 tl.dot (not tf32). ``need_ref=True`` costs a second matmul.
    """
    for name, tensor in (("hidden", hidden), ("weight", weight)):
        if not torch.is_tensor(tensor) or tensor.dtype not in _DOT_DTYPES:
            got = tensor.dtype if torch.is_tensor(tensor) else type(tensor).__name__
            raise ValueError(f"{name} must be a float16/bfloat16/float32 tensor, got {got}")
    if hidden.dim() not in (2, 3):
        raise ValueError(f"hidden must be [R, d] or [B, L, d], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be [V, d={hidden.shape[-1]}] (nn.Linear layout), got {tuple(weight.shape)}")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight dtype {weight.dtype} differs from hidden dtype {hidden.dtype}")
    device = hidden.device
    if weight.device != device:
        raise ValueError(f"weight is on {weight.device} but hidden is on {device}")
    vocab, dim, n_flat = weight.shape[0], hidden.shape[-1], hidden.shape[:-1].numel()
    if vocab < 1 or dim < 1 or n_flat < 1:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} must be non-empty")
    if bias is not None:
        if not torch.is_tensor(bias) or bias.shape != (vocab,):
            raise ValueError(f"bias must be a [V={vocab}] tensor, got {getattr(bias, 'shape', type(bias).__name__)}")
        if bias.dtype not in _FLOAT_BIAS or bias.device != device:
            raise ValueError(f"bias must be a floating-point tensor on {device}, got {bias.dtype} on {bias.device}")
    check_stat_options(topk, vocab, temperature, ref_tau)
    for name, block in (("block_r", block_r), ("block_v", block_v), ("block_d", block_d)):
        if block is not None and (block < 16 or block & (block - 1)):
            raise ValueError(f"{name} must be a power of two >= 16, got {block}")
    if v_splits is not None and v_splits < 1:
        raise ValueError(f"v_splits must be >= 1, got {v_splits}")
    require_runnable(device, "fused_head_stats_ref")
    check_flat_rows(rows, device, n_flat, "hidden", check_rows)
    sup, n_sup = id_tensor(suppress, "suppress", vocab, device, check_rows)
    exc, n_exc = id_tensor(exclude, "exclude", vocab, device, check_rows)
    sample = temperature > 0
    seed_t = seed_tensor(seed, device) if sample else sup  # a placeholder the kernel never reads
    n = n_flat if rows is None else rows.numel()
    target = launch_target(device)
    br, bv, bd = _tiles(target, n, hidden.dtype, block_r, block_v, block_d)
    row_tiles = -(-n // br)
    v_tiles = -(-vocab // bv)
    if v_splits is None:  # about 4 programs per multiprocessor; one split in the interpreter
        v_splits = max(1, -(-4 * target.sm_count // row_tiles)) if target.gpu else 1
    per_split = -(-v_tiles // min(v_splits, v_tiles))
    return VocabStats(*torch.ops.upo_fast.fused_head_stats(
        hidden, weight, bias, rows, sup, exc, seed_t, n_sup, n_exc, float(logit_scale), topk, float(temperature),
        float(ref_tau), need_ref, br, bv, bd, per_split * bv))


# Registered with torch.library like vocab_stats (see there); inputs arrive checked, tiles chosen.
@torch.library.custom_op("upo_fast::fused_head_stats", mutates_args=())
def _fused_head_op(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rows: torch.Tensor | None,
                   suppress: torch.Tensor, exclude: torch.Tensor, seed: torch.Tensor, n_sup: int, n_exc: int,
                   logit_scale: float, topk: int, temperature: float, ref_tau: float, need_ref: bool, br: int, bv: int,
                   bd: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                 torch.Tensor]:
    device = hidden.device
    vocab, dim, n_flat = weight.shape[0], hidden.shape[-1], hidden.shape[:-1].numel()
    n = n_flat if rows is None else rows.shape[0]
    if hidden.dim() == 2:
        length, s_hb, s_hl = n_flat, 0, hidden.stride(0)
    else:
        length, s_hb, s_hl = hidden.shape[1], hidden.stride(0), hidden.stride(1)
    sample = temperature > 0
    interpret = launch_target(device).interpreter
    row_tiles = -(-n // br)
    splits = -(-vocab // chunk)
    f32 = dict(dtype=torch.float32, device=device)
    part = torch.empty(6, splits, n, **f32)
    tok = torch.empty(splits, n, dtype=torch.int32, device=device)
    top = torch.empty(splits, n, topk, **f32)
    acc = torch.empty(splits, n, **f32)
    bias_arg = bias if bias is not None else part
    rows_arg = rows if rows is not None else tok
    kernel = _jitted()
    common = (hidden, weight, bias_arg, rows_arg, suppress, exclude, part, tok, top)
    sizes = (n, vocab, dim, length, s_hb, s_hl, hidden.stride(-1), weight.stride(0), weight.stride(1), chunk,
             n_sup, n_exc, logit_scale, max(temperature, 1e-30) if sample else 0.0, 1.0 / ref_tau, seed)
    meta = dict(HAS_ROWS=rows is not None, HAS_BIAS=bias is not None, SAMPLE=sample,
                IEEE=hidden.dtype == torch.float32 or interpret, DOT_F32=interpret, K=topk,
                K_PAD=max(2, triton_next_pow2(topk)), BLOCK_R=br, BLOCK_V=bv, BLOCK_D=bd)
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        kernel[(row_tiles, splits)](*common, part, acc, *sizes, REF_PASS=False,
                                    num_warps=_num_warps(br, bv, hidden.dtype, False), **meta)
        stats, big_m, big_z, valid = _combine(part, tok, top, sample)
        if need_ref:
            mz = torch.stack([big_m, big_z])
            kernel[(row_tiles, splits)](*common, mz, acc, *sizes, REF_PASS=True,
                                        num_warps=_num_warps(br, bv, hidden.dtype, True), **meta)
            ref = (1.0 / (big_z * ref_tau)) + torch.log(acc.sum(0))
            ref = torch.where(valid, ref, torch.full_like(ref, float("nan")))
        else:
            ref = torch.full((n,), float("nan"), **f32)
    return (*stats, ref)


@_fused_head_op.register_fake
def _(hidden, weight, bias, rows, suppress, exclude, seed, n_sup, n_exc, logit_scale, topk, temperature, ref_tau,
      need_ref, br, bv, bd, chunk):
    return empty_stats(hidden, rows, topk)


_FLOAT_BIAS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
