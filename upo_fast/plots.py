"""Pictures: reward-vs-step and validation curves of UPO runs (``upo-fast plot-runs``), steps-vs-solved curves of
parallel unmasking (``upo-fast parallel-curve``), Pass@k curves (``upo-fast eval --pass-at``) and heat maps of
unmasking orders (``upo-fast viz``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{run_dir}: no metrics.jsonl (not a `upo-fast train` run folder)")
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a torn last line of a killed run
    return records


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_runs(runs: dict[str, str | Path], out: str | Path, window: int = 10) -> Path:
    """Two panels: training reward (moving average over ``window`` steps) and greedy validation solved rate per
    step, one line per run (label -> run folder). The validation at step 0 is the starting policy (max-confidence
    for anchored policies), drawn as a dashed line."""
    plt = _pyplot()
    fig, (ax_r, ax_v) = plt.subplots(1, 2, figsize=(12, 4.5))
    start = None
    for label, folder in runs.items():
        rec = read_metrics(folder)
        train = [r for r in rec if "reward_mean" in r]
        val = [r for r in rec if "val_solved" in r]
        if train:
            ax_r.plot([r["step"] for r in train], _smooth([r["reward_mean"] for r in train], window), label=label)
        if val:
            ax_v.plot([r["step"] for r in val], [r["val_solved"] for r in val], marker="o", ms=3, label=label)
            if val[0]["step"] == 0:
                start = val[0]["val_solved"]
    if start is not None:
        ax_v.axhline(start, ls="--", color="gray", label="step 0 (max-confidence)")
    ax_r.set(xlabel="GRPO step", ylabel=f"training reward (solved, {window}-step mean)", title="rollout reward")
    ax_v.set(xlabel="GRPO step", ylabel="solved rate (greedy)", title="validation puzzles")
    return _finish(plt, fig, (ax_r, ax_v), out)


def plot_parallel_curve(curves: dict[str, list[dict]], out: str | Path, title: str = "") -> Path:
    """Solved rate against MDM forwards per puzzle, one line per scorer; each point a threshold (``label``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for scorer, points in curves.items():
        points = sorted(points, key=lambda p: p["mean_steps"])
        ax.plot([p["mean_steps"] for p in points], [p["solved_rate"] for p in points], marker="o", label=scorer)
        for p in points:
            ax.annotate(p["label"], (p["mean_steps"], p["solved_rate"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set(xlabel="MDM forwards per puzzle", ylabel="solved rate", title=title or "parallel unmasking")
    return _finish(plt, fig, (ax,), out)


def plot_pass_at(curves: dict[str, dict[str, float]], out: str | Path, title: str = "") -> Path:
    """Pass@k against k (log scale), one line per scorer; ``curves[scorer]`` is ``{"1": p1, "2": p2, ...}``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for scorer, points in curves.items():
        ks = sorted(int(k) for k in points)
        ax.plot(ks, [points[str(k)] for k in ks], marker="o", ms=3, label=scorer)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="k (samples per puzzle)", ylabel="Pass@k (solved)", title=title or "Pass@k")
    return _finish(plt, fig, (ax,), out)


def plot_order_maps(maps: dict[str, np.ndarray], out: str | Path, title: str = "", row_labels=None,
                    col_labels=None) -> Path:
    """Side-by-side heat maps (one per scorer) of when each cell is unmasked (``upo_fast.viz.mean_step_map``: 0 =
    first, 1 = last), each cell annotated; shared colour scale, early = dark."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(maps), figsize=(4.2 * len(maps) + 0.8, 3.8), squeeze=False,
                             gridspec_kw={"wspace": 0.45})  # room for the row labels of the next panel
    image = None
    for ax, (name, grid) in zip(axes[0], maps.items()):
        image = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0)
        rows, cols = grid.shape
        if rows * cols <= 100:  # numbers stay readable up to 10x10
            for (r, c), value in np.ndenumerate(grid):
                if not np.isnan(value):
                    ax.text(c, r, f"{value:.2f}"[1:] if value < 1 else "1", ha="center", va="center", fontsize=7,
                            color="white" if value < 0.5 else "black")
        ax.set_title(name, fontsize=10)
        ax.set_xticks(range(cols), col_labels if col_labels is not None else range(1, cols + 1), fontsize=7)
        ax.set_yticks(range(rows), row_labels if row_labels is not None else range(1, rows + 1), fontsize=7)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="unmasking step (0 = first, 1 = last)")
    if title:
        fig.suptitle(title, fontsize=10)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _finish(plt, fig, axes, out) -> Path:
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
