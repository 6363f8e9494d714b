"""Tests for upo_fast.tasks.zebra (fast: the whole file runs in a few seconds on one CPU core)."""

import itertools
import json
import time

import numpy as np
import pytest
import torch

from upo_fast.tasks import get_task
from upo_fast.tasks.zebra import Relation as R
from upo_fast.tasks.zebra import ZebraPuzzles, ZebraTask


@pytest.fixture(scope="module")
def task():
    return ZebraTask()


@pytest.fixture(scope="module")
def made(task):
    return task.make_puzzles(40, seed=11)


# ---------------------------------------------------------------------------------------- brute force
def all_grids(h: int, a: int) -> np.ndarray:
    """[(H!)^A, A, H] every assignment, independent of the task's solver."""
    rows = np.array(list(itertools.permutations(range(1, h + 1))))
    return np.array([np.stack(choice) for choice in itertools.product(rows, repeat=a)])


def brute_force_ok(grids: np.ndarray, clues, givens=None) -> np.ndarray:
    """[M] bool: which grids satisfy the clues and givens, by direct evaluation of each relation."""
    m, a, h = grids.shape
    house = np.argsort(grids, axis=2).reshape(m, a * h)  # house of item a*H + v - 1
    ok = np.ones(m, dtype=bool)
    for r, x, y in clues:
        hx = house[:, x]
        hy = y if r in (R.AT, R.NOT_AT) else house[:, y]
        ok &= {R.SAME: hx == hy, R.NOT_SAME: hx != hy, R.LEFT_OF: hx + 1 == hy, R.NEXT_TO: abs(hx - hy) == 1,
               R.BEFORE: hx < hy, R.AT: hx == hy, R.NOT_AT: hx != hy}[R(r)]
    if givens is not None:
        ok &= ((givens == 0) | (grids == givens)).all(axis=(1, 2))
    return ok


def random_clue(rng, h, a):
    r = int(rng.integers(len(R)))
    x = int(rng.integers(a * h))
    y = int(rng.integers(h if r in (R.AT, R.NOT_AT) else a * h))
    return r, x, y


@pytest.mark.parametrize("h,a", [(3, 3), (4, 3), (2, 4)])
def test_solver_matches_brute_force(h, a):
    task, grids, rng = ZebraTask(h, a), all_grids(h, a), np.random.default_rng(h * 10 + a)
    seen = set()
    for trial in range(120):
        truth = grids[rng.integers(len(grids))]
        # mostly clues true of a random grid (1 or more solutions), some arbitrary ones (often none)
        clues = [task._random_clue(truth, rng) for _ in range(rng.integers(0, 3 * h))]
        clues += [random_clue(rng, h, a) for _ in range(rng.integers(0, 3) * (trial % 3 == 0))]
        givens = np.where(rng.random((a, h)) < 0.15, truth, 0) if trial % 4 == 0 else None
        count = int(brute_force_ok(grids, clues, givens).sum())
        seen.add(min(count, 2))
        array = np.array(clues, dtype=np.int64).reshape(-1, 3)
        padded = np.concatenate([array, np.full((2, 3), -1)])  # -1 rows are ignored
        for limit in (1, 2, 3, 10**9):
            assert task.count_solutions(padded, givens, limit=limit) == min(count, limit)
        solution = task.solve(array, givens)
        if count == 0:
            assert solution is None
        else:
            assert brute_force_ok(solution[None], clues, givens)[0]
    assert seen == {0, 1, 2}


def test_solver_handles_the_largest_size():
    task = ZebraTask(6, 6)
    puzzles, solutions = task.make_puzzles(2, seed=1)
    for i in range(2):
        assert task.count_solutions(puzzles.clues[i], limit=5) == 1
        np.testing.assert_array_equal(task.solve(puzzles.clues[i]), solutions[i])
    assert task.count_solutions(np.zeros((0, 3), np.int64), limit=7) == 7
    with pytest.raises(ValueError, match="limit"):
        task.count_solutions(puzzles.clues[0], limit=0)
    with pytest.raises(ValueError, match="bad clue"):
        task.count_solutions([[int(R.AT), 0, 6]])  # house 6 does not exist


