"""Zebra (Einstein) logic puzzles as an in-place infilling task for a small masked diffusion model.

H houses stand in a row (house 0 leftmost); each of A attributes (colour, nationality, ...) gives each of its H
values to exactly one house. The solution is a grid [A, H] with ``grid[a, h]`` = value (1..H) of attribute a in
house h. A puzzle is a list of clues true of the solution, which they (with the puzzle's givens, 0 = blank)
determine uniquely. A clue is ``(relation, x, y)``: x is an item (attribute a, value v) coded ``a*H + v - 1``; y is
another item, or a house index for AT / NOT_AT (see ``Relation``).

Tokens (``clue_format="token"``, the default): ``max_clues`` clue slots of one token each, the id of the whole
clue ``clue_offset + (relation * A*H + x) * A*H + y`` (symmetric relations stored with x <= y; unused slots are
``pad_id``), then the grid row-major over [A, H], starting at ``grid_offset = max_clues``. Ids: 0 pad, 1..H values
(a cell of value v is token v: its position says the attribute), then the clue ids, and ``mask_id`` last. One id per
clue means the model never has to bind a clue's parts: with three tokens per clue (``clue_format="triplet"``:
relation, item, item-or-house, with their own id ranges) a 0.8M-parameter TinyMDM trained on the CPU did not learn
to use the clues at all. The model unmasks the grid in place; the clue prefix is always given.
"""

from __future__ import annotations

import numpy as np
import torch

from upo_fast.tasks import zebra_io
from upo_fast.tasks.zebra_io import ATTRIBUTES, ZebraPuzzles
from upo_fast.tasks.zebra_solver import HOUSE_RELATIONS, Relation, relation_holds, search

R = Relation
# Draw weights: SAME and adjacency clues link attributes and make chains of inference; AT pins an item outright,
# so it stays rare (a puzzle of AT clues is a lookup, not a deduction).
_WEIGHTS = {R.SAME: 0.3, R.NOT_SAME: 0.1, R.LEFT_OF: 0.15, R.NEXT_TO: 0.2, R.BEFORE: 0.1, R.AT: 0.05, R.NOT_AT: 0.1}
_SYMMETRIC = (R.SAME, R.NOT_SAME, R.NEXT_TO)
# Clue sets are drawn until the solution is unique and not minimized by default: minimal sets (4x4: ~10 clues)
# leave no cell that one clue decides, so each step needs a chain of deductions, and a 0.8M TinyMDM trained on the
# CPU stayed at chance on them; the unminimized sets (~19 clues) keep the puzzle unique and learnable.
MINIMAL_CLUES = False
CLUE_FORMATS = ("token", "triplet")  # one token per clue (default: nothing to bind), or relation, x, y tokens
_MAX_ATTEMPTS = 1000  # solutions tried per puzzle before giving up (only a too-small max_clues gets there)
_POOL_SIZE = 256
_POOL_SEED = 31337


