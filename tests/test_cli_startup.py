"""``upo-fast --help``, ``upo-fast <command> --help`` and a bad argument answer at once: parsing and checking the
command line imports neither torch nor numpy nor transformers (they take seconds to load). The task and scorer
names it checks come from ``upo_fast.names``, a standard-library copy of the lists in ``upo_fast.tasks`` and
``upo_fast.sampling.scorers``; the tests below keep the copies equal."""

import json
import subprocess
import sys

import pytest

from upo_fast import names

HEAVY = ("torch", "numpy", "transformers")

# Runs in a fresh interpreter: every command's --help, every command parsed with its defaults (argparse converts
# string defaults with the option's type: --device cpu, --task sudoku9), and bad arguments; then prints what loaded.
_PROBE = """
import contextlib, io, json, sys
from upo_fast.cli import commands as cli

codes = {}
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    commands = [c for c in cli.build_parser()._subparsers._group_actions[0].choices if c != "lm-eval"]
    for argv in [["--help"], ["nosuchcmd"], *([c, "--help"] for c in commands),
                 ["eval", "--num-puzzles", "-3"], ["eval", "--task", "chess"], ["viz", "--task", "gsm8k"],
                 ["eval", "--device", "tpu"], ["eval", "--scorer", "best"], ["sample", "--scorer", "best"]]:
        codes[" ".join(argv)] = cli.main(argv)
    for argv in [["demo"], ["eval"], ["viz"], ["parallel-curve"], ["sample"], ["train"], ["pretrain-mdm", "--out", "x"],
                 ["pretrain-policy", "--out", "x"], ["plot-runs", "--run", "a=b", "--out", "x"]]:
        cli.build_parser().parse_args(argv)
EXTRA
print(json.dumps({"codes": codes, "heavy": [m for m in HEAVY if m in sys.modules]}))
"""


def probe(extra: str = "") -> dict:
    code = _PROBE.replace("EXTRA", extra).replace("HEAVY", repr(HEAVY))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_help_and_bad_arguments_load_no_heavy_module():
    report = probe()
    assert report["heavy"] == [], f"parsing the command line imported {report['heavy']}"
    codes = report["codes"]
    assert codes["--help"] == 0 and codes["train --help"] == 0 and codes["eval --help"] == 0
    assert len([c for c in codes if c.endswith(" --help")]) >= 9  # every command's help was asked for
    bad = [argv for argv in codes if not argv.endswith("--help")]
    assert bad and all(codes[argv] == 2 for argv in bad), codes


def test_the_probe_sees_a_heavy_import():
    """The check above can fail: the same probe reports torch once something imports it."""
    assert "torch" in probe("import upo_fast.sampling.scorers")["heavy"]


def test_importing_the_cli_loads_no_heavy_module():
    code = f"import sys, upo_fast.cli.commands; print([m for m in {HEAVY!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_task_names_equal_their_home():
    from upo_fast import tasks

    assert names.GRID_TASKS == tasks.GRID_TASKS
    assert names.TEXT_TASKS == tasks.TEXT_TASKS
    samples = [*tasks.GRID_TASKS, *tasks.TEXT_TASKS, "zebra5x3", "zebra12x4", "zebrax3", "zebra5x", "Zebra5x3",
               "sudoku16", "", None]
    answers = [names.is_grid_task(name) for name in samples]
    assert answers == [tasks.is_grid_task(name) for name in samples]
    assert True in answers and False in answers


def test_scorer_names_equal_their_home():
    from upo_fast.sampling import scorers

    assert names.SCORERS == tuple(scorers.SCORERS)
    assert names.SCORER_ALIASES == scorers.ALIASES
    for name in [*scorers.SCORERS, *scorers.ALIASES]:
        assert names.check_scorer(name) == scorers.resolve_scorer(name)
    with pytest.raises(ValueError) as light:
        names.check_scorer("best")
    with pytest.raises(ValueError) as real:
        scorers.resolve_scorer("best")
    assert str(light.value) == str(real.value) and "unknown scorer 'best'" in str(light.value)