# ---------------------------------------------------------------------------------------- puzzles
def test_attributes_layout_and_registry():
    task = ZebraTask(clue_format="triplet", minimal_clues=True)
    fields = ("name", "houses", "attributes", "grid_shape", "num_cells", "max_clues", "grid_offset", "seq_len")
    assert [getattr(task, f) for f in fields] == ["zebra", 4, 4, (4, 4), 16, 16, 48, 64]
    fields = ("pad_id", "relation_offset", "item_offset", "house_offset", "mask_id", "vocab_size")
    assert [getattr(task, f) for f in fields] == [0, 5, 12, 28, 32, 33]
    assert (task.default_blanks, task.max_blanks) == (16, 16)
    token = ZebraTask()  # default: one token per clue, 2*A*H slots (clue sets are not minimized)
    assert (token.clue_format, token.grid_offset, token.seq_len, token.clue_offset) == ("token", 32, 48, 5)
    assert (token.minimal_clues, ZebraTask(minimal_clues=True).max_clues) == (False, 16)
    assert (token.mask_id, token.vocab_size) == (5 + 7 * 16 * 16, 5 + 7 * 16 * 16 + 1)
    other = get_task("zebra5x3")
    assert (other.name, other.grid_shape, other.mask_id) == ("zebra5x3", (3, 5), 6 + 7 * 15 * 15)
    assert get_task("zebra").name == "zebra" and ZebraTask(3, 3, max_clues=5).seq_len == 5 + 9
    assert ZebraTask(3, 3, max_clues=5, clue_format="triplet").seq_len == 15 + 9
    with pytest.raises(ValueError, match="clue_format"):
        ZebraTask(clue_format="words")


@pytest.mark.parametrize("kwargs", [{"houses": 1}, {"houses": 7}, {"attributes": 1}, {"attributes": 7},
                                    {"houses": 3.0}, {"max_clues": 0}])
