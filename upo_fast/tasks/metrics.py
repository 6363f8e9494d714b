"""Metrics shared by the task evaluations (grid puzzles and math problems)."""

from __future__ import annotations

import numpy as np


def pass_at_k(num_samples: int, num_correct, k: int) -> float:
    """Unbiased Pass@k (Chen et al., 2021) averaged over problems: the chance that at least one of k samples,
    drawn without replacement from the ``num_samples`` made per problem, is correct.

    num_correct: [P] ints, how many of the ``num_samples`` samples of each problem were correct. Per problem the
    estimate is 1 - C(n - c, k) / C(n, k), computed as the product prod_{i = n - c + 1}^{n} (1 - k / i), which
    stays in floating-point range for any n (the binomials themselves overflow past n ~ 1000). Returns 0.0 for
    no problems.
    """
    if not isinstance(num_samples, (int, np.integer)) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= num_samples:
        raise ValueError(f"k must be an int in [1, num_samples={num_samples}], got {k!r}")
    correct = np.asarray(num_correct).reshape(-1)
    if correct.size == 0:
        return 0.0
    if not np.issubdtype(correct.dtype, np.integer) and not np.issubdtype(correct.dtype, np.bool_):
        if not np.all(correct == np.round(correct)):
            raise ValueError("num_correct must hold whole counts per problem")
    correct = correct.astype(np.int64)
    if correct.min() < 0 or correct.max() > num_samples:
        raise ValueError(f"num_correct must lie in [0, num_samples={num_samples}], got values in "
                         f"[{correct.min()}, {correct.max()}]")
    n = num_samples
    estimates = np.empty(correct.shape, dtype=np.float64)
    for index, c in enumerate(correct.tolist()):
        if n - c < k:  # every k-subset holds a correct sample
            estimates[index] = 1.0
        else:
            estimates[index] = 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))
    return float(estimates.mean())
