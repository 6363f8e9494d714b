"""Argument types and up-front checks of the ``upo-fast`` command line: bad input is one line that names the
argument and what would be valid (exit code 2), found before any work starts, never a traceback.

Nothing here imports torch, numpy or transformers (only the standard library and ``upo_fast.names``), so
``upo-fast --help`` and a bad argument answer at once; ``tests/test_cli_startup.py`` checks it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
from pathlib import Path

from upo_fast import names

# upo_fast.models.kv_cache.CACHE_MODES (the values of --cache), mirrored: importing that module loads torch, which
# parsing must not (tests/test_cli_sample.py keeps the two equal)
CACHE_MODES = ("prefix", "dual")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit code 2): ``upo-fast eval: error: ...``."""

    _checks: tuple = ()  # add_check's functions, run after parsing

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def add_check(self, check) -> None:
        """Run ``check(args)`` on the parsed options of this parser (a subcommand's own options): a ValueError it
        raises is this parser's one-line error (exit 2). For rules that join several options, which an option's
        ``type`` cannot see; a check must be cheap and certain (no file reads, no torch)."""
        self._checks = (*self._checks, check)

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        for check in self._checks:
            try:
                check(namespace)
            except ValueError as err:
                self.error(str(err))
        return namespace, extras


def _number(text: str, kind, name: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {name}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _at_least(kind, low, what: str, *, strict: bool = False):
    """An argparse type: ``kind`` (int or float) of the text, refused unless it is >= ``low`` (> with strict)."""

    def parse(text: str):
        value = _number(text, kind, what)
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    return parse


positive_int = _at_least(int, 1, "an integer >= 1")
nonneg_int = _at_least(int, 0, "an integer >= 0")
nonneg_float = _at_least(float, 0.0, "a number >= 0")
positive_float = _at_least(float, 0.0, "a number > 0", strict=True)


def finite_float(text: str) -> float:
    return _number(text, float, "a number")


def unit_fraction(text: str) -> float:
    """A number in (0, 1]: a confidence threshold."""
    value = _number(text, float, "a number in (0, 1]")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text}")
    return value


def scorer_name(text: str) -> str:
    """A scorer's canonical name (an alias such as ``low_confidence`` gives ``max_confidence``); an unknown name is
    refused with the list of valid ones (``upo_fast.names``, no torch)."""
    try:
        return names.check_scorer(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def scorer_help() -> str:
    """The valid ``--scorer`` names for a help line: the scorers, then each alias with its scorer."""
    aliases = ", ".join(f"{alias} = {name}" for alias, name in names.SCORER_ALIASES.items())
    return f"{', '.join(names.SCORERS)} (aliases: {aliases})"


_DEVICE = re.compile(r"(cpu|cuda|mps)(:\d+)?")


def device_name(text: str) -> str:
    """A device this machine has: ``cpu``, ``cuda`` / ``cuda:N`` with a CUDA device present, ``mps`` on Apple.
    The name is checked here; torch, which knows whether a CUDA or MPS device is present, is imported for those
    names only."""
    match = _DEVICE.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device upo_fast runs on; use cpu, cuda, cuda:N or mps")
    if match.group(1) != "cpu":
        from upo_fast.validation import check_device

        try:
            check_device(text, "device")
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix("device=")) from None
    return text


def parallel_spec(text: str) -> str:
    """A ``--parallel`` commit rule: schedule, policy, policy=P, threshold=T or factor=F (``names.parse_parallel``)."""
    try:
        name, value = names.parse_parallel(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if name == "policy" and value is not None and not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"policy={value:g}: the commit probability must be in (0, 1)")
    if name == "threshold" and not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"threshold={value:g}: must be in (0, 1]")
    if name == "factor" and not value > 0:
        raise argparse.ArgumentTypeError(f"factor={value:g}: must be > 0")
    return text


def uses_learned_commit(args) -> bool:
    """Whether the command's ``--parallel`` is the policy's learned rule (a policy with a commit net is needed)."""
    spec = getattr(args, "parallel", None)
    return spec is not None and names.parse_parallel(spec)[0] == "policy"


def parallel_options(args) -> dict:
    """The sampler's commit-rule arguments from ``--threshold`` / ``--factor`` / ``--parallel`` (at most one)."""
    return dict(threshold=args.threshold, factor=args.factor, commit=getattr(args, "parallel", None))


