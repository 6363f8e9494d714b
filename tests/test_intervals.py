"""The demo's 95% intervals (``upo_fast.evaluation.intervals``)."""

import numpy as np
import pytest

from upo_fast.evaluation.intervals import (
    excludes_zero,
    mean_interval,
    paired_difference,
    points,
    solved_interval,
    wilson,
)


def test_wilson_matches_known_values_and_stays_in_range():
    # Wilson's interval holds the p with |p_hat - p| <= z sqrt(p (1 - p) / n): the roots of a quadratic in p
    for successes, n in ((72, 100), (3, 10), (0, 10)):
        p_hat, z2 = successes / n, 1.959964 ** 2
        roots = np.roots([1 + z2 / n, -(2 * p_hat + z2 / n), p_hat ** 2])
        np.testing.assert_allclose(wilson(successes, n), sorted(roots.real), atol=1e-9)
    assert wilson(0, 10)[0] == 0.0  # the normal interval would be [0, 0]
    assert wilson(10, 10)[1] == pytest.approx(1.0) and np.isnan(wilson(0, 0)[0])
    assert solved_interval([True, False, True, True])["rate"] == 0.75


def test_mean_interval_is_cut_to_the_range_of_the_values():
    values = np.array([1.0, 1.0, 1.0, 0.2])
    free = mean_interval(values)
    cut = mean_interval(values, within=(0.0, 1.0))
    assert free["ci95"][1] > 1 and cut["ci95"][1] == 1.0 and cut["ci95"][0] == free["ci95"][0]
    half = 1.959964 * values.std(ddof=1) / 2
    assert free["ci95"][0] == pytest.approx(values.mean() - half)


def test_paired_difference_counts_wins_and_losses():
    a = np.array([1, 1, 0, 1, 0, 1], dtype=bool)
    b = np.array([0, 1, 0, 0, 1, 1], dtype=bool)
    c = paired_difference(a, b)
    assert c["diff"] == pytest.approx(1 / 6) and (c["wins"], c["losses"]) == (2, 1)
    assert c["ci95"][0] < 0 < c["ci95"][1] and not excludes_zero(c)
    assert points(c) == f"+16.7 [{100 * c['ci95'][0]:+.1f}, {100 * c['ci95'][1]:+.1f}] points, 2 wins / 1 loss"
    sure = paired_difference(np.ones(50), np.zeros(50))
    assert excludes_zero(sure) and sure["ci95"][1] <= 1.0
