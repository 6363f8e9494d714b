"""The commands that evaluate and draw unmasking orders: ``eval`` (grid puzzles with TinyMDM, GSM8K/MATH500 with
LLaDA/Dream, Pass@k; Fast-dLLM's ``--threshold`` / ``--factor`` for both, its ``--cache`` for the text tasks),
``viz`` and ``parallel-curve``, each as a pair: ``add_<name>_arguments(parser)`` declares its options,
``cmd_<name>(args)`` runs it. ``upo_fast.cli.commands.COMMANDS`` registers them with the other commands and builds
the whole command line from that table.

torch and the modules that import it load inside the commands, after the arguments are parsed and checked, so that
``upo-fast --help`` and a bad argument answer at once."""

from __future__ import annotations

import json
from pathlib import Path

from upo_fast.cli.args import (
    CACHE_MODES,
    add_parallel_arguments,
    device_name,
    grid_task_name,
    nonneg_float,
    nonneg_int,
    parallel_options,
    positive_int,
    task_name,
    uses_learned_commit,
)
from upo_fast.names import TEXT_TASKS


def _task(name: str):
    from upo_fast.tasks import get_task

    return get_task(name)


def _grid_task(name: str):
    if name in TEXT_TASKS:
        raise ValueError(f"--task {name} is a text task: this command works on grid tasks (Sudoku, Zebra)")
    return _task(name)


def _scorers(args, default: list[str]) -> list[str]:
    """The canonical names of the command's ``--scorer`` options (``default`` when none is given)."""
    from upo_fast.sampling.scorers import resolve_scorer

    return [resolve_scorer(s) for s in (args.scorer or default)]


def needs_policy(scorer: str) -> bool:
    """Whether ``scorer`` (a canonical name) ranks by a learned policy that must be loaded (``Scorer.needs_policy``)."""
    from upo_fast.sampling.scorers import get_scorer

    return get_scorer(scorer).needs_policy


def policy_options(args, scorer: str, task, model) -> dict:
    """``policy`` and ``position_temperature`` (the command's ``--position-temperature``, else 0 = greedy) for
    ``--scorer policy``, the shipped policy of a grid task when ``--policy`` is not given; for a heuristic, the policy
    alone under ``--parallel policy`` (its commit net), else nothing."""
    if not needs_policy(scorer) and not uses_learned_commit(args):
        return {}
    from upo_fast.policy import load_policy

    policy = load_policy(args.policy, task, model, getattr(args, "model", None))
    if not needs_policy(scorer):  # a heuristic order with the policy's learned commit rule (--parallel policy)
        return {"policy": policy}
    return {"policy": policy, "position_temperature": getattr(args, "position_temperature", 0.0)}


def _puzzles(args, task):
    if args.data:
        puzzles, solutions = task.load(args.data)
    else:
        from upo_fast.evaluation.grids import HELD_OUT_SEED

        puzzles, solutions = task.make_puzzles(args.num_puzzles or 200, blanks=args.blanks, seed=HELD_OUT_SEED)
    if args.limit is not None:
        puzzles, solutions = puzzles[: args.limit], solutions[: args.limit]
    return puzzles, solutions


