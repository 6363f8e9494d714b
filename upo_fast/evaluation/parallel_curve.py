"""Solved rate against MDM forwards under parallel unmasking, per order and commit rule (``upo-fast
parallel-curve``), and the paired comparison of the policy's learned rule with the best heuristic rule at the same
budget (issue 32).

What a point measures: the same puzzles filled once, greedily (token argmax, position temperature 0), with one
order (a scorer: ``max_confidence``, ``policy``, any other) and one commit rule (``upo_fast.sampling.commit_rules``)
at one knob value. It records ``forwards`` (mean MDM forwards per puzzle: the cost, fewer = more cells committed per
step), ``solved_rate`` and ``cell_accuracy`` (means over puzzles), and keeps the per-puzzle arrays for the paired
intervals. The rule families (``rule``), each swept by its knob:

    one         one cell a step, no rule (knob None): each order's slowest point
    threshold   Fast-dLLM's threshold rule ``Threshold(t)``, t in (0, 1]: a lower t commits more a step
    factor      Fast-dLLM's factor rule ``Factor(f)``, f > 0: a higher f commits more a step
    learned     the policy's learned rule ``LearnedCommit(p)``, p in (0, 1): every candidate whose commit
                probability (the policy's commit net) is >= p; a lower p commits more a step. It reads the
                policy's commit net whatever the order, so it needs a policy with one (``policy.has_commit_head``)

The comparison (``compare``): for each learned point, the heuristic point (threshold or factor, either order) with
forwards <= the learned point's and the highest solved rate (then the fewest forwards), and the paired difference
of the per-puzzle solved (learned minus that heuristic) with its normal 95% interval
(``intervals.paired_difference``). Issue 32's goal is diff >= 0 at every learned point.

Point ``label``: "<order> <commit>", where ``commit`` is the point's spec string (``schedule``, ``threshold=T``,
``factor=F``, ``policy=P``), so that ``upo-fast eval --scorer ORDER --parallel COMMIT`` reruns one point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from upo_fast.evaluation.grids import solve_puzzles
from upo_fast.evaluation.intervals import paired_difference
from upo_fast.evaluation.intervals import points as format_points
from upo_fast.sampling.commit_rules import Factor, LearnedCommit, Threshold

DEFAULT_KNOBS = {
    "threshold": (0.999, 0.99, 0.95, 0.9, 0.8, 0.7),
    "factor": (0.5, 1.0, 2.0, 3.0, 4.0),
    "learned": (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999),
}
RULES = {"threshold": Threshold, "factor": Factor, "learned": LearnedCommit}  # family -> rule class
SPEC = {"threshold": "threshold", "factor": "factor", "learned": "policy"}  # family -> spec name (--parallel)
HEURISTICS = ("threshold", "factor")  # the families the learned rule is compared with


@dataclass
class CurvePoint:
    """One (order, rule, knob) run over the puzzles; ``solved`` and ``cells`` are per puzzle (not in the JSON)."""

    order: str
    rule: str
    knob: float | None
    forwards: float
    solved: np.ndarray = field(repr=False)
    cells: np.ndarray = field(repr=False)
    seconds: float = 0.0

    @property
    def commit(self) -> str:
        return "schedule" if self.knob is None else f"{SPEC[self.rule]}={self.knob:g}"

    @property
    def label(self) -> str:
        return f"{self.order} {self.commit}"

    @property
    def solved_rate(self) -> float:
        return float(self.solved.mean())

    def as_dict(self) -> dict:
        return {"order": self.order, "rule": self.rule, "knob": self.knob, "commit": self.commit, "label": self.label,
                "forwards": self.forwards, "solved_rate": self.solved_rate,
                "cell_accuracy": float(self.cells.mean()), "seconds": self.seconds}


def check_rules(rules: dict[str, list[float]], policy) -> dict[str, list]:
    """{family: [knob, ...]} -> {family: [(knob, rule), ...]}: every rule made (its knob checked) before any work.
    A ValueError names an unknown family, an empty sweep, a bad knob, or the learned rule without a commit net."""
    made = {}
    for family, knobs in rules.items():
        if family not in RULES:
            raise ValueError(f"unknown rule family {family!r}; valid: {', '.join(RULES)}")
        if not knobs:
            raise ValueError(f"the {family} rule needs at least one knob value")
        made[family] = [(float(k), RULES[family](float(k))) for k in knobs]
        if family == "learned":
            made[family][0][1].bind(policy)  # a ValueError naming what is missing when there is no commit net
    return made


def run_point(model, task, puzzles, solutions, order: str, rule: str, knob, commit, *, policy=None,
              batch_size: int = 250, seed: int = 0) -> CurvePoint:
    """Fill ``puzzles`` with ``order`` and the commit rule ``commit`` (None: one cell a step) and measure it. The
    policy goes to the sampler only when the order or the rule reads it; the policy order is greedy."""
    options = {}
    if order == "policy" or rule == "learned":
        options["policy"] = policy
    if order == "policy":
        options["position_temperature"] = 0.0
    if commit is not None:
        options["commit"] = commit
    start = time.perf_counter()
    grids, forwards = solve_puzzles(model, task, puzzles, order, batch_size=batch_size, seed=seed, with_steps=True,
                                    **options)
    return CurvePoint(order, rule, knob, float(np.mean(forwards)),
                      np.asarray(task.is_solved(grids, puzzles, solutions), dtype=bool),
                      np.asarray(task.cell_accuracy(grids, puzzles, solutions), dtype=np.float64),
                      round(time.perf_counter() - start, 3))


def parallel_curve(model, task, puzzles, solutions, *, orders: list[str], rules: dict[str, list[float]],
                   policy=None, batch_size: int = 250, seed: int = 0, log=None) -> list[CurvePoint]:
    """Every (order, rule, knob) point: per order, the one-cell-a-step point, then each family of ``rules``
    ({"threshold" | "factor" | "learned": [knob, ...]}) at each knob, in the order given. ``policy``: needed by the
    ``policy`` order and by the learned rule (which needs its commit net). ``log(line)`` is called per point."""
    made = check_rules(rules, policy)
    if "policy" in orders and policy is None:
        raise ValueError("the policy order needs policy=<a saved UnmaskingPolicy>")
    curve = []
    for order in orders:
        for family, knobs in [("one", [(None, None)]), *made.items()]:
            for knob, commit in knobs:
                curve.append(run_point(model, task, puzzles, solutions, order, family, knob, commit, policy=policy,
                                       batch_size=batch_size, seed=seed))
                if log is not None:
                    log(format_point(curve[-1]))
    return curve


def compare(curve: list[CurvePoint]) -> list[dict]:
    """Per learned point: the best heuristic point (threshold or factor, any order) with forwards <= its own
    (highest solved rate, then fewest forwards) and the paired difference of per-puzzle solved, learned minus
    heuristic: {"learned", "forwards", "solved_rate", "baseline" (None when no heuristic point is that cheap),
    "baseline_forwards", "baseline_solved_rate", "diff", "ci95", "wins", "losses"}."""
    heuristics = [p for p in curve if p.rule in HEURISTICS]
    out = []
    for point in (p for p in curve if p.rule == "learned"):
        cheaper = [h for h in heuristics if h.forwards <= point.forwards]
        row = {"learned": point.label, "forwards": point.forwards, "solved_rate": point.solved_rate, "baseline": None}
        if cheaper:
            best = max(cheaper, key=lambda h: (h.solved_rate, -h.forwards))
            row.update(baseline=best.label, baseline_forwards=best.forwards, baseline_solved_rate=best.solved_rate,
                       **paired_difference(point.solved, best.solved))
        out.append(row)
    return out


def format_point(point: CurvePoint) -> str:
    return (f"{point.order:16s} {point.commit:16s} forwards={point.forwards:7.2f} "
            f"solved={point.solved_rate:.3f} cells={float(point.cells.mean()):.3f}")


def format_comparison(row: dict) -> str:
    """One line: the learned point against the best heuristic at its budget, in points with the 95% interval."""
    head = f"{row['learned']} ({row['forwards']:.2f} forwards, solved {row['solved_rate']:.3f})"
    if row["baseline"] is None:
        return f"{head}: no threshold/factor point at or below {row['forwards']:.2f} forwards"
    return (f"{head} vs {row['baseline']} ({row['baseline_forwards']:.2f} forwards, solved "
            f"{row['baseline_solved_rate']:.3f}): {format_points(row)}")


def report(task_name: str, n: int, curve: list[CurvePoint], comparisons: list[dict]) -> dict:
    """The JSON report: {"task", "n", "orders", "rules" (the families run), "points": [CurvePoint.as_dict()],
    "comparisons": compare(curve)}."""
    return {"task": task_name, "n": int(n), "orders": list(dict.fromkeys(p.order for p in curve)),
            "rules": list(dict.fromkeys(p.rule for p in curve)), "points": [p.as_dict() for p in curve],
            "comparisons": comparisons}


__all__ = ["DEFAULT_KNOBS", "CurvePoint", "check_rules", "run_point", "parallel_curve", "compare", "format_point",
           "format_comparison", "report"]
