"""Operations of the unmasking policy over the positions of one block: scores ``[B, L]`` and a bool candidate mask
``[B, L]`` (the masked positions of the active block; L <= ~1024, so one program holds a whole row, BLOCK_L =
next_pow2(L)).

    position_log_softmax    [B, L] f32   log softmax(scores / T) over the candidates, -inf elsewhere
    select_positions        [B, L] bool  Gumbel-top-k / top-k (``k``) or probability threshold (``threshold``)
    topk_candidates         [B, L] bool  the K most confident candidates (ties to the lower position)
    reference_distribution  [B, L] f32   the UPO reference g_ref: max_confidence, softmax_confidence or topk
    policy_divergence       [B] f32      KL(g || g_ref) or CE(g_ref, g), differentiable w.r.t. the scores

Each op has a pure-PyTorch ``<op>_ref`` (fp32 math, fp64 for fp64 scores) and a Triton path; the public function
takes ``backend="auto"|"triton"|"torch"`` ("auto": Triton for CUDA tensors when triton is installed, else the
reference). Common conventions:
- A candidate whose score is -inf has probability 0 but is still a candidate: it ranks after every finite one and
  before every non-candidate, so top-k with k >= the number of candidates selects all candidates. NaN / +inf
  scores are not supported.
- A row with no candidate with a finite score has no distribution: its log-probabilities are all -inf (and
  ``position_log_softmax(check=True)`` raises a ValueError for a row with no candidate at all), its KL is 0, its
  CE is 0 if the reference is zero on the row's candidates (+inf otherwise), with zero gradients.
- Gumbel noise: the reference draws fp64 noise from a torch generator, the Triton kernel uses triton's
  counter-based Philox keyed by (seed, row, position). The streams differ: the same seed gives reproducible but
  backend-dependent selections.
"""

from __future__ import annotations

import contextlib
import functools
import types

import torch
from upo_fast.kernels.triton_support import triton_interpreting, triton_next_pow2, use_triton
from upo_fast.kernels.vocab_stats import gumbel_like

REFERENCE_KINDS = ("max_confidence", "softmax_confidence", "topk")
DIVERGENCES = ("kl", "ce")
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


# Triton kernels, one program per row. `tl` is imported on the first launch (see vocab_stats.py for why); the kernels
# read bf16/fp16/fp32/fp64 inputs as fp32.
tl = None


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


def _select_kernel(L, s_ptr, c_ptr, k_ptr, out_ptr, temperature, threshold, seed,
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
            rand = tl.randint(seed, row * L + offs)
            v = (rand.to(tl.float32) + 0.5) * 2.3283064365386963e-10
            w = 1.0 - v
            expo = tl.where(w == 1.0, v, -tl.log(w) * (v / tl.where(w == 1.0, 1.0, 1.0 - w)))  # log1p trick
            key = s - temperature * tl.log(expo)
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


@functools.cache
def _jitted(interpret: bool):
    global tl
    import triton
    import triton.language

    tl = triton.language  # the kernels' global, resolved when triton parses them
    return types.SimpleNamespace(
        log_softmax=triton.jit(_log_softmax_kernel), select=triton.jit(_select_kernel, do_not_specialize=["seed"]),
        refdist=triton.jit(_refdist_kernel), divergence=triton.jit(_divergence_kernel))


def _launch(name: str, rows: torch.Tensor, *args, **meta) -> None:
    B, L = rows.shape
    kernel = getattr(_jitted(triton_interpreting()), name)
    with torch.cuda.device(rows.device) if rows.is_cuda else contextlib.nullcontext():
        if B > 0 and L > 0:
            kernel[(B,)](L, *args, **meta, BLOCK_L=max(16, triton_next_pow2(L)))


def _u8(candidates: torch.Tensor) -> torch.Tensor:  # triton takes bool masks as bytes
    return candidates.contiguous().view(torch.uint8)


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
    out = torch.empty(scores.shape, dtype=torch.float32, device=scores.device)
    _launch("log_softmax", scores, scores.contiguous(), _u8(candidates), out, float(temperature))
    return out


def select_positions(scores, candidates, k=None, *, threshold=None, temperature: float = 1.0,
                     seed: int | None = None, generator: torch.Generator | None = None, check: bool = True,
                     backend: str = "auto") -> torch.Tensor:
    """[B, L] bool positions to unmask. ``k`` ([B] counts): Gumbel-top-k, k draws without replacement from
    softmax(scores / temperature) over the candidates; deterministic top-k at temperature 0; ties to the lower
    position; all candidates when k exceeds their number. ``threshold``: every candidate with probability >=
    threshold under softmax(scores / temperature) (> 0), and at least the most probable one. Pass exactly one.
    ``seed`` or ``generator`` (not both) make the Gumbel draw reproducible per backend (see the module docstring);
    with ``generator`` the Triton path draws its seed from it on the host. ``check`` checks k >= 0 (a host sync)."""
    _check_select(scores, candidates, k, threshold, temperature, check)
    if seed is not None and generator is not None:
        raise ValueError("pass seed or generator, not both")
    if not use_triton(backend, scores.device):
        if seed is not None:
            generator = torch.Generator(device=scores.device).manual_seed(seed)
        return select_positions_ref(scores, candidates, k, threshold=threshold, temperature=temperature,
                                    generator=generator, check=False)
    mode = 2 if threshold is not None else int(temperature > 0)
    if mode == 1 and seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (), generator=generator,
                                 device=generator.device if generator is not None else "cpu").item())
    counts = k if k is not None else torch.zeros(scores.shape[:1], dtype=torch.int64, device=scores.device)
    out = torch.empty(scores.shape, dtype=torch.bool, device=scores.device)
    _launch("select", scores, scores.contiguous(), _u8(candidates), counts.contiguous(), out.view(torch.uint8),
            max(float(temperature), 1e-30), float(threshold or 0.0), int(seed or 0) % 2**63, MODE=mode)
    return out