def cmd_eval(args) -> dict:
    if args.task in TEXT_TASKS:
        return _eval_text(args)
    import torch

    from upo_fast.assets import load_task_model
    from upo_fast.evaluation.grids import evaluate, format_table, pass_at
    from upo_fast.policy import load_policy

    task = _task(args.task)
    scorers = _scorers(args, ["max_confidence"])
    model = load_task_model(args.model, task, args.device)
    puzzles, solutions = _puzzles(args, task)
    torch.manual_seed(args.seed)
    results = {}
    for scorer in scorers:
        options = dict(batch_size=args.batch_size, seed=args.seed, topk=args.topk, temperature=args.temperature,
                       **parallel_options(args))
        if needs_policy(scorer) or uses_learned_commit(args):  # the order, or the commit net of --parallel policy
            options["policy"] = load_policy(args.policy, task, model, args.model)
        if needs_policy(scorer):  # greedy positions unless asked, or sampled ones when Pass@N needs samples
            given = args.position_temperature
            options["position_temperature"] = (1.0 if args.pass_at > 1 else 0.0) if given is None else given
        elif args.position_temperature is not None:
            options["position_temperature"] = args.position_temperature
        results.update(evaluate(model, task, puzzles, solutions, [scorer], **options))
        if args.pass_at > 1:
            sampled = pass_at(model, task, puzzles, solutions, scorer, args.pass_at, **options)
            results[scorer]["pass_at"] = sampled["pass_at"]
    print(format_table(results, task.name, len(puzzles)))
    report = {"task": task.name, "n": int(len(puzzles)), "results": results}
    if args.pass_at > 1:
        for scorer, r in results.items():
            print(f"{scorer:<20} " + " ".join(f"pass@{k}={v:.3f}" for k, v in r["pass_at"].items()))
        report["pass_at_plot"] = str(_plot_pass_at(args, task.name, len(puzzles), results))
        print(f"Pass@k curves: {report['pass_at_plot']}")
    _write_json(args.json, report)
    return report


def _plot_pass_at(args, name: str, n: int, results: dict) -> Path:
    from upo_fast.evaluation.plots import plot_pass_at

    path = args.plot or (Path(args.json).with_suffix("").as_posix() + "_pass_at.png" if args.json
                         else f"{name}_pass_at.png")
    curves = {scorer: r["pass_at"] for scorer, r in results.items()}
    return plot_pass_at(curves, path, f"{name}: Pass@k over {n} puzzles")


TEXT_DEFAULTS = {"arith": (64, 16), "gsm8k": (256, 32), "math500": (256, 32)}  # (gen length, block length)


def _text_problems(args):
    """arith: ``--data`` (JSONL) or the first ``--num-puzzles`` (default 500) of its generated test split;
    GSM8K / MATH500: ``--data``, a local copy of the test set (nothing is downloaded)."""
    if args.task == "arith":
        from upo_fast.tasks import arith

        if args.data:
            return arith.load_problems(args.data, limit=args.limit)
        return arith.make_problems(min(args.limit or 10**9, args.num_puzzles or 500), "test")
    if not args.model or not args.data:
        raise ValueError(f"--task {args.task} needs --model (a local LLaDA/Dream folder) and --data (a local "
                         "JSON/JSONL/parquet copy of the test set); nothing is downloaded at run time")
    from upo_fast.tasks.math_tasks import load_problems

    return load_problems(args.data, args.task, limit=args.limit)


def _eval_text(args) -> dict:
    """GSM8K / MATH500 / arith with a local LLaDA or Dream checkpoint; ``accuracy`` (exact match) per scorer."""
    from upo_fast.assets import model_folder  # a shipped folder's name (arith_llada) or a path

    problems = _text_problems(args)  # first: GSM8K / MATH500 name both missing options at once
    if not args.model:
        raise ValueError(f"--task {args.task} needs --model: a local LLaDA/Dream folder (for arith, e.g. the shipped "
                         "upo_fast/assets/arith_llada)")
    from upo_fast.evaluation.text import evaluate_math
    from upo_fast.models.loading import load_text_model

    folder = model_folder(args.model, None)
    model, tokenizer = load_text_model(folder, args.device, args.trust_remote_code)
    gen_length, block_length = TEXT_DEFAULTS[args.task]
    gen_length, block_length = args.gen_length or gen_length, args.block_length or block_length
    report = {"task": args.task, "n": len(problems), "gen_length": gen_length, "block_length": block_length,
              "results": {}}
    for scorer in _scorers(args, ["max_confidence"]):
        policy = None
        if needs_policy(scorer) or uses_learned_commit(args):
            from upo_fast.policy import load_policy

            policy = load_policy(args.policy, None, model, folder)
        position_temperature = 1.0 if args.position_temperature is None else args.position_temperature
        report["results"][scorer] = evaluate_math(
            model, tokenizer, problems, task=args.task, scorer=scorer, gen_length=gen_length,
            block_length=block_length, steps=args.steps, batch_size=args.batch_size,
            temperature=args.temperature, position_temperature=position_temperature, pass_at=args.pass_at,
            seed=args.seed, policy=policy, device=args.device, cache=args.cache, topk=args.topk,
            **parallel_options(args))
        r = report["results"][scorer]
        print(f"{scorer:<20} accuracy={r['accuracy']:.3f} format={r['format_rate']:.3f} forwards={r['forwards']:.1f} "
              f"({r['seconds']:.0f} s)")
    if args.pass_at > 1:
        report["pass_at_plot"] = str(_plot_pass_at(args, args.task, len(problems), report["results"]))
    _write_json(args.json, report)
    return report


