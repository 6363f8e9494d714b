"""95% intervals for the demo's figures: a solved rate (Wilson), a mean over puzzles (normal), and a paired
difference of two orders on the same puzzles (normal interval of the per-puzzle differences, as
``benchmarks/upo_results.py`` reports it, with the puzzles only one of the two solves)."""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959964  # two-sided 95% normal quantile


def wilson(successes: int, n: int) -> tuple[float, float]:
    """Wilson score interval of a proportion: stays inside [0, 1] and is sensible at 0 or n successes, where the
    normal interval collapses to a point."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values, within: tuple[float, float] = (-math.inf, math.inf)) -> dict:
    """{"mean", "ci95": [low, high]} of per-puzzle values (cell accuracy, a per-puzzle Pass@k estimate), the normal
    interval cut to ``within``, the range the values can take (a fraction cannot pass 1)."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean()) if values.size else float("nan")
    half = Z95 * values.std(ddof=1) / math.sqrt(values.size) if values.size > 1 else float("nan")
    return {"mean": mean, "ci95": [max(within[0], mean - half), min(within[1], mean + half)]}


def solved_interval(solved) -> dict:
    """{"rate", "ci95"} of a [N] bool array of solved puzzles."""
    solved = np.asarray(solved, dtype=bool)
    return {"rate": float(solved.mean()) if solved.size else float("nan"),
            "ci95": list(wilson(int(solved.sum()), solved.size))}


def paired_difference(values, baseline) -> dict:
    """{"diff", "ci95", "wins", "losses"}: mean of ``values - baseline`` over the same puzzles with its normal 95%
    interval, and the puzzles where ``values`` is above (wins) or below (losses) the baseline."""
    d = np.asarray(values, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    interval = mean_interval(d, within=(-1.0, 1.0))
    return {"diff": interval["mean"], "ci95": interval["ci95"], "wins": int((d > 0).sum()),
            "losses": int((d < 0).sum())}


def points(comparison: dict) -> str:
    """A paired_difference in points: '+4.0 [-2.1, +10.1] points, 12 wins / 4 losses'."""
    low, high = comparison["ci95"]
    wins, losses = comparison["wins"], comparison["losses"]
    return (f"{100 * comparison['diff']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] points, "
            f"{wins} win{'s' * (wins != 1)} / {losses} loss{'es' * (losses != 1)}")


def excludes_zero(comparison: dict) -> bool:
    low, high = comparison["ci95"]
    return bool(low > 0 or high < 0)
