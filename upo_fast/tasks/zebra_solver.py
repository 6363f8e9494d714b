"""Exact solution counting for Zebra puzzles (used by the generator and the JSON loader): the clue relations and
a backtracking search over one permutation per attribute. See ``upo_fast.tasks.zebra`` for the puzzle format."""

from __future__ import annotations

import itertools
from enum import IntEnum

import numpy as np


class Relation(IntEnum):
    SAME = 0  # x and y in the same house (different attributes)
    NOT_SAME = 1
    LEFT_OF = 2  # house(x) + 1 == house(y)
    NEXT_TO = 3  # |house(x) - house(y)| == 1
    BEFORE = 4  # house(x) < house(y)
    AT = 5  # house(x) == y (a house index)
    NOT_AT = 6


R = Relation
HOUSE_RELATIONS = (R.AT, R.NOT_AT)


def relation_holds(rel, hx, hy) -> np.ndarray:
    """Elementwise bool: relation ``rel`` holds for x in house ``hx`` and y in house ``hy`` (for AT / NOT_AT,
    ``hy`` is the clue's house). The one definition of the relations; the solver's tables are built from it."""
    rel, hx, hy = np.broadcast_arrays(np.asarray(rel), np.asarray(hx), np.asarray(hy))
    same = hx == hy
    return np.select([rel == R.SAME, rel == R.NOT_SAME, rel == R.LEFT_OF, rel == R.NEXT_TO, rel == R.BEFORE,
                      rel == R.AT, rel == R.NOT_AT],
                     [same, ~same, hx + 1 == hy, np.abs(hx - hy) == 1, hx < hy, same, ~same], default=False)


class _Tables:
    """Per house count H: the H! permutations as bitsets. ``perms[p][v]`` is the house of value v under
    permutation p; ``in_house[v][m]`` is the bitset of permutations putting v in a house of the mask m;
    ``towards[r][hx]`` is the mask of houses y may take when x is in hx, ``backwards[r][hy]`` the reverse."""

    _cache: dict[int, _Tables] = {}

    def __init__(self, h: int):
        self.perms = list(itertools.permutations(range(h)))
        base = [[sum(1 << p for p, perm in enumerate(self.perms) if perm[v] == k) for k in range(h)]
                for v in range(h)]
        self.in_house = [[sum(base[v][k] for k in range(h) if m >> k & 1) for m in range(1 << h)]
                         for v in range(h)]
        self.full = (1 << len(self.perms)) - 1
        houses = np.arange(h)
        ok = relation_holds(np.arange(len(R))[:, None, None], houses[None, :, None], houses[None, None, :])
        weights = 1 << houses
        self.towards = (ok * weights[None, None, :]).sum(2).tolist()  # [r][hx] -> mask over hy
        self.backwards = (ok * weights[None, :, None]).sum(1).tolist()  # [r][hy] -> mask over hx
        self.within: dict[tuple[int, int, int], int] = {}  # (r, v, w) -> perms where r holds for v, w (lazy)

    @classmethod
    def get(cls, h: int) -> _Tables:
        if h not in cls._cache:
            cls._cache[h] = cls(h)
        return cls._cache[h]

    def pair(self, r: int, v: int, w: int) -> int:
        if (r, v, w) not in self.within:
            self.within[r, v, w] = sum(1 << p for p, perm in enumerate(self.perms)
                                       if relation_holds(r, perm[v], perm[w]))
        return self.within[r, v, w]


def search(clues, givens, h: int, a_count: int, limit: int):
    """Count solutions up to ``limit`` by backtracking attribute by attribute with forward checking.

    Each attribute keeps a bitset of the permutations still possible; placing one attribute narrows the bitsets
    of the attributes it shares clues with, and the attribute with fewest candidates goes next. ``clues`` is a
    list of (r, x, y) with x, y valid; ``givens`` [A, H] (0 = blank) or None. Returns ``(count, first [A, H])``.
    """
    t = _Tables.get(h)
    cand = [t.full] * a_count
    links: list[list[tuple]] = [[] for _ in range(a_count)]
    if givens is not None:
        for a, k in zip(*np.nonzero(givens)):
            cand[a] &= t.in_house[givens[a, k] - 1][1 << k]
    for r, x, y in clues:
        a, v = divmod(x, h)
        if r in HOUSE_RELATIONS:
            cand[a] &= t.in_house[v][t.backwards[r][y]]
            continue
        b, w = divmod(y, h)
        if a == b:
            cand[a] &= t.pair(r, v, w)
        else:  # x placed -> narrow y's attribute, and the other way round
            links[a].append((v, t.towards[r], b, w))
            links[b].append((w, t.backwards[r], a, v))
    if not all(cand):
        return 0, None
    chosen = [-1] * a_count
    count, first = 0, None

    def recurse(cand: list[int], left: int) -> bool:  # True once `limit` solutions are found
        nonlocal count, first
        a = min((i for i in range(a_count) if chosen[i] < 0), key=lambda i: cand[i].bit_count())
        bits = cand[a]
        while bits:
            low = bits & -bits
            bits ^= low
            p = low.bit_length() - 1
            houses = t.perms[p]
            new = list(cand)
            for v, table, b, w in links[a]:
                if chosen[b] < 0:  # links to placed attributes were checked when those were placed
                    new[b] &= t.in_house[w][table[houses[v]]]
                    if not new[b]:
                        break
            else:
                chosen[a] = p
                if left == 1:
                    count += 1
                    if first is None:
                        first = [t.perms[q] for q in chosen]
                    stop = count >= limit
                else:
                    stop = recurse(new, left - 1)
                chosen[a] = -1
                if stop:
                    return True
        return False

    recurse(cand, a_count)
    if first is not None:  # house of each value -> value of each house
        first = np.argsort(np.array(first), axis=1).astype(np.int64) + 1
    return count, first
