"""Bad command lines: each gets one line on stderr that names the argument or file and what would be valid, exit
code 2, no traceback (``--debug`` shows it), and it is found before any work is done."""

import json
import sys
from pathlib import Path

import pytest
import torch

from upo_fast.cli.commands import main
from upo_fast.policy import UnmaskingPolicy


@pytest.fixture(scope="module")
def model_dir(sudoku4_mdm_dir):
    return Path(sudoku4_mdm_dir)


@pytest.fixture(scope="module")
def policy_dir(model_dir, tmp_path_factory):
    from upo_fast.models import load_tiny_mdm

    path = tmp_path_factory.mktemp("policy")
    UnmaskingPolicy.for_mdm(load_tiny_mdm(model_dir), mlp_hidden=16).save_pretrained(path)
    return path


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def one_line_error(code: int, err: str, *names: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], (name, lines[0])


def parse_error(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    one_line_error(code, err)
    return err


@pytest.mark.parametrize("argv, names", [
    (["eval", "--limit", "0"], ["--limit", ">= 1"]),
    (["eval", "--limit", "-1"], ["--limit", ">= 1"]),
    (["eval", "--batch-size", "0"], ["--batch-size"]),
    (["eval", "--num-puzzles", "0"], ["--num-puzzles"]),
    (["eval", "--position-temperature", "-1"], ["--position-temperature", ">= 0"]),
    (["eval", "--temperature", "nan"], ["--temperature", "finite"]),
    (["viz", "--limit", "x"], ["--limit"]),
    (["demo", "--num-puzzles", "0"], ["--num-puzzles"]),
    (["pretrain-mdm", "--out", "o", "--lr", "-1"], ["--lr", "> 0"]),
    (["sample", "--grid", "1", "--position-temperature", "inf"], ["--position-temperature"]),
    (["eval", "--device", "tpu"], ["--device", "cpu, cuda"]),
])
def test_bad_numbers_and_devices_name_their_argument(capsys, argv, names):
    err = parse_error(capsys, *argv)
    assert all(name in err for name in names), err


@pytest.mark.parametrize("argv, names", [
    (["eval", "--cache", "dual"], ["--cache dual", "gsm8k and math500", "--task sudoku9", "leave --cache out"]),
    (["eval", "--task", "zebra", "--cache", "prefix"], ["--cache prefix", "--task zebra"]),
    (["eval", "--task", "gsm8k", "--cache", "full"], ["--cache", "'prefix', 'dual'"]),
    (["eval", "--threshold", "0.9", "--factor", "2"], ["--factor", "not allowed with", "--threshold"]),
    (["eval", "--threshold", "0"], ["--threshold", "(0, 1]"]),
    (["sample", "--prompt", "hi", "--model", "m", "--threshold", "0.9", "--factor", "1"], ["--factor"]),
])
def test_fast_dllm_options_are_refused_while_parsing(capsys, argv, names):
    """Fast-dLLM's options on the command line: the cache needs the text tasks' block-wise generation, and
    ``--threshold`` / ``--factor`` are two commit rules, of which a call takes one."""
    err = parse_error(capsys, *argv)
    assert all(name in err for name in names), err


def test_eval_text_options_reach_generate(tmp_path, capsys, monkeypatch):
    """``eval --task gsm8k`` end to end on a LLaDA folder in the hub's layout: ``--cache``, ``--threshold`` and
    ``--factor`` reach ``upo_fast.generate``."""
    from hub_folders import make_llada_folder

    from upo_fast.evaluation import text

    data = tmp_path / "gsm8k.jsonl"
    data.write_text(json.dumps({"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"}) + "\n")
    folder = make_llada_folder(tmp_path / "llada")
    calls, real = [], text.generate
    monkeypatch.setattr(text, "generate", lambda *a, **k: calls.append(k) or real(*a, **k))
    common = ["eval", "--task", "gsm8k", "--model", folder, "--data", data, "--gen-length", 16, "--block-length", 8]
    for cache, rule in (("dual", ["--threshold", "0.9"]), ("prefix", ["--factor", "2"])):
        code, err = run(capsys, *common, "--cache", cache, *rule, "--json", tmp_path / f"{cache}.json")
        assert code == 0, err
        assert json.loads((tmp_path / f"{cache}.json").read_text())["results"]["max_confidence"]["n"] == 1
    assert [(k["cache"], k["threshold"], k["factor"]) for k in calls] == [("dual", 0.9, None), ("prefix", None, 2.0)]


def test_eval_grid_parallel_rules_take_fewer_forwards(model_dir, tmp_path, capsys):
    """``eval --threshold`` / ``--factor`` on a grid task reach ``unmask``: fewer forwards than blanks."""
    steps = {}
    for name, rule in (("one", []), ("threshold", ["--threshold", "0.01"]), ("factor", ["--factor", "100"])):
        code, err = run(capsys, "eval", "--task", "sudoku4", "--model", model_dir, "--num-puzzles", 3, "--blanks", 8,
                        *rule, "--json", tmp_path / f"{name}.json")
        assert code == 0, err
        steps[name] = json.loads((tmp_path / f"{name}.json").read_text())["results"]["max_confidence"]["forwards"]
    assert steps["one"] == 8 and steps["threshold"] < 8 and steps["factor"] < 8, steps


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_named(capsys):
    err = parse_error(capsys, "eval", "--task", "sudoku4", "--device", "cuda")
    assert "--device" in err and "no CUDA device" in err
    code, err = run(capsys, "train", "--task", "sudoku4", "--device", "cuda", "--out", "unused")
    one_line_error(code, err, "device", "no CUDA device")


def test_outputs_that_cannot_be_written_are_refused_before_any_work(model_dir, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    ran = []
    monkeypatch.setattr("upo_fast.evaluation.grids.evaluate", lambda *a, **k: ran.append(1))
    code, err = run(capsys, "eval", "--task", "sudoku4", "--model", model_dir, "--limit", 2,
                    "--json", a_file / "r.json")
    one_line_error(code, err, "--json", "a_file")
    assert not ran  # refused before evaluating
    code, err = run(capsys, "eval", "--task", "sudoku4", "--json", tmp_path)
    one_line_error(code, err, "--json", "is a folder")
    for command in (["viz", "--task", "sudoku4"], ["train", "--task", "sudoku4"], ["pretrain-mdm"]):
        code, err = run(capsys, *command, "--out", a_file / "sub")
        one_line_error(code, err, "--out")
    code, err = run(capsys, "train", "--task", "sudoku4", "--out", a_file)
    one_line_error(code, err, "--out", "is a file")


def test_config_file_problems_name_the_file_or_option(model_dir, tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("task: sudoku4\nlr: [1e-4\n")
    code, err = run(capsys, "train", "--config", broken, "--out", tmp_path / "run")
    one_line_error(code, err, "broken.yaml")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("task: sudoku4\nlr: fast\n")
    code, err = run(capsys, "train", "--config", wrong, "--out", tmp_path / "run")
    one_line_error(code, err, "lr", "a number", "fast")
    code, err = run(capsys, "train", "--config", tmp_path / "missing.yaml", "--out", tmp_path / "run")
    one_line_error(code, err, "missing.yaml")


def test_yaml_values_get_the_option_type():
    from upo_fast.training.config import TrainConfig

    path = Path(__file__).parent / "data" / "train_config_strings.yaml"
    cfg = TrainConfig.from_file(path).validate()
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float)  # `lr: 1e-4` is a string to PyYAML (YAML 1.1)
    assert cfg.tensorboard is False  # `tensorboard: "no"` is a non-empty, truthy string
    assert cfg.steps == 7 and cfg.time_limit_s is None
    for values, name in [({"lr": "fast"}, "lr"), ({"tensorboard": "maybe"}, "tensorboard"), ({"steps": 2.5}, "steps"),
                         ({"drop_zero_std": 1.0}, "drop_zero_std"), ({"task": 4}, "task")]:
        with pytest.raises(ValueError, match=name):
            TrainConfig.from_dict(values)
    for name in ("lr", "beta", "clip_eps", "position_temperature"):
        with pytest.raises(ValueError, match=f"{name} must be"):
            TrainConfig(task="sudoku4", **{name: float("nan")}).validate()
    with pytest.raises(ValueError, match="lr must be a finite number"):
        TrainConfig(task="sudoku4", lr=float("inf")).validate()


def test_policy_problems_are_named(model_dir, policy_dir, tmp_path, capsys):
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((policy_dir / "config.json").read_text())
    code, err = run(capsys, "eval", "--task", "sudoku4", "--model", model_dir, "--scorer", "policy",
                    "--policy", no_weights, "--limit", 2)
    one_line_error(code, err, "no_weights", "model.safetensors")
    code, err = run(capsys, "train", "--task", "sudoku4", "--model", model_dir, "--init", tmp_path / "nowhere",
                    "--out", tmp_path / "run")
    one_line_error(code, err, "init", "saved policy folder")
    code, err = run(capsys, "train", "--task", "sudoku4", "--model", model_dir, "--init", no_weights,
                    "--out", tmp_path / "run2", "--steps", 1, "--eval-every", 0)
    one_line_error(code, err, "no_weights")


def test_a_policy_missing_a_tensor_is_refused(model_dir, policy_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from upo_fast.models import load_tiny_mdm
    from upo_fast.policy import load_policy

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((policy_dir / "config.json").read_text())
    state = load_file(str(policy_dir / "model.safetensors"))
    head = sorted(k for k in state if k.startswith("head."))[-1]
    save_file({k: v for k, v in state.items() if k != head}, str(partial / "model.safetensors"),
              metadata={"format": "pt"})
    mdm = load_tiny_mdm(model_dir)
    with pytest.raises(ValueError, match=f"missing_keys.*{head}"):
        load_policy(partial, None, mdm)
    state[head] = torch.full_like(state[head], float("nan"))
    save_file(state, str(partial / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"non-finite.*{head}"):
        load_policy(partial, None, mdm)
    assert load_policy(policy_dir, None, mdm) is not None


def test_sample_with_a_policy(model_dir, policy_dir, capsys):
    code = main(["sample", "--task", "sudoku4", "--grid", "1.3.....2.....1.", "--model", str(model_dir),
                 "--scorer", "policy", "--policy", str(policy_dir)])
    assert code == 0
    assert "." not in capsys.readouterr().out.split("\n")[0]


def test_text_models_run_no_code_and_download_nothing(tmp_path, capsys):
    marker = tmp_path / "ran"
    folder = tmp_path / "remote"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": {"AutoModel": "evil.Model"}}))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    code, err = run(capsys, "sample", "--model", folder, "--prompt", "hi", "--device", "cpu")
    one_line_error(code, err, "trust_remote_code")
    assert not marker.exists()
    code, err = run(capsys, "sample", "--model", "org/name", "--prompt", "hi", "--device", "cpu")
    one_line_error(code, err, "org/name", "not an existing local folder")


def test_debug_shows_the_traceback(model_dir, capsys):
    code = main(["--debug", "eval", "--task", "sudoku4", "--model", str(model_dir), "--scorer", "best"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and "unknown scorer" in err
    code = main(["eval", "--task", "sudoku4", "--model", str(model_dir), "--scorer", "best", "--debug"])
    assert code == 2 and "Traceback" in capsys.readouterr().err


def test_unexpected_errors_are_one_line_with_a_hint(model_dir, capsys, monkeypatch):
    def broken(args):
        raise KeyError("oops")

    monkeypatch.setattr("upo_fast.cli.commands.cmd_eval", broken)
    from upo_fast.cli import commands as cli

    parser = cli.build_parser()
    args = parser.parse_args(["eval", "--task", "sudoku4"])
    args.func = broken
    monkeypatch.setattr(cli, "build_parser", lambda: type("P", (), {"parse_args": lambda self, argv: args})())
    code = main([])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "--debug" in err and "KeyError" in err


def test_lm_eval_without_its_extra_is_one_line(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval.__main__", None)  # importing it fails, as when lm-eval is missing
    code, err = run(capsys, "lm-eval", "--tasks", "x")
    one_line_error(code, err, "upo-fast lm-eval: error:", "lm_eval")
    code, err = run(capsys, "--debug", "lm-eval", "--tasks", "x")
    assert code == 2 and "Traceback" in err


def test_the_entry_point_prints_no_traceback(tmp_path):
    import subprocess

    result = subprocess.run([sys.executable, "-m", "upo_fast.cli", "eval", "--task", "sudoku4", "--model",
                             str(tmp_path / "absent"), "--limit", "2"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "absent" in result.stderr


def test_resume_takes_the_run_settings_and_refuses_changes(model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    common = ["--model", model_dir, "--prompts-per-step", 2, "--group-size", 2, "--eval-every", 0]
    assert main([str(a) for a in ["train", "--task", "sudoku4", "--out", run_dir, "--steps", 1, "--lr", "0.003",
                                  *common]]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run_dir), "--steps", "2"]) == 0  # the saved task, model, lr, ...
    assert json.loads(capsys.readouterr().out)["last_step"] == 2
    assert json.loads((run_dir / "train_config.json").read_text())["lr"] == 0.003
    code, err = run(capsys, "train", "--out", run_dir, "--steps", 3, "--lr", "0.5")
    assert code == 2 and "lr: 0.003 -> 0.5" in err and "Traceback" not in err
    code, err = run(capsys, "train", "--out", run_dir, "--steps", 3, "--task", "sudoku9")
    assert code == 2 and "task: 'sudoku4' -> 'sudoku9'" in err
