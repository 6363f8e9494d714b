"""The shipped TinyMDM checkpoints load, fit their tasks, and make the unmasking order matter on 9x9."""

import numpy as np
import pytest

from upo_fast.assets import load_task_model, shipped_model_path
from upo_fast.evaluation.grids import HELD_OUT_SEED, evaluate
from upo_fast.tasks import get_task


@pytest.mark.parametrize("task_name", ["sudoku4", "sudoku9"])
def test_shipped_checkpoint_is_small_and_loads(task_name):
    path = shipped_model_path(task_name)
    assert (path / "model.safetensors").stat().st_size <= 10 * 2**20
    assert (path / "README.md").exists()  # the model card
    model = load_task_model(None, get_task(task_name))
    assert model.config.model_type == "tiny_mdm" and not model.training


def test_sudoku9_order_matters():
    task = get_task("sudoku9")
    model = load_task_model(None, task)
    puzzles, solutions = task.make_puzzles(40, seed=HELD_OUT_SEED + 7)
    assert np.all((puzzles == 0).sum((1, 2)) == 50)
    r = evaluate(model, task, puzzles, solutions, ["max_confidence", "random"], progress=False)
    # 40 puzzles: loose bounds around the demo's 200-puzzle figures
    assert r["max_confidence"]["solved_rate"] >= r["random"]["solved_rate"] + 0.2
    assert 0.4 <= r["max_confidence"]["solved_rate"] <= 0.97
    assert r["max_confidence"]["cell_accuracy"] > r["random"]["cell_accuracy"]


def test_shipped_policy_loads_fits_the_mdm_and_solves():
    from upo_fast.assets import shipped_policy_path
    from upo_fast.policy import load_policy

    path = shipped_policy_path("sudoku9")
    assert (path / "model.safetensors").stat().st_size <= 10 * 2**20 and (path / "README.md").exists()
    task = get_task("sudoku9")
    model = load_task_model(None, task)
    policy = load_policy(None, task, model)  # checks the pairing with the shipped MDM
    puzzles, solutions = task.make_puzzles(12, seed=HELD_OUT_SEED + 7)
    r = evaluate(model, task, puzzles, solutions, ["policy"], progress=False, policy=policy, position_temperature=0)
    assert r["policy"]["cell_accuracy"] > 0.8  # random orders reach ~0.5
    with pytest.raises(ValueError, match="no shipped policy"):
        shipped_policy_path("sudoku4")


def test_shipped_zebra_model_reads_the_clues():
    """The shipped Zebra TinyMDM is weak (it solves ~no held-out puzzle, see its card), but it must use the clues:
    filling each attribute with a valid permutation without them gets 0.25 of the cells right."""
    from upo_fast.assets import shipped_model_path

    assert (shipped_model_path("zebra") / "model.safetensors").stat().st_size <= 10 * 2**20
    task = get_task("zebra")
    model = load_task_model(None, task)
    puzzles, solutions = task.make_puzzles(40, seed=HELD_OUT_SEED + 7)
    r = evaluate(model, task, puzzles, solutions, ["max_confidence"], progress=False)
    assert r["max_confidence"]["cell_accuracy"] > 0.35