def test_bad_size(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ZebraTask(**kwargs)


def test_make_puzzles_bad_args(task):
    for kwargs, word in [({"num": -1}, "num"), ({"num": 2, "blanks": 0}, "blanks"),
                         ({"num": 2, "blanks": 17}, "blanks")]:
        with pytest.raises(ValueError, match=word):
            task.make_puzzles(**kwargs)


def test_make_puzzles_deterministic_unique_minimal_true(task, made):
    puzzles, solutions = made
    again, solutions_again = task.make_puzzles(40, seed=11)
    np.testing.assert_array_equal(puzzles.clues, again.clues)
    np.testing.assert_array_equal(solutions, solutions_again)
    other, other_solutions = task.make_puzzles(40, seed=12)
    assert not np.array_equal(other.clues, puzzles.clues) and not np.array_equal(other_solutions, solutions)
    assert puzzles.clues.shape == (40, task.max_clues, 3)
    assert solutions.shape == (40, 4, 4) and solutions.dtype == np.int64
    assert (puzzles.givens == 0).all()
    assert task.satisfies(solutions, puzzles).all()
    counts = (puzzles.clues[:, :, 0] >= 0).sum(1)
    assert (counts >= 1).all() and (counts <= task.max_clues).all()
    assert ((puzzles.clues >= 0).all(2) | (puzzles.clues == -1).all(2)).all()  # a slot is used or all -1
    for i in range(len(puzzles)):
        used = puzzles.clues[i, : counts[i]]
        assert (used[:, 0] >= 0).all()  # used slots first
        assert task.count_solutions(used) == 1
        np.testing.assert_array_equal(task.solve(used), solutions[i])
    assert len(set(puzzles.clues[:, :, 0][puzzles.clues[:, :, 0] >= 0].tolist())) == len(R)  # every relation


@pytest.mark.parametrize("blanks", [1, 6, 15])
def test_make_puzzles_with_givens(blanks):
    task = ZebraTask(3, 3, minimal_clues=True) if blanks == 6 else ZebraTask(minimal_clues=True)
    puzzles, solutions = task.make_puzzles(10, blanks=blanks, seed=blanks)
    assert ((puzzles.givens == 0).sum(axis=(1, 2)) == blanks).all()
    assert ((puzzles.givens == 0) | (puzzles.givens == solutions)).all()
    grids = all_grids(3, 3) if blanks == 6 else None
    for i in range(10):
        used = puzzles.clues[i][puzzles.clues[i, :, 0] >= 0]
        assert task.count_solutions(used, puzzles.givens[i]) == 1
        if len(used):
            assert task.count_solutions(used[1:], puzzles.givens[i]) == 2
        if grids is not None:
            assert brute_force_ok(grids, used.tolist(), puzzles.givens[i]).sum() == 1
    if blanks == 1:
        assert (puzzles.clues == -1).all()  # one blank cell of a permutation needs no clue


@pytest.mark.parametrize("h,a", [(2, 2), (2, 6), (6, 2), (5, 4)])
def test_make_puzzles_every_size(h, a):
    task = ZebraTask(h, a)
    puzzles, solutions = task.make_puzzles(3, seed=0)
    assert task.satisfies(solutions, puzzles).all()
    assert all(task.count_solutions(puzzles.clues[i]) == 1 for i in range(3))


def test_puzzle_indexing(made):
    puzzles, _ = made
    assert len(puzzles[2:5]) == 3 and len(puzzles[np.array([0, 3])]) == 2 and len(puzzles[1]) == 1
    np.testing.assert_array_equal(puzzles[[4, 1]].clues[1], puzzles.clues[1])


# ---------------------------------------------------------------------------------------- tokens
def test_encode_decode(task, made):
    puzzles, solutions = task.make_puzzles(10, blanks=9, seed=5)
    tokens = task.encode(puzzles)
    assert tokens.shape == (10, task.seq_len) and tokens.dtype == torch.long
    assert 0 <= int(tokens.min()) and int(tokens.max()) < task.vocab_size
    np.testing.assert_array_equal(task.decode(tokens), puzzles.givens)
    grid = tokens[:, task.grid_offset:].reshape(10, 4, 4).numpy()
    assert ((grid == task.mask_id) == (puzzles.givens == 0)).all()
    assert ((tokens[:, : task.grid_offset] == task.mask_id).sum() == 0)
    full = task.encode_solution(puzzles, solutions)
    np.testing.assert_array_equal(task.decode(full), solutions)
    np.testing.assert_array_equal(decode_clues(task, tokens), canonical(puzzles.clues))
    with pytest.raises(ValueError, match="last dimension"):
        task.decode(tokens[:, :-1])


def canonical(clues: np.ndarray) -> np.ndarray:
    """Symmetric relations with x <= y (the token format stores one id for SAME(x, y) and SAME(y, x))."""
    rel, x, y = np.moveaxis(clues, -1, 0)
    swap = np.isin(rel, [R.SAME, R.NOT_SAME, R.NEXT_TO]) & (x > y)
    return np.stack([rel, np.where(swap, y, x), np.where(swap, x, y)], axis=-1)


def decode_clues(task, tokens) -> np.ndarray:
    """[N, seq_len] tokens -> [N, max_clues, 3] canonical clues (-1 for pad slots), from the documented layout."""
    if task.clue_format == "token":
        ids = tokens[:, : task.grid_offset].numpy()
        rest, y = np.divmod(ids - task.clue_offset, task.num_cells)
        rel, x = np.divmod(rest, task.num_cells)
        clues = np.stack([rel, x, y], axis=2)
        return np.where((ids == task.pad_id)[:, :, None], -1, clues)
    prefix = tokens[:, : task.grid_offset].numpy().reshape(len(tokens), task.max_clues, 3)
    rel = prefix[:, :, 0] - task.relation_offset
    house = (rel == R.AT) | (rel == R.NOT_AT)
    clues = np.stack([rel, prefix[:, :, 1] - task.item_offset,
                      prefix[:, :, 2] - np.where(house, task.house_offset, task.item_offset)], axis=2)
    return canonical(np.where((prefix == task.pad_id).all(2, keepdims=True), -1, clues))


# ---------------------------------------------------------------------------------------- training
def test_training_batch(task):
    tokens, maskable = task.training_batch(128, torch.Generator().manual_seed(0))  # builds the pool
    start = time.perf_counter()
    tokens, maskable = task.training_batch(128, torch.Generator().manual_seed(0))
    assert time.perf_counter() - start < 0.5
    assert tokens.shape == maskable.shape == (128, task.seq_len)
    assert tokens.dtype == torch.long and maskable.dtype == torch.bool
    assert maskable[:, task.grid_offset:].all() and not maskable[:, : task.grid_offset].any()
    again, _ = task.training_batch(128, torch.Generator().manual_seed(0))
    other, _ = task.training_batch(128, torch.Generator().manual_seed(1))
    assert torch.equal(tokens, again) and not torch.equal(tokens, other)
    assert int(tokens.max()) < task.mask_id  # no mask token in clean sequences
    grids, clues = task.decode(tokens), decode_clues(task, tokens)
    assert (np.sort(grids, axis=2) == np.arange(1, 5)).all()
    assert len({row.tobytes() for row in tokens.numpy()}) == 128  # augmentations make every row new
    puzzles = ZebraPuzzles(clues, np.zeros_like(grids))
    assert task.satisfies(grids, puzzles).all()
    for i in range(12):
        assert task.count_solutions(clues[i]) == 1
        np.testing.assert_array_equal(task.solve(clues[i]), grids[i])


def test_apply_symmetries_keep_unique_solutions():
    task = ZebraTask(4, 3)
    puzzles, solutions = task.make_puzzles(30, seed=2)
    clues, grids = task.apply_symmetries(puzzles.clues, solutions, np.random.default_rng(0))
    assert clues.shape == puzzles.clues.shape and grids.shape == solutions.shape
    assert not np.array_equal(grids, solutions) and not np.array_equal(clues, puzzles.clues)
    np.testing.assert_array_equal((clues == -1).all(2), (puzzles.clues == -1).all(2))  # pads stay last
    mirrored_order = np.isin(clues[:, :, 0], (R.LEFT_OF, R.BEFORE)).any()
    assert mirrored_order
    all_3x4 = all_grids(4, 3)
    for i in range(30):
        used = clues[i][clues[i, :, 0] >= 0]
        assert task.count_solutions(used) == 1
        np.testing.assert_array_equal(task.solve(used), grids[i])
        if i < 5:
            assert brute_force_ok(all_3x4, used.tolist()).sum() == 1


# ---------------------------------------------------------------------------------------- metrics
def test_metrics_on_hand_made_predictions(task):
    puzzles, solutions = task.make_puzzles(3, blanks=12, seed=4)
    right = solutions.copy()
    swapped = solutions.copy()
    blank_cells = np.argwhere(puzzles.givens[1] == 0)
    row = blank_cells[0][0]
    cols = [c for r, c in blank_cells if r == row][:2]
    assert len(cols) == 2
    swapped[1, row, cols] = swapped[1, row, cols[::-1]]  # still permutations, two cells wrong
    partial = solutions.copy()
    partial[2][tuple(np.argwhere(puzzles.givens[2] == 0)[:3].T)] = 0  # three blanks of puzzle 2 left unfilled
    pred = np.stack([right[0], swapped[1], partial[2]])
    np.testing.assert_allclose(task.cell_accuracy(pred, puzzles, solutions), [1.0, 10 / 12, 9 / 12])
    np.testing.assert_array_equal(task.is_solved(pred, puzzles, solutions), [True, False, False])
    np.testing.assert_array_equal(task.satisfies(pred, puzzles), [True, False, False])
    np.testing.assert_array_equal(task.is_solved(pred, puzzles), [True, False, False])
    wrong_given = solutions.copy()
    given = np.argwhere(puzzles.givens[0] != 0)[0]
    wrong_given[0, given[0]] = np.roll(wrong_given[0, given[0]], 1)
    assert not task.satisfies(wrong_given, puzzles)[0]
    with pytest.raises(ValueError, match="pred"):
        task.cell_accuracy(pred[:, :3], puzzles, solutions)


def test_satisfies_agrees_with_is_solved(task, made):
    puzzles, solutions = made
    rng = np.random.default_rng(0)
    preds = solutions.copy()
    for i in range(0, len(preds), 2):  # half of them: one attribute row shuffled
        preds[i, rng.integers(4)] = rng.permutation(4) + 1
    np.testing.assert_array_equal(task.satisfies(preds, puzzles), task.is_solved(preds, puzzles, solutions))
    assert 0 < task.is_solved(preds, puzzles, solutions).sum() < len(preds)


# ---------------------------------------------------------------------------------------- text
HAND_CLUES = [(R.SAME, 4, 0), (R.SAME, 0, 4), (R.LEFT_OF, 1, 2), (R.NEXT_TO, 8, 12), (R.AT, 5, 0),
              (R.NOT_AT, 3, 2), (R.BEFORE, 13, 11), (R.NOT_SAME, 9, 15), (R.NOT_SAME, 1, 6), (R.AT, 2, 3)]
HAND_SENTENCES = ["The Brit lives in the red house.", "The Brit lives in the red house.",
                  "The green house is immediately left of the blue house.",
                  "The dog owner lives next to the tea drinker.", "The Swede lives in house 1.",
                  "The yellow house is not house 3.", "The coffee drinker lives somewhere left of the horse owner.",
                  "The cat owner does not live in the same house as the water drinker.",
                  "The Dane does not live in the green house.", "The blue house is house 4."]


def test_format_puzzle_and_grid(task):
    clues = np.full((1, task.max_clues, 3), -1)
    clues[0, : len(HAND_CLUES)] = HAND_CLUES
    givens = np.zeros((1, 4, 4), np.int64)
    givens[0, 0, 1], givens[0, 3, 0] = 2, 3
    text = task.format_puzzle(ZebraPuzzles(clues, givens))
    for i, sentence in enumerate(HAND_SENTENCES, start=1):
        assert f"\n{i}. {sentence}\n" in text
    assert "  colour: red, green, blue, yellow\n" in text
    assert text.endswith("Given:\n  The colour of house 2 is green.\n  The drink of house 1 is milk.")
    expected = ("             house 1  house 2  house 3  house 4\n"
                "colour       .        green    .        .\n"
                "nationality  .        .        .        .\n"
                "pet          .        .        .        .\n"
                "drink        milk     .        .        .")
    assert task.format_grid(givens[0]) == expected
    assert task.cell_name(2, 0) == "pet of house 1"


# ---------------------------------------------------------------------------------------- files
def test_json_round_trip(task, made, tmp_path):
    puzzles, solutions = task.make_puzzles(5, blanks=12, seed=8)
    path = tmp_path / "zebra.json"
    task.save_json(path, puzzles, solutions)
    loaded, loaded_solutions = task.load(path)
    np.testing.assert_array_equal(loaded.clues, puzzles.clues)
    np.testing.assert_array_equal(loaded.givens, puzzles.givens)
    np.testing.assert_array_equal(loaded_solutions, solutions)


def test_json_errors(tmp_path):
    task = ZebraTask(minimal_clues=True)  # dropping any clue breaks uniqueness
    with pytest.raises(ValueError, match="nope.json: no such file"):
        task.load_json(tmp_path / "nope.json")
    puzzles, solutions = task.make_puzzles(1, seed=8)
    good = tmp_path / "good.json"
    task.save_json(good, puzzles, solutions)
    data = json.loads(good.read_text())
    one = data["puzzles"][0]
    cases = {
        "not valid JSON": "{",
        "houses/attributes": {**data, "houses": 5},
        "non-empty 'puzzles'": {**data, "puzzles": []},
        "must have shape": {**data, "puzzles": [{**one, "givens": [[0] * 4] * 3}]},
        "bad clue": {**data, "puzzles": [{**one, "clues": one["clues"] + [[9, 0, 0]]}]},
        "malformed": {**data, "puzzles": [{**one, "clues": "x"}]},
        "not a valid grid": {**data, "puzzles": [{**one, "solution": one["solution"][::-1]}]},
        "unique": {**data, "puzzles": [{**one, "clues": one["clues"][1:]}]},
    }
    for i, (message, content) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(ValueError, match=message) as err:
            task.load_json(path)
        assert str(path) in str(err.value)


@pytest.mark.parametrize("clue_format", ["token", "triplet"])
def test_both_clue_formats_round_trip(clue_format):
    task = ZebraTask(clue_format=clue_format)
    puzzles, solutions = task.make_puzzles(6, seed=11)
    tokens = task.encode(puzzles)
    assert tokens.shape == (6, task.seq_len) and int(tokens.max()) <= task.mask_id
    np.testing.assert_array_equal(decode_clues(task, tokens), canonical(puzzles.clues))
    batch, _ = task.training_batch(16, torch.Generator().manual_seed(2))
    clues = decode_clues(task, batch)
    assert task.satisfies(task.decode(batch), ZebraPuzzles(clues, np.zeros((16, 4, 4), np.int64))).all()


def test_minimal_clue_sets():
    """minimal_clues=True: every clue is needed; the default keeps the redundant clues drawn before uniqueness."""
    task = ZebraTask(minimal_clues=True)
    puzzles, solutions = task.make_puzzles(10, seed=4)
    for i in range(10):
        used = puzzles.clues[i][puzzles.clues[i, :, 0] >= 0]
        assert task.count_solutions(used) == 1
        assert all(task.count_solutions(np.delete(used, j, axis=0)) == 2 for j in range(len(used)))
    loose, _ = ZebraTask().make_puzzles(10, seed=4)
    assert (loose.clues[:, :, 0] >= 0).sum() > (puzzles.clues[:, :, 0] >= 0).sum()
