"""``upo-fast sample``: fill one Sudoku grid with a shipped TinyMDM, or generate from a prompt with a local
LLaDA/Dream folder, with any scorer (and a policy folder for ``--scorer policy``), token temperature and the
parallel-unmasking rules of ``upo_fast.generate`` / ``unmask`` (``--threshold``, ``--factor``) and, for a prompt,
Fast-dLLM's KV caches (``--cache``). torch loads inside the command, after parsing; what is cheap and certain (the
scorer's name, a missing ``--policy`` or ``--model`` for ``--prompt``, the block schedule, ``--cache`` without
``--prompt``, two parallel rules) is refused while parsing, in one line."""

from __future__ import annotations

from upo_fast.cli.args import (
    CACHE_MODES,
    add_parallel_arguments,
    device_name,
    nonneg_float,
    nonneg_int,
    parallel_options,
    positive_int,
    scorer_help,
    scorer_name,
)
from upo_fast.cli.evaluate import _task, policy_options

# the scorers with ``Scorer.needs_policy`` (upo_fast.names lists names only; tests/test_cli_sample.py keeps this
# equal to the registry, so the check while parsing is the only one needed)
POLICY_SCORERS = ("policy",)


def add_sample_arguments(sa) -> None:
    what = sa.add_mutually_exclusive_group()
    what.add_argument("--grid", default=None, help="a Sudoku to fill: n*n digits, 0 or . for blanks")
    what.add_argument("--prompt", default=None, help="text to continue with --model (a local LLaDA/Dream folder)")
    sa.add_argument("--task", default="sudoku9", choices=["sudoku4", "sudoku9"],
                    help="--grid: the Sudoku size (default: %(default)s)")
    sa.add_argument("--model", default=None, help="--grid: a TinyMDM folder (default: the shipped model of --task); "
                    "--prompt: a local LLaDA/Dream folder (required)")
    sa.add_argument("--scorer", type=scorer_name, default="max_confidence", metavar="NAME",
                    help=f"the unmasking order (default: %(default)s): {scorer_help()}")
    sa.add_argument("--policy", default=None, help="policy folder for --scorer policy (--grid: default the shipped "
                    "policy of --task; --prompt: required, none ships for LLaDA/Dream)")
    sa.add_argument("--position-temperature", type=nonneg_float, default=0.0,
                    help="order temperature of --scorer policy (0 = greedy; default: %(default)s)")
    sa.add_argument("--topk", type=positive_int, default=5, help="K of the topk scorer (default: %(default)s)")
    sa.add_argument("--temperature", type=nonneg_float, default=0.0,
                    help="token sampling temperature (0 = argmax; default: %(default)s)")
    add_parallel_arguments(sa)
    sa.add_argument("--cache", choices=CACHE_MODES, default=None,
                    help="--prompt: Fast-dLLM's KV cache: prefix (a step runs the block and what follows it) or "
                    "dual (the block alone); a block's first step refreshes it (default: off, every step runs the "
                    "whole sequence)")
    sa.add_argument("--seed", type=nonneg_int, default=0,
                    help="seed of the random draws: tokens at --temperature > 0, the random scorer, sampled orders "
                    "(default: %(default)s)")
    sa.add_argument("--gen-length", type=positive_int, default=128,
                    help="--prompt: tokens to generate, a multiple of --block-length (default: %(default)s)")
    sa.add_argument("--block-length", type=positive_int, default=32,
                    help="--prompt: tokens per semi-autoregressive block (default: %(default)s)")
    sa.add_argument("--steps", type=positive_int, default=None,
                    help="MDM forwards: --prompt: a multiple of the number of blocks, at most --gen-length (default: "
                    "--gen-length); --grid: at most the number of blanks (default: one blank per step)")
    sa.add_argument("--device", default=None, type=device_name,
                    help="cpu, cuda, cuda:N or mps (default: cuda when there is one, else cpu)")
    sa.add_argument("--trust-remote-code", action="store_true",
                    help="a model that is neither LLaDA nor Dream: run the folder's own code (default: off)")
    sa.add_check(check_sample_args)


def check_sample_args(args) -> None:
    """The rules of ``--prompt`` that need no model: ``--model`` given, ``--policy`` for a policy scorer (no policy
    ships for LLaDA/Dream; ``--grid`` has the task's shipped one), and ``generate``'s block schedule. A ValueError
    names the first one broken."""
    if args.prompt is None:
        if args.cache is not None:
            raise ValueError(f"--cache {args.cache} caches around the blocks of --prompt's generation; --grid fills "
                             "the whole grid as one region (unmask): leave --cache out")
        return
    if args.model is None:
        raise ValueError("--prompt needs --model DIR (a local LLaDA/Dream folder)")
    if args.scorer in POLICY_SCORERS and not args.policy:
        raise ValueError(f"--scorer {args.scorer} with --prompt needs --policy DIR: no policy ships for LLaDA/Dream")
    length, block = args.gen_length, args.block_length
    if length % block:
        raise ValueError(f"--gen-length ({length}) must be a multiple of --block-length ({block})")
    steps = _text_steps(args)
    if steps % (length // block):
        raise ValueError(f"--steps ({steps}) must be a multiple of the number of blocks (--gen-length / "
                         f"--block-length = {length // block})")
    if steps > length:
        raise ValueError(f"--steps ({steps}) must be at most --gen-length ({length}): a step commits one token or more")


def _text_steps(args) -> int:
    return args.gen_length if args.steps is None else args.steps


def cmd_sample(args) -> None:
    if args.grid is None and (args.prompt is None or args.model is None):
        raise ValueError("sample needs --grid (Sudoku, shipped model) or --model DIR with --prompt TEXT")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    scorer = args.scorer  # canonical already: --scorer's type resolves aliases while parsing
    if args.grid is not None:
        _sample_grid(args, scorer, device)
    else:
        _sample_text(args, scorer, device)


def _sampling_options(args, scorer: str, device: str) -> dict:
    """The options ``unmask`` and ``generate`` both take, from the command line."""
    import torch

    return dict(scorer=scorer, topk=args.topk, temperature=args.temperature, **parallel_options(args),
                generator=torch.Generator(device=device).manual_seed(args.seed))


def _sample_grid(args, scorer: str, device: str) -> None:
    import numpy as np

    from upo_fast.assets import load_task_model
    from upo_fast.sampling.loop import unmask

    task = _task(args.task)
    grid = task.parse_grid(args.grid)
    model = load_task_model(args.model, task, device)
    out = unmask(model, task.encode(grid[None]).to(device), steps=args.steps,
                 **_sampling_options(args, scorer, device), **policy_options(args, scorer, task, model))
    filled = task.decode(out)[0]
    print(task.format_grid(filled))
    ok = bool(task.is_valid_solution(filled[None])[0]) and bool(np.all((grid == 0) | (filled == grid)))
    print("solved" if ok else "not a valid solution")


def _sample_text(args, scorer: str, device: str) -> None:
    from upo_fast.models.loading import load_text_model
    from upo_fast.sampling.loop import generate
    model, tokenizer = load_text_model(args.model, device, args.trust_remote_code)
    ids = tokenizer([args.prompt], return_tensors="pt").input_ids.to(device)
    out = generate(model, ids, gen_length=args.gen_length, block_length=args.block_length, steps=_text_steps(args),
                   cache=args.cache, **_sampling_options(args, scorer, device),
                   **policy_options(args, scorer, None, model))
    print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
