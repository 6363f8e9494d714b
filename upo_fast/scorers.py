"""Scorers: turn per-position token statistics into scores over candidate positions.

A scorer maps ``(stats, candidates, context)`` to ``PositionScores(scores, stochastic)``:

    scores      [B, Lb] float32, higher = unmask earlier; -inf where a position may not be chosen
    stochastic  False: take the top-k scores (deterministic); True: Gumbel-top-k, i.e. sample k positions without
                replacement from softmax(scores / position_temperature)

``origin`` (Dream) is not a ranking: each masked position is unmasked independently with the step's transfer
probability, so the sampler handles it as its own selection rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from upo_fast.kernels.position_select import topk_candidates
from upo_fast.kernels.vocab_stats import VocabStats
from upo_fast.names import SCORER_ALIASES, check_scorer


class PositionScores(NamedTuple):
    scores: torch.Tensor
    stochastic: bool
    candidates: torch.Tensor | None = None  # [B, Lb] bool when the scorer narrows the candidates (Top-K)


@dataclass
class ScoringContext:
    """What a scorer may need besides the statistics."""

    topk: int = 5                              # K for the ``topk`` scorer
    policy: Callable | None = None             # learned policy for the ``policy`` scorer
    hidden: torch.Tensor | None = None         # [B, Lb, d] hidden state entering the MDM's last block
    position_temperature: float = 1.0
    backend: str = "auto"                      # where topk_candidates runs; the sampler passes its own backend


def _masked(values: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    return torch.where(candidates, values.float(), torch.full_like(values, float("-inf"), dtype=torch.float32))


def max_confidence(stats: VocabStats, candidates, ctx) -> PositionScores:
    return PositionScores(_masked(stats.confidence, candidates), False)


def margin(stats: VocabStats, candidates, ctx) -> PositionScores:
    return PositionScores(_masked(stats.margin, candidates), False)


def entropy(stats: VocabStats, candidates, ctx) -> PositionScores:
    return PositionScores(_masked(-stats.entropy, candidates), False)


def random_order(stats: VocabStats, candidates, ctx) -> PositionScores:
    return PositionScores(_masked(torch.zeros_like(stats.confidence), candidates), True)


def topk_uniform(stats: VocabStats, candidates, ctx) -> PositionScores:
    """Uniform over the K most confident candidates (fewer when fewer remain): exactly K when confidences tie,
    ties to the lower position, the Top-K reference's rule (``upo_fast.ops.topk_candidates``)."""
    keep = topk_candidates(stats.confidence.float(), candidates, ctx.topk, backend=ctx.backend)
    return PositionScores(_masked(torch.zeros_like(stats.confidence, dtype=torch.float32), keep), True, keep)


def softmax_confidence(stats: VocabStats, candidates, ctx) -> PositionScores:
    """g_ref(a) proportional to sum_v exp(p_v / tau_ref): sample positions with log-weights ref_logsumexp."""
    return PositionScores(_masked(stats.ref_logsumexp, candidates), True)


def learned_policy(stats: VocabStats, candidates, ctx) -> PositionScores:
    """The policy's scores; a policy trained against the Top-K reference (``policy.config.candidate_topk`` = K)
    chooses among the K most confident candidates only, as in training."""
    if ctx.policy is None:
        raise ValueError("scorer='policy' needs policy=<a trained unmasking policy>")
    top_k = getattr(getattr(ctx.policy, "config", None), "candidate_topk", None)
    if top_k:
        candidates = topk_candidates(stats.confidence.float(), candidates, int(top_k), backend=ctx.backend)
    scores = ctx.policy(hidden=ctx.hidden, stats=stats, candidates=candidates)
    if scores.shape != candidates.shape:
        raise ValueError(f"the policy returned scores of shape {tuple(scores.shape)}, expected "
                         f"{tuple(candidates.shape)}")
    return PositionScores(_masked(scores, candidates), ctx.position_temperature > 0, candidates if top_k else None)


SCORERS: dict[str, Callable] = {
    "random": random_order,
    "max_confidence": max_confidence,
    "margin": margin,
    "entropy": entropy,
    "topk": topk_uniform,
    "softmax_confidence": softmax_confidence,
    "origin": random_order,  # ranking unused: the sampler applies Dream's independent-transfer rule
    "policy": learned_policy,
}
ALIASES = SCORER_ALIASES  # the reference samplers' names; one home in names.py (the CLI parses with it)
HEURISTICS = ("random", "max_confidence", "margin", "entropy", "topk", "softmax_confidence", "origin")


def resolve_scorer(name: str) -> str:
    """Canonical scorer name, or a ValueError listing the valid ones (``names.check_scorer``: the registry's names
    are kept equal to ``names.SCORERS`` by tests/test_cli_startup.py)."""
    return check_scorer(name)
