"""Tests for upo_fast.tasks.sudoku (fast: the whole file runs in a few seconds on two CPU cores)."""

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from upo_fast.tasks import get_task
from upo_fast.tasks.sudoku import SudokuTask, cell_accuracy, solved_rate, sudoku_reward

SHARED_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sudoku4x4_test_upo.csv"

SOLVED_4 = np.array([[1, 2, 3, 4], [3, 4, 1, 2], [2, 1, 4, 3], [4, 3, 2, 1]])


def all_4x4_grids() -> np.ndarray:
    """Every valid 4x4 Sudoku by brute force over row permutations (independent of the task's solver)."""
    perms = list(itertools.permutations(range(1, 5)))
    grids = []
    for r0 in perms:
        for r1 in perms:
            if any(a == b for a, b in zip(r0, r1)) or {r0[0], r0[1], r1[0], r1[1]} != {1, 2, 3, 4}:
                continue
            for r2 in perms:
                for r3 in perms:
                    grid = np.array([r0, r1, r2, r3])
                    if naive_valid(grid):
                        grids.append(grid)
    return np.array(grids)


def naive_valid(grid: np.ndarray) -> bool:
    n = len(grid)
    box = int(round(n**0.5))
    units = list(grid) + list(grid.T)
    units += [grid[r : r + box, c : c + box].ravel() for r in range(0, n, box) for c in range(0, n, box)]
    return all(sorted(u) == list(range(1, n + 1)) for u in units)


@pytest.fixture(scope="module")
def task4():
    return SudokuTask(4)


@pytest.fixture(scope="module")
def task9():
    return SudokuTask(9)


def test_attributes_and_registry():
    fields = ("name", "n", "box", "seq_len", "pad_id", "mask_id", "vocab_size", "default_blanks")
    assert [getattr(SudokuTask(4), f) for f in fields] == ["sudoku4", 4, 2, 16, 0, 5, 6, 10]
    assert [getattr(SudokuTask(9), f) for f in fields] == ["sudoku9", 9, 3, 81, 0, 10, 11, 50]
    assert get_task("sudoku9").n == 9
    with pytest.raises(ValueError, match="sudoku4"):
        get_task("sudoku16")


@pytest.mark.parametrize("n", [0, 5, 16])
def test_bad_size(n):
    with pytest.raises(ValueError):
        SudokuTask(n)


def test_brute_force_reference_has_288_grids():
    assert len(all_4x4_grids()) == 288


@pytest.mark.parametrize("n", [4, 9])
def test_solved_grids_valid_and_varied(n):
    task = SudokuTask(n)
    grids = task.solved_grids(500, np.random.default_rng(0))
    assert grids.shape == (500, n, n) and grids.dtype == np.int64
    assert task.is_valid_solution(grids).all()
    assert all(naive_valid(g) for g in grids[:50])
    assert len({g.tobytes() for g in grids}) > (100 if n == 4 else 490)
    again = task.solved_grids(500, np.random.default_rng(0))
    np.testing.assert_array_equal(grids, again)


def test_4x4_grids_cover_all_solutions(task4):
    grids = task4.solved_grids(5000, np.random.default_rng(1))
    assert len({g.tobytes() for g in grids}) == 288


@pytest.mark.parametrize("n", [4, 9])
def test_symmetries_preserve_validity_and_blanks(n):
    task = SudokuTask(n)
    rng = np.random.default_rng(3)
    base = np.repeat(task.solved_grids(1, rng), 200, axis=0)
    moved = task.apply_symmetries(base, rng)
    assert task.is_valid_solution(moved).all()
    assert len({g.tobytes() for g in moved}) > 50
    puzzle = base.copy()
    puzzle[:, 0, :2] = 0
    assert ((task.apply_symmetries(puzzle, rng) == 0).sum(axis=(1, 2)) == 2).all()


