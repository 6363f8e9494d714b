"""What order does a scorer unmask a grid in? Per-cell unmasking steps, heat maps averaged over puzzles, and a text
dump of one trajectory (``upo-fast viz``; the demo writes the same pictures).

Works for any grid task (Sudoku, Zebra): the task's ``grid_offset`` and ``grid_shape`` say which token positions
are the grid cells.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from upo_fast.sampler import unmask


class _CommitLog:
    """A sampler ``recorder`` that keeps, per row and position, the step at which it was committed and its token.

    It sees the scorer's selection only (not the threshold rule's extra commits), so it is used with one position
    per step, which is what ``unmask_order`` runs."""

    def __init__(self, x: torch.Tensor):
        self.step_of = torch.full(x.shape, -1, dtype=torch.long, device=x.device)
        self.token = x.clone()
        self.step = 0

    def write(self, hidden, stats, candidates, scores, select, position_temperature) -> None:
        width = select.shape[1]
        self.step_of[:, :width] = torch.where(select, self.step, self.step_of[:, :width])
        self.token[:, :width] = torch.where(select, stats.token, self.token[:, :width])
        self.step += 1


def unmask_order(model, task, puzzles, scorer: str, *, batch_size: int = 250, seed: int = 0, **sampler_options):
    """Fill ``puzzles`` one cell per step with ``scorer`` and return (grids [N, *grid_shape], steps [N, *grid_shape])
    where ``steps`` is the 0-based step at which each cell was unmasked, or -1 for a given cell."""
    if scorer == "origin":
        raise ValueError("scorer 'origin' unmasks cells independently of any ranking; pick a ranking scorer")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    cells = int(np.prod(task.grid_shape))
    grids, steps = [], []
    for start in range(0, len(puzzles), batch_size):
        x = task.encode(puzzles[start:start + batch_size]).to(device)
        log = _CommitLog(x)
        unmask(model, x, scorer=scorer, generator=generator, recorder=log, **sampler_options)
        grid = slice(task.grid_offset, task.grid_offset + cells)
        grids.append(task.decode(log.token.cpu()))
        steps.append(log.step_of[:, grid].cpu().numpy().reshape(-1, *task.grid_shape))
    return np.concatenate(grids), np.concatenate(steps)


def mean_step_map(steps: np.ndarray) -> np.ndarray:
    """[N, *grid_shape] steps (-1 = given) -> [*grid_shape] mean step over the puzzles where the cell was blank,
    normalized to [0, 1] by each puzzle's last step (0 = first cell unmasked, 1 = last); NaN where always given."""
    steps = steps.astype(np.float64)
    blank = steps >= 0
    last = steps.reshape(len(steps), -1).max(1).clip(min=1)
    relative = np.where(blank, steps / last.reshape(-1, *[1] * (steps.ndim - 1)), 0.0)
    count = blank.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, relative.sum(0) / count, np.nan)


def format_trajectory(task, puzzles, solutions, grids: np.ndarray, steps: np.ndarray, index: int = 0,
                      scorer: str = "") -> str:
    """A text dump of puzzle ``index``: the puzzle, then one line per step (cell, value, right or wrong), then the
    filled grid and whether it is solved."""
    one = puzzles[index:index + 1]
    lines = [f"trajectory of puzzle {index}" + (f" with {scorer}" if scorer else "")]
    if hasattr(task, "format_puzzle"):
        lines.append(task.format_puzzle(one))
    else:
        lines.append(task.format_grid(one[0]))
    order = steps[index]
    names = getattr(task, "cell_name", lambda r, c: f"r{r + 1}c{c + 1}")
    for step in range(int(order.max()) + 1):
        for r, c in zip(*np.nonzero(order == step)):
            value, right = grids[index][r, c], grids[index][r, c] == solutions[index][r, c]
            if hasattr(task, "value_names") and value > 0:  # Zebra: "pet of house 4 <- cat"
                value = task.value_names[r][value - 1]
            lines.append(f"step {step + 1:3d}: {names(r, c):<16} <- {value}  {'ok' if right else 'WRONG'}")
    solved = bool(task.is_solved(grids[index:index + 1], one, solutions[index:index + 1])[0])
    lines += ["filled grid:", task.format_grid(grids[index]), "solved" if solved else "not solved"]
    return "\n".join(lines)


def write_order_pictures(model, task, puzzles, solutions, scorers: dict[str, dict], out_dir: str | Path,
                         seed: int = 0) -> tuple[Path, Path]:
    """For each scorer (name -> sampler options, e.g. ``{"policy": {"policy": p, "position_temperature": 0}}``) fill
    the puzzles one cell per step; write ``<task>_order.png`` (mean-step heat maps side by side) and
    ``<task>_trajectory.txt`` (puzzle 0's trajectory under each scorer) into ``out_dir``; return both paths."""
    from upo_fast.plots import plot_order_maps

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    maps, dumps = {}, []
    for name, options in scorers.items():
        grids, steps = unmask_order(model, task, puzzles, name, seed=seed, **options)
        solved = float(task.is_solved(grids, puzzles, solutions).mean())
        maps[f"{name} (solved {solved:.2f})"] = mean_step_map(steps)
        dumps.append(format_trajectory(task, puzzles, solutions, grids, steps, 0, name))
    labels = getattr(task, "axis_labels", lambda: (None, None))()
    picture = plot_order_maps(maps, out_dir / f"{task.name}_order.png",
                              f"{task.name}: when each cell is unmasked, mean over {len(puzzles)} held-out puzzles",
                              *labels)
    text = out_dir / f"{task.name}_trajectory.txt"
    text.write_text("\n\n".join(dumps) + "\n")
    return picture, text