def _write_json(path, report: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2) + "\n")


def cmd_viz(args) -> dict:
    from upo_fast.assets import load_task_model
    from upo_fast.evaluation.order_pictures import record_order, write_order_pictures

    task = _grid_task(args.task)
    model = load_task_model(args.model, task, args.device)
    puzzles, solutions = _puzzles(args, task)
    indices = args.puzzle or list(range(min(3, len(puzzles))))
    outside = [i for i in indices if i >= len(puzzles)]
    if outside:
        raise ValueError(f"--puzzle {outside[0]}: there are {len(puzzles)} puzzles, numbered 0 to {len(puzzles) - 1} "
                         "(--num-puzzles / --limit set how many)")
    records = [record_order(model, task, puzzles, solutions, name, seed=args.seed, **options)
               for name, options in _viz_scorers(args, task, model).items()]
    paths = write_order_pictures(task, puzzles, solutions, records, indices, args.out)
    print("\n".join(str(p) for p in paths))
    return {"pictures": [str(p) for p in paths]}


def _viz_scorers(args, task, model) -> dict[str, dict]:
    """Scorer name -> sampler options; the default list skips the policy when none ships."""
    scorers = {}
    for name in _scorers(args, ["max_confidence", "margin", "policy"]):
        if name == "policy":
            try:
                scorers[name] = policy_options(args, name, task, model)
            except ValueError as err:
                if args.policy or args.scorer:  # asked for explicitly: an error
                    raise
                print(f"(no policy pictures: {err})")
        else:
            scorers[name] = {"topk": args.topk}
    return scorers


def cmd_parallel_curve(args) -> dict:
    """Solved rate against MDM forwards per (order, commit rule, knob) on the same puzzles, and each learned-rule
    point against the best threshold/factor point at or below its forwards (paired 95% interval); see
    ``upo_fast.evaluation.parallel_curve``. JSON (--json): {"task", "n", "orders", "rules", "points": [{"order", "rule"
    (one | threshold | factor | learned), "knob", "commit" (the --parallel spec), "label", "forwards",
    "solved_rate", "cell_accuracy", "seconds"}], "comparisons": [{"learned", "forwards", "solved_rate",
    "baseline", "baseline_forwards", "baseline_solved_rate", "diff", "ci95", "wins", "losses"}]}."""
    from upo_fast.assets import load_task_model
    from upo_fast.evaluation import parallel_curve as pc
    from upo_fast.evaluation.plots import plot_parallel_curve

    task = _grid_task(args.task)
    model = load_task_model(args.model, task, args.device)
    puzzles, solutions = _puzzles(args, task)
    orders = _scorers(args, ["max_confidence", "policy"])
    rules = {"threshold": args.thresholds or pc.DEFAULT_KNOBS["threshold"],
             "factor": args.factors or pc.DEFAULT_KNOBS["factor"],
             "learned": args.commit_probs or pc.DEFAULT_KNOBS["learned"]}
    policy = None
    try:
        from upo_fast.policy import load_policy

        policy = load_policy(args.policy, task, model, args.model)
    except ValueError as err:  # asked for explicitly (--policy, --scorer policy, --commit-probs): an error
        if args.policy or (args.scorer and "policy" in orders) or args.commit_probs:
            raise
        print(f"(no policy order and no learned rule: {err})")
        orders = [o for o in orders if o != "policy"]
    if policy is None or not policy.has_commit_head:
        if args.commit_probs and policy is not None:
            raise ValueError("--commit-probs: the policy has no commit net (config.commit_head is False); train one "
                             "with `upo-fast pretrain-commit` and pass it with --policy")
        if policy is not None:
            print("(no learned-rule curve: the policy has no commit net; train one with `upo-fast pretrain-commit`)")
        del rules["learned"]
    curve = pc.parallel_curve(model, task, puzzles, solutions, orders=orders, rules=rules, policy=policy,
                              batch_size=args.batch_size, seed=args.seed, log=print)
    comparisons = pc.compare(curve)
    for row in comparisons:
        print(pc.format_comparison(row))
    report = pc.report(task.name, len(puzzles), curve, comparisons)
    _write_json(args.json, report)
    if args.out:
        print(plot_parallel_curve(report["points"], args.out, f"{task.name}: {len(puzzles)} held-out puzzles"))
    return report


