"""Pictures: reward-vs-step and validation curves of UPO runs (``upo-fast plot-runs``), steps-vs-solved curves of
parallel unmasking (``upo-fast parallel-curve``), Pass@k curves (``upo-fast eval --pass-at``, the demo) and
pictures of unmasking orders (``upo-fast viz``, the demo)."""

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


def plot_runs(runs: dict[str, str | Path], out: str | Path, window: int = 10, metric: str = "solved") -> Path:
    """Two panels: training reward (moving average over ``window`` steps) and greedy validation ``metric``
    ("solved" rate or "cells": cell accuracy) per step, one line per run (label -> run folder). The validation at
    step 0 is the starting policy (max-confidence for anchored policies), drawn as a dashed line."""
    from upo_fast.training.config import SELECT_ON  # the trainer's validation keys in metrics.jsonl

    if metric not in SELECT_ON:
        raise ValueError(f"metric must be one of {', '.join(SELECT_ON)}, got {metric!r}")
    key = SELECT_ON[metric]
    plt = _pyplot()
    fig, (ax_r, ax_v) = plt.subplots(1, 2, figsize=(12, 4.5))
    start = None
    for label, folder in runs.items():
        rec = read_metrics(folder)
        train = [r for r in rec if "reward_mean" in r]
        val = [r for r in rec if key in r]
        if train:
            ax_r.plot([r["step"] for r in train], _smooth([r["reward_mean"] for r in train], window), label=label)
        if val:
            ax_v.plot([r["step"] for r in val], [r[key] for r in val], marker="o", ms=3, label=label)
            if val[0]["step"] == 0:
                start = val[0][key]
    if start is not None:
        ax_v.axhline(start, ls="--", color="gray", label="step 0 (max-confidence)")
    ax_r.set(xlabel="GRPO step", ylabel=f"training reward ({window}-step mean)", title="rollout reward")
    ax_v.set(xlabel="GRPO step", ylabel=f"{'solved rate' if metric == 'solved' else 'cell accuracy'} (greedy)",
             title="validation puzzles")
    return _finish(plt, fig, (ax_r, ax_v), out)


def plot_parallel_curve(points: list[dict], out: str | Path, title: str = "") -> Path:
    """Solved rate against MDM forwards per puzzle (log scale), one line per (order, rule family) of
    ``parallel_curve.CurvePoint.as_dict()`` points: one colour per order, one line style and marker per family;
    the learned rule is drawn thick and solid, the heuristics thin and dashed, and each order's one-cell-a-step
    point as a star. Each point is annotated with its knob."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5))
    styles = {"threshold": dict(ls="--", marker="o", lw=1.2), "factor": dict(ls=":", marker="s", lw=1.2),
              "learned": dict(ls="-", marker="D", lw=2.6, ms=7)}
    colours = {}
    for order in dict.fromkeys(p["order"] for p in points):
        colours[order] = f"C{len(colours)}"
    families = dict.fromkeys((p["order"], p["rule"]) for p in points)
    for order, rule in families:
        line = sorted((p for p in points if (p["order"], p["rule"]) == (order, rule)), key=lambda p: p["forwards"])
        xs, ys = [p["forwards"] for p in line], [p["solved_rate"] for p in line]
        if rule == "one":
            ax.plot(xs, ys, ls="", marker="*", ms=13, color=colours[order], label=f"{order}, one cell a step")
            continue
        name = "learned rule (commit prob.)" if rule == "learned" else f"{rule} rule"
        ax.plot(xs, ys, color=colours[order], label=f"{order} order, {name}", **styles.get(rule, {}))
        for p in line:
            ax.annotate(f"{p['knob']:g}", (p["forwards"], p["solved_rate"]), fontsize=6.5, xytext=(3, 3),
                        textcoords="offset points", color=colours[order])
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 1, 2, 5, 10, 20, 50: readable at any range
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="MDM forwards per puzzle (log scale)", ylabel="solved rate", title=title or "parallel unmasking")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: the cheap, solved corner is free
    fig.tight_layout()
    return _save(plt, fig, out)


def plot_pass_at(curves: dict[str, dict[str, float]], out: str | Path, title: str = "",
                 bands: dict[str, dict[str, tuple[float, float]]] | None = None) -> Path:
    """Pass@k against k (log scale), one line per scorer; ``curves[scorer]`` is ``{"1": p1, "2": p2, ...}``;
    ``bands[scorer]`` (optional) the same keys with (low, high) 95% intervals, drawn as a shaded band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for scorer, points in curves.items():
        ks = sorted(int(k) for k in points)
        line, = ax.plot(ks, [points[str(k)] for k in ks], marker="o", ms=3, label=scorer)
        if bands and scorer in bands:
            low, high = zip(*(bands[scorer][str(k)] for k in ks))
            ax.fill_between(ks, low, high, color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xscale("log", base=2)
    ks = sorted({int(k) for points in curves.values() for k in points})
    ax.set_xticks([k for k in ks if k & (k - 1) == 0], [str(k) for k in ks if k & (k - 1) == 0])  # 1, 2, 4, 8
    ax.set_ylim(-0.02, 1.02)
    ax.set(xlabel="k (samples per puzzle)", ylabel="Pass@k (solved)", title=title or "Pass@k")
    return _finish(plt, fig, (ax,), out)


def plot_puzzle_orders(rows: list[list], out: str | Path, title: str = "", *, row_names: list[str] | None = None,
                       axis_labels=(None, None), box: int | None = None) -> Path:
    """A grid of puzzle pictures: one row per puzzle, one column per order (``order_pictures.PuzzlePanel``s). Each
    blank shows the step at which it was filled, coloured by it (early = light, late = dark); givens (cells that were
    never masked) are grey with their value; a wrong fill gets a red frame. ``box``: the Sudoku box size, drawn as
    thick lines. ``title`` (``order_pictures.orders_legend`` says what the cells show) is wrapped to the width."""
    plt = _pyplot()
    n_rows, n_cols = len(rows), len(rows[0])
    height, width = rows[0][0].labels.shape
    size = 0.42 * max(height, width) + 0.9
    fig_width = size * n_cols * width / max(height, width) + 1.6
    # a long legend over one or two small grids would be cut at the figure's edges: wrapped, and each line past
    # the second makes the figure taller
    title = _wrap(title, fig_width, 11)
    extra = 0.22 * max(0, title.count("\n") - 1)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(fig_width, size * n_rows * height / max(height, width) + 1.0
                                                      + extra), squeeze=False, layout="constrained")
    last = max(int(p.labels.max()) for row in rows for p in row)
    image = None
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            image = _draw_panel(axes[r][c], panel, last, box)
            ax = axes[r][c]
            ax.set_title(panel.title, fontsize=10, color="black" if panel.wrong.sum() == 0 else "firebrick")
            _label_axes(ax, axis_labels, show_rows=c == 0, show_cols=r == n_rows - 1, height=height, width=width)
            if c == 0 and row_names:
                ax.set_ylabel(row_names[r], fontsize=11, fontweight="bold")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=min(0.6, 3.0 / n_rows),
                 label="step at which the cell was filled")
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(plt, fig, out, tight=False)  # the constrained layout already fits everything


