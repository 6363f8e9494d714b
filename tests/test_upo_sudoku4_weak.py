"""The weak 4×4 model (issue 14's GRPO setting): its level on the paper's 500 puzzles, the shipped-name lookup of
model folders, the rule that `eval --scorer policy` reads the model folder's policy/, and the training presets."""

from pathlib import Path

import pytest

from upo_fast.assets import load_task_model, model_folder, shipped_model_path
from upo_fast.evaluation.grids import evaluate
from upo_fast.policy import load_policy
from upo_fast.tasks import get_task
from upo_fast.training.config import TrainConfig, config_path, presets

SHARED_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sudoku4x4_test_upo.csv"


@pytest.mark.skipif(not SHARED_CSV.is_file(), reason="shared 4x4 test set not available")
def test_weak_model_is_at_llada_level_on_the_papers_puzzles():
    """The issue's bands: random 0.55-0.65, max-confidence 0.68-0.80 cell accuracy (LLaDA-8B: 0.616 / 0.705)."""
    task = get_task("sudoku4")
    model = load_task_model("sudoku4_weak", task)
    puzzles, solutions = task.load(SHARED_CSV)
    r = evaluate(model, task, puzzles, solutions, ["random", "max_confidence"], progress=False)
    assert 0.55 <= r["random"]["cell_accuracy"] <= 0.65
    assert 0.68 <= r["max_confidence"]["cell_accuracy"] <= 0.80


def test_model_folder_resolves_shipped_names_but_prefers_real_paths(tmp_path, monkeypatch):
    assert model_folder(None, "sudoku4") == shipped_model_path("sudoku4")
    assert model_folder("sudoku4_weak", "sudoku4") == shipped_model_path("sudoku4_weak")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sudoku4_weak").mkdir()  # a local folder of that name wins: the user's path is never overridden
    assert model_folder("sudoku4_weak", "sudoku4") == Path("sudoku4_weak")
    assert model_folder("nope/sudoku4_weak", "sudoku4") == Path("nope/sudoku4_weak")


def test_policy_defaults_to_the_model_folders_policy(tmp_path):
    task = get_task("sudoku9")
    mdm = load_task_model(None, task)
    assert load_policy(None, task, mdm, model_dir=None) is not None  # the 9x9 default keeps working
    assert load_policy(None, task, mdm, model_dir=shipped_model_path("sudoku9")) is not None
    with pytest.raises(ValueError, match="no policy/ subfolder"):
        load_policy(None, task, mdm, model_dir=tmp_path)


def test_eval_cli_reads_the_model_folders_policy(tmp_path, capsys):
    """A model folder with a policy/ subfolder: `eval --scorer policy` without --policy uses it."""
    import shutil

    from upo_fast.cli.commands import main

    model_dir = tmp_path / "m"
    shutil.copytree(shipped_model_path("sudoku9"), model_dir)
    assert main(["eval", "--task", "sudoku9", "--model", str(model_dir), "--scorer", "policy",
                 "--num-puzzles", "4"]) in (None, 0)
    shutil.rmtree(model_dir / "policy")
    assert main(["eval", "--task", "sudoku9", "--model", str(model_dir), "--scorer", "policy",
                 "--num-puzzles", "4"]) not in (None, 0)
    assert "no policy/ subfolder" in capsys.readouterr().err


def test_paper_preset_loads_by_name_and_validates():
    assert "paper_sudoku" in presets()
    cfg = TrainConfig.from_file("paper_sudoku").validate()
    assert (cfg.task, cfg.model, cfg.reference, cfg.reward) == ("sudoku4", "sudoku4_weak", "max_confidence", "cells")
    assert (cfg.beta, cfg.position_temperature, cfg.topk, cfg.blanks) == (1e-4, 0.8, 5, 8)
    assert cfg.steps == 3500 and cfg.weight_decay == 0.1 and cfg.grad_clip == 0.2
    assert TrainConfig.from_file("paper_sudoku", beta=0.0).beta == 0.0  # options override the preset
    with pytest.raises(ValueError, match="does not exist and is not a preset name; presets: .*paper_sudoku"):
        config_path("paper_sudokuu")


@pytest.mark.parametrize("value, expected", [("false", False), ("yes", True)])
def test_drop_zero_std_and_blanks_from_the_cli(tmp_path, value, expected, monkeypatch):
    from upo_fast.cli import commands as cli

    seen = {}
    monkeypatch.setattr("upo_fast.training.trainer.train", lambda cfg: seen.setdefault("cfg", cfg) and {})
    cli.main(["train", "--config", "paper_sudoku", "--drop-zero-std", value, "--blanks", "6",
              "--out", str(tmp_path / "run")])
    assert seen["cfg"].drop_zero_std is expected and seen["cfg"].blanks == 6
    assert cli.main(["train", "--drop-zero-std", "maybe", "--out", str(tmp_path / "r2")]) not in (None, 0)


def test_the_weak_models_grpo_policy_ships_with_its_card():
    """`eval --model sudoku4_weak --scorer policy` reads sudoku4_weak/policy/: a Top-K re-ranker (K = 5), small."""
    folder = shipped_model_path("sudoku4_weak") / "policy"
    assert (folder / "README.md").is_file() and (folder / "model.safetensors").stat().st_size <= 10 * 2**20
    task = get_task("sudoku4")
    mdm = load_task_model("sudoku4_weak", task)
    policy = load_policy(None, task, mdm, model_dir="sudoku4_weak")
    assert policy.config.candidate_topk == 5
    puzzles, solutions = task.make_puzzles(40, 8, seed=11)
    r = evaluate(mdm, task, puzzles, solutions, ["policy", "random"], progress=False, policy=policy,
                 position_temperature=0.0)
    assert r["policy"]["cell_accuracy"] > r["random"]["cell_accuracy"]
