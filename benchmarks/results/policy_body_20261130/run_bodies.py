"""Issue 13: the same reduced DAgger imitation run (oracle target, sudoku9) for each policy body.

Usage (one thread each, one after the other; the JSON logs land beside this file):
    OMP_NUM_THREADS=1 python benchmarks/results/policy_body_20261130/run_bodies.py RUNS_DIR block narrow32 features

Budget, equal for every body: rounds 0..2 (round 0 rolls out max-confidence, rounds 1-2 the policy itself) x 512
training puzzles x 200 AdamW steps of 128 states; the per-round validation (the log only) on the first 200 puzzles
of the trainer's VALIDATION_SEED, never the held-out test seed. Same seed, so the same training puzzles for every
body. The comparison itself is ``compare_bodies.py``: each run's last policy on 1,000 validation puzzles.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from upo_fast.training.imitation import ImitationConfig, pretrain_policy

HERE = Path(__file__).resolve().parent
BUDGET = dict(task="sudoku9", target="oracle", rounds=2, puzzles_per_round=512, steps=200, batch_size=128, lr=3e-4,
              keep_rate=0.1, eval_puzzles=200, seed=0)
BODIES = {
    "block": dict(),  # the default: block_init="copy" at the MDM's width, anchor init
    "narrow32": dict(policy_dim=32, block_init="fresh"),  # one fresh block at width 32 (hidden projected 128 -> 32)
    "features": dict(policy_body="features"),  # no transformer block
}


def main(runs_dir: str, names: list[str]) -> None:
    for name in names:
        cfg = ImitationConfig(**BUDGET, **BODIES[name], out_dir=str(Path(runs_dir) / name))
        started = time.perf_counter()
        summary = pretrain_policy(cfg, progress=False)
        summary["wall_seconds"] = round(time.perf_counter() - started, 1)
        log = [json.loads(line) for line in (Path(cfg.out_dir) / "pretrain_log.jsonl").read_text().splitlines()]
        (HERE / f"{name}_pretrain.json").write_text(json.dumps({"summary": summary, "rounds": log}, indent=1) + "\n")
        print(name, "best", summary["best"]["val_solved"], "last", summary["val_solved"], summary["wall_seconds"],
              "s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