def _wrap(text: str, width_inches: float, fontsize: float) -> str:
    """``text`` with each of its lines wrapped at spaces to about ``width_inches`` at ``fontsize`` points."""
    import textwrap

    chars = max(20, int(width_inches * 72 / (0.55 * fontsize)))  # DejaVu Sans: about 0.5 em per character
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def _draw_panel(ax, panel, last: int, box: int | None):
    import matplotlib.patches as patches

    cmap = _pyplot().get_cmap("YlGnBu").with_extremes(bad="#d9d9d9")  # bad: the givens, masked out of the steps
    steps = np.ma.masked_where(panel.labels == 0, panel.labels)
    image = ax.imshow(steps, cmap=cmap, vmin=1, vmax=max(last, 2))
    height, width = panel.labels.shape
    for (r, c), label in np.ndenumerate(panel.labels):
        if label == 0:
            ax.text(c, r, panel.given_text[r, c], ha="center", va="center", fontsize=8, color="#555555",
                    in_layout=False)  # inside the axes: measuring hundreds of labels for the layout is slow
            continue
        dark = label > 0.55 * last
        ax.text(c, r, str(label), ha="center", va="center", fontsize=8, fontweight="bold" if panel.wrong[r, c]
                else "normal", color="white" if dark else "black", in_layout=False)
        if panel.wrong[r, c]:
            ax.add_patch(patches.Rectangle((c - 0.44, r - 0.44), 0.88, 0.88, fill=False, edgecolor="red", lw=2.2))
    for k in range(width + 1):  # thin cell lines, thick box lines
        ax.axvline(k - 0.5, color="black", lw=1.6 if box and k % box == 0 else 0.4)
    for k in range(height + 1):
        ax.axhline(k - 0.5, color="black", lw=1.6 if box and k % box == 0 else 0.4)
    return image


def _label_axes(ax, axis_labels, *, show_rows: bool, show_cols: bool, height: int, width: int) -> None:
    row_labels, col_labels = axis_labels
    ax.set_xticks(range(width), (col_labels or range(1, width + 1)) if show_cols else [""] * width, fontsize=7)
    ax.set_yticks(range(height), (row_labels or range(1, height + 1)) if show_rows else [""] * height, fontsize=7)
    ax.tick_params(length=0)


def plot_order_statistics(stats: dict[str, dict[str, list[float]]], out: str | Path, title: str = "") -> Path:
    """Three panels over the unmasking steps, one line per order (``order_pictures.order_statistics``): the mean
    confidence rank of the cell filled (1 = the model's most confident masked cell), the share of fills that took
    that cell, and the share of puzzles already lost (a wrong fill at or before the step)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    panels = (("mean_rank", "mean confidence rank of the cell filled\n(1 = the most confident masked cell)",
               "which cell each order fills"),
              ("top_share", "share of fills that took the most confident cell", "how often it follows confidence"),
              ("lost", "share of puzzles with a wrong fill so far\n(at the last step: the share not solved)",
               "when puzzles are lost"))
    for ax, (key, ylabel, panel_title) in zip(axes, panels):
        for name, values in stats.items():
            ax.plot(values["step"], values[key], marker="o", ms=2.5, lw=1.3, label=name)
        ax.set(xlabel="unmasking step", ylabel=ylabel, title=panel_title)
    axes[0].set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 1, 2, 3 rather than 10^0, 2x10^0
    axes[0].yaxis.set_major_formatter(plain)
    axes[0].yaxis.set_minor_formatter(plain)
    axes[1].set_ylim(-0.02, 1.02)
    axes[2].set_ylim(-0.02, 1.02)
    if title:
        fig.suptitle(title, fontsize=11)
    return _finish(plt, fig, axes, out)


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
    return _save(plt, fig, out)


def _save(plt, fig, out, tight: bool = True) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return out
