"""Selection over the positions of one block: scores ``[B, L]`` and a bool candidate mask ``[B, L]`` (the masked
positions of the active block; L <= ~1024, so one program holds a whole row, BLOCK_L = next_pow2(L)).

    position_log_softmax    [B, L] f32   log softmax(scores / T) over the candidates, -inf elsewhere
    select_positions        [B, L] bool  Gumbel-top-k / top-k (``k``) or probability threshold (``threshold``)
    topk_candidates         [B, L] bool  the K most confident candidates (ties to the lower position)

The training-side ops on the same layout (reference distributions, KL / CE) are in ``policy_divergence.py``.
Each op has a pure-PyTorch ``<op>_ref`` (fp32 math, fp64 for fp64 scores) and a Triton path registered with
``torch.library`` (so it traces under torch.compile and replays inside CUDA graphs); the public function takes
``backend="auto"|"triton"|"torch"`` ("auto": Triton for CUDA tensors when triton is installed, else the reference).
Common conventions:
- A candidate whose score is -inf has probability 0 but is still a candidate: it ranks after every finite one and
  before every non-candidate, so top-k with k >= the number of candidates selects all candidates. NaN / +inf
  scores are not supported.
- A row with no candidate with a finite score has no distribution: its log-probabilities are all -inf (and
  ``position_log_softmax(check=True)`` raises a ValueError for a row with no candidate at all).
- Gumbel noise: the reference draws fp64 noise from a torch generator, the Triton kernel uses triton's
  counter-based Philox keyed by (seed, row, position), the seed read from a device tensor. The streams differ: the
  same seed gives reproducible but backend-dependent selections.
"""

from __future__ import annotations

import contextlib
import types

import torch

from upo_fast.kernels.triton_support import (
    deferred_kernels,
    seed_tensor,
    triton_next_pow2,
    use_triton,
)
from upo_fast.kernels.vocab_stats import gumbel_like

NEG = float("-inf")

# Input checks, shared by the references and the public functions
def _check_rows(scores: torch.Tensor, candidates: torch.Tensor, name: str = "scores") -> None:
    if not torch.is_tensor(scores) or not scores.is_floating_point() or scores.dim() != 2:
        got = tuple(scores.shape) if torch.is_tensor(scores) else type(scores).__name__
        raise ValueError(f"{name} must be a [B, L] floating-point tensor, got {got}")
    if not torch.is_tensor(candidates) or candidates.dtype != torch.bool:
        got = candidates.dtype if torch.is_tensor(candidates) else type(candidates).__name__
        raise ValueError(f"candidates must be a bool tensor, got {got}")
    if candidates.shape != scores.shape:
        raise ValueError(f"candidates must have the shape of {name} {tuple(scores.shape)}, got {candidates.shape}")
    if candidates.device != scores.device:
        raise ValueError(f"candidates is on {candidates.device} but {name} is on {scores.device}")


def _check_temperature(temperature: float, allow_zero: bool = False) -> None:
    if not (isinstance(temperature, (int, float)) and (temperature >= 0 if allow_zero else temperature > 0)):
        raise ValueError(f"temperature must be {'>= 0' if allow_zero else '> 0'}, got {temperature!r}")


def _check_k(k, scores: torch.Tensor, check: bool) -> None:
    if not torch.is_tensor(k) or k.dtype not in (torch.int32, torch.int64) or k.shape != scores.shape[:1]:
        got = (k.dtype, tuple(k.shape)) if torch.is_tensor(k) else type(k).__name__
        raise ValueError(f"k must be a [B={scores.shape[0]}] int64 tensor of counts, got {got}")
    if k.device != scores.device:
        raise ValueError(f"k is on {k.device} but scores is on {scores.device}")
    if check and k.numel() and bool((k < 0).any()):
        raise ValueError("k must be >= 0 in every row")


def _check_K(K) -> None:
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"K must be an int >= 1, got {K!r}")


def _check_select(scores, candidates, k, threshold, temperature, check) -> None:
    _check_rows(scores, candidates)
    if (k is None) == (threshold is None):
        raise ValueError("pass exactly one of k (counts) and threshold")
    if k is not None:
        _check_k(k, scores, check)
        _check_temperature(temperature, allow_zero=True)
    else:
        if not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        _check_temperature(temperature)


