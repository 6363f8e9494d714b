"""Sudoku (4x4 and 9x9) as an infilling task for a small masked diffusion model.

A grid is flattened row-major into ``n*n`` tokens: digit ``d`` is token ``d`` (1..n), ``0`` is padding (never
used by grids) and ``n + 1`` is the mask token. Puzzles are solved grids with cells blanked out; the model
unmasks the blanks in place, so no prompt/answer split is needed.

Everything here is pure numpy/torch so that the task can be imported and used without any model code.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from upo_fast.tasks.sudoku_solver import search

# Fewest givens a uniquely solvable puzzle can have: 17 for 9x9 (McGuire et al., 2012), 4 for 4x4.
_MIN_GIVENS = {4: 4, 9: 17}
_DEFAULT_BLANKS = {4: 10, 9: 50}
_POOL_SIZE = 8
# A grid whose random removal order gets stuck is replaced; give up after this many grids per puzzle so that
# near-minimal requests (e.g. 64 blanks on 9x9, which random removal practically never reaches) fail loudly.
_MAX_GRID_ATTEMPTS = 1000


def _as_grids(array, name: str) -> np.ndarray:
    """Accept a numpy array / torch tensor / nested list of grids, shape [N, n, n] or a single [n, n]."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    grids = np.asarray(array, dtype=np.int64)
    if grids.ndim == 2:
        grids = grids[None]
    if grids.ndim != 3 or grids.shape[1] != grids.shape[2] or grids.shape[1] not in _MIN_GIVENS:
        raise ValueError(f"{name} must have shape [N, n, n] with n in (4, 9), got {grids.shape}")
    return grids


def _valid_grids(grids: np.ndarray) -> np.ndarray:
    """[N] bool: every row, column and box of each grid is a permutation of 1..n (vectorized)."""
    num, n = grids.shape[0], grids.shape[1]
    box = math.isqrt(n)
    digits = np.arange(1, n + 1)
    boxes = grids.reshape(num, box, box, box, box).transpose(0, 1, 3, 2, 4).reshape(num, n, n)
    ok = np.ones(num, dtype=bool)
    for units in (grids, grids.transpose(0, 2, 1), boxes):  # each [N, unit, cell]
        ok &= (np.sort(units, axis=2) == digits).all(axis=(1, 2))
    return ok


def _check_same_shape(pred, puzzles, solutions=None):
    pred, puzzles = _as_grids(pred, "pred"), _as_grids(puzzles, "puzzles")
    arrays = [pred, puzzles] if solutions is None else [pred, puzzles, _as_grids(solutions, "solutions")]
    if any(a.shape != puzzles.shape for a in arrays):
        raise ValueError(f"shape mismatch: {[a.shape for a in arrays]}")
    return arrays


def sudoku_reward(pred, puzzles, solutions) -> np.ndarray:
    """[N] float: per-puzzle fraction of blanks filled with the solution digit (1.0 if a puzzle has none)."""
    pred, puzzles, solutions = _check_same_shape(pred, puzzles, solutions)
    blank = puzzles == 0
    correct = ((pred == solutions) & blank).sum(axis=(1, 2))
    num_blanks = blank.sum(axis=(1, 2))
    return np.where(num_blanks > 0, correct / np.maximum(num_blanks, 1), 1.0).astype(np.float64)


def cell_accuracy(pred, puzzles, solutions) -> float:
    """Fraction of all blanks (pooled over puzzles) where ``pred`` equals the solution (1.0 if no blanks)."""
    pred, puzzles, solutions = _check_same_shape(pred, puzzles, solutions)
    blank = puzzles == 0
    total = int(blank.sum())
    return float(((pred == solutions) & blank).sum() / total) if total else 1.0


def solved_rate(pred, puzzles) -> float:
    """Fraction of puzzles whose prediction is a valid complete grid that keeps every given of the puzzle."""
    pred, puzzles = _check_same_shape(pred, puzzles)
    keeps_givens = ((puzzles == 0) | (pred == puzzles)).all(axis=(1, 2))
    return float((_valid_grids(pred) & keeps_givens).mean()) if len(pred) else 0.0


