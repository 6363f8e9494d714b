"""Zebra through the whole grid-task pipeline: MDM pretraining (clues never masked), eval with Pass@k, viz, UPO
training and policy pretraining, on a tiny random TinyMDM (the shipped model's quality is in test_shipped_models)."""

import json

import pytest
import torch

from upo_fast.cli.commands import main
from upo_fast.models import TinyMDM, TinyMDMConfig
from upo_fast.tasks import get_task
from upo_fast.training.pretrain_mdm import PretrainConfig, pretrain_mdm


@pytest.fixture(scope="module")
def zebra_model_dir(tmp_path_factory):
    task = get_task("zebra3x3")
    torch.manual_seed(0)
    config = TinyMDMConfig(vocab_size=task.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=task.seq_len, position_embedding="learned",
                           mask_token_id=task.mask_id, pad_token_id=task.pad_id)
    model = TinyMDM(config)
    pretrain_mdm(model, task.training_batch, PretrainConfig(steps=3, batch_size=8, warmup_steps=1),
                 mask_id=task.mask_id, progress=False)
    path = tmp_path_factory.mktemp("zebra3")
    model.save_pretrained(path)
    return path


def test_get_task_sizes():
    assert get_task("zebra").grid_shape == (4, 4) and get_task("zebra5x3").grid_shape == (3, 5)
    with pytest.raises(ValueError, match="zebraHxA"):
        get_task("zebra_big")
    with pytest.raises(ValueError, match="text task"):
        get_task("gsm8k")


def test_eval_pass_at_viz_and_training(zebra_model_dir, tmp_path, capsys):
    model = ["--task", "zebra3x3", "--model", str(zebra_model_dir)]
    out = tmp_path / "r.json"
    assert main(["eval", *model, "--num-puzzles", "6", "--scorer", "random", "--scorer", "margin", "--pass-at", "2",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["task"] == "zebra3x3" and set(report["results"]["random"]["pass_at"]) == {"1", "2"}
    assert main(["viz", *model, "--num-puzzles", "4", "--scorer", "max_confidence", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "zebra3x3_trajectory.txt").read_text()
    assert "Clues:" in text and text.count("step ") == 9  # 3x3 grid, one cell per step
    run = tmp_path / "run"
    assert main(["train", *model, "--out", str(run), "--steps", "1", "--prompts-per-step", "2", "--group-size", "2",
                 "--eval-every", "1", "--eval-puzzles", "3"]) == 0
    capsys.readouterr()
    assert main(["pretrain-policy", *model, "--steps", "1", "--batch-size", "2", "--target", "oracle",
                 "--puzzles-per-round", "4", "--keep-rate", "1", "--eval-puzzles", "3",
                 "--out", str(tmp_path / "pre")]) == 0


def test_the_orders_picture_says_what_it_shows(zebra_model_dir, tmp_path, monkeypatch):
    """Zebra's cells are all blank by default (the clues are the puzzle, and are not drawn): the title of
    <task>_orders.png says so, not "grey = given"; with --blanks some cells are given, drawn grey as in Sudoku."""
    from upo_fast.evaluation import plots
    from upo_fast.evaluation.order_pictures import record_order, write_order_pictures
    from upo_fast.models import load_tiny_mdm

    titles, draw = [], plots.plot_puzzle_orders

    def spy(rows, out, title="", **options):
        titles.append(title)
        return draw(rows, out, title, **options)

    monkeypatch.setattr(plots, "plot_puzzle_orders", spy)
    task, model = get_task("zebra3x3"), load_tiny_mdm(zebra_model_dir)
    for blanks in (None, 5):
        puzzles, solutions = task.make_puzzles(2, blanks=blanks, seed=1)
        record = record_order(model, task, puzzles, solutions, "max_confidence")
        write_order_pictures(task, puzzles, solutions, [record], [0, 1], tmp_path / str(blanks))
    all_blank, some_given = titles
    assert all_blank == ("zebra3x3: the step (1-9) at which each cell was filled; red frame = wrong fill\n"
                         "no cell is given: the clues are the puzzle (see zebra3x3_trajectory.txt)")
    assert some_given == ("zebra3x3: the step (1-5) at which each blank was filled; grey = given, red frame = wrong "
                          "fill\nthe clues are not drawn (see zebra3x3_trajectory.txt)")


def test_eval_reads_a_users_zebra_file(zebra_model_dir, tmp_path):
    task = get_task("zebra3x3")
    puzzles, solutions = task.make_puzzles(3, seed=5)
    task.save_json(tmp_path / "mine.json", puzzles, solutions)
    out = tmp_path / "r.json"
    assert main(["eval", "--task", "zebra3x3", "--model", str(zebra_model_dir), "--data", str(tmp_path / "mine.json"),
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["n"] == 3
    assert main(["eval", "--task", "zebra3x3", "--model", str(zebra_model_dir), "--data",
                 str(tmp_path / "missing.json")]) == 2