def add_eval_arguments(ev) -> None:
    ev.add_argument("--task", default="sudoku9", type=task_name,
                    help="sudoku4, sudoku9, zebra, zebraHxA (TinyMDM) or gsm8k, math500, arith (LLaDA/Dream)")
    ev.add_argument("--data", default=None, help="puzzle file (Sudoku: Puzzle,Solution CSV; Zebra: JSON) or, for "
                    "gsm8k/math500, a local JSON/JSONL/parquet test set (arith: JSONL of question/answer); default "
                    "for puzzles and "
                    "arith: generated held-out")
    ev.add_argument("--scorer", action="append", help="repeatable (a heuristic or policy); default max_confidence")
    ev.add_argument("--limit", type=positive_int, default=None)
    ev.add_argument("--num-puzzles", type=positive_int, default=None,
                    help="generated held-out puzzles or problems (default 200; arith: 500, its test split)")
    ev.add_argument("--blanks", type=positive_int, default=None)
    ev.add_argument("--model", default=None, help="TinyMDM folder (default: the shipped model for the task); "
                    "for gsm8k/math500 a local LLaDA/Dream folder")
    ev.add_argument("--topk", type=positive_int, default=5, help="K of the topk scorer")
    ev.add_argument("--batch-size", type=positive_int, default=250)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--device", default="cpu", type=device_name)
    ev.add_argument("--trust-remote-code", action="store_true",
                    help="gsm8k/math500 with a model that is neither LLaDA nor Dream: run the folder's own code")
    ev.add_argument("--policy", default=None, help="a saved policy folder for --scorer policy (default: shipped)")
    ev.add_argument("--position-temperature", type=nonneg_float, default=None,
                    help="order temperature of sampled orders (policy default: 0 = greedy, 1 with --pass-at > 1)")
    ev.add_argument("--temperature", type=nonneg_float, default=0.0, help="token temperature (0 = argmax)")
    ev.add_argument("--pass-at", type=positive_int, default=1,
                    help="N sampled trajectories per problem: Pass@k for k <= N")
    ev.add_argument("--plot", default=None, help="PNG path of the Pass@k curves (default: next to --json)")
    ev.add_argument("--gen-length", type=positive_int, default=None,
                    help="text tasks: tokens to generate (default 256; arith 64)")
    ev.add_argument("--block-length", type=positive_int, default=None,
                    help="text tasks: semi-autoregressive block (default 32; arith 16)")
    ev.add_argument("--steps", type=positive_int, default=None, help="text tasks: MDM forwards (default gen-length)")
    add_parallel_arguments(ev)
    ev.add_argument("--cache", choices=CACHE_MODES, default=None,
                    help="gsm8k/math500: Fast-dLLM's KV cache: prefix (a step runs the block and what follows it) or "
                    "dual (the block alone); a block's first step refreshes it (default: off)")
    ev.add_argument("--json", default=None)
    ev.add_check(check_eval_args)


def check_eval_args(args) -> None:
    """``--cache`` on a grid task is refused while parsing: the caches sit around the blocks of the text tasks'
    generation (``upo_fast.generate``), and a grid is filled as one region (``unmask``), so there is nothing to
    cache."""
    if args.cache is not None and args.task not in TEXT_TASKS:
        raise ValueError(f"--cache {args.cache} needs the block-wise text generation of {' and '.join(TEXT_TASKS)}; "
                         f"--task {args.task} fills its grid as one region (unmask): leave --cache out")


