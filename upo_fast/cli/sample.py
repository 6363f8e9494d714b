"""``upo-fast sample``: fill one Sudoku grid with a shipped TinyMDM, or generate from a prompt with a local
LLaDA/Dream folder, with any scorer (and a policy folder for ``--scorer policy``). torch loads inside the command,
after parsing."""

from __future__ import annotations

from upo_fast.cli.args import device_name, nonneg_float, positive_int
from upo_fast.cli.evaluate import _task, policy_options


def add_sample_arguments(sa) -> None:
    sa.add_argument("--task", default="sudoku9", choices=["sudoku4", "sudoku9"])
    sa.add_argument("--grid", default=None, help="n*n digits, 0 or . for blanks")
    sa.add_argument("--prompt", default=None)
    sa.add_argument("--model", default=None)
    sa.add_argument("--scorer", default="max_confidence")
    sa.add_argument("--policy", default=None, help="policy folder for --scorer policy (grid: default shipped)")
    sa.add_argument("--position-temperature", type=nonneg_float, default=0.0,
                    help="order temperature of --scorer policy (0 = greedy)")
    sa.add_argument("--topk", type=positive_int, default=5)
    sa.add_argument("--gen-length", type=positive_int, default=128)
    sa.add_argument("--block-length", type=positive_int, default=32)
    sa.add_argument("--steps", type=positive_int, default=128)
    sa.add_argument("--device", default=None, type=device_name, help="default: cuda when there is one, else cpu")
    sa.add_argument("--trust-remote-code", action="store_true",
                    help="a model that is neither LLaDA nor Dream: run the folder's own code")


def cmd_sample(args) -> None:
    if args.grid is None and (args.prompt is None or args.model is None):
        raise ValueError("sample needs --grid (Sudoku, shipped model) or --model DIR with --prompt TEXT")
    import torch

    from upo_fast.sampling.scorers import resolve_scorer

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    scorer = resolve_scorer(args.scorer)
    if args.grid is not None:
        _sample_grid(args, scorer, device)
    else:
        _sample_text(args, scorer, device)


def _sample_grid(args, scorer: str, device: str) -> None:
    import numpy as np

    from upo_fast.assets import load_task_model
    from upo_fast.sampling.loop import unmask

    task = _task(args.task)
    grid = task.parse_grid(args.grid)
    model = load_task_model(args.model, task, device)
    out = unmask(model, task.encode(grid[None]).to(device), scorer=scorer, topk=args.topk,
                 **policy_options(args, scorer, task, model))
    filled = task.decode(out)[0]
    print(task.format_grid(filled))
    ok = bool(task.is_valid_solution(filled[None])[0]) and bool(np.all((grid == 0) | (filled == grid)))
    print("solved" if ok else "not a valid solution")


def _sample_text(args, scorer: str, device: str) -> None:
    from upo_fast.models.loading import load_text_model
    from upo_fast.sampling.loop import generate
    from upo_fast.sampling.scorers import get_scorer

    if get_scorer(scorer).needs_policy and not args.policy:
        raise ValueError("--scorer policy with --prompt needs --policy DIR: no policy ships for LLaDA/Dream")
    model, tokenizer = load_text_model(args.model, device, args.trust_remote_code)
    ids = tokenizer([args.prompt], return_tensors="pt").input_ids.to(device)
    out = generate(model, ids, gen_length=args.gen_length, block_length=args.block_length, steps=args.steps,
                   scorer=scorer, topk=args.topk, **policy_options(args, scorer, None, model))
    print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
