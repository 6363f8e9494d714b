"""``upo-fast`` command line: demo, eval, viz, sample, train, pretrain-policy, pretrain-commit, pretrain-mdm, plots."""

# One style for every command: a pair of functions, ``add_<name>_arguments(parser)`` that declares its options and
# ``cmd_<name>(args)`` that runs it, registered with its one-line help as a ``Command`` in ``COMMANDS`` (the order
# of `upo-fast --help`). ``build_parser`` and ``main``'s dispatch are built from that table only. ``eval``, ``viz``
# and ``parallel-curve`` live in ``upo_fast.cli.evaluate``, ``sample`` in ``upo_fast.cli.sample``; every ``cmd_*`` is
# reachable here.
#
# torch, numpy and the modules that import them load inside the commands, after parsing: `upo-fast --help` and a
# bad argument answer at once (tests/test_cli_startup.py checks that parsing imports none of them)

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from upo_fast.cli.args import (
    OneLineParser,
    check_outputs,
    check_scorers,
    config_from_args,
    finite_float,
    grid_task_name,
    nonneg_int,
    positive_float,
    positive_int,
    report_error,
    task_name,
)
from upo_fast.cli.commit import (
    add_pretrain_commit_arguments,
    add_train_commit_arguments,
    cmd_pretrain_commit,
    cmd_train_commit,
)
from upo_fast.cli.evaluate import (
    _grid_task,
    add_eval_arguments,
    add_parallel_curve_arguments,
    add_viz_arguments,
    cmd_eval,
    cmd_parallel_curve,
    cmd_viz,
)
from upo_fast.cli.sample import add_sample_arguments, cmd_sample


