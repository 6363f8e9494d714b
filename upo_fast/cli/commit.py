"""The commands that train the policy's commit net (learned parallel unmasking, ``upo_fast.sampling.commit_rules``):
``pretrain-commit`` (imitation of the oracle filter with DAgger rounds, ``training.commit_imitation``) and
``train-commit`` (GRPO with a cost per MDM forward, ``training.commit_grpo``). Each option is the config field of
the same name (``--out``: ``out_dir``). torch loads inside the commands, after the arguments are checked."""

from __future__ import annotations

import argparse
import json

from upo_fast.cli.args import (
    config_from_args,
    grid_task_name,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    unit_fraction,
)

# the default sweep, written here too: parsing must not import torch (tests/test_learned_commit.py keeps them equal)
SWEEP = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)


def _probabilities(text: str) -> tuple[float, ...]:
    """``--sweep``: comma-separated commit probabilities, each in (0, 1)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"must be comma-separated probabilities in (0, 1), got {text!r}")
    return values


def _common(parser, init_help: str) -> None:
    """The options both commands take: the task, its MDM, the policy they start from, validation and the output."""
    parser.add_argument("--task", default="sudoku9", type=grid_task_name,
                        help="sudoku4, sudoku9, zebra (4x4) or zebraHxA")
    parser.add_argument("--model", default=None, help="TinyMDM folder (default: the shipped model for the task)")
    parser.add_argument("--init", default="shipped", help=init_help)
    parser.add_argument("--commit-blocks", type=nonneg_int, default=1,
                        help="transformer blocks of a new commit net (the first copies the MDM's last block)")
    parser.add_argument("--lr", type=positive_float, default=None, help="AdamW learning rate (default: the config's)")
    parser.add_argument("--eval-puzzles", type=positive_int, default=500,
                        help="validation puzzles of the threshold sweep")
    parser.add_argument("--target", type=unit_fraction, default=None, help="validation solved rate the chosen "
                        "threshold must reach with the fewest forwards (default: the one-cell-a-step policy's)")
    parser.add_argument("--sweep", type=_probabilities, default=SWEEP, metavar="P,P,...",
                        help="commit probabilities tried on the validation puzzles (default: "
                        f"{','.join(map(str, SWEEP))})")
    parser.add_argument("--metric", default="solved", choices=["solved", "cell_accuracy"],
                        help="what --target measures (cell_accuracy: for a model that solves few puzzles, e.g. Zebra)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)


def _config(config_class, args):
    config = config_from_args(config_class, args, out_dir=args.out)
    if args.lr is None:  # the option's default is the config's own
        config.lr = config_class.lr
    return config


def add_pretrain_commit_arguments(pc) -> None:
    _common(pc, "the policy whose order is kept: shipped (the task's), anchor (max-confidence), or a saved policy "
            "folder (its commit net, if any, goes on training)")
    pc.add_argument("--rounds", type=nonneg_int, default=6, help="DAgger rounds after the threshold rule's")
    pc.add_argument("--puzzles-per-round", type=positive_int, default=1024)
    pc.add_argument("--rollout-batch", type=positive_int, default=256)
    pc.add_argument("--round0-threshold", type=unit_fraction, default=0.9,
                    help="round 0 rolls out the confidence threshold rule at this threshold")
    pc.add_argument("--rollout-threshold", type=unit_fraction, default=0.9,
                    help="later rounds roll out the learned rule at this commit probability")
    pc.add_argument("--steps", type=positive_int, default=300, help="AdamW steps after each round")
    pc.add_argument("--batch-size", type=positive_int, default=128, help="buffered states per step")


def cmd_pretrain_commit(args) -> dict:
    from upo_fast.training.commit_imitation import CommitConfig, pretrain_commit

    summary = pretrain_commit(_config(CommitConfig, args))
    print(json.dumps(summary, indent=2))
    return summary


def add_train_commit_arguments(tc) -> None:
    _common(tc, "a policy folder with a commit net to go on from (e.g. pretrain-commit's output), or shipped / "
            "anchor: the task's policy or max-confidence with a fresh commit net (GRPO from scratch)")
    tc.add_argument("--steps", type=positive_int, default=100, help="GRPO steps (one gradient step each)")
    tc.add_argument("--puzzles-per-step", type=positive_int, default=16)
    tc.add_argument("--group-size", type=positive_int, default=8, help="rollouts per puzzle (>= 2)")
    tc.add_argument("--cost", type=nonneg_float, default=0.5,
                    help="lambda: reward = solved - lambda * forwards / blanks")
    tc.add_argument("--temperature", type=positive_float, default=0.5,
                    help="of the rollouts' Bernoulli draws, centred on the start policy's commit threshold")
    tc.add_argument("--beta", type=nonneg_float, default=0.05, help="weight of the CE to the reference threshold rule")
    tc.add_argument("--ref-threshold", type=unit_fraction, default=0.9, help="the reference rule's threshold")
    tc.add_argument("--eval-every", type=positive_int, default=20)
    tc.add_argument("--time-limit", type=positive_float, default=None,
                    help="seconds: stop after the step that passes it (it is evaluated)")


def cmd_train_commit(args) -> dict:
    from upo_fast.training.commit_grpo import CommitGRPOConfig, train_commit_grpo

    summary = train_commit_grpo(_config(CommitGRPOConfig, args))
    print(json.dumps(summary, indent=2))
    return summary
