"""Issue 13: policy/MDM FLOPs per sampling step (and per update step) for every shipped MDM, counted by
``upo_fast.evaluation.flops.policy_cost`` (torch's FlopCounterMode): the shipped policy, the default GRPO policy
(TrainConfig defaults: init=anchor, block_init=copy, mlp_hidden=128) and the lighter bodies.

Usage: OMP_NUM_THREADS=1 python benchmarks/results/policy_body_20261130/flop_table.py   (a few seconds)
Writes flops.json beside this file and prints the Markdown table. FLOPs do not depend on the puzzles' values, only
on their shape: one training-seed puzzle (seed 0) per task.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # benchmarks/
from common import metadata  # noqa: E402

from upo_fast.assets import load_task_model, shipped_policy_path  # noqa: E402
from upo_fast.evaluation.flops import policy_cost  # noqa: E402
from upo_fast.policy import load_policy  # noqa: E402
from upo_fast.tasks import get_task  # noqa: E402
from upo_fast.training.config import TrainConfig  # noqa: E402
from upo_fast.training.policy_init import make_policy  # noqa: E402

BODIES = {
    "default (block, copy, mlp_hidden 128)": dict(),
    "narrow block (policy_dim 32, fresh)": dict(policy_dim=32, block_init="fresh"),
    "features (no block)": dict(policy_body="features"),
    "features, mlp_hidden 32": dict(policy_body="features", mlp_hidden=32),
}


def main() -> None:
    rows = []
    for name in ("sudoku4", "sudoku9", "zebra"):
        task = get_task(name)
        mdm = load_task_model(None, task).eval()
        x = task.encode(task.make_puzzles(1, seed=0)[0])
        policies = {label: make_policy(TrainConfig(task=name, **kw).validate(), mdm) for label, kw in BODIES.items()}
        try:
            policies = {"shipped policy": load_policy(shipped_policy_path(name), task, mdm)} | policies
        except ValueError:  # no shipped policy for this task
            pass
        for label, policy in policies.items():
            rows.append({"task": name, "policy": label} | dataclasses.asdict(policy_cost(mdm, policy, x)))
    (HERE / "flops.json").write_text(json.dumps({"meta": metadata("cpu"), "rows": rows}, indent=1) + "\n")
    print("| task (MDM params) | policy | params | policy/MDM FLOPs per step | update (fwd+bwd)/MDM |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} ({r['mdm_params']:,}) | {r['policy']} | {r['policy_params']:,} | {100 * r['ratio']:.1f}% "
              f"| {100 * r['update_ratio']:.1f}% |")


if __name__ == "__main__":
    main()
