"""The UPO results table: every heuristic and every trained policy on the same held-out Sudoku puzzles (the seed
``upo-fast eval`` and the demo use, never seen in training or validation), plus the runs' training curves.

Usage:  python benchmarks/upo_results.py --run "UPO max-conf=runs/A/best" --run ... --curves "A=runs/A" ...
            --out benchmarks/results/upo_sudoku9 [--num-puzzles N --seed S | --data CSV] [--model DIR]
            [--metric solved|cells] [--group "NAME=LABEL,LABEL,..."]
Writes OUT/upo_results.{json,md} (with device, date, commit and command) and OUT/curves.png. Every order is
compared with max-confidence and with the best heuristic on the same puzzles: the difference in solved rate and in
cell accuracy with a 95% interval from the per-puzzle (paired) differences, and the puzzles where it does better
than the baseline (wins) and worse. ``--metric`` picks the best heuristic and the table's order of columns. A
``--group`` (e.g. the seeds of one setting) is one more row: the runs' mean ± spread (min to max), compared through
the per-puzzle mean over its runs. The JSON keeps each order's per-puzzle outcomes ("solved_flags", one 0/1
character per puzzle; "cells", per-puzzle cell accuracy), so other pairings can be computed later without a rerun.
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

from upo_fast.assets import load_task_model  # noqa: E402
from upo_fast.evaluation.grids import HELD_OUT_SEED, solve_puzzles  # noqa: E402
from upo_fast.evaluation.intervals import paired_difference  # noqa: E402
from upo_fast.policy import UnmaskingPolicy  # noqa: E402
from upo_fast.sampling.scorers import HEURISTICS  # noqa: E402
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


def _paired(values: np.ndarray, base: np.ndarray) -> dict:
    """Difference of per-puzzle values (solved flags, cell accuracies) against ``base`` on the same puzzles, with
    a normal 95% interval of the mean of the per-puzzle differences, and the counts of puzzles where each is
    ahead."""
    return paired_difference(values.astype(float), base.astype(float))


def _cells(v: dict) -> str:
    """A _paired result as two table cells: 'diff [low, high] | wins / losses', in points."""
    low, high = v["ci95"]
    return f"{100 * v['diff']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] | {v['wins']} / {v['losses']}"


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="sudoku9")
    parser.add_argument("--model", default=None, help="TinyMDM folder or shipped name (default: the task's)")
    parser.add_argument("--num-puzzles", type=int, default=200)
    parser.add_argument("--blanks", type=int, default=None, help="blanks of generated puzzles (default: the task's)")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="puzzle seed (default: the held-out one)")
    parser.add_argument("--data", default=None, help="a puzzle file (e.g. the paper's 4x4 CSV) instead of generated")
    parser.add_argument("--metric", default="solved", choices=["solved", "cells"],
                        help="what picks the best heuristic and leads the table")
    parser.add_argument("--heuristics", default=",".join(HEURISTICS),
                        help="comma-separated heuristics to run (max_confidence always runs: the baseline)")
    parser.add_argument("--oracle-topk", default="", help="comma-separated K for oracle-bound rows (0: any cell)")
    parser.add_argument("--run", action="append", default=[], help="LABEL=POLICY_FOLDER, repeatable")
    parser.add_argument("--group", action="append", default=[], help="NAME=LABEL,LABEL,... (runs of --run)")
    parser.add_argument("--curves", action="append", default=[], help="LABEL=RUN_FOLDER for curves.png")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    heuristics = [h for h in args.heuristics.split(",") if h]
    unknown = sorted(set(heuristics) - set(HEURISTICS))
    if unknown:
        parser.error(f"--heuristics: unknown {', '.join(unknown)}; valid: {', '.join(HEURISTICS)}")
    args.heuristics = ["max_confidence"] + [h for h in heuristics if h != "max_confidence"]
    args.runs, args.groups = _pairs(args.run, "--run"), _pairs(args.group, "--group")
    for name, labels in args.groups.items():
        missing = [label for label in labels.split(",") if label not in args.runs]
        if missing:
            parser.error(f"--group {name}: not a --run label: {', '.join(missing)}")
    return args


def _score_all(args, mdm, task, puzzles, solutions) -> tuple[dict, dict]:
    """{order: {"solved", "cells"}} per-puzzle outcomes of every heuristic, run, group and oracle bound."""
    raw = {name: _score(mdm, task, puzzles, solutions, name) for name in args.heuristics}
    for label, folder in args.runs.items():
        policy = UnmaskingPolicy.from_pretrained(folder).eval()
        policy.check_compatible(mdm)
        raw[label] = _score(mdm, task, puzzles, solutions, "policy", policy=policy, position_temperature=0.0)
    spreads = {}
    for name, labels in args.groups.items():  # the per-puzzle mean over the group's runs
        members = [raw[label] for label in labels.split(",")]
        raw[name] = {key: np.mean([m[key].astype(float) for m in members], 0) for key in ("solved", "cells")}
        spreads[name] = {key: [float(min(m[key].mean() for m in members)), float(max(m[key].mean() for m in members))]
                         for key in ("solved", "cells")} | {"runs": labels.split(",")}
    for k in [int(v) for v in args.oracle_topk.split(",") if v]:
        oracle = OracleOrder(task.encode_solution(puzzles, solutions), k or None)  # one batch: rows = solutions
        raw[f"oracle bound ({f'top {k}' if k else 'any cell'})"] = _score(
            mdm, task, puzzles, solutions, "policy", policy=oracle, position_temperature=0.0, batch_size=len(puzzles))
    return raw, spreads


def _table(report: dict, metric: str) -> list[str]:
    meta, best = report["meta"], report["best_heuristic"]
    first, second = ("cells", "solved") if metric == "cells" else ("solved", "cells")
    names = {"solved": "solved", "cells": "cell accuracy"}
    key = {"solved": "", "cells": "cells_"}
    lines = [f"{report['task']}, {report['n']} {report['puzzles']}, greedy orders; {meta['device']}, torch "
             f"{meta['torch']}, {meta['date']}, commit {meta['commit']}", "",
             f"| order | {names[first]} | {names[second]} | {names[first]} vs max-confidence (points) [95%] | wins / "
             f"losses | {names[first]} vs the best heuristic, {best} [95%] | wins / losses | {names[second]} vs "
             f"max-confidence [95%] | wins / losses |", "|---|---|---|---|---|---|---|---|---|"]
    value = {"solved": "solved_rate", "cells": "cell_accuracy"}
    for name, r in report["results"].items():
        shown = {m: f"{r[value[m]]:.3f}" for m in ("solved", "cells")}
        if "spread" in r:  # a group: mean (min-max over its runs)
            shown = {m: f"{r[value[m]]:.3f} ({r['spread'][m][0]:.3f}–{r['spread'][m][1]:.3f})" for m in shown}
        pairs = [r[key[first] + "vs_max_confidence"], r[key[first] + "vs_best_heuristic"],
                 r[key[second] + "vs_max_confidence"]]
        lines.append(f"| {name} | {shown[first]} | {shown[second]} | " + " | ".join(map(_cells, pairs)) + " |")
    return lines + ["", f"best heuristic ({names[metric]}): {best}"]


def main(argv=None) -> int:
    args = _parse(argv)
    task = get_task(args.task)
    mdm = load_task_model(args.model, task)
    if args.data:
        puzzles, solutions = task.load(args.data)
        which = f"puzzles from {Path(args.data).name}"
    else:
        puzzles, solutions = task.make_puzzles(args.num_puzzles, args.blanks, seed=args.seed)
        which = f"{'held-out' if args.seed == HELD_OUT_SEED else 'fresh'} puzzles (seed {args.seed})"
    raw, spreads = _score_all(args, mdm, task, puzzles, solutions)
    key = "solved" if args.metric == "solved" else "cells"
    best = max(args.heuristics, key=lambda s: raw[s][key].mean())  # the first one on ties
    results = {}
    for name, r in raw.items():
        results[name] = {"solved_rate": float(r["solved"].mean()), "cell_accuracy": float(r["cells"].mean()),
                         "vs_max_confidence": _paired(r["solved"], raw["max_confidence"]["solved"]),
                         "vs_best_heuristic": _paired(r["solved"], raw[best]["solved"]),
                         "cells_vs_max_confidence": _paired(r["cells"], raw["max_confidence"]["cells"]),
                         "cells_vs_best_heuristic": _paired(r["cells"], raw[best]["cells"])}
        if name in spreads:
            results[name]["spread"] = spreads[name]
        else:
            results[name]["solved_flags"] = "".join("1" if v else "0" for v in r["solved"])
            results[name]["cells"] = [round(float(v), 4) for v in r["cells"]]
        if name in args.runs:
            results[name]["policy"] = args.runs[name]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"meta": metadata("cpu"), "task": task.name, "model": args.model, "n": len(puzzles), "seed": args.seed,
              "data": args.data, "puzzles": which, "metric": args.metric, "best_heuristic": best,
              "results": results}
    (out / "upo_results.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = _table(report, args.metric)
    (out / "upo_results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.curves:
        from upo_fast.evaluation.plots import plot_runs

        print(plot_runs(_pairs(args.curves, "--curves"), out / "curves.png", metric=args.metric))
    return 0


if __name__ == "__main__":
    sys.exit(main())
