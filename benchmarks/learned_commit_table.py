"""The learned commit rule against the fixed rules and the oracle filter, on held-out puzzles (issue 32's table).

Rows (order + commit rule), each on the same puzzles, greedy:

    max-confidence, one cell a step        the MDM's own order
    policy, one cell a step                the shipped order policy (the solved rate the learned rule must keep)
    max-confidence / policy, threshold T   Fast-dLLM's threshold rule (``--thresholds``)
    max-confidence / policy, learned       the policy's commit net at its own threshold (``commit="policy"``)
    max-confidence, oracle filter          every masked cell whose argmax already equals the solution, plus the
                                           order's first pick: reads the solution, so it is a limit, not a method

Per row: mean MDM forwards per puzzle, solved rate (Wilson 95%), cell accuracy, and the paired difference of solved
(95% interval) and of cell accuracy against the policy's one-cell-a-step row.

    OMP_NUM_THREADS=2 python benchmarks/learned_commit_table.py --task sudoku9 --num-puzzles 1000 \\
        --out benchmarks/results/learned_commit_sudoku9
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import metadata, write_results  # noqa: E402

from upo_fast.assets import load_task_model  # noqa: E402
from upo_fast.evaluation.grids import HELD_OUT_SEED  # noqa: E402
from upo_fast.evaluation.intervals import paired_difference, solved_interval  # noqa: E402
from upo_fast.policy import load_policy  # noqa: E402
from upo_fast.sampling.commit_rules import CommitRule, parse_commit  # noqa: E402
from upo_fast.sampling.loop import unmask  # noqa: E402
from upo_fast.tasks import get_task  # noqa: E402


@dataclass(frozen=True)
class OracleFilter(CommitRule):
    """The limit the learned rule approaches: every candidate whose token equals the solution (``solution`` [B, W]
    token ids of the batch being filled). Benchmark only: a sampler never has the solution."""

    solution: torch.Tensor = None
    follows_schedule = False

    def extra(self, order, candidates, stats, commit_logits=None):
        return candidates & (stats.token == self.solution)


def fill(model, task, puzzles, solutions, order: str, rule: str, policy, batch_size: int):
    """(solved [N] bool, cell accuracy [N], forwards [N]) of one order and rule over the puzzles."""
    grids, forwards = [], []
    for start in range(0, len(puzzles), batch_size):
        part, part_solutions = puzzles[start:start + batch_size], solutions[start:start + batch_size]
        commit = (OracleFilter(solution=task.encode_solution(part, part_solutions)) if rule == "oracle"
                  else parse_commit(rule))
        out, used = unmask(model, task.encode(part), scorer=order, policy=policy, position_temperature=0.0,
                           commit=commit, return_steps=True, generator=torch.Generator().manual_seed(0))
        grids.append(task.decode(out))
        forwards.append(used.numpy())
    grids = np.concatenate(grids)
    return (task.is_solved(grids, puzzles, solutions), task.cell_accuracy(grids, puzzles, solutions),
            np.concatenate(forwards))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sudoku9")
    parser.add_argument("--model", default=None)
    parser.add_argument("--policy", default=None, help="a policy with a commit net (default: the shipped one)")
    parser.add_argument("--num-puzzles", type=int, default=1000)
    parser.add_argument("--data", default=None, help="a puzzle file (e.g. ../shared/data/sudoku4x4_test_upo.csv) "
                        "instead of generated held-out puzzles")
    parser.add_argument("--thresholds", default="0.99,0.9")
    parser.add_argument("--other", default=None, help="a second policy folder with a commit net (e.g. GRPO's): its "
                        "learned rule with its own order is one more row, compared pairwise with this policy's")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    task = get_task(args.task)
    model = load_task_model(args.model, task)
    policy = load_policy(args.policy, task, model)
    if args.data:
        puzzles, solutions = task.load(args.data)
    else:
        puzzles, solutions = task.make_puzzles(args.num_puzzles, seed=HELD_OUT_SEED)
    rows_spec = [("max_confidence", "schedule"), ("policy", "schedule")]
    orders = ("max_confidence", "policy")
    rows_spec += [(order, f"threshold={t}") for t in args.thresholds.split(",") for order in orders]
    rows_spec += [("max_confidence", "policy"), ("policy", "policy"), ("max_confidence", "oracle")]
    if args.other:
        rows_spec.append(("policy", "other"))
    other = load_policy(args.other, task, model) if args.other else None
    outcomes, rows = {}, []
    for order, rule in rows_spec:
        started = time.perf_counter()
        row_policy, row_rule = (other, "policy") if rule == "other" else (policy, rule)
        solved, cells, forwards = fill(model, task, puzzles, solutions, order, row_rule, row_policy, args.batch_size)
        outcomes[(order, rule)] = solved, cells
        interval = solved_interval(solved)
        name = {"policy": "learned", "other": "learned (--other policy)"}.get(rule, rule)
        rows.append(dict(order=order, rule=name, forwards=float(forwards.mean()),
                         solved_rate=interval["rate"], solved_ci95=interval["ci95"], cell_accuracy=float(cells.mean()),
                         seconds=round(time.perf_counter() - started, 1)))
        print(f"{order:15s} {rows[-1]['rule']:15s} forwards {rows[-1]['forwards']:5.1f}  solved "
              f"{rows[-1]['solved_rate']:.3f}  cells {rows[-1]['cell_accuracy']:.3f}", flush=True)
    base_solved, base_cells = outcomes[("policy", "schedule")]
    for row, (solved, cells) in zip(rows, outcomes.values()):
        row["vs_policy_one_cell"] = paired_difference(solved.astype(float), base_solved.astype(float))
        row["cells_vs_policy_one_cell"] = paired_difference(cells, base_cells)
    if args.other:  # the second policy's learned rule against this one's, on the same puzzles
        mine, theirs = outcomes[("policy", "policy")][0], outcomes[("policy", "other")][0]
        rows[-1]["solved_vs_learned"] = paired_difference(theirs.astype(float), mine.astype(float))
    meta = metadata("cpu") | {"task": task.name, "n": len(puzzles), "puzzles": args.data or f"seed {HELD_OUT_SEED}",
                              "commit_threshold": policy.config.commit_threshold,
                              "policy": args.policy or f"shipped ({task.name})", "other": args.other,
                              "other_commit_threshold": other.config.commit_threshold if other else None}
    write_results(args.out, "learned_commit_table", rows, meta)
    (Path(args.out) / "learned_commit_table.md").write_text(markdown(rows, meta) + "\n")
    print(markdown(rows, meta))
    return 0


def _points(d: dict) -> str:
    return f"{100 * d['diff']:+.1f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]"


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"{meta['task']}: {meta['n']} held-out puzzles ({meta['puzzles']}); learned rule at commit "
             f"probability {meta['commit_threshold']:g}; {meta['device']}, {meta['date']}, commit {meta['commit']}", "",
             "| order | commit rule | MDM forwards per puzzle | solved [95%] | cell accuracy | "
             "vs the policy one cell a step, points [95%]: solved | cell accuracy |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['order']} | {r['rule']} | {r['forwards']:.1f} | {r['solved_rate']:.3f} "
                     f"[{r['solved_ci95'][0]:.3f}, {r['solved_ci95'][1]:.3f}] | {r['cell_accuracy']:.3f} | "
                     f"{_points(r['vs_policy_one_cell'])} | {_points(r['cells_vs_policy_one_cell'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