@dataclass(frozen=True)
class Command:
    """One ``upo-fast`` subcommand: its ``name``, the ``help`` line `upo-fast --help` shows, ``add_arguments``
    (declares its options on its parser; None for a command that parses its own options) and ``run`` (does the
    work with the parsed ``args``; returns its report, or an int: the exit code). ``own_options``: everything
    after the name goes to ``run`` unparsed, as ``args.argv`` (``lm-eval`` passes it to lm-eval's own parser)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None] | None
    run: Callable[[argparse.Namespace], object]
    own_options: bool = False


# ---- demo ----------------------------------------


def add_demo_arguments(demo) -> None:
    demo.add_argument("--full", action="store_true",
                      help="every order on 200 puzzles per task, Pass@k on 200 (about 10 minutes on 2 CPU cores)")
    demo.add_argument("--num-puzzles", type=positive_int, default=None,
                      help="puzzles per task (default: sized to run in about 1.5 minutes; --full: 200); Pass@k "
                      "runs on the first ones")
    demo.add_argument("--model", default=None, help="TinyMDM folder (default: the shipped sudoku9 model)")
    demo.add_argument("--out", default="demo_out", help="folder for the pictures and demo.json")
    demo.add_argument("--json", default=None, help="the report's path (default: OUT/demo.json)")


def cmd_demo(args) -> dict:
    from upo_fast.evaluation.demo import FULL, QUICK, run_demo

    plan = FULL if args.full else QUICK
    if args.num_puzzles is not None:
        plan = plan.with_puzzles(args.num_puzzles)
    return run_demo(plan, args.model, args.out, args.json)


# ---- train ----------------------------------------

# TrainConfig fields that `upo-fast train` takes as --options (None = keep the config file's / default value)
_TRAIN_OPTIONS = {
    "task": str, "reference": str, "model": str, "init": str, "steps": int, "prompts_per_step": int,
    "group_size": int, "inner_iters": int, "lr": float, "beta": float, "kl_mode": str, "clip_eps": float,
    "position_temperature": float, "reward": str, "topk": int, "anchor_tau": float, "eval_every": int,
    "eval_puzzles": int, "checkpoint_every": int, "seed": int, "device": str, "time_limit_s": float,
    "stop_at_step": int, "certain_keep": float, "extra_blocks": int, "policy_body": str, "policy_dim": int,
    "mlp_hidden": int, "block_init": str, "update_chunk": int, "compile_backend": str,
    "drop_zero_std": str, "blanks": int, "select_on": str, "weight_decay": float, "grad_clip": float,
    "clip_eps_high": float, "gen_length": int, "block_length": int,
    # drop_zero_std: a str, converted (true/false/yes/no) and checked by TrainConfig
}


def add_train_arguments(tr) -> None:
    tr.add_argument("--config", default=None, help="YAML/JSON file of TrainConfig fields, or a shipped preset's "
                    "name (paper_sudoku); options below override")
    tr.add_argument("--out", default=None, help="run folder (checkpoints, metrics.jsonl); resumes if it has one, "
                    "with the run's saved settings unless --config is given")
    for name, kind in _TRAIN_OPTIONS.items():
        tr.add_argument("--" + name.replace("_", "-"), type=kind, default=None)


def cmd_train(args) -> dict:
    from upo_fast.training.config import TrainConfig
    from upo_fast.training.trainer import train

    overrides = {name: getattr(args, name) for name in _TRAIN_OPTIONS}
    overrides["out_dir"] = args.out
    saved = Path(args.out or TrainConfig.out_dir) / "train_config.json"
    if args.config:
        cfg = TrainConfig.from_file(args.config, **overrides)
    elif saved.is_file():  # resuming: the run's own settings, the options given replace them (or are refused)
        cfg = TrainConfig.from_file(saved, **overrides)
    else:
        cfg = TrainConfig.from_dict({k: v for k, v in overrides.items() if v is not None})
    summary = train(cfg.validate())
    if os.environ.get("RANK", "0") == "0":  # under torchrun every process returns the same summary
        print(json.dumps(summary, indent=2))
    return summary


# ---- plot-runs ----------------------------------------


def add_plot_runs_arguments(pr) -> None:
    pr.add_argument("--run", action="append", required=True, help="LABEL=RUN_FOLDER, repeatable")
    pr.add_argument("--out", required=True, help="PNG path")
    pr.add_argument("--window", type=positive_int, default=10, help="moving-average window of the reward curve")
    pr.add_argument("--metric", choices=["solved", "cells"], default="solved",
                    help="the validation curve: solved rate or cell accuracy")


def cmd_plot_runs(args) -> None:
    from upo_fast.evaluation.plots import plot_runs

    runs = {}
    for spec in args.run:
        label, sep, folder = spec.partition("=")
        if not sep:
            raise ValueError(f"--run takes LABEL=FOLDER, got {spec!r}")
        runs[label] = folder
    print(plot_runs(runs, args.out, window=args.window, metric=args.metric))


# ---- pretrain-policy ----------------------------------------


def add_pretrain_policy_arguments(pp) -> None:
    # each option is the ImitationConfig field of the same name (--out: out_dir); cmd_pretrain_policy copies them
    pp.add_argument("--task", default="sudoku9", type=grid_task_name, help="sudoku4, sudoku9, zebra (4x4) or zebraHxA")
    pp.add_argument("--reference", default="max_confidence")
    pp.add_argument("--target", default="reference", choices=["reference", "oracle"],
                    help="imitate the reference's choices, or the most confident correctly-filled cell (oracle)")
    pp.add_argument("--model", default=None)
    pp.add_argument("--init", default="anchor",
                    help="fresh, copy, anchor, or a saved policy folder to go on from (then round 0 rolls out it)")
    pp.add_argument("--policy-body", default="block",
                    help="block (one transformer block, the default) or features (no block: cheaper, per position)")
    pp.add_argument("--policy-dim", type=positive_int, default=None,
                    help="run the block at this narrower width (with --block-init fresh; default: the MDM's width)")
    pp.add_argument("--block-init", default="copy", help="copy (the MDM's last block, the default) or fresh")
    pp.add_argument("--mlp-hidden", type=positive_int, default=128, help="width of the policy's scoring MLP")
    pp.add_argument("--extra-blocks", type=nonneg_int, default=0,
                    help="fresh transformer blocks after the first (they compare the positions' predictions)")
    pp.add_argument("--rounds", type=nonneg_int, default=1,
                    help="DAgger rounds after the reference's (0: imitation only)")
    pp.add_argument("--puzzles-per-round", type=positive_int, default=256)
    pp.add_argument("--steps", type=positive_int, default=100, help="AdamW steps after each round")
    pp.add_argument("--batch-size", type=positive_int, default=128, help="buffered states per step")
    pp.add_argument("--lr", type=positive_float, default=3e-4)
    pp.add_argument("--topk", type=positive_int, default=5, help="K of the topk reference")
    pp.add_argument("--candidate-topk", type=positive_int, default=None,
                    help="the policy re-ranks the K most confident candidates only")
    pp.add_argument("--keep-rate", type=positive_float, default=0.1, help="fraction of uncontested states buffered")
    pp.add_argument("--eval-puzzles", type=positive_int, default=200)
    pp.add_argument("--seed", type=int, default=0)
    pp.add_argument("--out", required=True)


def cmd_pretrain_policy(args) -> dict:
    from upo_fast.training.imitation import ImitationConfig, pretrain_policy

    summary = pretrain_policy(config_from_args(ImitationConfig, args, out_dir=args.out))
    print(json.dumps(summary, indent=2))
    return summary


# ---- pretrain-mdm ----------------------------------------


def add_pretrain_mdm_arguments(pt) -> None:
    pt.add_argument("--arch", default="tiny", choices=["tiny", "llada", "dream"],
                    help="tiny: TinyMDM on a grid task; llada / dream: the official architecture on --task arith, "
                         "pretraining (--steps) then SFT (--sft-steps)")
    pt.add_argument("--task", default=None, type=task_name,
                    help="sudoku4, sudoku9 (default for --arch tiny), zebra, zebraHxA; arith for llada / dream")
    pt.add_argument("--out", required=True)
    pt.add_argument("--steps", type=positive_int, default=1200)
    pt.add_argument("--sft-steps", type=positive_int, default=3600, help="llada / dream: the SFT phase's steps")
    pt.add_argument("--batch-size", type=positive_int, default=128)
    pt.add_argument("--lr", type=positive_float, default=2e-3)
    pt.add_argument("--hidden-size", type=positive_int, default=128)
    pt.add_argument("--layers", type=positive_int, default=4)
    pt.add_argument("--heads", type=positive_int, default=4)
    pt.add_argument("--kv-heads", type=positive_int, default=2, help="llada / dream: key/value heads")
    pt.add_argument("--no-qkv-bias", dest="qkv_bias", action="store_false",
                    help="llada: no q/k/v biases (LLaDA-8B's setting; a small model then learns arith far slower)")
    pt.add_argument("--block-rows", type=finite_float, default=0.0,
                    help="llada / dream SFT: share of rows masked as the block schedule leaves them (clean earlier "
                         "blocks, masked later ones)")
    pt.add_argument("--init-from", default=None,
                    help="llada / dream: go on from this trained folder (its architecture): SFT only, --sft-steps")
    pt.add_argument("--position-embedding", default="grid", choices=["grid", "rope", "learned", "rope+learned"],
                    help="--arch tiny only")
    pt.add_argument("--min-mask-ratio", type=finite_float, default=0.05)
    pt.add_argument("--loss-weighting", default="inverse_t", choices=["inverse_t", "none"])
    pt.add_argument("--checkpoint-every", type=positive_int, default=200)
    pt.add_argument("--time-limit", type=positive_float, default=None, help="seconds (per phase for llada / dream)")
    pt.add_argument("--stop-at-step", type=positive_int, default=None,
                    help="stop here; the lr schedule still spans --steps")
    pt.add_argument("--seed", type=int, default=0)


def cmd_pretrain_mdm(args) -> None:
    import torch

    from upo_fast.evaluation.grids import HELD_OUT_SEED, evaluate
    from upo_fast.models import TinyMDM, TinyMDMConfig
    from upo_fast.training.pretrain_mdm import PretrainConfig, pretrain_mdm

    if args.arch != "tiny":
        return _pretrain_text_mdm(args)
    task = _grid_task(args.task or "sudoku9")
    if args.position_embedding == "grid" and not hasattr(task, "n"):
        raise ValueError(f"--position-embedding grid is for Sudoku (rows, columns, boxes); use learned or rope for "
                         f"{task.name}")
    config = TinyMDMConfig(vocab_size=task.vocab_size, hidden_size=args.hidden_size,
                           num_hidden_layers=args.layers, num_attention_heads=args.heads,
                           intermediate_size=3 * args.hidden_size, max_position_embeddings=task.seq_len,
                           position_embedding=args.position_embedding,
                           grid_size=task.n if args.position_embedding == "grid" else None,
                           mask_token_id=task.mask_id, pad_token_id=task.pad_id)
    torch.manual_seed(args.seed)
    model = TinyMDM(config)
    # a validation set from a seed the held-out evaluation never uses
    val_puzzles, val_solutions = task.make_puzzles(100, seed=HELD_OUT_SEED + 1)

    def eval_fn(m):
        m.eval()
        r = evaluate(m, task, val_puzzles, val_solutions, ["max_confidence", "random"], progress=False)
        m.train()
        return {f"val_{s}_{k}": v for s, d in r.items() for k, v in d.items() if k != "seconds"}

    # the options named as PretrainConfig's fields (steps, batch_size, lr, seed, ...), and the two named otherwise
    cfg = config_from_args(PretrainConfig, args, out_dir=args.out, time_limit_s=args.time_limit)
    summary = pretrain_mdm(model, task.training_batch, cfg, mask_id=task.mask_id, eval_fn=eval_fn)
    model.save_pretrained(args.out)
    print(json.dumps(summary, indent=2))


def _pretrain_text_mdm(args) -> None:
    """``--arch llada|dream``: the official architecture on arith, pretraining then SFT (``training.pretrain_text``),
    with the validation accuracy (max-confidence, 64 problems) in the log at every checkpoint."""
    from upo_fast.training.pretrain_mdm import PretrainConfig
    from upo_fast.training.pretrain_text import TextModelSize, TextPretrainPlan, pretrain_text_mdm, validation_fn

    if args.task not in (None, "arith"):
        raise ValueError(f"--arch {args.arch} trains on --task arith (the generated text task), got --task {args.task}")
    size = TextModelSize(hidden_size=args.hidden_size, layers=args.layers, heads=args.heads, kv_heads=args.kv_heads,
                         qkv_bias=args.qkv_bias)
    pretrain = config_from_args(PretrainConfig, args, out_dir=args.out, time_limit_s=args.time_limit)
    sft = config_from_args(PretrainConfig, args, out_dir=args.out, time_limit_s=args.time_limit,
                           steps=args.sft_steps, stop_at_step=None)
    plan = TextPretrainPlan(arch=args.arch, out_dir=args.out, pretrain=pretrain, sft=sft, size=size,
                            init_from=args.init_from, block_rows=args.block_rows)
    summary = pretrain_text_mdm(plan, eval_fn=validation_fn())
    print(json.dumps(summary, indent=2, default=str))


# ---- lm-eval ----------------------------------------


def cmd_lm_eval(args) -> int:
    """``upo-fast lm-eval ARGS``: lm-evaluation-harness's own command line with the ``upo_fast`` model registered;
    ``args.argv`` holds ARGS. A shipped task (``--tasks arith``) without ``--include_path`` gets the shipped task
    folder as its ``--include_path`` (``with_shipped_tasks``). Returns lm-eval's exit code."""
    try:
        from lm_eval.__main__ import cli_evaluate

        import upo_fast.integrations.lm_eval  # noqa: F401 - registers the model
    except ImportError as err:
        raise ValueError(str(err)) from None
    saved, sys.argv = sys.argv, ["lm-eval", *with_shipped_tasks(args.argv)]
    try:
        cli_evaluate()
    except SystemExit as done:  # lm-eval's argparse: --help, or its own one-line usage error
        return done.code if isinstance(done.code, int) else 2
    finally:
        sys.argv = saved
    return 0  # any other error (e.g. a bad --model_args): one line from main, as for every other command