# References
def _masked_logits(scores: torch.Tensor, candidates: torch.Tensor, temperature: float) -> torch.Tensor:
    x = scores.to(torch.promote_types(scores.dtype, torch.float32)) / temperature
    return x.masked_fill(~candidates, NEG)


def _log_softmax_rows(x: torch.Tensor) -> torch.Tensor:
    """Max-subtracted log softmax of rows with -inf entries; an all -inf row gives all -inf (not NaN), and the
    autograd graph stays free of 0 * inf."""
    m = x.amax(-1, keepdim=True).detach()
    shift = torch.where(m > NEG, m, torch.zeros_like(m))
    z = torch.exp(x - shift).sum(-1, keepdim=True)
    logz = torch.log(torch.where(z > 0, z, torch.ones_like(z)))
    return torch.where(x > NEG, x - shift - logz, torch.full_like(x, NEG))


def position_log_softmax_ref(scores, candidates, temperature: float = 1.0) -> torch.Tensor:
    _check_rows(scores, candidates)
    _check_temperature(temperature)
    return _log_softmax_rows(_masked_logits(scores, candidates, temperature))


def _rank_select(keys: torch.Tensor, candidates: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The k[b] best candidates of each row by ``keys`` (descending; ties to the lower position; candidates before
    non-candidates whatever their key)."""
    order = keys.masked_fill(~candidates, NEG).argsort(dim=-1, descending=True, stable=True)
    order = order.gather(1, candidates.gather(1, order).to(torch.int8).argsort(dim=-1, descending=True, stable=True))
    positions = torch.arange(keys.shape[-1], device=keys.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    return (rank < k[:, None]) & candidates


def _threshold_select_ref(scores, candidates, threshold: float, temperature: float) -> torch.Tensor:
    x = _masked_logits(scores, candidates, temperature)
    probs = _log_softmax_rows(x).exp()
    m = x.amax(-1, keepdim=True)
    positions = torch.arange(x.shape[-1], device=x.device).expand_as(x)
    best = torch.where(candidates & (x == m), positions, x.shape[-1]).amin(-1, keepdim=True)
    return candidates & ((probs >= threshold) | (positions == best))


def select_positions_ref(scores, candidates, k=None, *, threshold=None, temperature: float = 1.0,
                         generator: torch.Generator | None = None, check: bool = True) -> torch.Tensor:
    _check_select(scores, candidates, k, threshold, temperature, check)
    if threshold is not None:
        return _threshold_select_ref(scores, candidates, threshold, temperature)
    keys = scores.double()
    if temperature > 0:
        keys = keys / temperature + gumbel_like(keys, generator)
    return _rank_select(keys, candidates, k)


def topk_candidates_ref(confidence, candidates, K: int) -> torch.Tensor:
    _check_rows(confidence, candidates, "confidence")
    _check_K(K)
    k = torch.full(confidence.shape[:1], K, dtype=torch.int64, device=confidence.device)
    return _rank_select(confidence.double(), candidates, k)


# Triton kernels, one program per row, decorated on the first launch (triton_support.deferred_kernels); they read
# bf16/fp16/fp32/fp64 inputs as fp32. `gumbel_scores` is triton_support's shared helper, bound there too.
tl = gumbel_scores = None


def _log_softmax_kernel(L, s_ptr, c_ptr, out_ptr, temperature, BLOCK_L: tl.constexpr):
    NEG = float("-inf")
    base = tl.program_id(0).to(tl.int64) * L
    offs = tl.arange(0, BLOCK_L)
    cand = tl.load(c_ptr + base + offs, mask=offs < L, other=0) != 0
    x = tl.where(cand, tl.load(s_ptr + base + offs, mask=offs < L, other=0.0).to(tl.float32) / temperature, NEG)
    m = tl.max(x, axis=0)
    shift = tl.where(m > NEG, m, 0.0)
    z = tl.sum(tl.exp(x - shift), axis=0)
    tl.store(out_ptr + base + offs, tl.where(x > NEG, x - shift - tl.log(z), NEG), mask=offs < L)


def _select_kernel(L, s_ptr, c_ptr, k_ptr, out_ptr, temperature, threshold, seed_ptr,
                   MODE: tl.constexpr, BLOCK_L: tl.constexpr):
    """MODE 0: top-k by score; 1: Gumbel-top-k at ``temperature``; 2: probability >= threshold, plus the argmax."""
    NEG = float("-inf")
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_L)
    cand = tl.load(c_ptr + row * L + offs, mask=offs < L, other=0) != 0
    s = tl.load(s_ptr + row * L + offs, mask=offs < L, other=0.0).to(tl.float32)
    if MODE == 2:
        x = tl.where(cand, s / temperature, NEG)
        m = tl.max(x, axis=0)
        shift = tl.where(m > NEG, m, 0.0)
        e = tl.exp(x - shift)
        p = e / tl.sum(e, axis=0)
        best = tl.min(tl.where(cand & (x == m), offs, BLOCK_L), axis=0)
        sel = cand & ((p >= threshold) | (offs == best))
    else:
        key = s
        if MODE == 1:  # Gumbel keys s - T log E, E ~ Exp(1) (= T * (s / T + Gumbel): same order, no overflow)
            key = gumbel_scores(s, tl.load(seed_ptr), row * L + offs, temperature)  # shared with vocab_stats.py
        key = tl.where(key == 0.0, 0.0, key)  # -0.0 and +0.0 are a tie, as in torch's sort
        bits = key.to(tl.int32, bitcast=True)
        # monotone map of fp32 to [0, 2^32) in int64; non-candidates get -1, below every candidate
        ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64) + 2147483648
        ordered = tl.where(cand, ordered, -1)
        k = tl.load(k_ptr + row).to(tl.int32)
        if BLOCK_L <= 64:  # short rows: rank = #keys before it (greater, or equal at a lower position)
            ahead = ordered[None, :] > ordered[:, None]
            before = ahead | ((ordered[None, :] == ordered[:, None]) & (offs[None, :] < offs[:, None]))
            sel = cand & (tl.sum(before.to(tl.int32), axis=1) < k)
        else:
            k = tl.minimum(k, tl.sum(cand.to(tl.int32), axis=0))
            # bisection for the k-th largest key t: the largest t with #{key >= t} >= k
            lo = tl.full((), 0, tl.int64)
            hi = tl.full((), 4294967295, tl.int64)
            for _ in range(32):
                mid = (lo + hi + 1) // 2
                ok = tl.sum((ordered >= mid).to(tl.int32), axis=0) >= k
                lo = tl.where(ok, mid, lo)
                hi = tl.where(ok, hi, mid - 1)
            above = ordered > lo
            tie = ordered == lo
            rank_in_tie = tl.cumsum(tie.to(tl.int32), axis=0)  # ties go to the lower position
            sel = cand & (k > 0) & (above | (tie & (rank_in_tie <= k - tl.sum(above.to(tl.int32), axis=0))))
    tl.store(out_ptr + row * L + offs, sel.to(tl.uint8), mask=offs < L)


@deferred_kernels("gumbel_scores")
def _jitted(triton):
    return types.SimpleNamespace(log_softmax=triton.jit(_log_softmax_kernel), select=triton.jit(_select_kernel))


def launch_rows(kernel, rows: torch.Tensor, *args, **meta) -> None:
    """Launch a one-program-per-row kernel over the [B, L] layout of ``rows`` (shared with policy_divergence.py)."""
    B, L = rows.shape
    with torch.cuda.device(rows.device) if rows.is_cuda else contextlib.nullcontext():
        if B > 0 and L > 0:
            kernel[(B,)](L, *args, **meta, BLOCK_L=max(16, triton_next_pow2(L)))


def as_bytes(candidates: torch.Tensor) -> torch.Tensor:  # triton takes bool masks as bytes
    return candidates.contiguous().view(torch.uint8)


# torch.library registration: inputs arrive checked; the fake implementations give shapes to torch.compile.
@torch.library.custom_op("upo_fast::position_log_softmax", mutates_args=())
def _log_softmax_op(scores: torch.Tensor, candidates: torch.Tensor, temperature: float) -> torch.Tensor:
    out = torch.empty(scores.shape, dtype=torch.float32, device=scores.device)
    launch_rows(_jitted().log_softmax, scores, scores.contiguous(), as_bytes(candidates), out, temperature)
    return out


@_log_softmax_op.register_fake
def _(scores, candidates, temperature):
    return torch.empty(scores.shape, dtype=torch.float32, device=scores.device)


@torch.library.custom_op("upo_fast::select_positions", mutates_args=())
def _select_op(scores: torch.Tensor, candidates: torch.Tensor, counts: torch.Tensor, seed: torch.Tensor,
               temperature: float, threshold: float, mode: int) -> torch.Tensor:
    out = torch.empty(scores.shape, dtype=torch.bool, device=scores.device)
    launch_rows(_jitted().select, scores, scores.contiguous(), as_bytes(candidates),
                counts.contiguous(), out.view(torch.uint8), max(temperature, 1e-30), threshold, seed, MODE=mode)
    return out


@_select_op.register_fake
def _(scores, candidates, counts, seed, temperature, threshold, mode):
    return torch.empty(scores.shape, dtype=torch.bool, device=scores.device)


# Public functions
def position_log_softmax(scores, candidates, temperature: float = 1.0, *, check: bool = True,
                         backend: str = "auto") -> torch.Tensor:
    """[B, L] float32 log softmax(scores / temperature) over the candidates, -inf elsewhere (and on rows without a
    finite candidate). ``check`` raises a ValueError for a row with no candidate (a host sync; off in loops)."""
    _check_rows(scores, candidates)
    _check_temperature(temperature)
    if check and scores.numel() and not bool(candidates.any(-1).all()):
        raise ValueError("candidates has a row with no candidate: its position distribution is undefined")
    if not use_triton(backend, scores.device):
        return position_log_softmax_ref(scores, candidates, temperature).float()
    return torch.ops.upo_fast.position_log_softmax(scores, candidates, float(temperature))


def select_positions(scores, candidates, k=None, *, threshold=None, temperature: float = 1.0,
                     seed: int | torch.Tensor | None = None, generator: torch.Generator | None = None,
                     check: bool = True, backend: str = "auto") -> torch.Tensor:
    """[B, L] bool positions to unmask. ``k`` ([B] counts): Gumbel-top-k, k draws without replacement from
    softmax(scores / temperature) over the candidates; deterministic top-k at temperature 0; ties to the lower
    position; all candidates when k exceeds their number. ``threshold``: every candidate with probability >=
    threshold under softmax(scores / temperature) (> 0), and at least the most probable one. Pass exactly one.
    ``seed`` or ``generator`` (not both) make the Gumbel draw reproducible per backend (see the module docstring);
    ``seed`` may be a [1] int64 device tensor, which the Triton path reads on the device (the torch path reads it
    on the host); with ``generator`` the Triton path draws its seed from it on the host. ``check`` checks k >= 0
    (a host sync)."""
    _check_select(scores, candidates, k, threshold, temperature, check)
    if seed is not None and generator is not None:
        raise ValueError("pass seed or generator, not both")
    if not use_triton(backend, scores.device):
        if seed is not None:
            generator = torch.Generator(device=scores.device).manual_seed(int(seed))
        return select_positions_ref(scores, candidates, k, threshold=threshold, temperature=temperature,
                                    generator=generator, check=False)
    mode = 2 if threshold is not None else int(temperature > 0)
    counts = k if k is not None else torch.zeros(scores.shape[:1], dtype=torch.int64, device=scores.device)
    seed_t = seed_tensor(seed, scores.device, generator) if mode == 1 else counts  # a placeholder when unused
    return torch.ops.upo_fast.select_positions(scores, candidates, counts, seed_t, float(temperature),
                                               float(threshold or 0.0), mode)


def topk_candidates(confidence, candidates, K: int, *, backend: str = "auto") -> torch.Tensor:
    """[B, L] bool: the K most confident candidates of each row (all of them if fewer), ties to the lower
    position."""
    _check_rows(confidence, candidates, "confidence")
    _check_K(K)
    if not use_triton(backend, confidence.device):
        return topk_candidates_ref(confidence, candidates, K)
    k = torch.full(confidence.shape[:1], K, dtype=torch.int64, device=confidence.device)
    return select_positions(confidence, candidates, k, temperature=0.0, check=False, backend="triton")