def topk_candidates(confidence, candidates, K: int, *, backend: str = "auto") -> torch.Tensor:
    """[B, L] bool: the K most confident candidates of each row (all of them if fewer), ties to the lower
    position."""
    _check_rows(confidence, candidates, "confidence")
    _check_K(K)
    if not use_triton(backend, confidence.device):
        return topk_candidates_ref(confidence, candidates, K)
    k = torch.full(confidence.shape[:1], K, dtype=torch.int64, device=confidence.device)
    return select_positions(confidence, candidates, k, temperature=0.0, check=False, backend="triton")


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
    out = torch.empty(values.shape, dtype=torch.float32, device=values.device)
    _launch("refdist", values, values.contiguous(), _u8(candidates), out, MODE=REFERENCE_KINDS.index(kind))
    return out


class _TritonDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, candidates, reference, kl, temperature):
        s, c, r = scores.contiguous(), _u8(candidates), reference.contiguous()
        out = torch.empty(s.shape[:1], dtype=torch.float32, device=s.device)
        _launch("divergence", s, s, c, r, out, out, out, float(temperature), KL=kl, BACKWARD=False)
        ctx.save_for_backward(s, c, r, out)
        ctx.kl, ctx.temperature = kl, temperature
        return out

    @staticmethod
    def backward(ctx, grad_out):
        s, c, r, div = ctx.saved_tensors
        grad = torch.empty(s.shape, dtype=torch.float32, device=s.device)
        _launch("divergence", s, s, c, r, div, grad_out.float().contiguous(), grad, float(ctx.temperature),
                KL=ctx.kl, BACKWARD=True)
        return grad.to(s.dtype), None, None, None, None


def policy_divergence(scores, candidates, reference, kind: str = "kl", temperature: float = 1.0, *,
                      backend: str = "auto") -> torch.Tensor:
    """[B] divergence per row between g = softmax(scores / temperature) over the candidates and ``reference``
    [B, L]: "kl" = KL(g || r) = sum_a g_a (log g_a - log r_a) (terms with g_a = 0 are 0; +inf where r_a = 0 < g_a,
    so restrict the candidates to the top-K for the topk reference), "ce" = -sum_a r_a log g_a (+inf where r_a > 0
    = g_a). Differentiable w.r.t. ``scores`` (not ``reference``, a constant): d/ds_a = g_a / T (log g_a - log r_a -
    KL) for KL and (g_a sum_c r_c - r_a) / T for CE (sum over the candidates). The Triton path is a
    torch.autograd.Function with a Triton backward; the torch path is autograd of the reference. float32 output
    (float64 for float64 scores on the torch path)."""
    _check_divergence(scores, candidates, reference, kind, temperature)
    if not use_triton(backend, scores.device):
        return policy_divergence_ref(scores, candidates, reference, kind, temperature)
    return _TritonDivergence.apply(scores, candidates, reference.detach(), kind == "kl", temperature)