def with_shipped_tasks(argv: list[str]) -> list[str]:
    """lm-eval's ``argv`` plus ``--include_path TASKS_DIR`` when its ``--tasks`` name a task shipped in
    ``upo_fast/integrations/lm_eval_tasks`` (``arith``) and it names no ``--include_path`` of its own: lm-eval knows
    only its built-in tasks, and users should not have to find the folder inside the installed package. A user's
    own ``--include_path`` (or a ``--config`` that sets one) is left alone: lm-eval 0.4 takes a single folder."""
    from upo_fast.integrations.lm_eval_tasks import TASKS, TASKS_DIR

    options = _lm_eval_options(argv)
    if "--include_path" in options or "--config" in options or not set(_task_names(argv)) & set(TASKS):
        return list(argv)
    return [*argv, "--include_path", str(TASKS_DIR)]


def _lm_eval_options(argv: list[str]) -> set[str]:
    """The long options named in lm-eval's ``argv``, spelled out (``--include`` reads as ``--include_path``:
    argparse takes unique prefixes); ``-C`` is ``--config``."""
    named = set()
    for token in argv:
        if token == "--":
            break
        name = token.split("=", 1)[0]
        for option in ("--include_path", "--config"):
            if len(name) > 3 and option.startswith(name):
                named.add(option)
        if token.startswith("-C"):
            named.add("--config")
    return named


