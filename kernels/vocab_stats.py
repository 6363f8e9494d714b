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

This file holds the pure-PyTorch reference, ``vocab_stats_ref``; the fused Triton kernel will live beside it and be
tested against it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


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
    if not 1 <= topk <= vocab:
        raise ValueError(f"topk must be in [1, V={vocab}], got {topk}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if ref_tau <= 0:
        raise ValueError(f"ref_tau must be > 0, got {ref_tau}")
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
                    exclude: torch.Tensor | list[int] | None = None, ref_tau: float = 0.05) -> VocabStats:
    """Reference statistics in fp32 (fp64 for the Gumbel sample). See the module docstring for shapes.

    ``suppress`` token ids are set to -inf before anything else (they can be neither chosen nor counted).
    Rows whose logits are all -inf (after suppression) yield token 0 and NaN statistics; callers that can meet
    such rows check for them (the samplers turn them into a ValueError).
    """
    flat = _check_and_flatten(logits, rows, topk, temperature, ref_tau).float()
    if suppress is not None:
        flat = flat.clone()
        flat[:, torch.as_tensor(suppress, device=flat.device, dtype=torch.long)] = float("-inf")
    logp = torch.log_softmax(flat, dim=-1)
    probs = logp.exp()
    if temperature == 0:
        token = flat.argmax(dim=-1)
    else:
        noisy = flat.double() / temperature + gumbel_like(flat, generator)
        token = noisy.argmax(dim=-1)
    confidence = probs.gather(-1, token[:, None]).squeeze(-1)
    top2 = probs.topk(min(2, probs.shape[-1]), dim=-1).values
    margin = top2[:, 0] - top2[:, 1] if top2.shape[-1] > 1 else top2[:, 0]
    # 0 * log 0 is taken as 0
    entropy = -(probs * torch.where(probs > 0, logp, torch.zeros_like(logp))).sum(-1)
    if exclude is not None:
        kept = probs.clone()
        kept[:, torch.as_tensor(exclude, device=flat.device, dtype=torch.long)] = -1.0
        topk_probs = kept.topk(topk, dim=-1).values.clamp_min(0.0)
    else:
        topk_probs = probs.topk(topk, dim=-1).values
    ref_logsumexp = torch.logsumexp(probs / ref_tau, dim=-1)
    return VocabStats(token, confidence, margin, entropy, topk_probs, ref_logsumexp)
