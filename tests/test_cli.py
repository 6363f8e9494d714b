"""The command line: eval's JSON report, sample, and clear errors for missing or corrupt checkpoints."""

import json
from pathlib import Path

import pytest
import torch

from upo_fast.cli import main
from upo_fast.models import TinyMDM, TinyMDMConfig
from upo_fast.tasks import get_task

SHARED_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sudoku4x4_test_upo.csv"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    task = get_task("sudoku4")
    torch.manual_seed(0)
    config = TinyMDMConfig(vocab_size=task.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=16, position_embedding="grid",
                           grid_size=4, mask_token_id=task.mask_id)
    path = tmp_path_factory.mktemp("tiny4")
    TinyMDM(config).save_pretrained(path)
    return path


def test_eval_writes_the_json_report(model_dir, tmp_path, capsys):
    data = ["--data", str(SHARED_CSV)] if SHARED_CSV.exists() else []
    out = tmp_path / "r.json"
    code = main(["eval", "--task", "sudoku4", *data, "--scorer", "max_confidence", "--scorer", "random",
                 "--limit", "12", "--model", str(model_dir), "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["task"] == "sudoku4" and report["n"] == 12
    for scorer in ("max_confidence", "random"):
        r = report["results"][scorer]
        assert 0 <= r["cell_accuracy"] <= 1 and 0 <= r["solved_rate"] <= 1 and r["seconds"] >= 0
    assert "max_confidence" in capsys.readouterr().out


def test_sample_fills_a_grid(model_dir, capsys):
    assert main(["sample", "--task", "sudoku4", "--grid", "1.3.....2.....1.", "--model", str(model_dir)]) == 0
    printed = capsys.readouterr().out
    assert "." not in printed.split("\n")[0]


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "--task", "sudoku4", "--model", str(tmp_path / "nope"), "--limit", "2"]) == 2
    assert "nope" in capsys.readouterr().err


def test_corrupt_checkpoint_is_a_clear_error(model_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((model_dir / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    assert main(["eval", "--task", "sudoku4", "--model", str(broken), "--limit", "2"]) == 2
    assert "broken" in capsys.readouterr().err


def test_unknown_scorer_is_a_clear_error(model_dir, capsys):
    assert main(["eval", "--task", "sudoku4", "--model", str(model_dir), "--scorer", "best", "--limit", "2"]) == 2
    assert "unknown scorer" in capsys.readouterr().err
