"""Commit rules: how many of the scorer's ranked candidates a step commits (parallel unmasking).

The scorer ranks the candidates (the order); a commit rule says how far down that order a step goes. The loop asks
the rule, never its name: ``follows_schedule`` (the step count comes from the linear schedule, else every step
commits the scorer's first pick and the region is filled until nothing is left), and ``extra`` (the candidates
committed on top of the scorer's picks, a device mask: no host sync).

    Schedule              the schedule's count (LLaDA's and Dream's samplers; the default)
    Threshold(t)          Fast-dLLM's threshold rule: the scorer's first pick plus every candidate whose token
                          confidence is >= t; the schedule is ignored (``threshold=`` on every entry point)
    Factor(f)             Fast-dLLM's factor rule: the scorer's first pick plus, along the scorer's order, every
                          candidate n (1-based) with (n + 1)(1 - confidence_n) < f for it and all before it
                          (``factor=`` on every entry point)
    ScheduleAndThreshold(t)   the schedule's count plus every candidate at or above t: what ``threshold=`` meant
                          in ``generate``/``unmask`` before the cached samplers; it equals ``Threshold`` when the
                          schedule commits one position a step (``commit=ScheduleAndThreshold(t)`` keeps it)

A rule that does not follow the schedule, or adds commits, may fill the region early: the loop then checks once
per step whether anything is left (``ends_early``), its one host read inside a block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from upo_fast.sampling.schedules import factor_select
from upo_fast.validation import check_finite


@dataclass(frozen=True)
class CommitRule:
    """The schedule's count, nothing added (see the module docstring for the other rules)."""

    follows_schedule = True

    @property
    def ends_early(self) -> bool:
        return not self.follows_schedule or type(self).extra is not CommitRule.extra

    def extra(self, order: torch.Tensor, candidates: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor | None:
        """[B, W] bool candidates committed besides the scorer's picks; ``order``: the scorer's scores (higher
        first), ``confidence``: each candidate's token confidence. None: nothing added."""
        return None


Schedule = CommitRule


@dataclass(frozen=True)
class Threshold(CommitRule):
    """Fast-dLLM's threshold rule (``threshold=``): the first pick plus every candidate with confidence >= t."""

    threshold: float
    follows_schedule = False

    def __post_init__(self):
        check_finite(self.threshold, "threshold", low=0, low_inclusive=False, high=1)

    def extra(self, order, candidates, confidence):
        return candidates & (confidence >= self.threshold)


@dataclass(frozen=True)
class ScheduleAndThreshold(Threshold):
    """The schedule's count plus every candidate with confidence >= t (the earlier ``threshold=`` of ``unmask``)."""

    follows_schedule = True


@dataclass(frozen=True)
class Factor(CommitRule):
    """Fast-dLLM's factor rule (``factor=``), walked along the scorer's order."""

    factor: float
    follows_schedule = False

    def __post_init__(self):
        check_finite(self.factor, "factor", low=0, low_inclusive=False)

    def extra(self, order, candidates, confidence):
        return factor_select(order, candidates, confidence, self.factor)


def commit_rule(commit: CommitRule | None, threshold: float | None, factor: float | None) -> CommitRule:
    """The rule of a call from its ``commit``, ``threshold`` and ``factor`` arguments (at most one of them)."""
    given = [name for name, value in (("commit", commit), ("threshold", threshold), ("factor", factor))
             if value is not None]
    if len(given) > 1:
        raise ValueError(f"pass at most one of commit, threshold and factor, got {' and '.join(given)}")
    if commit is not None:
        if not isinstance(commit, CommitRule):
            raise ValueError("commit must be a upo_fast.sampling.commit_rules.CommitRule (Schedule(), Threshold(t), "
                             f"Factor(f), ScheduleAndThreshold(t)), got {commit!r}")
        return commit
    if threshold is not None:
        return Threshold(threshold)
    if factor is not None:
        return Factor(factor)
    return Schedule()
