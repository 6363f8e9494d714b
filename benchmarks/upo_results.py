"""The UPO results table: every heuristic and every trained policy on the same held-out Sudoku puzzles (the seed
``upo-fast eval`` and the demo use, never seen in training or validation), plus the runs' training curves.

Usage:  python benchmarks/upo_results.py --run "UPO max-conf=runs/A/best" --run ... --curves "A=runs/A" ...
            --out benchmarks/results/upo_sudoku9
Writes OUT/upo_results.{json,md} (with device, date, commit and command) and OUT/curves.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import metadata  # noqa: E402

from upo_fast.evaluation import HELD_OUT_SEED, evaluate, load_model  # noqa: E402
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="sudoku9")
    parser.add_argument("--num-puzzles", type=int, default=200)
    parser.add_argument("--run", action="append", default=[], help="LABEL=POLICY_FOLDER, repeatable")
    parser.add_argument("--curves", action="append", default=[], help="LABEL=RUN_FOLDER for curves.png")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    task = get_task(args.task)
    mdm = load_model(None, task)
    puzzles, solutions = task.make_puzzles(args.num_puzzles, seed=HELD_OUT_SEED)
    results = evaluate(mdm, task, puzzles, solutions, list(HEURISTICS), seed=0, progress=False)
    for label, folder in _pairs(args.run, "--run").items():
        policy = UnmaskingPolicy.from_pretrained(folder).eval()
        policy.check_compatible(mdm)
        r = evaluate(mdm, task, puzzles, solutions, ["policy"], seed=0, progress=False, policy=policy,
                     position_temperature=0.0)["policy"]
        results[label] = {**r, "policy": folder}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = metadata("cpu")
    report = {"meta": meta, "task": task.name, "n": len(puzzles), "seed": HELD_OUT_SEED, "results": results}
    (out / "upo_results.json").write_text(json.dumps(report, indent=2) + "\n")
    best_heuristic = max(HEURISTICS, key=lambda s: results[s]["solved_rate"])
    lines = [f"{task.name}, {len(puzzles)} held-out puzzles (seed {HELD_OUT_SEED}), greedy orders; "
             f"{meta['device']}, torch {meta['torch']}, {meta['date']}, commit {meta['commit']}", "",
             "| order | solved | cell accuracy | vs max-confidence (solved, points) |", "|---|---|---|---|"]
    base = results["max_confidence"]["solved_rate"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['solved_rate']:.3f} | {r['cell_accuracy']:.3f} | "
                     f"{100 * (r['solved_rate'] - base):+.1f} |")
    lines += ["", f"best heuristic: {best_heuristic}"]
    (out / "upo_results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.curves:
        from upo_fast.plots import plot_runs

        print(plot_runs(_pairs(args.curves, "--curves"), out / "curves.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
