"""What order does a scorer unmask a grid in? Per-puzzle pictures (every blank labelled by the step that filled it,
wrong fills marked), an aggregate over many puzzles (how far each order strays from the model's most confident
cell, and at which step puzzles are lost), and a text dump of one trajectory (``upo-fast viz``; the demo writes
the same pictures).

Works for any grid task (Sudoku, Zebra): the task's ``grid_offset`` and ``grid_shape`` say which token positions
are the grid cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from upo_fast.sampling.loop import unmask
from upo_fast.sampling.scorers import get_scorer


class _CommitLog:
    """A sampler ``recorder`` that keeps, per row and position, the step at which it was committed, its token, and
    its confidence rank at that step among the cells still masked (1 = the model's most confident one).

    It sees the scorer's selection only (not the threshold rule's extra commits), so it is used with one position
    per step, which is what ``record_order`` runs."""

    def __init__(self, x: torch.Tensor, mask_id: int):
        self.step_of = torch.full(x.shape, -1, dtype=torch.long, device=x.device)
        self.rank_of = torch.zeros(x.shape, dtype=torch.long, device=x.device)
        self.token = x.clone()
        self.mask_id = mask_id
        self.step = 0

    def write(self, hidden, stats, candidates, scores, select, position_temperature) -> None:
        width = select.shape[1]
        # every masked cell counts for the rank, not only the scorer's candidates (topk offers K of them)
        masked = self.token[:, :width] == self.mask_id
        confidence = stats.confidence.float()
        chosen = torch.where(select, confidence, float("-inf")).amax(-1, keepdim=True)
        rank = (masked & (confidence > chosen)).sum(-1, keepdim=True) + 1
        self.rank_of[:, :width] = torch.where(select, rank, self.rank_of[:, :width])
        self.step_of[:, :width] = torch.where(select, self.step, self.step_of[:, :width])
        self.token[:, :width] = torch.where(select, stats.token, self.token[:, :width])
        self.step += 1


@dataclass(frozen=True)
class OrderRecord:
    """What one order did on N puzzles, cell by cell; every array is [N, *grid_shape] unless said otherwise."""

    scorer: str
    grids: np.ndarray  # the filled grids
    steps: np.ndarray  # 0-based step at which each cell was filled; -1 = a given
    ranks: np.ndarray  # confidence rank of the cell among the masked cells when it was filled (1 = top); 0 = a given
    wrong: np.ndarray  # bool: a blank filled with another value than the solution's
    solved: np.ndarray  # [N] bool (the task's is_solved)
    cell_accuracy: np.ndarray  # [N] fraction of blanks filled right

    def __len__(self) -> int:
        return len(self.grids)


def record_order(model, task, puzzles, solutions, scorer: str, *, batch_size: int = 250, seed: int = 0,
                 **sampler_options) -> OrderRecord:
    """Fill ``puzzles`` one cell per step with ``scorer`` and keep when and how each cell was filled.
    ``solutions`` None: nothing is marked wrong and cell accuracy is NaN (``is_solved`` checks the rules)."""
    if not get_scorer(scorer).ranks:  # its own selection (origin): no order to record
        raise ValueError(f"scorer {scorer!r} unmasks cells independently of any ranking; pick a ranking scorer")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    cells = int(np.prod(task.grid_shape))
    grid = slice(task.grid_offset, task.grid_offset + cells)
    grids, steps, ranks = [], [], []
    for start in range(0, len(puzzles), batch_size):
        x = task.encode(puzzles[start:start + batch_size]).to(device)
        log = _CommitLog(x, task.mask_id)
        unmask(model, x, scorer=scorer, generator=generator, recorder=log, **sampler_options)
        grids.append(task.decode(log.token.cpu()))
        steps.append(log.step_of[:, grid].cpu().numpy().reshape(-1, *task.grid_shape))
        ranks.append(log.rank_of[:, grid].cpu().numpy().reshape(-1, *task.grid_shape))
    grids, steps = np.concatenate(grids), np.concatenate(steps)
    if solutions is None:
        wrong, accuracy = np.zeros(grids.shape, dtype=bool), np.full(len(grids), np.nan)
    else:
        wrong = (steps >= 0) & (grids != np.asarray(solutions))
        accuracy = task.cell_accuracy(grids, puzzles, solutions)
    return OrderRecord(scorer, grids, steps, np.concatenate(ranks), wrong, task.is_solved(grids, puzzles, solutions),
                       accuracy)


@dataclass(frozen=True)
class PuzzlePanel:
    """One puzzle as one order filled it, ready to draw: ``labels`` [*grid] the 1-based step of each blank (0 for a
    given), ``given_text`` [*grid] the given's value as text ('' for a blank), ``wrong`` [*grid] the blanks filled
    with another value than the solution's."""

    title: str
    labels: np.ndarray
    given_text: np.ndarray
    wrong: np.ndarray


def _value_text(task, row: int, value: int) -> str:
    names = getattr(task, "value_names", None)  # Zebra: the value's name, shortened to fit a cell
    return names[row][value - 1][:6] if names is not None and value > 0 else str(value)