def add_parallel_arguments(parser) -> None:
    """``--threshold`` / ``--factor``, Fast-dLLM's two parallel-unmasking rules, and ``--parallel``, any rule by its
    spec (the policy's learned rule among them) (``upo_fast.sampling.commit_rules``), which exclude each other:
    ``generate`` and ``unmask`` take at most one rule."""
    rules = parser.add_mutually_exclusive_group()
    rules.add_argument("--parallel", type=parallel_spec, default=None, metavar="RULE",
                       help="parallel unmasking by any commit rule: policy (the policy's learned rule: the order's "
                       "first pick plus every cell its commit net trusts, at the policy's own threshold), "
                       "policy=P (that threshold instead), threshold=T, factor=F (as --threshold, --factor), "
                       "schedule (default)")
    rules.add_argument("--threshold", type=unit_fraction, default=None,
                       help="parallel unmasking, Fast-dLLM's threshold rule: each step commits the order's first "
                       "pick plus every candidate whose token confidence is >= this, in (0, 1]; the step schedule "
                       "(--steps) is ignored (default: off)")
    rules.add_argument("--factor", type=positive_float, default=None,
                       help="parallel unmasking, Fast-dLLM's factor rule: each step commits the order's first pick "
                       "plus, along the order, every candidate n (1-based) with (n + 1)(1 - confidence_n) < this, > 0; "
                       "the step schedule (--steps) is ignored (default: off)")


def task_name(name: str) -> str:
    """A grid task (``sudoku4``, ``sudoku9``, ``zebra``, ``zebraHxA``) or a text task (``gsm8k``, ``math500``)."""
    if name not in names.TEXT_TASKS and not names.is_grid_task(name):
        raise argparse.ArgumentTypeError(f"{name!r} is not a task: sudoku4, sudoku9, zebra, zebraHxA or "
                                         f"{', '.join(names.TEXT_TASKS)}")
    return name


def grid_task_name(name: str) -> str:
    if not names.is_grid_task(name):
        raise argparse.ArgumentTypeError(f"{name!r} is not a grid task: sudoku4, sudoku9, zebra or zebraHxA")
    return name


def config_from_args(config_class, args, **renamed):
    """``config_class`` (a dataclass) made from the parsed ``args``: every field that ``args`` has an attribute of
    the same name for (``--puzzles-per-round`` -> ``puzzles_per_round``), plus ``renamed``, the fields whose option
    has another name (``out_dir=args.out``). A field without an option keeps its default."""
    fields = {field.name for field in dataclasses.fields(config_class) if field.init}
    unknown = sorted(set(renamed) - fields)
    if unknown:
        raise TypeError(f"{config_class.__name__} has no field {', '.join(unknown)}")
    values = {name: getattr(args, name) for name in fields if hasattr(args, name)}
    return config_class(**{**values, **renamed})


def check_scorers(args) -> None:
    """Refuse an unknown ``--scorer`` (one name, or the list of a repeatable option) before any work: a
    ValueError, so ``--debug`` shows where it came from. The commands resolve the names again when they run."""
    given = getattr(args, "scorer", None)
    for name in [given] if isinstance(given, str) else given or ():
        names.check_scorer(name)


# Where each command writes: (attribute, flag, "dir" for a folder it creates | "file" for a file it writes)
OUTPUTS = {
    "demo": (("out", "--out", "dir"), ("json", "--json", "file")),
    "eval": (("json", "--json", "file"), ("plot", "--plot", "file")),
    "viz": (("out", "--out", "dir"),),
    "train": (("out", "--out", "dir"),),
    "plot-runs": (("out", "--out", "file"),),
    "parallel-curve": (("json", "--json", "file"), ("out", "--out", "file")),
    "pretrain-policy": (("out", "--out", "dir"),),
    "pretrain-mdm": (("out", "--out", "dir"),),
}


def check_output(path, flag: str, kind: str) -> None:
    """Refuse an output path that cannot be written, before any work is done: a file where a folder must be
    (or the reverse), a parent that is a file, a folder without write permission."""
    path = Path(path)
    if path.exists() and kind == "dir" and not path.is_dir():
        raise ValueError(f"{flag} {path}: is a file; pass a folder")
    if path.exists() and kind == "file" and path.is_dir():
        raise ValueError(f"{flag} {path}: is a folder; pass a file path")
    existing = path if kind == "dir" and path.exists() else path.parent
    while not existing.exists():  # the folders that will be created
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag} {path}: {existing} is a file, so nothing can be written under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: {existing} is not writable")


def check_outputs(args) -> None:
    for attr, flag, kind in OUTPUTS.get(args.command, ()):
        if getattr(args, attr, None):
            check_output(getattr(args, attr), flag, kind)


def report_error(command: str, err: BaseException, debug: bool) -> int:
    """Print ``err`` as one line (the traceback with ``--debug``) and return the exit code: 2 for bad input
    (ValueError, a file that cannot be read or written), 1 for anything else (a bug: please report it)."""
    if debug:
        import traceback

        traceback.print_exception(err)
    bad_input = isinstance(err, (ValueError, OSError))
    message = str(err) if bad_input else f"{type(err).__name__}: {err} (a bug; rerun with --debug and report it)"
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in message:
        message = f"{err.filename}: {message}"
    print(f"upo-fast {command}: error: {message}", file=sys.stderr)
    return 2 if bad_input else 1
