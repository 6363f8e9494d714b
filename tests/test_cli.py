"""The command line: eval's JSON report, sample, and clear errors for missing or corrupt checkpoints."""

import json
from pathlib import Path

import pytest

from upo_fast.cli.commands import main

SHARED_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sudoku4x4_test_upo.csv"


@pytest.fixture(scope="module")
def model_dir(sudoku4_mdm_dir):
    return Path(sudoku4_mdm_dir)


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


def test_train_then_eval_the_policy(model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--task", "sudoku4", "--model", str(model_dir), "--out", str(run), "--steps", "2",
                 "--prompts-per-step", "2", "--group-size", "2", "--eval-every", "1", "--eval-puzzles", "4",
                 "--checkpoint-every", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["last_step"] == 2
    out = tmp_path / "r.json"
    assert main(["eval", "--task", "sudoku4", "--model", str(model_dir), "--scorer", "policy", "--scorer",
                 "max_confidence", "--policy", str(run / "best"), "--limit", "6", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert list(results) == ["policy", "max_confidence"]
    # the anchored policy starts as max-confidence: at step 0 (best may be step 0) they agree; in any case valid
    assert 0 <= results["policy"]["solved_rate"] <= 1


def test_train_errors_are_named(model_dir, tmp_path, capsys):
    assert main(["train", "--task", "sudoku4", "--model", str(model_dir), "--out", str(tmp_path),
                 "--group-size", "1"]) == 2
    assert "group_size" in capsys.readouterr().err
    assert main(["eval", "--task", "sudoku4", "--model", str(model_dir), "--scorer", "policy", "--policy",
                 str(tmp_path / "none"), "--limit", "2"]) == 2
    assert "none" in capsys.readouterr().err


def test_pretrain_policy_imitates_the_reference(model_dir, tmp_path, capsys):
    out = tmp_path / "pre"
    assert main(["pretrain-policy", "--task", "sudoku4", "--model", str(model_dir), "--init", "fresh", "--rounds",
                 "0", "--puzzles-per-round", "16", "--steps", "30", "--batch-size", "64", "--lr", "3e-3",
                 "--keep-rate", "1", "--eval-puzzles", "8", "--out", str(out)]) == 0
    summary = json.loads((out / "pretrain_summary.json").read_text())
    log = [json.loads(line) for line in (out / "pretrain_log.jsonl").read_text().splitlines()]
    assert [r["round"] for r in log] == [-1, 0] and log[1]["rollout"] == "reference"
    assert log[1]["last_loss"] < 0.8 * log[1]["first_loss"]  # it learns the reference's choices
    assert log[1]["states"] > 0 and 0 <= summary["val_solved"] <= 1 and (out / "config.json").exists()
    assert summary["best"]["val_solved"] >= summary["val_solved"] and (out / "last" / "config.json").exists()


def test_pretrain_policy_toward_the_oracle_with_dagger_rounds(model_dir, tmp_path):
    out = tmp_path / "oracle"
    assert main(["pretrain-policy", "--task", "sudoku4", "--model", str(model_dir), "--rounds", "2", "--steps", "2",
                 "--puzzles-per-round", "8", "--batch-size", "4", "--target", "oracle", "--candidate-topk", "3",
                 "--keep-rate", "1", "--eval-puzzles", "4", "--extra-blocks", "1", "--out", str(out)]) == 0
    log = [json.loads(line) for line in (out / "pretrain_log.jsonl").read_text().splitlines()]
    assert [r["round"] for r in log] == [-1, 0, 1, 2] and all("val_solved" in r for r in log)
    assert [r["rollout"] for r in log[1:]] == ["reference", "policy", "policy"]
    assert json.loads((out / "config.json").read_text())["candidate_topk"] == 3
    # go on from the saved policy: it is rolled out from round 0, and keeps its re-ranker and extra block
    more = tmp_path / "more"
    assert main(["pretrain-policy", "--task", "sudoku4", "--model", str(model_dir), "--rounds", "0", "--steps", "2",
                 "--puzzles-per-round", "8", "--batch-size", "4", "--target", "oracle", "--init", str(out / "last"),
                 "--keep-rate", "1", "--eval-puzzles", "4", "--out", str(more)]) == 0
    log = [json.loads(line) for line in (more / "pretrain_log.jsonl").read_text().splitlines()]
    assert log[1]["rollout"] == "policy" and log[0]["val_solved"] == json.loads(
        (out / "pretrain_log.jsonl").read_text().splitlines()[-1])["val_solved"]
    config = json.loads((more / "last" / "config.json").read_text())
    assert config["candidate_topk"] == 3 and config["extra_blocks"] == 1


@pytest.mark.parametrize("body", [["--policy-body", "features", "--block-init", "fresh", "--mlp-hidden", "16"],
                                  ["--policy-dim", "16", "--block-init", "fresh", "--mlp-hidden", "16"]])
def test_pretrain_policy_builds_the_lighter_bodies(model_dir, tmp_path, body):
    out = tmp_path / "light"
    assert main(["pretrain-policy", "--task", "sudoku4", "--model", str(model_dir), "--rounds", "0", "--steps", "1",
                 "--puzzles-per-round", "4", "--batch-size", "4", "--eval-puzzles", "4", *body, "--out", str(out)]) == 0
    config = json.loads((out / "last" / "config.json").read_text())
    assert (config["body"], config["policy_dim"], config["mlp_hidden"]) == (
        ("features", None, 16) if "features" in body else ("block", 16, 16))


def test_plot_runs_writes_a_png(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": 0, "val_solved": 0.5, "val_cell_accuracy": 0.7}] + [{"step": i, "reward_mean": i / 10}
                                                                        for i in range(1, 6)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"torn')
    png = tmp_path / "curves.png"
    assert main(["plot-runs", "--run", f"a={run}", "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    png.unlink()
    assert main(["plot-runs", "--run", f"a={run}", "--metric", "cells", "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["plot-runs", "--run", f"a={run}", "--metric", "cell", "--out", str(png)]) == 2
    assert main(["plot-runs", "--run", str(run), "--out", str(png)]) == 2
    assert "LABEL=FOLDER" in capsys.readouterr().err


def test_parallel_curve(model_dir, tmp_path, capsys):
    out, js = tmp_path / "c.png", tmp_path / "c.json"
    assert main(["parallel-curve", "--task", "sudoku4", "--model", str(model_dir), "--thresholds", "0.5,0.2",
                 "--limit", "8", "--out", str(out), "--json", str(js)]) == 0
    points = [p for p in json.loads(js.read_text())["points"]
              if p["order"] == "max_confidence" and p["rule"] in ("one", "threshold")]
    assert [p["commit"] for p in points] == ["schedule", "threshold=0.5", "threshold=0.2"]
    assert points[0]["forwards"] >= points[1]["forwards"] >= points[2]["forwards"]
    assert out.read_bytes()[:4] == b"\x89PNG"
    for bad in ("2", "0.5,x", ""):
        assert main(["parallel-curve", "--task", "sudoku4", "--model", str(model_dir), "--thresholds", bad]) == 2
        assert "--thresholds" in capsys.readouterr().err


def test_every_command_is_one_registered_pair():
    """One style for every command: ``add_<name>_arguments(parser)`` and ``cmd_<name>(args)``, registered once in
    ``COMMANDS``, from which the parser (in --help order) and the dispatch are built."""
    from upo_fast.cli import commands

    names = [command.name for command in commands.COMMANDS]
    assert names == ["demo", "eval", "viz", "train", "plot-runs", "parallel-curve", "pretrain-policy",
                     "pretrain-commit", "train-commit", "sample", "pretrain-mdm", "lm-eval"]
    assert list(commands.build_parser()._subparsers._group_actions[0].choices) == names
    for command in commands.COMMANDS:
        name = command.name.replace("-", "_")
        assert command.run is getattr(commands, f"cmd_{name}")
        assert command.add_arguments is (None if command.own_options else getattr(commands, f"add_{name}_arguments"))
    args = commands.parse(["--debug", "lm-eval", "--tasks", "x"])  # lm-eval parses its own options
    assert (args.command, args.argv, args.debug, args.func) == ("lm-eval", ["--tasks", "x"], True, commands.cmd_lm_eval)
    assert commands.parse(["eval"]).func is commands.cmd_eval


def test_options_named_as_config_fields_are_copied():
    from upo_fast.cli.args import config_from_args
    from upo_fast.cli.commands import parse
    from upo_fast.training.imitation import ImitationConfig
    from upo_fast.training.pretrain_mdm import PretrainConfig

    args = parse(["pretrain-policy", "--out", "x"])
    assert config_from_args(ImitationConfig, args, out_dir=args.out) == ImitationConfig(out_dir="x")  # same defaults
    args = parse(["pretrain-policy", "--out", "x", "--puzzles-per-round", "7", "--candidate-topk", "3", "--lr", "0.1"])
    cfg = config_from_args(ImitationConfig, args, out_dir=args.out)
    assert (cfg.puzzles_per_round, cfg.candidate_topk, cfg.lr) == (7, 3, 0.1)
    assert cfg.rollout_batch == ImitationConfig.rollout_batch  # a field without an option keeps its default
    args = parse(["pretrain-mdm", "--out", "y", "--time-limit", "5", "--stop-at-step", "3"])
    cfg = config_from_args(PretrainConfig, args, out_dir=args.out, time_limit_s=args.time_limit)
    assert (cfg.steps, cfg.time_limit_s, cfg.stop_at_step, cfg.out_dir, cfg.warmup_steps) == (1200, 5.0, 3, "y", 50)
    with pytest.raises(TypeError, match="PretrainConfig has no field out"):
        config_from_args(PretrainConfig, args, out=args.out)