def puzzle_panel(task, record: OrderRecord, index: int, title: str | None = None) -> PuzzlePanel:
    """Puzzle ``index`` of ``record`` as a PuzzlePanel; the default title names the order and its outcome."""
    steps, grid, wrong = record.steps[index], record.grids[index], record.wrong[index]
    given_text = np.full(steps.shape, "", dtype=object)
    for r, c in zip(*np.nonzero(steps < 0)):
        given_text[r, c] = _value_text(task, r, int(grid[r, c]))
    if wrong.any():  # the step of the first wrong fill: where the puzzle was lost
        outcome = f"{int(wrong.sum())} wrong, first at step {int(steps[wrong].min()) + 1}"
    else:
        outcome = "solved" if record.solved[index] else "not solved"
    return PuzzlePanel(title or f"{record.scorer}\n{outcome}", np.where(steps >= 0, steps + 1, 0), given_text,
                       wrong.copy())


def order_statistics(record: OrderRecord) -> dict[str, list[float]]:
    """Per step s = 1..S over the record's puzzles: ``mean_rank``, the mean confidence rank of the cell filled at s
    (1 = the model's most confident masked cell), ``top_share``, the share of fills at s that took that cell, and
    ``lost``, the share of puzzles with a wrong fill at step <= s (the last value is the share not filled right)."""
    flat_steps = record.steps.reshape(len(record), -1)
    flat_ranks = record.ranks.reshape(len(record), -1)
    flat_wrong = record.wrong.reshape(len(record), -1)
    last = int(flat_steps.max()) + 1
    first_wrong = np.where(flat_wrong, flat_steps, np.iinfo(np.int64).max).min(-1)  # per puzzle
    stats = {"step": [], "mean_rank": [], "top_share": [], "lost": []}
    for step in range(last):
        at = flat_steps == step
        ranks = flat_ranks[at]
        stats["step"].append(step + 1)
        stats["mean_rank"].append(float(ranks.mean()) if ranks.size else float("nan"))
        stats["top_share"].append(float((ranks == 1).mean()) if ranks.size else float("nan"))
        stats["lost"].append(float((first_wrong <= step).mean()))
    return stats


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


def pick_puzzles(records: list[OrderRecord], count: int) -> list[int]:
    """Up to ``count`` puzzle indices worth drawing: first the puzzles on which the orders' outcomes differ (one
    solves, another does not), in order, then the first puzzles."""
    solved = np.stack([r.solved for r in records])
    differ = np.flatnonzero(solved.any(0) & ~solved.all(0)).tolist()
    rest = [i for i in range(len(records[0])) if i not in differ]
    return (differ + rest)[:count]


def orders_legend(task, rows: list[list[PuzzlePanel]], blanks: int) -> str:
    """The title of ``<task>_orders.png``: what its cells show for this task and these puzzles. Every blank is
    coloured and numbered by the step that filled it; a given cell (never masked) is drawn grey with its value,
    which is how Sudoku's givens look. A Zebra puzzle is its clues, which the picture does not draw (the trajectory
    text lists them), and by default every one of its cells is blank: then nothing is grey, and the title says
    where the puzzle is rather than "grey = given"."""
    givens = any((panel.labels == 0).any() for row in rows for panel in row)
    legend = (f"{task.name}: the step (1-{blanks}) at which each {'blank' if givens else 'cell'} was filled; "
              + ("grey = given, " if givens else "") + "red frame = wrong fill")
    if hasattr(task, "format_puzzle"):  # a puzzle with clues (Zebra), written to <task>_trajectory.txt
        where = f"see {task.name}_trajectory.txt"
        legend += (f"\nthe clues are not drawn ({where})" if givens
                   else f"\nno cell is given: the clues are the puzzle ({where})")
    return legend


def write_order_pictures(task, puzzles, solutions, records: list[OrderRecord], indices: list[int],
                         out_dir: str | Path, *, note: str = "") -> list[Path]:
    """``<task>_orders.png`` (puzzles ``indices`` as each order filled them, side by side), ``<task>_order_stats.png``
    (the aggregate over all the records' puzzles) and ``<task>_trajectory.txt`` (each order on the first of
    ``indices``) in ``out_dir``; returns their paths. ``note`` is added to the per-puzzle picture's title."""
    from upo_fast.evaluation.plots import plot_order_statistics, plot_puzzle_orders

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [[puzzle_panel(task, r, i) for r in records] for i in indices]
    axis_labels = getattr(task, "axis_labels", lambda: (None, None))()
    blanks = int((records[0].steps >= 0).sum(axis=tuple(range(1, records[0].steps.ndim))).max())
    orders = plot_puzzle_orders(
        rows, out_dir / f"{task.name}_orders.png", orders_legend(task, rows, blanks) + (f"\n{note}" if note else ""),
        row_names=[f"puzzle {i}" for i in indices], axis_labels=axis_labels, box=getattr(task, "box", None))
    stats = plot_order_statistics({r.scorer: order_statistics(r) for r in records},
                                  out_dir / f"{task.name}_order_stats.png",
                                  f"{task.name}: {len(records[0])} held-out puzzles, one cell per step")
    text = out_dir / f"{task.name}_trajectory.txt"
    dumps = [format_trajectory(task, puzzles, solutions, r.grids, r.steps, indices[0], r.scorer) for r in records]
    text.write_text("\n\n".join(dumps) + "\n")
    return [orders, stats, text]
