"""Issue 13: each body's last policy from ``run_bodies.py`` and max-confidence on the same 1,000 validation puzzles
(the trainer's VALIDATION_SEED, never the held-out test seed), paired; with the policy/MDM FLOP ratio of each body.

Usage (from the repository root):
    OMP_NUM_THREADS=1 python benchmarks/results/policy_body_20261130/compare_bodies.py RUNS block narrow32 features
Writes compare.json (per-puzzle outcomes as "solved_flags") beside this file and prints the Markdown table.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # benchmarks/
from common import metadata  # noqa: E402
from upo_results import _cells, _paired  # noqa: E402

from upo_fast.assets import load_task_model  # noqa: E402
from upo_fast.evaluation.flops import policy_cost  # noqa: E402
from upo_fast.evaluation.grids import solve_puzzles  # noqa: E402
from upo_fast.models.saved import load_saved  # noqa: E402
from upo_fast.policy import UnmaskingPolicy  # noqa: E402
from upo_fast.tasks import get_task  # noqa: E402
from upo_fast.training.policy_init import VALIDATION_SEED  # noqa: E402

NUM_PUZZLES = 1000


def _outcome(mdm, task, puzzles, solutions, scorer: str, **options) -> dict:
    started = time.perf_counter()
    pred = solve_puzzles(mdm, task, puzzles, scorer, seed=0, **options)
    solved = task.is_solved(pred, puzzles, solutions)
    return {"solved": float(solved.mean()), "cell_accuracy": float(task.cell_accuracy(pred, puzzles, solutions).mean()),
            "eval_seconds": round(time.perf_counter() - started, 1), "flags": solved}


def main(runs_dir: str, names: list[str]) -> None:
    task = get_task("sudoku9")
    mdm = load_task_model(None, task).eval().requires_grad_(False)
    puzzles, solutions = task.make_puzzles(NUM_PUZZLES, seed=VALIDATION_SEED)
    rows = {"max-confidence": _outcome(mdm, task, puzzles, solutions, "max_confidence")}
    for name in names:
        policy = load_saved(UnmaskingPolicy, Path(runs_dir) / name / "last", "cpu").eval()
        rows[name] = _outcome(mdm, task, puzzles, solutions, "policy", policy=policy, position_temperature=0.0)
        cost = policy_cost(mdm, policy, task.encode(puzzles[:4]))
        run = json.loads((HERE / f"{name}_pretrain.json").read_text())
        rows[name] |= {"ratio": cost.ratio, "update_ratio": cost.update_ratio, "policy_params": cost.policy_params,
                       "mdm_params": cost.mdm_params, "train_wall_seconds": run["summary"]["wall_seconds"],
                       "body": policy.config.body, "policy_dim": policy.config.policy_dim,
                       "block_init": policy.config.block_init}
    base = rows["max-confidence"]["flags"]
    lines = ["| body | solved | cell accuracy | vs max-confidence [95%] | wins / losses | policy/MDM FLOPs per step "
             "| update (fwd+bwd)/MDM | policy params | train wall s |", "|" + "---|" * 9]
    for name, r in rows.items():
        if name != "max-confidence":
            r["vs_max_confidence"] = _paired(r["flags"], base)
            lines.append(f"| {name} | {r['solved']:.3f} | {r['cell_accuracy']:.4f} | {_cells(r['vs_max_confidence'])} "
                         f"| {100 * r['ratio']:.1f}% | {100 * r['update_ratio']:.1f}% | {r['policy_params']:,} "
                         f"| {r['train_wall_seconds']:.0f} |")
        else:
            lines.append(f"| max-confidence | {r['solved']:.3f} | {r['cell_accuracy']:.4f} | | | 0 | | | |")
        r["solved_flags"] = "".join("1" if f else "0" for f in r.pop("flags"))
    if "block" in rows:
        for name in names:
            if name != "block":
                rows[name]["vs_block"] = _paired(np.array([c == "1" for c in rows[name]["solved_flags"]]),
                                                 np.array([c == "1" for c in rows["block"]["solved_flags"]]))
    out = {"meta": metadata("cpu"), "puzzles": f"{NUM_PUZZLES} of VALIDATION_SEED={VALIDATION_SEED}", "rows": rows}
    (HERE / "compare.json").write_text(json.dumps(out, indent=1) + "\n")
    print("\n".join(lines))
    for name in names:
        if "vs_block" in rows[name]:
            print(name, "vs block:", _cells(rows[name]["vs_block"]))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
