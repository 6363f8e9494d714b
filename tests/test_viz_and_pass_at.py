"""Per-cell unmasking steps, ranks and their pictures (``upo-fast viz``), Pass@k of sampled orders (``eval
--pass-at``), and the demo that uses both."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from upo_fast.assets import load_task_model
from upo_fast.cli.commands import main
from upo_fast.evaluation.grids import pass_at, solve_puzzles
from upo_fast.evaluation.order_pictures import (
    OrderRecord,
    format_trajectory,
    order_statistics,
    orders_legend,
    pick_puzzles,
    puzzle_panel,
    record_order,
    write_order_pictures,
)
from upo_fast.tasks import get_task


@pytest.fixture(scope="module")
def sudoku4():
    task = get_task("sudoku4")
    puzzles, solutions = task.make_puzzles(12, blanks=8, seed=3)
    return task, load_task_model(None, task), puzzles, solutions


def test_record_order_gives_each_blank_one_step(sudoku4):
    task, model, puzzles, solutions = sudoku4
    record = record_order(model, task, puzzles, solutions, "max_confidence", batch_size=5)
    assert record.grids.shape == record.steps.shape == record.ranks.shape == (12, 4, 4)
    for puzzle, order, ranks in zip(puzzles, record.steps, record.ranks):
        assert (order[puzzle != 0] == -1).all() and (ranks[puzzle != 0] == 0).all()  # givens are never unmasked
        assert sorted(order[puzzle == 0].tolist()) == list(range(8))  # one blank per step, 8 steps
        assert (ranks[puzzle == 0] == 1).all()  # max-confidence always takes the most confident masked cell
    np.testing.assert_array_equal(record.grids, solve_puzzles(model, task, puzzles, "max_confidence"))
    np.testing.assert_array_equal(record.wrong, (puzzles == 0) & (record.grids != solutions))
    np.testing.assert_array_equal(record.solved, task.is_solved(record.grids, puzzles, solutions))


def test_record_order_follows_confidence_and_ranks_others(sudoku4):
    """Step 0 of max-confidence is the blank the model is most sure of at the start; a random order's first fill
    has the rank of that cell among the blanks by the same confidence."""
    task, model, puzzles, solutions = sudoku4
    greedy = record_order(model, task, puzzles[:4], solutions[:4], "max_confidence")
    shuffled = record_order(model, task, puzzles[:4], solutions[:4], "random", seed=1)
    with torch.no_grad():
        probs = model(task.encode(puzzles[:4])).logits.softmax(-1)
    probs[..., task.mask_id] = 0  # the sampler never commits the mask token
    confidence = probs.max(-1).values.masked_fill(task.encode(puzzles[:4]) != task.mask_id, -1).numpy()
    first = np.array([np.flatnonzero(order.reshape(-1) == 0)[0] for order in greedy.steps])
    np.testing.assert_array_equal(first, confidence.argmax(-1))
    for row, order, ranks in zip(confidence, shuffled.steps.reshape(4, -1), shuffled.ranks.reshape(4, -1)):
        cell = np.flatnonzero(order == 0)[0]
        assert ranks[cell] == (row > row[cell]).sum() + 1
    assert (shuffled.ranks > 1).any()  # a random order does not follow confidence


def test_puzzle_panel_labels_and_wrong_fills(sudoku4):
    task, model, puzzles, solutions = sudoku4
    # The 4x4 model fills these right in any order, so a wrong fill is made by changing the solution of one blank
    # per puzzle: exactly those cells must be marked.
    changed = np.zeros(puzzles.shape, dtype=bool)
    for index, puzzle in enumerate(puzzles):
        changed[index].flat[np.flatnonzero(puzzle == 0)[index % 8]] = True
    solutions = np.where(changed, solutions % 4 + 1, solutions)
    record = record_order(model, task, puzzles, solutions, "random", seed=3)
    assert record.wrong.sum() >= len(puzzles) - 1 and (record.wrong <= changed).all()
    for index in range(len(puzzles)):
        panel = puzzle_panel(task, record, index)
        blank = puzzles[index] == 0
        assert sorted(panel.labels[blank].tolist()) == list(range(1, blank.sum() + 1))  # a permutation of 1..blanks
        assert (panel.labels[~blank] == 0).all()
        assert all(text == str(puzzles[index][r, c]) for (r, c), text in np.ndenumerate(panel.given_text)
                   if not blank[r, c]) and not any(panel.given_text[blank])
        np.testing.assert_array_equal(panel.wrong, blank & (record.grids[index] != solutions[index]))
        if panel.wrong.any():
            first = panel.labels[panel.wrong].min()
            assert panel.title == f"random\n{panel.wrong.sum()} wrong, first at step {first}"
        else:
            assert panel.title.endswith("solved")


def _record(steps, ranks, wrong, solved):
    steps = np.array(steps)
    return OrderRecord("x", np.zeros_like(steps), steps, np.array(ranks), np.array(wrong, dtype=bool),
                       np.array(solved, dtype=bool), np.zeros(len(steps)))


def test_order_statistics_by_step():
    # 2 puzzles of 1x3 cells: the first given at cell 0; the second puzzle goes wrong at step 1 (0-based)
    record = _record(steps=[[[-1, 0, 1]], [[1, 0, 2]]], ranks=[[[0, 1, 3]], [[2, 1, 1]]],
                     wrong=[[[0, 0, 0]], [[1, 0, 0]]], solved=[True, False])
    stats = order_statistics(record)
    assert stats["step"] == [1, 2, 3]
    assert stats["mean_rank"][:2] == [1.0, 2.5] and stats["mean_rank"][2] == 1.0
    assert stats["top_share"] == [1.0, 0.0, 1.0]
    assert stats["lost"] == [0.0, 0.5, 0.5]


def test_pick_puzzles_puts_disagreements_first():
    a = _record([[[0]]] * 4, [[[1]]] * 4, [[[0]]] * 4, [True, True, False, True])
    b = _record([[[0]]] * 4, [[[1]]] * 4, [[[0]]] * 4, [True, False, False, False])
    assert pick_puzzles([a, b], 3) == [1, 3, 0]
    assert pick_puzzles([a, a], 2) == [0, 1]


def test_trajectory_text_and_pictures(sudoku4, tmp_path):
    task, model, puzzles, solutions = sudoku4
    records = [record_order(model, task, puzzles, solutions, name) for name in ("max_confidence", "margin")]
    text = format_trajectory(task, puzzles, solutions, records[1].grids, records[1].steps, 0, "margin")
    assert text.count("step ") == 8 and "margin" in text and ("solved" in text)
    paths = write_order_pictures(task, puzzles, solutions, records, [2, 0], tmp_path)
    assert [p.name for p in paths] == ["sudoku4_orders.png", "sudoku4_order_stats.png", "sudoku4_trajectory.txt"]
    for png in paths[:2]:
        assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert paths[2].read_text().count("trajectory of puzzle 2") == 2


def test_the_sudoku_legend_names_the_grey_givens(sudoku4):
    task, model, puzzles, solutions = sudoku4
    record = record_order(model, task, puzzles[:2], solutions[:2], "max_confidence")
    rows = [[puzzle_panel(task, record, 0)], [puzzle_panel(task, record, 1)]]
    assert orders_legend(task, rows, 8) == ("sudoku4: the step (1-8) at which each blank was filled; grey = given, "
                                            "red frame = wrong fill")


def test_origin_is_refused(sudoku4):
    task, model, puzzles, solutions = sudoku4
    with pytest.raises(ValueError, match="origin"):
        record_order(model, task, puzzles, solutions, "origin")


def test_pass_at_is_monotone_and_flat_when_deterministic(sudoku4):
    task, model, puzzles, solutions = sudoku4
    sampled = pass_at(model, task, puzzles, solutions, "random", 4, progress=False)["pass_at"]
    values = [sampled[str(k)] for k in range(1, 5)]
    assert list(sampled) == ["1", "2", "3", "4"] and values == sorted(values) and 0 <= values[0] <= values[-1] <= 1
    greedy = pass_at(model, task, puzzles, solutions, "max_confidence", 3, progress=False)["pass_at"]
    assert greedy["1"] == greedy["2"] == greedy["3"]
    with pytest.raises(ValueError, match="pass-at"):
        pass_at(model, task, puzzles, solutions, "random", 0)


def test_cli_eval_pass_at_and_viz(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["eval", "--task", "sudoku4", "--num-puzzles", "6", "--scorer", "topk", "--scorer",
                 "max_confidence", "--pass-at", "3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["results"]["topk"]["pass_at"]) == {"1", "2", "3"}
    assert (tmp_path / "r_pass_at.png").is_file() and report["pass_at_plot"].endswith("r_pass_at.png")
    assert main(["eval", "--task", "sudoku4", "--pass-at", "0"]) == 2
    assert "--pass-at" in capsys.readouterr().err
    assert main(["viz", "--task", "sudoku4", "--num-puzzles", "5", "--puzzle", "4", "--scorer", "margin",
                 "--scorer", "random", "--out", str(tmp_path / "v")]) == 0
    for name in ("sudoku4_orders.png", "sudoku4_order_stats.png"):
        assert (tmp_path / "v" / name).read_bytes()[:4] == b"\x89PNG"
    text = (tmp_path / "v" / "sudoku4_trajectory.txt").read_text()
    assert text.count("trajectory of puzzle 4 with") == 2 and "with random" in text
    assert main(["viz", "--task", "sudoku4", "--num-puzzles", "5", "--puzzle", "5", "--out", str(tmp_path)]) == 2
    assert "--puzzle 5: there are 5 puzzles" in capsys.readouterr().err


def test_cli_text_tasks_need_local_model_and_data(tmp_path, capsys):
    assert main(["eval", "--task", "gsm8k"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["viz", "--task", "sudoku9", "--scorer", "origin", "--num-puzzles", "2", "--out", str(tmp_path)]) == 2
    assert "origin" in capsys.readouterr().err


def test_demo_tells_its_story_with_intervals(tmp_path, capsys):
    assert main(["demo", "--num-puzzles", "2", "--out", str(tmp_path / "pics")]) == 0
    report = json.loads((tmp_path / "pics" / "demo.json").read_text())
    results = report["sudoku9"]["results"]
    assert list(results) == ["random", "max_confidence", "margin", "policy"]  # the quick plan's orders
    for r in results.values():
        low, high = r["solved_ci95"]
        assert 0 <= low <= r["solved_rate"] <= high <= 1 and high - low > 0.3  # 2 puzzles: a wide interval
    comparisons = report["sudoku9"]["comparisons"]
    assert comparisons["best_heuristic"] in ("max_confidence", "margin")
    assert {"max_confidence_vs_random", "policy_vs_best_heuristic"} <= set(comparisons)
    sampled = report["sudoku9"]["pass_at"]["topk (uniform over the 3 most confident)"]
    assert set(sampled) == {str(k) for k in range(1, 9)}
    assert report["sudoku9"]["pass_at_detail"]["puzzles"] == 2
    phases = [p["phase"][:6] for p in report["phases"]]
    assert report["zebra"]["n"] == 2 and phases == ["sudoku", "sudoku", "sudoku", "zebra:", "arith:", "pictur"]
    arith_runs = report["arith"]["runs"]  # the text line: the shipped Dream, its policy, a threshold rule
    assert list(arith_runs)[:2] == ["max-confidence", "policy"] and arith_runs["policy"]["forwards"] == 64
    parallel = report["sudoku9"]["parallel"]  # the shipped policy's learned commit rule beside the threshold rule
    assert [r["commit"] for r in parallel.values()] == ["threshold=0.99", "policy"]
    assert all(1 <= r["forwards"] <= 50 and 0 <= r["solved_rate"] <= 1 for r in parallel.values())
    names = [Path(p).name for p in report["pictures"]]
    assert names[:3] == ["sudoku9_orders.png", "sudoku9_order_stats.png", "sudoku9_pass_at.png"]
    assert {"zebra_orders.png", "zebra_order_stats.png", "zebra_trajectory.txt"} <= set(names)
    for path in report["pictures"]:
        assert (tmp_path / "pics") in Path(path).parents and Path(path).stat().st_size > 0
    out = capsys.readouterr().out
    assert "[1/6] sudoku9: random, max_confidence, margin, policy on 2 held-out puzzles ..." in out
    assert "arith (arith_dream): " in out and "; policy: " in out
    assert "Parallel unmasking, the policy's order on the same 2 puzzles (one cell a step: 50 forwards)" in out
    assert "1. The order matters" in out and "2. A better order exists" in out and "3. The learned policy" in out
    assert "Open sudoku9_orders.png first" in out


def test_demo_plans():
    from upo_fast.evaluation.demo import FULL, QUICK

    assert set(QUICK.sudoku_scorers) < set(FULL.sudoku_scorers) and "origin" in FULL.sudoku_scorers
    assert QUICK.with_puzzles(10).pass_at_puzzles == min(10, QUICK.pass_at_puzzles)
    many = QUICK.with_puzzles(500)
    assert many.pass_at_puzzles == QUICK.pass_at_puzzles and many.sudoku_puzzles == many.zebra_puzzles == 500


def test_demo_threads_leave_busy_cores_alone(monkeypatch):
    import os

    from upo_fast.evaluation import demo

    busy = demo._busy_cores(window=0.05)
    assert busy is None or 0.0 <= busy <= (os.cpu_count() or 1) + 1e-6
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(demo, "_busy_cores", lambda: float(os.cpu_count() or 1))  # every core busy: one thread
    assert demo._free_threads() == 1
    monkeypatch.setattr(demo, "_busy_cores", lambda: 0.0)  # idle: torch's own default
    assert demo._free_threads() == torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user chose: never overridden
    monkeypatch.setattr(demo, "_busy_cores", lambda: 99.0)
    assert demo._free_threads() == torch.get_num_threads()
