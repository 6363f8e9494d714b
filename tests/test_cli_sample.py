"""``upo-fast sample``: its options reach ``unmask`` / ``generate``, its help names the scorers and every default,
and what needs no model (an unknown scorer, ``--scorer policy`` without ``--policy`` for a prompt, a block
schedule ``generate`` would refuse, a bad number) is refused while parsing: one line, exit 2, no torch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from upo_fast import names
from upo_fast.cli import commands
from upo_fast.cli.commands import main, parse
from upo_fast.cli.sample import POLICY_SCORERS

ROOT = Path(__file__).resolve().parents[1]


def refused(capsys, *argv) -> str:
    """The one-line error of parsing ``sample ARGV`` (exit code 2)."""
    with pytest.raises(SystemExit) as done:
        parse(["sample", *argv])
    err = capsys.readouterr().err
    assert done.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("upo-fast sample: error:") and "Traceback" not in err, err
    return lines[0]


def sample_parser():
    return commands.build_parser()._subparsers._group_actions[0].choices["sample"]


def test_help_lists_the_scorers_and_every_default(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: argparse wraps at the terminal's width
    with pytest.raises(SystemExit) as done:
        parse(["sample", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in [*names.SCORERS, *names.SCORER_ALIASES]:
        assert name in text, name
    for shown in ["(default: max_confidence)", "--block-length (default: 128)", "block (default: 32)",
                  "(default: --gen-length)", "one blank per step", "(default: 5)", "(0 = argmax; default: 0.0)",
                  "cuda when there is one, else cpu", "shipped model of --task", "shipped policy of --task",
                  "(default: sudoku9)", "--temperature > 0"]:
        assert shown in text, shown
    for action in sample_parser()._actions:
        assert action.help, action.dest
        if action.dest not in ("help", "debug", "grid", "prompt"):
            assert "default" in action.help, action.dest


def test_unknown_scorer_is_refused_while_parsing(capsys):
    line = refused(capsys, "--grid", "1", "--scorer", "best")
    assert "--scorer" in line and "unknown scorer 'best'" in line and "max_confidence" in line


@pytest.mark.parametrize("alias", sorted(names.SCORER_ALIASES))
def test_scorer_aliases_are_accepted(alias):
    assert parse(["sample", "--scorer", alias]).scorer == names.SCORER_ALIASES[alias]


def test_policy_without_a_policy_folder_is_refused_for_a_prompt_only(capsys):
    line = refused(capsys, "--prompt", "hi", "--model", "m", "--scorer", "policy")
    assert "--policy" in line and "LLaDA/Dream" in line
    assert parse(["sample", "--prompt", "hi", "--model", "m", "--scorer", "policy", "--policy", "p"]).policy == "p"
    assert parse(["sample", "--grid", "1", "--scorer", "policy"]).policy is None  # the shipped policy


def test_the_cli_knows_the_scorers_that_need_a_policy():
    from upo_fast.sampling.scorers import SCORERS

    assert POLICY_SCORERS == tuple(name for name, scorer in SCORERS.items() if scorer.needs_policy)


@pytest.mark.parametrize("argv, names_", [
    (["--temperature", "-1"], ["--temperature", ">= 0"]),
    (["--temperature", "inf"], ["--temperature", "finite"]),
    (["--temperature", "hot"], ["--temperature"]),
    (["--threshold", "0"], ["--threshold", "(0, 1]"]),
    (["--threshold", "1.01"], ["--threshold", "(0, 1]"]),
    (["--threshold", "nan"], ["--threshold", "finite"]),
    (["--factor", "0"], ["--factor", "> 0"]),
    (["--factor=-inf"], ["--factor", "finite"]),
    (["--threshold", "0.9", "--factor", "1"], ["--factor", "not allowed with", "--threshold"]),
    (["--prompt", "hi", "--model", "m", "--cache", "full"], ["--cache", "'prefix', 'dual'"]),
    (["--grid", "1", "--cache", "dual"], ["--cache dual", "--prompt", "leave --cache out"]),
    (["--cache", "prefix"], ["--cache prefix", "--prompt"]),
    (["--seed", "x"], ["--seed"]),
    (["--seed", "-1"], ["--seed", ">= 0"]),
    (["--steps", "0"], ["--steps", ">= 1"]),
    (["--grid", "1", "--prompt", "hi"], ["--prompt", "--grid"]),
    (["--prompt", "hi"], ["--prompt needs --model"]),
    (["--prompt", "hi", "--model", "m", "--gen-length", "100"], ["--gen-length (100)", "--block-length (32)"]),
    (["--prompt", "hi", "--model", "m", "--steps", "6"], ["--steps (6)", "number of blocks", "4"]),
    (["--prompt", "hi", "--model", "m", "--steps", "256"], ["--steps (256)", "--gen-length (128)"]),
    (["--prompt", "hi", "--model", "m", "--gen-length", "64", "--steps", "128"], ["--steps (128)", "(64)"]),
])
def test_bad_values_are_refused_while_parsing(capsys, argv, names_):
    line = refused(capsys, *argv)
    assert all(name in line for name in names_), line


def test_schedules_generate_takes_parse():
    for argv in (["--gen-length", "64", "--block-length", "16", "--steps", "8"], ["--gen-length", "64"],
                 ["--block-length", "128"], ["--threshold", "1", "--cache", "dual"], ["--factor", "0.5"],
                 ["--cache", "prefix"]):
        args = parse(["sample", "--prompt", "hi", "--model", "m", *argv])
        assert args.prompt == "hi"  # --steps left out: --gen-length's, which every valid schedule takes


def test_parse_errors_load_no_heavy_module():
    """The refusals above come from parsing: in a fresh interpreter, main answers 2 and torch never loads."""
    cases = [["--grid", "1", "--scorer", "best"], ["--prompt", "hi", "--model", "m", "--scorer", "policy"],
             ["--prompt", "hi", "--model", "m", "--gen-length", "100"], ["--threshold", "2"], ["--temperature", "-1"]]
    code = ("import contextlib, io, json, sys\nfrom upo_fast.cli.commands import main\n"
            "with contextlib.redirect_stderr(io.StringIO()) as err:\n"
            f"    codes = [main(['sample', *argv]) for argv in {cases!r}]\n"
            "print(json.dumps({'codes': codes, 'lines': len(err.getvalue().splitlines()),"
            " 'heavy': [m for m in ('torch', 'numpy', 'transformers') if m in sys.modules]}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"codes": [2] * len(cases), "lines": len(cases), "heavy": []}


@pytest.fixture(scope="module")
def model_dir(sudoku4_mdm_dir):
    return Path(sudoku4_mdm_dir)


GRID = "1.3.....2.....1."


def test_the_cli_knows_the_cache_modes():
    from upo_fast.cli.args import CACHE_MODES
    from upo_fast.models.kv_cache import CACHE_MODES as MODES

    assert CACHE_MODES == MODES


@pytest.mark.parametrize("rule, value", [("threshold", 0.9), ("factor", 1.5)])
def test_grid_options_reach_unmask(model_dir, monkeypatch, capsys, rule, value):
    from upo_fast.sampling import loop

    calls = []
    real = loop.unmask

    def recording(model, x, **kwargs):
        calls.append(kwargs)
        return real(model, x, **kwargs)

    monkeypatch.setattr(loop, "unmask", recording)
    assert main(["sample", "--task", "sudoku4", "--grid", GRID, "--model", str(model_dir), "--device", "cpu",
                 "--temperature", "0.7", f"--{rule}", str(value), "--seed", "11", "--steps", "4",
                 "--scorer", "topk_margin", "--topk", "3"]) == 0
    (kwargs,) = calls
    assert {k: kwargs[k] for k in ("temperature", "threshold", "factor", "steps", "scorer", "topk")} == {
        "temperature": 0.7, "threshold": None, "factor": None, "steps": 4, "scorer": "margin", "topk": 3,
        rule: value}
    assert "cache" not in kwargs  # unmask fills one region: nothing to cache
    assert kwargs["generator"].initial_seed() == 11
    assert len(capsys.readouterr().out.strip().splitlines()) == 6  # the grid (4 rows, a rule) and the verdict


def test_a_seed_makes_sampled_grids_reproducible(model_dir, capsys):
    def sampled(seed: int) -> str:
        assert main(["sample", "--task", "sudoku4", "--grid", GRID, "--model", str(model_dir), "--device", "cpu",
                     "--temperature", "2", "--scorer", "random", "--seed", str(seed)]) == 0
        return capsys.readouterr().out

    first = sampled(5)
    assert sampled(5) == first
    assert len({first, *(sampled(seed) for seed in range(6, 12))}) > 1  # the seed is used


def test_text_options_reach_generate(monkeypatch, capsys):
    import torch

    from upo_fast.models import loading
    from upo_fast.sampling import loop

    class Tokenizer:
        def __call__(self, texts, return_tensors):
            assert texts == ["hi"] and return_tensors == "pt"
            return type("Encoded", (), {"input_ids": torch.tensor([[7, 8]])})()

        def decode(self, ids, skip_special_tokens):
            return "decoded " + " ".join(str(int(i)) for i in ids)

    calls = []

    def fake_generate(model, ids, **kwargs):
        calls.append(kwargs)
        return torch.cat([ids, torch.full((1, kwargs["gen_length"]), 3)], dim=1)

    monkeypatch.setattr(loading, "load_text_model", lambda path, device, trust: (torch.nn.Linear(1, 1), Tokenizer()))
    monkeypatch.setattr(loop, "generate", fake_generate)
    assert main(["sample", "--prompt", "hi", "--model", "m", "--device", "cpu", "--gen-length", "8",
                 "--block-length", "4", "--temperature", "0.5", "--threshold", "0.95", "--seed", "2",
                 "--scorer", "entropy", "--cache", "dual"]) == 0
    (kwargs,) = calls
    assert {k: kwargs[k] for k in ("gen_length", "block_length", "steps", "temperature", "threshold", "factor",
                                   "scorer", "topk", "cache")} == {
        "gen_length": 8, "block_length": 4, "steps": 8, "temperature": 0.5, "threshold": 0.95, "factor": None,
        "scorer": "entropy", "topk": 5, "cache": "dual"}
    assert kwargs["generator"].initial_seed() == 2
    assert capsys.readouterr().out.strip() == "decoded " + " ".join(["3"] * 8)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_a_cached_prompt_prints_what_generate_gives(tmp_path, capsys, cache):
    """End to end on a LLaDA folder in the hub's layout: ``--cache`` and ``--threshold`` give the text that
    ``upo_fast.generate`` gives with the same options."""
    import torch
    from hub_folders import make_llada_folder

    import upo_fast

    folder = make_llada_folder(tmp_path / "llada")
    assert main(["sample", "--prompt", "2+2=", "--model", str(folder), "--device", "cpu", "--gen-length", "16",
                 "--block-length", "8", "--cache", cache, "--threshold", "0.5"]) == 0
    model, tokenizer = upo_fast.load_model(folder, dtype=torch.float32), upo_fast.load_tokenizer(folder)
    ids = tokenizer(["2+2="], return_tensors="pt").input_ids
    out = upo_fast.generate(model, ids, gen_length=16, block_length=8, steps=16, threshold=0.5, cache=cache)
    assert capsys.readouterr().out == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True) + "\n"
