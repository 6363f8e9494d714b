"""Counting and finding Sudoku solutions (any n = box**2): the backtracking search that ``sudoku.py`` uses to solve,
check uniqueness and generate grids. Plain Python over bitmasks, no model code."""

from __future__ import annotations

import numpy as np


def search(cells: list[int], n: int, box: int, limit: int, rng: np.random.Generator | None = None):
    """Backtracking over bitmask candidates, always branching on the most constrained blank cell.

    ``cells`` is a flat list (0 = blank). Returns ``(count, first_solution)`` where ``count`` stops at
    ``limit``; with ``rng`` the digits of each branch are tried in random order (used to make random grids).
    """
    full = (1 << n) - 1
    rows, cols, boxes = [0] * n, [0] * n, [0] * n
    blanks = []
    for index, value in enumerate(cells):
        r, c = divmod(index, n)
        b = (r // box) * box + c // box
        if value == 0:
            blanks.append((index, r, c, b))
            continue
        bit = 1 << (value - 1)
        if (rows[r] | cols[c] | boxes[b]) & bit:  # contradictory givens: no solution at all
            return 0, None
        rows[r] |= bit
        cols[c] |= bit
        boxes[b] |= bit
    grid = list(cells)
    count = 0
    first = None

    def recurse(k: int) -> bool:  # returns True once `limit` solutions are found (stop everything)
        nonlocal count, first
        if k == len(blanks):
            count += 1
            if first is None:
                first = list(grid)
            return count >= limit
        # Most-constrained-cell heuristic: keeps the tree tiny on the nearly-full grids we mostly see.
        best, best_mask, best_size = k, 0, n + 1
        for i in range(k, len(blanks)):
            _, r, c, b = blanks[i]
            mask = full & ~(rows[r] | cols[c] | boxes[b])
            size = mask.bit_count()
            if size < best_size:
                best, best_mask, best_size = i, mask, size
                if size <= 1:
                    break
        if best_size == 0:
            return False
        blanks[k], blanks[best] = blanks[best], blanks[k]
        index, r, c, b = blanks[k]
        bits = [1 << d for d in range(n) if best_mask >> d & 1]
        if rng is not None and len(bits) > 1:
            bits = [bits[j] for j in rng.permutation(len(bits))]
        for bit in bits:
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            grid[index] = bit.bit_length()
            stop = recurse(k + 1)
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
            grid[index] = 0
            if stop:
                return True
        return False

    recurse(0)
    return count, first