def add_viz_arguments(vz) -> None:
    vz.add_argument("--task", default="sudoku9", type=grid_task_name, help="sudoku4, sudoku9, zebra (4x4) or zebraHxA")
    vz.add_argument("--scorer", action="append", help="repeatable; default max_confidence, margin, policy")
    vz.add_argument("--policy", default=None, help="policy folder for --scorer policy (default: shipped)")
    vz.add_argument("--puzzle", action="append", type=nonneg_int, default=None,
                    help="repeatable: the puzzle (0-based, in --data or the held-out set) to draw; default 0, 1, 2")
    vz.add_argument("--data", default=None, help="puzzle file (Sudoku: Puzzle,Solution CSV; Zebra: JSON); default: "
                    "generated held-out puzzles")
    vz.add_argument("--num-puzzles", type=positive_int, default=100,
                    help="held-out puzzles to generate (the aggregate picture covers all of them)")
    vz.add_argument("--blanks", type=positive_int, default=None)
    vz.add_argument("--limit", type=positive_int, default=None, help="keep the first N puzzles (of --data)")
    vz.add_argument("--model", default=None)
    vz.add_argument("--topk", type=positive_int, default=5)
    vz.add_argument("--seed", type=int, default=0)
    vz.add_argument("--device", default="cpu", type=device_name)
    vz.add_argument("--out", default="viz_out",
                    help="folder for <task>_orders.png, <task>_order_stats.png and <task>_trajectory.txt")


def add_parallel_curve_arguments(pc) -> None:
    import argparse
    import math

    def knobs(option: str, valid: str, ok):
        """An argparse type: comma-separated numbers, each passing ``ok``, or a one-line error naming ``option``."""
        def parse(text: str) -> list[float]:
            try:
                values = [float(v) for v in text.split(",")]
            except ValueError:
                values = []
            if not values or not all(ok(v) for v in values):  # NaN fails every range check
                raise argparse.ArgumentTypeError(f"{option} must be comma-separated numbers {valid}, got {text!r}")
            return values
        return parse

    pc.add_argument("--task", default="sudoku9", type=grid_task_name, help="sudoku4, sudoku9, zebra (4x4) or zebraHxA")
    pc.add_argument("--scorer", action="append", help="repeatable: the orders (a heuristic or policy); default "
                    "max_confidence and policy (policy only when a policy loads)")
    pc.add_argument("--policy", default=None, help="policy folder for the policy order and the learned rule "
                    "(default: the --model folder's policy/, else the shipped one)")
    pc.add_argument("--thresholds", default=None, metavar="T,T,...",
                    type=knobs("--thresholds", "in (0, 1]", lambda v: 0 < v <= 1),
                    help="the threshold rule's sweep (default 0.999,0.99,0.95,0.9,0.8,0.7)")
    pc.add_argument("--factors", default=None, metavar="F,F,...",
                    type=knobs("--factors", "> 0", lambda v: 0 < v < math.inf),
                    help="the factor rule's sweep (default 0.5,1,2,3,4)")
    pc.add_argument("--commit-probs", default=None, metavar="P,P,...",
                    type=knobs("--commit-probs", "in (0, 1)", lambda v: 0 < v < 1),
                    help="the learned rule's sweep: the commit probability its commit net must reach (default "
                    "0.5,0.8,0.9,0.95,0.98,0.99,0.995,0.999; the learned rule runs when the policy has a commit net)")
    pc.add_argument("--data", default=None)
    pc.add_argument("--num-puzzles", type=positive_int, default=200)
    pc.add_argument("--blanks", type=positive_int, default=None)
    pc.add_argument("--limit", type=positive_int, default=None)
    pc.add_argument("--model", default=None)
    pc.add_argument("--batch-size", type=positive_int, default=250)
    pc.add_argument("--seed", type=int, default=0)
    pc.add_argument("--device", default="cpu", type=device_name)
    pc.add_argument("--json", default=None, help="the report: points and comparisons")
    pc.add_argument("--out", default=None, help="PNG path of the curves")