def _task_names(argv: list[str]) -> list[str]:
    """The task names of ``--tasks`` / ``-t`` in lm-eval's ``argv`` (space or comma separated, as lm-eval reads
    them)."""
    names, reading = [], False
    for token in argv:
        if token == "--":
            break
        if token.startswith("-"):
            name, _, value = token.partition("=")
            reading = name == "-t" or (len(name) > 3 and "--tasks".startswith(name))
            if reading and value:
                names.append(value)
        elif reading:
            names.append(token)
    return [name.strip() for value in names for name in value.split(",") if name.strip()]


# ---- the table ----------------------------------------

# the subcommands in the order --help lists them
COMMANDS = (
    Command("demo", "what the unmasking order does, on held-out Sudoku and Zebra with the shipped TinyMDMs (CPU, "
            "about 1.5 minutes; --full: every order, longer)", add_demo_arguments, cmd_demo),
    Command("eval", "evaluate unmasking orders: grid puzzles (TinyMDM) or GSM8K/MATH500 (LLaDA/Dream)",
            add_eval_arguments, cmd_eval),
    Command("viz", "pictures of unmasking orders: puzzles with each blank labelled by the step that filled it, side "
            "by side per order, the same over many puzzles, and trajectories as text", add_viz_arguments, cmd_viz),
    Command("train", "UPO: train an unmasking policy with KL-regularized GRPO", add_train_arguments, cmd_train),
    Command("plot-runs", "reward-vs-step and validation curves of training runs (PNG)", add_plot_runs_arguments,
            cmd_plot_runs),
    Command("parallel-curve", "solved rate vs MDM forwards: the learned commit rule beside the threshold and factor "
            "rules, with both orders", add_parallel_curve_arguments, cmd_parallel_curve),
    Command("pretrain-policy", "fit a policy to a reference order (a warm start for train)",
            add_pretrain_policy_arguments, cmd_pretrain_policy),
    Command("pretrain-commit", "learned parallel unmasking: train a policy's commit net toward the oracle filter "
            "(DAgger), its threshold chosen on validation puzzles", add_pretrain_commit_arguments, cmd_pretrain_commit),
    Command("train-commit", "learned parallel unmasking by GRPO with a cost per MDM forward, regularized toward the "
            "confidence threshold rule", add_train_commit_arguments, cmd_train_commit),
    Command("sample", "fill one Sudoku grid, or generate from a prompt with a local LLaDA/Dream",
            add_sample_arguments, cmd_sample),
    Command("pretrain-mdm", "train a TinyMDM on a task (MDM objective)", add_pretrain_mdm_arguments, cmd_pretrain_mdm),
    Command("lm-eval", "lm-evaluation-harness with the upo_fast model registered; every lm-eval option passes "
            "through, and --tasks arith (upo-fast eval's arith test split and metric) finds its task folder without "
            "--include_path (needs: pip install -e '.[eval]')", None, cmd_lm_eval, own_options=True),
)
COMMAND_NAMED = {command.name: command for command in COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, one subparser per entry of ``COMMANDS``; a parsed command's ``args.func`` is its
    ``run``."""
    parser = OneLineParser(prog="upo-fast", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    for command in COMMANDS:
        options = sub.add_parser(command.name, parents=[debug], help=command.help, add_help=not command.own_options)
        if command.add_arguments is not None:
            command.add_arguments(options)
        options.set_defaults(func=command.run)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """The parsed command line; a command with its own options (``lm-eval``) gets the rest of ``argv`` unparsed as
    ``args.argv`` (``--debug`` only before its name). SystemExit for --help or a bad argument (printed)."""
    start = 1 if argv[:1] == ["--debug"] else 0
    command = COMMAND_NAMED.get(argv[start]) if len(argv) > start else None
    if command is not None and command.own_options:
        return argparse.Namespace(command=command.name, debug=start == 1, argv=argv[start + 1:], func=command.run)
    return build_parser().parse_args(argv)


def main(argv=None) -> int:
    """Run ``upo-fast`` with ``argv`` (default: sys.argv) and return its exit code: 0, 2 for bad input (one line
    on stderr), 1 for an unexpected error, 130 when interrupted."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse(argv)
    except SystemExit as done:  # --help, or a bad argument (argparse has printed its one line)
        return done.code if isinstance(done.code, int) else 2
    try:
        check_scorers(args)  # before any work (and before torch loads): an unknown --scorer
        check_outputs(args)  # before any work: a run must not fail at its end for want of a writable --json
        outcome = args.func(args)
    except KeyboardInterrupt:
        print(f"upo-fast {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - one line for the person at the terminal; --debug shows the rest
        return report_error(args.command, err, args.debug)
    return outcome if isinstance(outcome, int) and not isinstance(outcome, bool) else 0


if __name__ == "__main__":
    sys.exit(main())