def test_is_valid_solution_rejects_broken_grids(task4):
    bad = np.stack([SOLVED_4, SOLVED_4, SOLVED_4, SOLVED_4])
    bad[1, 0, 0] = 0  # blank
    bad[2] = np.array([[1, 2, 3, 4]] * 4)  # rows fine, columns not
    bad[3] = np.array([[1, 2, 3, 4], [2, 3, 4, 1], [3, 4, 1, 2], [4, 1, 2, 3]])  # Latin square, boxes wrong
    assert task4.is_valid_solution(bad).tolist() == [True, False, False, False]


def test_training_batch_reproducible(task9):
    batch = task9.training_batch(64, torch.Generator().manual_seed(7))
    assert batch.shape == (64, 81) and batch.dtype == torch.long
    assert batch.min() >= 1 and batch.max() <= 9
    assert task9.is_valid_solution(task9.decode(batch)).all()
    assert torch.equal(batch, task9.training_batch(64, torch.Generator().manual_seed(7)))
    assert not torch.equal(batch, task9.training_batch(64, torch.Generator().manual_seed(8)))


def test_4x4_puzzles_unique_by_brute_force(task4):
    reference = all_4x4_grids()
    for blanks in (1, 10, 12):
        puzzles, solutions = task4.make_puzzles(30, blanks=blanks, seed=blanks)
        assert ((puzzles == 0).sum(axis=(1, 2)) == blanks).all()
        for puzzle, solution in zip(puzzles, solutions):
            given = puzzle != 0
            matches = reference[(reference[:, given] == puzzle[given]).all(axis=1)]
            assert len(matches) == 1
            np.testing.assert_array_equal(matches[0], solution)


def test_9x9_puzzles(task9):
    puzzles, solutions = task9.make_puzzles(6, seed=0)
    assert puzzles.shape == solutions.shape == (6, 9, 9)
    assert ((puzzles == 0).sum(axis=(1, 2)) == 50).all()
    assert task9.is_valid_solution(solutions).all()
    assert ((puzzles == 0) | (puzzles == solutions)).all()
    assert all(task9.count_solutions(p) == 1 for p in puzzles)
    np.testing.assert_array_equal(task9.solve(puzzles[0]), solutions[0])
    again, _ = task9.make_puzzles(6, seed=0)
    np.testing.assert_array_equal(puzzles, again)
    other, _ = task9.make_puzzles(6, seed=1)
    assert not np.array_equal(puzzles, other)


def test_count_solutions(task4):
    assert task4.count_solutions(np.zeros((4, 4), int), limit=1000) == 288
    assert task4.count_solutions(SOLVED_4) == 1
    contradictory = np.zeros((4, 4), int)
    contradictory[0, :2] = 1
    assert task4.count_solutions(contradictory) == 0 and task4.solve(contradictory) is None


@pytest.mark.parametrize("n,blanks", [(4, 0), (4, 13), (9, 0), (9, 65), (9, 81)])
def test_blanks_out_of_range(n, blanks):
    with pytest.raises(ValueError, match="blanks"):
        SudokuTask(n).make_puzzles(1, blanks=blanks)


def test_encode_decode_round_trip(task9):
    puzzles, _ = task9.make_puzzles(3, blanks=40, seed=5)
    tokens = task9.encode(puzzles)
    assert tokens.shape == (3, 81) and tokens.dtype == torch.long
    assert ((tokens == task9.mask_id).sum(dim=1) == 40).all()
    np.testing.assert_array_equal(tokens.view(3, 9, 9).numpy()[puzzles != 0], puzzles[puzzles != 0])
    np.testing.assert_array_equal(task9.decode(tokens), puzzles)
    tokens[0, 0] = task9.pad_id
    assert task9.decode(tokens)[0, 0, 0] == 0
    with pytest.raises(ValueError):
        task9.encode(np.full((1, 9, 9), 10))


@pytest.mark.skipif(not SHARED_CSV.is_file(), reason="shared 4x4 test set not available")
def test_load_shared_csv(task4):
    puzzles, solutions = task4.load_csv(SHARED_CSV)
    assert puzzles.shape == solutions.shape == (500, 4, 4)
    assert task4.is_valid_solution(solutions).all()
    assert ((puzzles == 0) | (puzzles == solutions)).all()
    assert (puzzles == 0).any(axis=(1, 2)).all()
    assert cell_accuracy(solutions, puzzles, solutions) == 1.0
    assert solved_rate(solutions, puzzles) == 1.0