class ZebraTask:
    """Zebra puzzles with ``houses`` H in [2, 6] and ``attributes`` A in [2, 6] (see the module docstring)."""

    pad_id: int = 0
    pool_size: int = _POOL_SIZE  # base puzzles that training_batch augments
    _pools: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # shared by instances of one size

    def __init__(self, houses: int = 4, attributes: int = 4, max_clues: int | None = None,
                 clue_format: str = "token", minimal_clues: bool = MINIMAL_CLUES):
        for name, value in (("houses", houses), ("attributes", attributes)):
            if not isinstance(value, (int, np.integer)) or not 2 <= value <= 6:
                raise ValueError(f"{name} must be an integer in [2, 6], got {value!r}")
        h, a = int(houses), int(attributes)
        # A*H slots: minimal clue sets from make_puzzles stay below it (4x4: mean 10, max 14 in 2000 puzzles;
        # 6x6: mean 24, max 27), and every slot costs 3 tokens of the model's sequence.
        if max_clues is None:  # non-minimal sets are longer: 4x4 mean 19, 90th percentile 27
            max_clues = a * h if minimal_clues else 2 * a * h
        if not isinstance(max_clues, (int, np.integer)) or max_clues < 1:
            raise ValueError(f"max_clues must be a positive integer, got {max_clues!r}")
        if clue_format not in CLUE_FORMATS:
            raise ValueError(f"clue_format must be one of {', '.join(CLUE_FORMATS)}, got {clue_format!r}")
        self.houses, self.attributes, self.max_clues = h, a, int(max_clues)
        self.clue_format = clue_format
        self.minimal_clues = bool(minimal_clues)
        self.name = "zebra" if (h, a) == (4, 4) else f"zebra{h}x{a}"
        self.grid_shape = (a, h)
        self.num_cells = a * h
        self.grid_offset = (1 if clue_format == "token" else 3) * self.max_clues
        self.seq_len = self.grid_offset + self.num_cells
        self.relation_offset = h + 1
        if clue_format == "token":  # one id per whole clue (relation, x, y): clue_offset + (r * A*H + x) * A*H + y
            self.clue_offset = self.relation_offset
            self.item_offset = self.house_offset = None
            self.mask_id = self.clue_offset + len(Relation) * (a * h) ** 2
        else:
            self.item_offset = self.relation_offset + len(Relation)
            self.house_offset = self.item_offset + a * h
            self.mask_id = self.house_offset + h
        self.vocab_size = self.mask_id + 1
        self.default_blanks = self.max_blanks = self.num_cells
        self.attribute_names = [name for name, _, _ in ATTRIBUTES[:a]]
        self.value_names = [list(values[:h]) for _, _, values in ATTRIBUTES[:a]]

    def __repr__(self) -> str:
        return f"ZebraTask(houses={self.houses}, attributes={self.attributes}, max_clues={self.max_clues})"

    # -------------------------------------------------------------------------------------------- checks
    def _grids(self, array, name: str) -> np.ndarray:
        """[N, A, H] int64 from an array / tensor / list of grids (a single [A, H] grid becomes N = 1)."""
        if isinstance(array, torch.Tensor):
            array = array.detach().cpu().numpy()
        grids = np.asarray(array, dtype=np.int64)
        grids = grids[None] if grids.ndim == 2 else grids
        if grids.ndim != 3 or grids.shape[1:] != self.grid_shape:
            raise ValueError(f"{name} must have shape [N, {self.attributes}, {self.houses}], got {grids.shape}")
        if grids.size and (grids.min() < 0 or grids.max() > self.houses):
            raise ValueError(f"{name} must hold values 0..{self.houses}")
        return grids

    def _clue_list(self, clues, name: str = "clues") -> list[tuple[int, int, int]]:
        """[C, 3] clues -> list of (r, x, y), rows with relation -1 dropped; bad ids raise ValueError."""
        array = np.asarray(clues, dtype=np.int64).reshape(-1, 3) if len(clues) else np.zeros((0, 3), np.int64)
        out = []
        for r, x, y in array[array[:, 0] != -1].tolist():
            y_limit = self.houses if r in HOUSE_RELATIONS else self.num_cells
            if not (0 <= r < len(R) and 0 <= x < self.num_cells and 0 <= y < y_limit):
                raise ValueError(f"{name}: bad clue {[r, x, y]}: need relation 0..{len(R) - 1}, x an item "
                                 f"0..{self.num_cells - 1}, y an item (or a house 0..{self.houses - 1} for AT/NOT_AT)")
            out.append((r, x, y))
        return out

    # ------------------------------------------------------------------------------------------- solving
    def count_solutions(self, clues, givens=None, limit: int = 2) -> int:
        """Number of solutions of one puzzle (clues [C, 3], -1 rows ignored; givens [A, H]), stopping at
        ``limit``."""
        if not isinstance(limit, (int, np.integer)) or limit < 1:
            raise ValueError(f"limit must be an integer >= 1, got {limit!r}")
        givens = None if givens is None else self._grids(givens, "givens")[0]
        return search(self._clue_list(clues), givens, self.houses, self.attributes, limit)[0]

    def solve(self, clues, givens=None) -> np.ndarray | None:
        """One solution [A, H] int64 of a puzzle, or None if it has none."""
        givens = None if givens is None else self._grids(givens, "givens")[0]
        return search(self._clue_list(clues), givens, self.houses, self.attributes, 1)[1]

    def satisfies(self, pred, puzzles: ZebraPuzzles) -> np.ndarray:
        """[N] bool: each attribute row of ``pred`` is a permutation of 1..H, and every clue and given holds."""
        pred = self._grids(pred, "pred")
        num, h = len(pred), self.houses
        if len(puzzles) != num:
            raise ValueError(f"pred has {num} grids but puzzles has {len(puzzles)}")
        ok = (np.sort(pred, axis=2) == np.arange(1, h + 1)).all(axis=(1, 2))
        ok &= ((puzzles.givens == 0) | (pred == puzzles.givens)).all(axis=(1, 2))
        # house of each item (meaningful only where the rows are permutations; other rows are already False)
        where = np.zeros((num, self.attributes, h), np.int64)
        np.put_along_axis(where, np.clip(pred - 1, 0, h - 1), np.arange(h)[None, None, :], axis=2)
        where = where.reshape(num, -1)
        rel, x, y = np.moveaxis(puzzles.clues, 2, 0)
        hx = np.take_along_axis(where, np.clip(x, 0, None), 1)
        y_house = np.isin(rel, HOUSE_RELATIONS)
        hy = np.where(y_house, y, np.take_along_axis(where, np.clip(y, 0, None), 1))
        return ok & ((rel < 0) | relation_holds(rel, hx, hy)).all(axis=1)

    # ------------------------------------------------------------------------------------------- puzzles
    def _random_clue(self, solution: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
        """A clue true of ``solution`` [A, H]: the relation by ``_WEIGHTS``, then houses and attributes."""
        h, a_count = self.houses, self.attributes
        rel = R(rng.choice(len(R), p=[_WEIGHTS[r] for r in R]))

        def item(a, k):
            return int(a * h + solution[a, k] - 1)

        if rel in HOUSE_RELATIONS:
            a, k = rng.integers(a_count), int(rng.integers(h))
            other = (k + 1 + int(rng.integers(h - 1))) % h  # any house but k
            return int(rel), item(a, k), k if rel == R.AT else other
        if rel in (R.SAME, R.NOT_SAME):  # different attributes: same-attribute values never share a house
            a, b = rng.choice(a_count, 2, replace=False)
            k1, k2 = rng.choice(h, 2, replace=False)
            if rel == R.SAME:
                k2 = k1
        else:
            a, b = rng.integers(a_count, size=2)
            if rel == R.BEFORE:
                k1, k2 = sorted(rng.choice(h, 2, replace=False))
            else:
                k1 = int(rng.integers(h - 1))
                k2 = k1 + 1
                if rel == R.NEXT_TO and rng.random() < 0.5:
                    k1, k2 = k2, k1
        return int(rel), item(a, k1), item(b, k2)

    def _one_puzzle(self, blanks: int, rng: np.random.Generator):
        """(clues list, givens, solution) or None when the minimal clue set exceeds ``max_clues``."""
        a_count, h = self.attributes, self.houses
        solution = np.stack([rng.permutation(h) + 1 for _ in range(a_count)]).astype(np.int64)
        givens = np.zeros_like(solution)
        shown = rng.choice(self.num_cells, self.num_cells - blanks, replace=False)
        givens.flat[shown] = solution.flat[shown]
        clues, seen = [], set()
        # The solution satisfies every clue, so "unique" is "at most one solution": count to 2.
        while search(clues, givens, h, a_count, 2)[0] > 1:
            clue = self._random_clue(solution, rng)
            key = (clue[0], *sorted(clue[1:])) if clue[0] in _SYMMETRIC else clue
            if key not in seen:
                seen.add(key)
                clues.append(clue)
        keep = np.ones(len(clues), dtype=bool)
        for i in rng.permutation(len(clues)) if self.minimal_clues else ():  # drop redundant clues, randomly
            keep[i] = False
            rest = [c for c, k in zip(clues, keep) if k]
            keep[i] = search(rest, givens, h, a_count, 2)[0] > 1
        clues = [c for c, k in zip(clues, keep) if k]
        if len(clues) > self.max_clues:
            return None
        return [clues[i] for i in rng.permutation(len(clues))], givens, solution

    def make_puzzles(self, num: int, blanks: int | None = None, seed: int = 0) -> tuple[ZebraPuzzles, np.ndarray]:
        """(puzzles, solutions [num, A, H]): random solutions, ``blanks`` blank cells (the others given) and a
        minimal clue set that makes the solution unique. Deterministic for a seed."""
        blanks = self.default_blanks if blanks is None else blanks
        if not isinstance(blanks, (int, np.integer)) or not 1 <= blanks <= self.max_blanks:
            raise ValueError(f"blanks={blanks!r} is out of range for {self.name}: must be in [1, {self.max_blanks}]")
        if not isinstance(num, (int, np.integer)) or num < 0:
            raise ValueError(f"num must be an integer >= 0, got {num!r}")
        rng = np.random.default_rng(seed)
        clues = np.full((num, self.max_clues, 3), -1, dtype=np.int64)
        givens = np.zeros((num, *self.grid_shape), dtype=np.int64)
        solutions = np.zeros_like(givens)
        for k in range(num):
            for _ in range(_MAX_ATTEMPTS):
                made = self._one_puzzle(int(blanks), rng)
                if made is not None:
                    break
            else:
                raise RuntimeError(f"no {self.name} puzzle with at most max_clues={self.max_clues} clues in "
                                   f"{_MAX_ATTEMPTS} tries; raise max_clues")
            clue_list, givens[k], solutions[k] = made
            if clue_list:
                clues[k, :len(clue_list)] = clue_list
        return ZebraPuzzles(clues, givens), solutions

    # ------------------------------------------------------------------------------------------ training
    def apply_symmetries(self, clues: np.ndarray, solutions: np.ndarray, rng: np.random.Generator):
        """Independent random validity-preserving symmetries of N puzzles, vectorized: clues [N, C, 3] (-1 unused)
        and solutions [N, A, H] -> the same shapes. Relabels the values of each attribute, permutes the
        attributes, mirrors the houses (half the puzzles) and shuffles the clue order (unused slots stay last)."""
        clues, solutions = np.asarray(clues, np.int64), self._grids(solutions, "solutions")
        num, a_count, h = len(solutions), self.attributes, self.houses
        rows = np.arange(num)[:, None]
        relabel = rng.random((num, a_count, h)).argsort(2)  # [n, a, old value - 1] -> new value - 1
        order = rng.random((num, a_count)).argsort(1)  # [n, old attribute] -> new attribute
        mirror = rng.random(num) < 0.5
        out = np.empty_like(solutions)
        out[rows, order] = np.take_along_axis(relabel, solutions - 1, axis=2) + 1
        out = np.where(mirror[:, None, None], out[:, :, ::-1], out)
        item_map = (order[:, :, None] * h + relabel).reshape(num, -1)  # old item -> new item
        rel, x, y = np.moveaxis(clues, 2, 0)
        used = rel >= 0
        new_x = np.take_along_axis(item_map, np.clip(x, 0, None), 1)
        new_y = np.where(np.isin(rel, HOUSE_RELATIONS), np.where(mirror[:, None], h - 1 - y, y),
                         np.take_along_axis(item_map, np.clip(y, 0, None), 1))
        # Mirrored, "x left of y" reads "y left of x"; SAME/NOT_SAME/NEXT_TO are symmetric in the houses.
        swap = mirror[:, None] & np.isin(rel, (R.LEFT_OF, R.BEFORE))
        new_x, new_y = np.where(swap, new_y, new_x), np.where(swap, new_x, new_y)
        new = np.where(used[:, :, None], np.stack([rel, new_x, new_y], axis=2), -1)
        shuffle = np.where(used, rng.random(used.shape), 2.0).argsort(1)
        return new[rows, shuffle], out

    def _pool(self) -> tuple[np.ndarray, np.ndarray]:
        key = (self.houses, self.attributes, self.max_clues, self.pool_size, self.minimal_clues)
        if key not in self._pools:  # a fixed seed of its own: training data never depends on the caller's seeds
            puzzles, solutions = self.make_puzzles(self.pool_size, seed=_POOL_SEED + 10 * self.houses + self.attributes)
            self._pools[key] = puzzles.clues, solutions
        return self._pools[key]

    def training_batch(self, batch_size: int, generator: torch.Generator):
        """(tokens [B, seq_len] long, maskable [B, seq_len] bool): pool puzzles under random symmetries with their
        solutions filled in; maskable is True exactly on the grid. Reproducible from the generator's state."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        rng = np.random.default_rng(seed)
        pool_clues, pool_solutions = self._pool()
        pick = rng.integers(0, len(pool_solutions), size=batch_size)
        clues, solutions = self.apply_symmetries(pool_clues[pick], pool_solutions[pick], rng)
        maskable = torch.zeros(batch_size, self.seq_len, dtype=torch.bool)
        maskable[:, self.grid_offset:] = True
        return self._tokens(clues, solutions), maskable

    # -------------------------------------------------------------------------------------------- tokens
    def _tokens(self, clues: np.ndarray, grids: np.ndarray) -> torch.LongTensor:
        rel, x, y = np.moveaxis(clues, 2, 0)
        if self.clue_format == "token":
            items = self.num_cells
            swap = np.isin(rel, _SYMMETRIC) & (x > y)  # SAME(x, y) = SAME(y, x): one id for both
            x, y = np.where(swap, y, x), np.where(swap, x, y)
            prefix = np.where(rel >= 0, self.clue_offset + (rel * items + x) * items + y, self.pad_id)
        else:
            y_tokens = np.where(np.isin(rel, HOUSE_RELATIONS), self.house_offset + y, self.item_offset + y)
            prefix = np.stack([self.relation_offset + rel, self.item_offset + x, y_tokens], axis=2)
            prefix = np.where((rel >= 0)[:, :, None], prefix, self.pad_id).reshape(len(grids), -1)
        cells = np.where(grids == 0, self.mask_id, grids).reshape(len(grids), -1)
        return torch.from_numpy(np.concatenate([prefix, cells], axis=1)).long()

    def _check_clue_array(self, puzzles: ZebraPuzzles) -> None:
        if puzzles.clues.shape[1] != self.max_clues:
            raise ValueError(f"puzzles.clues must have {self.max_clues} slots, got {puzzles.clues.shape[1]}")
        self._clue_list(puzzles.clues, "puzzles.clues")

    def encode(self, puzzles: ZebraPuzzles) -> torch.LongTensor:
        """[N, seq_len]: clue tokens, then the grid with givens as value tokens and blanks as ``mask_id``."""
        self._check_clue_array(puzzles)
        return self._tokens(puzzles.clues, self._grids(puzzles.givens, "puzzles.givens"))

    def encode_solution(self, puzzles: ZebraPuzzles, solutions) -> torch.LongTensor:
        """[N, seq_len]: the token sequence of each puzzle with its solution filled in."""
        self._check_clue_array(puzzles)
        return self._tokens(puzzles.clues, self._grids(solutions, "solutions"))

    def decode(self, tokens) -> np.ndarray:
        """[N, seq_len] token ids -> [N, A, H] int64 grids; non-value tokens (mask, pad, ...) become 0."""
        array = np.asarray(tokens.detach().cpu() if isinstance(tokens, torch.Tensor) else tokens, np.int64)
        if array.shape[-1] != self.seq_len:
            raise ValueError(f"tokens must have last dimension {self.seq_len}, got shape {array.shape}")
        grid = array.reshape(-1, self.seq_len)[:, self.grid_offset:].reshape(-1, *self.grid_shape)
        return np.where((grid >= 1) & (grid <= self.houses), grid, 0)

    # ------------------------------------------------------------------------------------------ metrics
    def cell_accuracy(self, pred, puzzles: ZebraPuzzles, solutions) -> np.ndarray:
        """[N] float: fraction of each puzzle's blank cells filled with the solution value (1.0 if none)."""
        pred, solutions = self._grids(pred, "pred"), self._grids(solutions, "solutions")
        blank = puzzles.givens == 0
        if not pred.shape == solutions.shape == blank.shape:
            raise ValueError(f"shape mismatch: {pred.shape}, {blank.shape}, {solutions.shape}")
        total = blank.sum(axis=(1, 2))
        right = ((pred == solutions) & blank).sum(axis=(1, 2))
        return np.where(total > 0, right / np.maximum(total, 1), 1.0).astype(np.float64)

    def is_solved(self, pred, puzzles: ZebraPuzzles, solutions=None) -> np.ndarray:
        """[N] bool: every cell equals the (unique) solution; without solutions, ``satisfies`` decides."""
        if solutions is None:
            return self.satisfies(pred, puzzles)
        pred, solutions = self._grids(pred, "pred"), self._grids(solutions, "solutions")
        if pred.shape != solutions.shape or len(puzzles) != len(pred):
            raise ValueError(f"shape mismatch: pred {pred.shape}, solutions {solutions.shape}, {len(puzzles)} puzzles")
        return (pred == solutions).all(axis=(1, 2))

    # ----------------------------------------------------------------------------------- text and files
    def cell_name(self, row: int, col: int) -> str:
        return f"{self.attribute_names[row]} of house {col + 1}"

    def axis_labels(self) -> tuple[list[str], list[str]]:
        return list(self.attribute_names), [f"house {k + 1}" for k in range(self.houses)]

    def clue_sentence(self, rel: int, x: int, y: int) -> str:
        """One clue in English (houses numbered from 1)."""
        return zebra_io.clue_sentence(self, rel, x, y)

    def format_puzzle(self, puzzles: ZebraPuzzles, index: int = 0) -> str:
        """Puzzle ``index`` as text: the setting, the clues as numbered sentences, and the givens."""
        return zebra_io.format_puzzle(self, puzzles, index)

    def format_grid(self, grid) -> str:
        """A table with one row per attribute and one column per house; value names, '.' for blanks."""
        return zebra_io.format_grid(self, grid)

    def save_json(self, path, puzzles: ZebraPuzzles, solutions) -> None:
        """Write puzzles and solutions as {"houses", "attributes", "puzzles": [{"clues", "givens", "solution"}]}."""
        zebra_io.save_json(self, path, puzzles, solutions)

    def load_json(self, path) -> tuple[ZebraPuzzles, np.ndarray]:
        """(puzzles, solutions) from a ``save_json`` file; any problem raises ValueError naming file and puzzle."""
        return zebra_io.load_json(self, path)

    def load(self, path) -> tuple[ZebraPuzzles, np.ndarray]:
        """(puzzles, solutions) from a user's file: Zebra JSON (see ``load_json``)."""
        return self.load_json(path)
