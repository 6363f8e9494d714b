"""Evaluate unmasking orders on grid tasks (Sudoku, Zebra): cell accuracy (the paper's metric), solved rate, and
Pass@k over N sampled trajectories.

A grid task provides ``encode``, ``decode``, ``cell_accuracy`` and ``is_solved`` (per-puzzle arrays), so nothing
here depends on the puzzle type; ``puzzles`` is whatever the task's ``make_puzzles`` / ``load`` returns (it must
support ``len`` and slicing)."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from upo_fast.sampling.loop import unmask
from upo_fast.tasks.metrics import pass_at_k

HELD_OUT_SEED = 20261128  # held-out puzzles are generated from this seed; training grids never use it


def solve_puzzles(model, task, puzzles, scorer: str, *, batch_size: int = 250,
                  seed: int = 0, progress: bool = False, with_steps: bool = False, **sampler_options):
    """N puzzles -> [N, *task.grid_shape] grids filled by ``unmask`` with ``scorer`` (and, with ``with_steps``, [N]
    the MDM forwards each puzzle used)."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    filled, steps = [], []
    starts = range(0, len(puzzles), batch_size)
    for start in tqdm(starts, desc=scorer, disable=not progress, leave=False):
        x = task.encode(puzzles[start:start + batch_size]).to(device)
        out, used = unmask(model, x, scorer=scorer, generator=generator, return_steps=True, **sampler_options)
        filled.append(task.decode(out.cpu()))
        steps.append(used.cpu().numpy())
    grids = np.concatenate(filled)
    return (grids, np.concatenate(steps)) if with_steps else grids


def evaluate(model, task, puzzles, solutions, scorers: list[str], *, batch_size: int = 250, seed: int = 0,
             progress: bool = True, **sampler_options) -> dict:
    """{scorer: {"cell_accuracy", "solved_rate", "forwards", "seconds"}} on the given puzzles. cell_accuracy: mean
    over puzzles of the fraction of blanks filled right; forwards: the mean MDM forwards per puzzle (below the blank
    count only with parallel unmasking)."""
    results = {}
    for scorer in tqdm(scorers, desc="scorers", disable=not progress):
        start = time.perf_counter()
        pred, steps = solve_puzzles(model, task, puzzles, scorer, batch_size=batch_size, seed=seed,
                                    progress=progress, with_steps=True, **sampler_options)
        results[scorer] = {"cell_accuracy": float(task.cell_accuracy(pred, puzzles, solutions).mean()),
                           "solved_rate": float(task.is_solved(pred, puzzles, solutions).mean()),
                           "forwards": float(steps.mean()), "seconds": round(time.perf_counter() - start, 3)}
    return results


def pass_at(model, task, puzzles, solutions, scorer: str, n: int, *, batch_size: int = 250, seed: int = 0,
            progress: bool = True, **sampler_options) -> dict:
    """Pass@k for k = 1..n of ``scorer`` from n sampled trajectories per puzzle: the unbiased estimate of the chance
    that at least one of k samples solves a puzzle, averaged over puzzles (Chen et al., 2021). Samples differ only
    where something is random: a stochastic order (random, topk, softmax_confidence, a policy at position
    temperature > 0) or token temperature > 0; a deterministic setup gives Pass@k = Pass@1.

    Returns {"pass_at": {"1": ..., ..., str(n): ...}, "samples": n, "cell_accuracy": mean over all samples}."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n (--pass-at) must be an int >= 1, got {n!r}")
    solved = np.zeros((n, len(puzzles)), dtype=bool)
    cells = np.zeros((n, len(puzzles)))
    for i in tqdm(range(n), desc=f"{scorer} pass@{n}", disable=not progress):
        pred = solve_puzzles(model, task, puzzles, scorer, batch_size=batch_size, seed=seed + 1000 * i,
                             **sampler_options)
        solved[i] = task.is_solved(pred, puzzles, solutions)
        cells[i] = task.cell_accuracy(pred, puzzles, solutions)
    correct = solved.sum(0)
    return {"pass_at": {str(k): pass_at_k(n, correct, k) for k in range(1, n + 1)}, "samples": n,
            "cell_accuracy": float(cells.mean())}


def format_table(results: dict, task_name: str, n: int) -> str:
    lines = [f"{task_name}: {n} held-out puzzles",
             f"{'scorer':<20} {'cell_acc':>9} {'solved':>8} {'forwards':>9} {'seconds':>8}"]
    for name, r in results.items():
        lines.append(f"{name:<20} {r['cell_accuracy']:>9.3f} {r['solved_rate']:>8.3f} {r['forwards']:>9.1f} "
                     f"{r['seconds']:>8.2f}")
    return "\n".join(lines)