class SudokuTask:
    """An n×n Sudoku (n in {4, 9}; boxes 2×2 / 3×3) as an infilling task for a small masked diffusion
    model."""

    pad_id: int = 0

    # Base grids per size, shared by all instances; made once from a fixed seed so that every generated
    # grid/puzzle depends only on the caller's seed.
    _pools: dict[int, np.ndarray] = {}

    def __init__(self, n: int):
        if n not in _MIN_GIVENS:
            raise ValueError(f"n must be 4 or 9, got {n!r}")
        self.n = n
        self.box = math.isqrt(n)
        self.name = f"sudoku{n}"
        self.seq_len = n * n
        self.mask_id = n + 1
        self.vocab_size = n + 2
        self.default_blanks = _DEFAULT_BLANKS[n]
        self.max_blanks = n * n - _MIN_GIVENS[n]
        self.grid_shape = (n, n)
        self.grid_offset = 0  # token index of cell (0, 0): the whole sequence is the grid

    def __repr__(self) -> str:
        return f"SudokuTask(n={self.n})"

    # ----------------------------------------------------------------------------------------------- grids
    def count_solutions(self, grid, limit: int = 2) -> int:
        """Number of solutions of a puzzle (0 = blank), counting stops at ``limit``."""
        cells = [int(v) for v in _as_grids(grid, "grid")[0].reshape(-1)]
        return search(cells, self.n, self.box, limit)[0]

    def solve(self, grid) -> np.ndarray | None:
        """One solution of a puzzle as [n, n] int64, or None if it has none."""
        cells = [int(v) for v in _as_grids(grid, "grid")[0].reshape(-1)]
        solution = search(cells, self.n, self.box, 1)[1]
        return None if solution is None else np.array(solution, dtype=np.int64).reshape(self.n, self.n)

    def _base_pool(self) -> np.ndarray:
        if self.n not in self._pools:
            rng = np.random.default_rng(20240 + self.n)
            empty = [0] * self.seq_len
            pool = [search(empty, self.n, self.box, 1, rng)[1] for _ in range(_POOL_SIZE)]
            self._pools[self.n] = np.array(pool, dtype=np.int64).reshape(_POOL_SIZE, self.n, self.n)
        return self._pools[self.n]

    def apply_symmetries(self, grids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Apply an independent random validity-preserving symmetry to each grid of [N, n, n] (vectorized).

        Digit relabeling, row permutation within bands + band permutation, the same for columns within
        stacks, and an optional transpose. Blanks (0) stay blanks, so this works on puzzles too.
        """
        grids = _as_grids(grids, "grids")
        num, n, box = grids.shape[0], self.n, self.box
        batch = np.arange(num)[:, None]
        # Random permutations per grid via argsort of uniform noise.
        relabel = np.concatenate([np.zeros((num, 1), np.int64), 1 + rng.random((num, n)).argsort(1)], axis=1)
        grids = relabel[batch, grids.reshape(num, -1)].reshape(num, n, n)
        for axis in (1, 2):
            outer = rng.random((num, box)).argsort(1)  # band (or stack) order
            inner = rng.random((num, box, box)).argsort(2)  # line order within each band
            order = (outer[:, :, None] * box + inner).reshape(num, n)
            if axis == 1:
                grids = grids[batch, order]
            else:
                grids = grids[batch[:, :, None], np.arange(n)[None, :, None], order[:, None, :]]
        transpose = rng.random(num) < 0.5
        return np.where(transpose[:, None, None], grids.transpose(0, 2, 1), grids)

    def solved_grids(self, num: int, rng: np.random.Generator) -> np.ndarray:
        """[num, n, n] int64 random valid solved grids: pool base grids under random symmetries."""
        pool = self._base_pool()
        return self.apply_symmetries(pool[rng.integers(0, len(pool), size=num)], rng)

    def training_batch(self, batch_size: int, generator: torch.Generator) -> torch.LongTensor:
        """[batch_size, seq_len] clean token sequences; reproducible from the torch generator's state."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        grids = self.solved_grids(batch_size, np.random.default_rng(seed))
        return torch.from_numpy(grids.reshape(batch_size, self.seq_len)).long()  # digit d is token d

    # --------------------------------------------------------------------------------------------- puzzles
    def _carve(self, solution: np.ndarray, blanks: int, rng: np.random.Generator) -> np.ndarray | None:
        """Blank cells of ``solution`` in random order keeping the solution unique; None if stuck early."""
        n, box = self.n, self.box
        cells = [int(v) for v in solution.reshape(-1)]
        removed = 0
        for tried, index in enumerate(rng.permutation(self.seq_len)):
            if removed + self.seq_len - tried < blanks:  # too few cells left to reach the target
                return None
            value = cells[index]
            cells[index] = 0
            # The puzzle was unique with this solution, so any second solution differs at `index`: it is
            # unique iff no other digit there admits a solution. Cheaper than counting to 2 because most
            # cells have a single candidate and need no search at all.
            r, c = divmod(int(index), n)
            peers = {cells[r * n + j] for j in range(n)} | {cells[i * n + c] for i in range(n)}
            r0, c0 = r - r % box, c - c % box
            peers |= {cells[i * n + j] for i in range(r0, r0 + box) for j in range(c0, c0 + box)}
            unique = True
            for digit in range(1, n + 1):
                if digit == value or digit in peers:
                    continue
                cells[index] = digit
                found = search(cells, n, box, 1)[0]
                cells[index] = 0
                if found:
                    unique = False
                    break
            if unique:
                removed += 1
                if removed == blanks:
                    return np.array(cells, dtype=np.int64).reshape(n, n)
            else:
                cells[index] = value
        return None

    def make_puzzles(
        self, num: int, blanks: int | None = None, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(puzzles, solutions), each [num, n, n] int64 with 0 = blank; each puzzle has exactly ``blanks``
        blanks and a unique solution. Deterministic for a seed."""
        blanks = self.default_blanks if blanks is None else blanks
        if not 1 <= blanks <= self.max_blanks:
            raise ValueError(
                f"blanks={blanks} is out of range for {self.name}: must be in [1, {self.max_blanks}] "
                f"(a unique {self.n}x{self.n} puzzle needs at least {_MIN_GIVENS[self.n]} givens)"
            )
        if num < 0:
            raise ValueError(f"num must be >= 0, got {num}")
        rng = np.random.default_rng(seed)
        puzzles = np.zeros((num, self.n, self.n), dtype=np.int64)
        solutions = np.zeros_like(puzzles)
        for k in range(num):
            for _ in range(_MAX_GRID_ATTEMPTS):
                solution = self.solved_grids(1, rng)[0]
                puzzle = self._carve(solution, blanks, rng)
                if puzzle is not None:
                    puzzles[k], solutions[k] = puzzle, solution
                    break
            else:
                raise RuntimeError(
                    f"could not make a unique {self.name} puzzle with blanks={blanks} in "
                    f"{_MAX_GRID_ATTEMPTS} grids; random removal rarely gets near the minimum, "
                    "use fewer blanks"
                )
        return puzzles, solutions

    def load_csv(self, path) -> tuple[np.ndarray, np.ndarray]:
        """(puzzles, solutions) from a CSV with header ``Puzzle,Solution`` of n*n-digit strings, 0 = blank.

        Any problem (missing file, bad header, wrong length, digit out of range, invalid solution, solution
        contradicting its givens) raises ValueError naming the file and line."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
        puzzles, solutions = [], []
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or [h.strip() for h in header] != ["Puzzle", "Solution"]:
                raise ValueError(f"{path}: expected header 'Puzzle,Solution', got {header!r}")
            for line_no, row in enumerate(reader, start=2):
                if not row or all(not field.strip() for field in row):
                    continue  # tolerate blank lines (e.g. a trailing newline)
                where = f"{path}, line {line_no}"
                if len(row) != 2:
                    raise ValueError(f"{where}: expected 2 fields, got {len(row)}")
                puzzle, solution = (self._digits(field.strip(), where) for field in row)
                if not ((solution >= 1).all() and _valid_grids(solution[None])[0]):
                    raise ValueError(f"{where}: solution is not a valid {self.n}x{self.n} grid")
                if ((puzzle != 0) & (puzzle != solution)).any():
                    raise ValueError(f"{where}: solution contradicts the puzzle's givens")
                puzzles.append(puzzle)
                solutions.append(solution)
        if not puzzles:
            raise ValueError(f"{path}: no puzzles")
        return np.stack(puzzles), np.stack(solutions)

    def _digits(self, text: str, where: str) -> np.ndarray:
        if len(text) != self.seq_len or not text.isdigit() or not text.isascii():
            raise ValueError(f"{where}: expected {self.seq_len} digits, got {text!r}")
        grid = np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64) - ord("0")
        if grid.max() > self.n:
            raise ValueError(f"{where}: digit out of range 0..{self.n} in {text!r}")
        return grid.reshape(self.n, self.n)

    # ---------------------------------------------------------------------------------------------- tokens
    def encode(self, puzzles) -> torch.LongTensor:
        """[N, n, n] (0 = blank) -> [N, seq_len] token ids with blanks as ``mask_id``."""
        grids = _as_grids(puzzles, "puzzles")
        if grids.shape[1] != self.n or grids.min(initial=0) < 0 or grids.max(initial=0) > self.n:
            raise ValueError(f"puzzles must be {self.n}x{self.n} grids of 0..{self.n}")
        tokens = np.where(grids == 0, self.mask_id, grids).reshape(len(grids), self.seq_len)
        return torch.from_numpy(tokens).long()

    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        """[N, seq_len] token ids -> [N, n, n] int64 grids; non-digit tokens (mask, pad) become 0."""
        array = np.asarray(tokens.detach().cpu() if isinstance(tokens, torch.Tensor) else tokens, np.int64)
        if array.shape[-1] != self.seq_len:
            raise ValueError(f"tokens must have last dimension {self.seq_len}, got shape {array.shape}")
        array = array.reshape(-1, self.n, self.n)
        return np.where((array >= 1) & (array <= self.n), array, 0)

    def is_valid_solution(self, grids) -> np.ndarray:
        """[N] bool: every row, column and box is a permutation of 1..n (blanks make a grid invalid)."""
        grids = _as_grids(grids, "grids")
        if grids.shape[1] != self.n:
            raise ValueError(f"expected {self.n}x{self.n} grids, got {grids.shape}")
        return _valid_grids(grids)

    def encode_solution(self, puzzles, solutions) -> torch.LongTensor:
        """[N, seq_len] the token sequence of each puzzle with its solution filled in."""
        return self.encode(solutions)

    # ------------------------------------------------------------------------------------- task interface
    # What evaluation, training and plots call on any grid task (Sudoku, Zebra): per-puzzle arrays.
    def cell_accuracy(self, pred, puzzles, solutions) -> np.ndarray:
        """[N] float: fraction of each puzzle's blanks filled with the solution digit."""
        return sudoku_reward(pred, puzzles, solutions)

    def is_solved(self, pred, puzzles, solutions=None) -> np.ndarray:
        """[N] bool: a valid complete grid that keeps every given (any valid completion counts)."""
        pred, puzzles = _check_same_shape(pred, puzzles)
        return _valid_grids(pred) & ((puzzles == 0) | (pred == puzzles)).all(axis=(1, 2))

    def load(self, path) -> tuple[np.ndarray, np.ndarray]:
        """(puzzles, solutions) from a user's file: a ``Puzzle,Solution`` CSV (see ``load_csv``)."""
        return self.load_csv(path)

    # -------------------------------------------------------------------------------------------- text I/O
    def format_grid(self, grid) -> str:
        """Multi-line text with box separators and '.' for blanks."""
        grid = _as_grids(grid, "grid")[0]
        band_rule = "+".join(["-" * (2 * self.box + 1)] * self.box)[1:-1]
        lines = []
        for r in range(self.n):
            if r and r % self.box == 0:
                lines.append(band_rule)
            cells = ["." if v == 0 else str(v) for v in grid[r]]
            stacks = [" ".join(cells[c : c + self.box]) for c in range(0, self.n, self.box)]
            lines.append(" | ".join(stacks))
        return "\n".join(lines)

    def parse_grid(self, text: str) -> np.ndarray:
        """Inverse of ``format_grid``: n*n cells of digits, '0' or '.' for blanks; whitespace, '|', '-', '+'
        are ignored. Returns [n, n] int64."""
        cells = []
        for char in text:
            if char.isspace() or char in "|-+":
                continue
            if char == ".":
                cells.append(0)
            elif char in "0123456789" and int(char) <= self.n:
                cells.append(int(char))
            else:
                raise ValueError(f"unexpected character {char!r} in a {self.n}x{self.n} grid")
        if len(cells) != self.seq_len:
            raise ValueError(f"expected {self.seq_len} cells, got {len(cells)}")
        return np.array(cells, dtype=np.int64).reshape(self.n, self.n)
