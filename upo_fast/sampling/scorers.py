"""Scorers: turn per-position token statistics into scores over candidate positions.

A scorer is a :class:`Scorer`, registered by name in ``SCORERS``. It declares what the sampling loop must prepare
for it (a policy object, the hidden state entering the MDM's last block, the softmax-confidence reference term of
the statistics pass) and turns ``(stats, candidates, context)`` into ``PositionScores(scores, stochastic)``:

    scores      [B, Lb] float32, higher = unmask earlier; -inf where a position may not be chosen
    stochastic  False: take the top-k scores (deterministic); True: Gumbel-top-k, i.e. sample k positions without
                replacement from softmax(scores / position_temperature)

A scorer may own its selection instead of ranking (``select``): Dream's ``origin`` unmasks each masked position
independently with the step's transfer probability. The loop (``upo_fast.sampling.loop``) and CUDA-graph capture
(``upo_fast.sampling.cuda_graphs``) ask the scorer object, never its name.

Adding a scorer: write its scoring function here and add one ``Scorer`` entry to ``SCORERS``; then add its name to
``upo_fast.names.SCORERS`` (the command line checks names without importing torch; tests/test_cli_startup.py
keeps the two lists equal).
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


def independent_transfer(candidates: torch.Tensor, transfer_prob: float, generator) -> torch.Tensor:
    """Dream's ``origin`` rule: [B, W] bool, each candidate unmasked independently with probability
    ``transfer_prob``. One ``torch.rand`` draw of the candidates' shape per step, from ``generator``, as the
    reference sampler draws (so the same seed gives the same tokens)."""
    draw = torch.rand(candidates.shape, device=candidates.device, generator=generator)
    return candidates & (draw < transfer_prob)


@dataclass(frozen=True)
class Scorer:
    """One unmasking order: what the loop prepares for it, and its scores (or its own selection).

    ``needs_policy``: ``policy=`` must be given; it is checked against the MDM (``check_compatible``) and its scores
    are checked for NaN / inf. ``needs_hidden``: the hidden state entering the MDM's last block is captured
    (the policy's input). ``needs_ref``: the statistics pass also computes the softmax-confidence reference term
    (``ref_logsumexp``). ``needs_features``: it reads margin, entropy or the top-k probabilities (besides the token
    and its confidence, which every step has; the CPU reference skips the others' passes over V). ``select``: a
    selection rule ``(candidates, transfer_prob, generator) -> [B, W] bool``
    that replaces ranking; the parallel rules then walk the confidence order. ``no_capture``: why a step with this
    scorer cannot be captured in a CUDA graph, or None.
    """

    name: str
    score: Callable[[VocabStats, torch.Tensor, ScoringContext], PositionScores] | None
    needs_policy: bool = False
    needs_hidden: bool = False
    needs_ref: bool = False
    needs_features: bool = False
    select: Callable[[torch.Tensor, float, torch.Generator | None], torch.Tensor] | None = None
    no_capture: str | None = None

    @property
    def ranks(self) -> bool:
        """Whether the scorer orders the candidates (what a recorder and ``evaluation.order_pictures`` need)."""
        return self.select is None

    def __call__(self, stats: VocabStats, candidates: torch.Tensor, ctx: ScoringContext) -> PositionScores:
        if self.score is None:
            raise TypeError(f"scorer {self.name!r} ranks nothing: it selects positions itself (Scorer.select)")
        return self.score(stats, candidates, ctx)

    def check_policy(self, policy, model) -> None:
        """The policy this scorer needs is there and was trained beside ``model`` (a clear error otherwise)."""
        if not self.needs_policy:
            return
        if policy is None:
            raise ValueError(f"scorer={self.name!r} needs policy=<a trained unmasking policy>")
        if hasattr(policy, "check_compatible"):
            policy.check_compatible(model)


def _entries(*scorers: Scorer) -> dict[str, Scorer]:
    return {scorer.name: scorer for scorer in scorers}


SCORERS: dict[str, Scorer] = _entries(
    Scorer("random", random_order),
    Scorer("max_confidence", max_confidence),
    Scorer("margin", margin, needs_features=True),
    Scorer("entropy", entropy, needs_features=True),
    Scorer("topk", topk_uniform),
    Scorer("softmax_confidence", softmax_confidence, needs_ref=True),
    Scorer("origin", None, select=independent_transfer, no_capture="the origin rule draws from a torch generator"),
    Scorer("policy", learned_policy, needs_policy=True, needs_hidden=True, needs_features=True),
)
ALIASES = SCORER_ALIASES  # the reference samplers' names; one home in names.py (the CLI parses with it)
HEURISTICS = tuple(name for name, scorer in SCORERS.items() if not scorer.needs_policy)


def resolve_scorer(name: str) -> str:
    """Canonical scorer name, or a ValueError listing the valid ones (``names.check_scorer``: the registry's names
    are kept equal to ``names.SCORERS`` by tests/test_cli_startup.py)."""
    return check_scorer(name)


def get_scorer(name: str) -> Scorer:
    """The :class:`Scorer` of a name or alias, or the ValueError of ``resolve_scorer``."""
    return SCORERS[resolve_scorer(name)]
