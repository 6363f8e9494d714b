"""Task and scorer names, with the standard library only, so that the command line checks them before it loads
anything heavy (``upo-fast --help`` and a bad argument must answer in well under a second; torch alone takes
seconds to import).

The names' homes are ``upo_fast.tasks`` (``TASKS``, ``TEXT_TASKS``, ``is_grid_task``) and ``upo_fast.sampling.scorers``
(the ``Scorer`` registry ``SCORERS``, ``ALIASES``, ``resolve_scorer``), which import torch and numpy. The lists
here mirror them by hand, because deriving them would import torch at parse time; ``tests/test_cli_startup.py``
checks that they are equal: a new task or scorer is added in both places (its name only, here). The aliases live
here alone (``upo_fast.sampling.scorers.ALIASES`` is this dict).
"""

from __future__ import annotations

import re

GRID_TASKS = ("sudoku4", "sudoku9", "zebra")
TEXT_TASKS = ("gsm8k", "math500", "arith")
_ZEBRA_SIZE = re.compile(r"zebra(\d+)x(\d+)")

SCORERS = ("random", "max_confidence", "margin", "entropy", "topk", "softmax_confidence", "origin", "policy")
SCORER_ALIASES = {"low_confidence": "max_confidence", "topk_margin": "margin", "maskgit_plus": "max_confidence"}


PARALLEL_RULES = ("schedule", "policy", "threshold", "factor")  # the commit rules a --parallel spec names


def parse_parallel(spec: str) -> tuple[str, float | None]:
    """A commit-rule spec -> (rule, value): ``schedule`` (one position a step, or the step schedule's count),
    ``policy`` / ``policy=P`` (the policy's learned rule; P overrides its commit threshold), ``threshold=T``,
    ``factor=F`` (Fast-dLLM's rules). The value's range is checked where the rule is made
    (``upo_fast.sampling.commit_rules``); here only the spelling, so the command line answers before torch loads."""
    name, sep, value = spec.partition("=") if isinstance(spec, str) else ("", "", "")
    number = None
    if sep:
        try:
            number = float(value)
        except ValueError:
            number = None
    valid = (name in ("schedule", "policy") and not sep) or (name in PARALLEL_RULES[1:] and number is not None)
    if not valid:
        raise ValueError(f"parallel rule {spec!r} is not one of: schedule, policy, policy=P (a commit probability "
                         "in (0, 1)), threshold=T (in (0, 1]), factor=F (> 0)")
    return name, number


def is_grid_task(name: str) -> bool:
    """``sudoku4``, ``sudoku9``, ``zebra`` or ``zebraHxA`` (H houses, A attributes)."""
    return name in GRID_TASKS or bool(isinstance(name, str) and _ZEBRA_SIZE.fullmatch(name))


def check_scorer(name: str) -> str:
    """The canonical scorer name, or the ValueError ``upo_fast.sampling.scorers.resolve_scorer`` raises."""
    canonical = SCORER_ALIASES.get(name, name)
    if canonical not in SCORERS:
        valid = sorted(set(SCORERS) | set(SCORER_ALIASES))
        raise ValueError(f"unknown scorer {name!r}; valid scorers: {', '.join(valid)}")
    return canonical
