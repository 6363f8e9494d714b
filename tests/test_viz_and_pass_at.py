"""Per-cell unmasking steps and their pictures (``upo-fast viz``), Pass@k of sampled orders (``eval --pass-at``)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from upo_fast.cli import main
from upo_fast.evaluation import load_model, pass_at
from upo_fast.tasks import get_task
from upo_fast.viz import format_trajectory, mean_step_map, unmask_order, write_order_pictures


@pytest.fixture(scope="module")
def sudoku4():
    task = get_task("sudoku4")
    puzzles, solutions = task.make_puzzles(12, blanks=8, seed=3)
    return task, load_model(None, task), puzzles, solutions


def test_unmask_order_gives_each_blank_one_step(sudoku4):
    task, model, puzzles, _ = sudoku4
    grids, steps = unmask_order(model, task, puzzles, "max_confidence", batch_size=5)
    assert grids.shape == steps.shape == (12, 4, 4)
    for puzzle, order in zip(puzzles, steps):
        assert (order[puzzle != 0] == -1).all()  # givens are never unmasked
        assert sorted(order[puzzle == 0].tolist()) == list(range(8))  # one blank per step, 8 steps
    # the same grids as the plain evaluation path
    from upo_fast.evaluation import solve_puzzles

    np.testing.assert_array_equal(grids, solve_puzzles(model, task, puzzles, "max_confidence"))


def test_unmask_order_follows_confidence(sudoku4):
    """Step 0 of max-confidence is the blank the model is most sure of at the start."""
    task, model, puzzles, _ = sudoku4
    _, steps = unmask_order(model, task, puzzles[:4], "max_confidence")
    with torch.no_grad():
        probs = model(task.encode(puzzles[:4])).logits.softmax(-1)
    confidence = probs.max(-1).values.masked_fill(task.encode(puzzles[:4]) != task.mask_id, -1)
    first = np.array([np.flatnonzero(order.reshape(-1) == 0)[0] for order in steps])
    np.testing.assert_array_equal(first, confidence.argmax(-1).numpy())


def test_mean_step_map():
    steps = np.array([[[0, 1], [-1, 2]], [[2, -1], [-1, 0]]])  # 2 puzzles of 2x2
    m = mean_step_map(steps)
    assert m.shape == (2, 2)
    np.testing.assert_allclose(m[0, 0], (0 / 2 + 2 / 2) / 2)
    np.testing.assert_allclose(m[0, 1], 0.5)
    assert np.isnan(m[1, 0])  # given in every puzzle
    np.testing.assert_allclose(m[1, 1], (1.0 + 0.0) / 2)


def test_trajectory_text_and_pictures(sudoku4, tmp_path):
    task, model, puzzles, solutions = sudoku4
    grids, steps = unmask_order(model, task, puzzles, "margin")
    text = format_trajectory(task, puzzles, solutions, grids, steps, 0, "margin")
    assert text.count("step ") == 8 and "margin" in text and ("solved" in text)
    png, txt = write_order_pictures(model, task, puzzles, solutions, {"max_confidence": {}, "margin": {}}, tmp_path)
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert txt.read_text().count("trajectory of puzzle 0") == 2


def test_origin_is_refused(sudoku4):
    task, model, puzzles, _ = sudoku4
    with pytest.raises(ValueError, match="origin"):
        unmask_order(model, task, puzzles, "origin")


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
    assert main(["viz", "--task", "sudoku4", "--num-puzzles", "5", "--out", str(tmp_path / "v")]) == 0
    assert (tmp_path / "v" / "sudoku4_order.png").is_file() and (tmp_path / "v" / "sudoku4_trajectory.txt").is_file()


def test_cli_text_tasks_need_local_model_and_data(tmp_path, capsys):
    assert main(["eval", "--task", "gsm8k"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["viz", "--task", "sudoku9", "--scorer", "origin", "--num-puzzles", "2", "--out", str(tmp_path)]) == 2
    assert "origin" in capsys.readouterr().err


def test_demo_writes_its_pictures(tmp_path, capsys):
    report_path = tmp_path / "demo.json"
    assert main(["demo", "--num-puzzles", "3", "--out", str(tmp_path / "pics"), "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert {"max_confidence", "policy"} <= set(report["sudoku9"]["results"])
    for path in report["pictures"]:
        assert (tmp_path / "pics") in Path(path).parents
        assert Path(path).stat().st_size > 0
    names = {Path(p).name for p in report["pictures"]}
    assert {"sudoku9_order.png", "sudoku9_trajectory.txt", "sudoku9_pass_at.png"} <= names
    assert "pictures written" in capsys.readouterr().out
