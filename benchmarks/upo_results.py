"""The UPO results table: every heuristic and every trained policy on the same held-out Sudoku puzzles (the seed
``upo-fast eval`` and the demo use, never seen in training or validation), plus the runs' training curves.

Usage:  python benchmarks/upo_results.py --run "UPO max-conf=runs/A/best" --run ... --curves "A=runs/A" ...
            --out benchmarks/results/upo_sudoku9 [--num-puzzles N --seed S]
Writes OUT/upo_results.{json,md} (with device, date, commit and command) and OUT/curves.png. Every order is
compared with max-confidence and with the best heuristic on the same puzzles: the difference in solved rate with a
95% interval from the per-puzzle (paired) differences, and the puzzles it solves that the baseline does not (wins)
and vice versa. The JSON keeps each order's per-puzzle outcomes ("solved_flags", one 0/1 character per puzzle), so
other pairings can be computed later without a rerun.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import metadata  # noqa: E402

from upo_fast.evaluation import HELD_OUT_SEED, load_model, solve_puzzles  # noqa: E402
from upo_fast.policy import UnmaskingPolicy  # noqa: E402
from upo_fast.scorers import HEURISTICS  # noqa: E402
from upo_fast.tasks import get_task  # noqa: E402


def _pairs(specs: list[str], flag: str) -> dict[str, str]:
    out = {}
    for spec in specs:
        label, sep, path = spec.rpartition("=")
        if not sep or not label:
            raise ValueError(f"{flag} takes LABEL=PATH, got {spec!r}")
        out[label] = path
    return out


def _score(mdm, task, puzzles, solutions, scorer: str, **options) -> dict:
    pred = solve_puzzles(mdm, task, puzzles, scorer, seed=0, progress=False, **options)
    return {"solved": task.is_solved(pred, puzzles, solutions), "cells": task.cell_accuracy(pred, puzzles, solutions)}


class OracleOrder(torch.nn.Module):
    """A stand-in policy for the oracle bound: at each step the most confident candidate that the MDM fills in
    correctly (among the K most confident with ``top_k``). It reads the solutions, so it is a ceiling for learned
    orders on this MDM, not an order anyone can run."""

    def __init__(self, solution_tokens: torch.Tensor, top_k: int | None):
        super().__init__()
        self.solution = solution_tokens
        self.config = SimpleNamespace(candidate_topk=top_k, feature_topk=8)

    def forward(self, hidden, stats, candidates):
        return stats.confidence.float() + 2.0 * (stats.token == self.solution)  # any correct one first


def _paired(solved: np.ndarray, base: np.ndarray) -> dict:
    """Solved-rate difference against ``base`` on the same puzzles, with a normal 95% interval of the mean of the
    per-puzzle differences, and the counts of puzzles only one of the two solves."""
    d = solved.astype(float) - base.astype(float)
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"diff": float(d.mean()), "ci95": [float(d.mean() - half), float(d.mean() + half)],
            "wins": int((d > 0).sum()), "losses": int((d < 0).sum())}


def _cells(v: dict) -> str:
    """A _paired result as two table cells: 'diff [low, high] | wins / losses', in points."""
    low, high = v["ci95"]
    return f"{100 * v['diff']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] | {v['wins']} / {v['losses']}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="sudoku9")
    parser.add_argument("--num-puzzles", type=int, default=200)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="puzzle seed (default: the held-out one)")
    parser.add_argument("--heuristics", default=",".join(HEURISTICS),
                        help="comma-separated heuristics to run (max_confidence always runs: the baseline)")
    parser.add_argument("--oracle-topk", default="", help="comma-separated K for oracle-bound rows (0: any cell)")
    parser.add_argument("--run", action="append", default=[], help="LABEL=POLICY_FOLDER, repeatable")
    parser.add_argument("--curves", action="append", default=[], help="LABEL=RUN_FOLDER for curves.png")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    task = get_task(args.task)
    mdm = load_model(None, task)
    puzzles, solutions = task.make_puzzles(args.num_puzzles, seed=args.seed)
    heuristics = [h for h in args.heuristics.split(",") if h]
    unknown = sorted(set(heuristics) - set(HEURISTICS))
    if unknown:
        parser.error(f"--heuristics: unknown {', '.join(unknown)}; valid: {', '.join(HEURISTICS)}")
    heuristics = ["max_confidence"] + [h for h in heuristics if h != "max_confidence"]
    raw = {name: _score(mdm, task, puzzles, solutions, name) for name in heuristics}
    policies = {}
    for label, folder in _pairs(args.run, "--run").items():
        policy = UnmaskingPolicy.from_pretrained(folder).eval()
        policy.check_compatible(mdm)
        raw[label] = _score(mdm, task, puzzles, solutions, "policy", policy=policy, position_temperature=0.0)
        policies[label] = folder
    for k in [int(v) for v in args.oracle_topk.split(",") if v]:
        oracle = OracleOrder(task.encode_solution(puzzles, solutions), k or None)  # one batch: rows = solutions
        raw[f"oracle bound ({f'top {k}' if k else 'any cell'})"] = _score(
            mdm, task, puzzles, solutions, "policy", policy=oracle, position_temperature=0.0, batch_size=len(puzzles))
    base = raw["max_confidence"]["solved"]
    best_heuristic = max(heuristics, key=lambda s: raw[s]["solved"].mean())  # the first one on ties
    results = {name: {"solved_rate": float(r["solved"].mean()), "cell_accuracy": float(r["cells"].mean()),
                      "vs_max_confidence": _paired(r["solved"], base),
                      "vs_best_heuristic": _paired(r["solved"], raw[best_heuristic]["solved"]),
                      "solved_flags": "".join("1" if v else "0" for v in r["solved"])}
               | ({"policy": policies[name]} if name in policies else {})
               for name, r in raw.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = metadata("cpu")
    report = {"meta": meta, "task": task.name, "n": len(puzzles), "seed": args.seed, "best_heuristic": best_heuristic,
              "results": results}
    (out / "upo_results.json").write_text(json.dumps(report, indent=2) + "\n")
    which = "held-out puzzles" if args.seed == HELD_OUT_SEED else "fresh puzzles"
    lines = [f"{task.name}, {len(puzzles)} {which} (seed {args.seed}), greedy orders; "
             f"{meta['device']}, torch {meta['torch']}, {meta['date']}, commit {meta['commit']}", "",
             f"| order | solved | cell accuracy | vs max-confidence (solved, points) [95% interval] | wins / losses "
             f"| vs the best heuristic, {best_heuristic} [95% interval] | wins / losses |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['solved_rate']:.3f} | {r['cell_accuracy']:.3f} | {_cells(r['vs_max_confidence'])} "
                     f"| {_cells(r['vs_best_heuristic'])} |")
    lines += ["", f"best heuristic: {best_heuristic}"]
    (out / "upo_results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.curves:
        from upo_fast.plots import plot_runs

        print(plot_runs(_pairs(args.curves, "--curves"), out / "curves.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