@pytest.mark.parametrize(
    "content,match",
    [
        ("Quiz,Answer\n1234341221434321,1234341221434321\n", "header"),
        ("Puzzle,Solution\n123434122143432,1234341221434321\n", "line 2"),
        ("Puzzle,Solution\n1234341221434321,1234341221434321\n1234341221434325,1234341221434321\n", "line 3"),
        ("Puzzle,Solution\n123434122143432x,1234341221434321\n", "line 2"),
        ("Puzzle,Solution\n2000000000000000,1234341221434321\n", "contradicts"),
        ("Puzzle,Solution\n0000000000000000,1234123412341234\n", "valid"),
    ],
)
def test_load_csv_errors(task4, tmp_path, content, match):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        task4.load_csv(path)
    assert "bad.csv" in str(info.value)


def test_load_csv_missing_file(task4, tmp_path):
    with pytest.raises(ValueError, match="missing.csv"):
        task4.load_csv(tmp_path / "missing.csv")


def test_load_csv_good_file(task4, tmp_path):
    path = tmp_path / "good.csv"
    path.write_text("Puzzle,Solution\n1034341221434301,1234341221434321\n")
    puzzles, solutions = task4.load_csv(path)
    np.testing.assert_array_equal(solutions[0], SOLVED_4)
    assert (puzzles == 0).sum() == 2


def test_metrics_on_hand_made_examples():
    solution = SOLVED_4[None]
    puzzle = solution.copy()
    puzzle[0, 0, :] = 0  # 4 blanks in the first row
    assert cell_accuracy(solution, puzzle, solution) == 1.0
    assert solved_rate(solution, puzzle) == 1.0
    assert sudoku_reward(solution, puzzle, solution).tolist() == [1.0]

    one_wrong = solution.copy()
    one_wrong[0, 0, 0] = 2
    assert cell_accuracy(one_wrong, puzzle, solution) == 0.75
    assert solved_rate(one_wrong, puzzle) == 0.0

    # A valid grid that overwrites a given is not a solution of this puzzle.
    relabeled = np.where(solution == 3, 4, np.where(solution == 4, 3, solution))
    assert SudokuTask(4).is_valid_solution(relabeled).all()
    assert solved_rate(relabeled, puzzle) == 0.0

    # Pooling over puzzles vs per-puzzle rewards: 4 blanks (all right) + 1 blank (wrong) -> 4/5 pooled.
    puzzles = np.concatenate([puzzle, solution])
    puzzles[1, 3, 3] = 0
    solutions = np.concatenate([solution, solution])
    preds = solutions.copy()
    preds[1, 3, 3] = 4
    assert cell_accuracy(preds, puzzles, solutions) == pytest.approx(0.8)
    np.testing.assert_allclose(sudoku_reward(preds, puzzles, solutions), [1.0, 0.0])
    assert solved_rate(preds, puzzles) == 0.5


def test_format_and_parse(task9, task4):
    puzzles, _ = task9.make_puzzles(1, seed=2)
    text = task9.format_grid(puzzles[0])
    assert "." in text and "|" in text and len(text.splitlines()) == 11
    np.testing.assert_array_equal(task9.parse_grid(text), puzzles[0])
    expected = SOLVED_4.copy()
    expected[0, 1] = expected[3, 3] = 0
    np.testing.assert_array_equal(task4.parse_grid("1.34 3412\n2143 4320"), expected)
    np.testing.assert_array_equal(task4.parse_grid(task4.format_grid(expected)), expected)


@pytest.mark.parametrize("text", ["1234", "1234341221434325", "12x4341221434321", "1" * 17])
def test_parse_errors(task4, text):
    with pytest.raises(ValueError):
        task4.parse_grid(text)
