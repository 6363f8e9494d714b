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
    LearnedCommit(p)      the policy's learned rule (``commit="policy"``): the scorer's first pick plus every
                          candidate whose commit probability, from the policy's commit net (``policy.CommitNet``:
                          it reads what the order reads, never a solution), is >= p (None: the policy's own
                          ``config.commit_threshold``, chosen on validation puzzles); the schedule is ignored

``commit=`` also takes a spec string (``upo_fast.names.parse_parallel``, the command line's ``--parallel``):
"schedule", "policy", "policy=0.9", "threshold=0.99", "factor=1.0".

A rule that does not follow the schedule, or adds commits, may fill the region early: the loop then checks once
per step whether anything is left (``ends_early``), its one host read inside a block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from upo_fast.kernels.vocab_stats import VocabStats
from upo_fast.names import parse_parallel
from upo_fast.sampling.schedules import factor_select
from upo_fast.validation import check_finite


@dataclass(frozen=True)
class CommitRule:
    """The schedule's count, nothing added (see the module docstring for the other rules)."""

    follows_schedule = True
    needs_policy = False  # reads the policy's commit net: ``extra`` gets its ``commit_logits``

    @property
    def ends_early(self) -> bool:
        return not self.follows_schedule or type(self).extra is not CommitRule.extra

    def bind(self, policy) -> CommitRule:
        """The rule the loop runs, given the call's policy (the learned rule takes the policy's threshold)."""
        return self

    def extra(self, order: torch.Tensor, candidates: torch.Tensor, stats: VocabStats,
              commit_logits: torch.Tensor | None = None) -> torch.Tensor | None:
        """[B, W] bool candidates committed besides the scorer's picks; ``order``: the scorer's scores (higher
        first), ``stats``: the step's token statistics (``confidence``: each position's token confidence, ``token``:
        the token it would take), ``commit_logits``: the policy's commit net's
        log-odds (given to a rule that ``needs_policy``). None: nothing added."""
        return None


Schedule = CommitRule


@dataclass(frozen=True)
class Threshold(CommitRule):
    """Fast-dLLM's threshold rule (``threshold=``): the first pick plus every candidate with confidence >= t."""

    threshold: float
    follows_schedule = False

    def __post_init__(self):
        check_finite(self.threshold, "threshold", low=0, low_inclusive=False, high=1)

    def extra(self, order, candidates, stats, commit_logits=None):
        return candidates & (stats.confidence >= self.threshold)


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

    def extra(self, order, candidates, stats, commit_logits=None):
        return factor_select(order, candidates, stats.confidence, self.factor)


@dataclass(frozen=True)
class LearnedCommit(CommitRule):
    """The policy's learned rule (``commit="policy"``): the first pick plus every candidate whose commit
    probability is >= ``threshold`` (None: the policy's ``config.commit_threshold``)."""

    threshold: float | None = None
    follows_schedule = False
    needs_policy = True

    def __post_init__(self):
        check_finite(self.threshold, "threshold", low=0, low_inclusive=False, high=1, allow_none=True)
        if self.threshold == 1:
            raise ValueError("threshold of the learned commit rule must be < 1 (a probability), got 1")

    def bind(self, policy) -> LearnedCommit:
        """This rule with the policy's own threshold filled in when none was given (the policy the loop runs)."""
        if not getattr(policy, "has_commit_head", False):
            raise ValueError("commit='policy' (the learned commit rule) needs policy=<a policy with a commit net>; "
                             + ("none was given" if policy is None else "this one has none (config.commit_head is "
                                "False): train one with `upo-fast pretrain-commit`"))
        return self if self.threshold is not None else LearnedCommit(policy.config.commit_threshold)

    def extra(self, order, candidates, stats, commit_logits=None):
        if commit_logits is None:
            raise ValueError("the learned commit rule needs the policy's commit logits")
        cut = math.log(self.threshold / (1 - self.threshold))  # log-odds: no sigmoid inside the step
        return candidates & (commit_logits >= cut)


def parse_commit(spec: str) -> CommitRule:
    """A rule from its spec string (``upo_fast.names.parse_parallel``), each value checked by its rule."""
    name, value = parse_parallel(spec)
    if name == "schedule":
        return Schedule()
    if name == "policy":
        return LearnedCommit(value)
    return Threshold(value) if name == "threshold" else Factor(value)


def commit_rule(commit: CommitRule | str | None, threshold: float | None, factor: float | None) -> CommitRule:
    """The rule of a call from its ``commit`` (a rule or its spec string), ``threshold`` and ``factor`` arguments
    (at most one of them)."""
    given = [name for name, value in (("commit", commit), ("threshold", threshold), ("factor", factor))
             if value is not None]
    if len(given) > 1:
        raise ValueError(f"pass at most one of commit, threshold and factor, got {' and '.join(given)}")
    if isinstance(commit, str):
        return parse_commit(commit)
    if commit is not None:
        if not isinstance(commit, CommitRule):
            raise ValueError("commit must be a upo_fast.sampling.commit_rules.CommitRule (Schedule(), Threshold(t), "
                             "Factor(f), ScheduleAndThreshold(t), LearnedCommit(p)) or a spec string (schedule, "
                             f"policy, policy=P, threshold=T, factor=F), got {commit!r}")
        return commit
    if threshold is not None:
        return Threshold(threshold)
    if factor is not None:
        return Factor(factor)
    return Schedule()
