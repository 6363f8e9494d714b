"""Time and peak memory of one GRPO iteration (rollouts + update) against its floor and against a paraphrase of the
paper code's loop: same model, same puzzles, same policy, measured by this script in one run.

    upo_fast      the trainer's iteration: rollout() of all P x G trajectories as one batch with preallocated
                  recording, then update_policy() with the trainer's defaults (2 inner steps, CE to
                  max-confidence, forced moves subsampled at certain_keep = 0.1)
    upo_fast_all  the same with every recorded state in the loss (certain_keep = 1): the paraphrase's work
    floor         what the iteration cannot avoid, timed here at the same shapes: the bare MDM forwards the rollout
                  needs + the policy's forwards in the rollout + one policy forward and backward per inner step over
                  the states the loss uses (upo_fast's states)
    paper_loop    one trajectory at a time (batch size 1); per step a full forward, two full-vocabulary softmaxes,
                  the policy over every position, bf16 Gumbel noise at position temperature 0.8, a clone of the
                  state and hidden states stacked per step; the update recomputes the old log-probs (at
                  temperature 1) in every inner step and backpropagates trajectory by trajectory

Each measurement runs in its own process: warmup 1, median of ``--repeats``, then one more call for its peak
tensor memory (CUDA max allocated on a GPU; on the CPU the profiler's allocation records: see ``peak_mb``).

Usage:  python benchmarks/bench_trainer.py --out DIR [--tasks sudoku4,sudoku9] [--shapes 16x8,64x8]
            [--paper-shapes 16x8] [--repeats 3] [--warmup 1] [--threads 1] [--config JSON]
        python benchmarks/bench_trainer.py --quick --out DIR                   (smoke run)
Writes DIR/bench_trainer.{json,csv}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish  # noqa: E402
from paper_loop import paper_iteration  # noqa: E402

from upo_fast.assets import load_task_model  # noqa: E402
from upo_fast.evaluation.flops import policy_cost  # noqa: E402
from upo_fast.evaluation.grids import HELD_OUT_SEED  # noqa: E402
from upo_fast.tasks import get_task  # noqa: E402
from upo_fast.training.config import TrainConfig  # noqa: E402
from upo_fast.training.losses import group_advantages  # noqa: E402
from upo_fast.training.policy_init import make_policy  # noqa: E402
from upo_fast.training.rollout import rollout  # noqa: E402
from upo_fast.training.update import UpdateOptions, update_policy  # noqa: E402

IMPLS = ("upo_fast", "upo_fast_all", "floor", "paper_loop")


class Clock:
    """Wall time of a block; on a GPU the device is synchronized at both ends (only at the ends)."""

    def __init__(self, device: torch.device):
        self.device, self.ms = device, 0.0

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self):
        self._sync()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.ms = 1e3 * (time.perf_counter() - self.t0)


def _setup(spec: dict) -> SimpleNamespace:
    device = torch.device(spec["device"])
    task = get_task(spec["task"])
    mdm = load_task_model(None, task, str(device)).eval().requires_grad_(False)
    cfg = TrainConfig(task=spec["task"], device=str(device), **spec.get("config", {}))
    torch.manual_seed(0)
    policy = make_policy(cfg, mdm)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    puzzles, _ = task.make_puzzles(spec["prompts"], cfg.blanks, seed=HELD_OUT_SEED)
    x = task.encode(puzzles).to(device).repeat_interleave(spec["group"], 0)
    return SimpleNamespace(device=device, task=task, mdm=mdm, cfg=cfg, policy=policy, optimizer=optimizer, x=x,
                           group=spec["group"])


def _update_options(cfg: TrainConfig, certain_keep: float) -> UpdateOptions:
    """The trainer's update options (``TrainConfig.update_options``) with forced moves kept at ``certain_keep``."""
    return dataclasses.replace(cfg.update_options(), certain_keep=certain_keep)


def _rollout(setup, seed: int):
    gen = torch.Generator(device=setup.device).manual_seed(seed)
    return rollout(setup.mdm, setup.x, policy=setup.policy, position_temperature=setup.cfg.position_temperature,
                   generator=gen)[1]


def upo_iteration(setup, certain_keep: float, seed: int) -> dict:
    with Clock(setup.device) as roll:
        traj = _rollout(setup, seed)
    rewards = torch.rand(setup.x.shape[0], generator=torch.Generator().manual_seed(seed)).view(-1, setup.group)
    adv = group_advantages(rewards).flatten().to(setup.device)
    with Clock(setup.device) as upd:
        metrics = update_policy(setup.policy, setup.optimizer, traj, adv, _update_options(setup.cfg, certain_keep),
                                seed=seed)
    return dict(rollout_ms=roll.ms, update_ms=upd.ms, total_ms=roll.ms + upd.ms, steps=traj.active.shape[0],
                states_used=metrics["update_states_used"], states=metrics["update_steps"])


def floor_iteration(setup, seed: int) -> dict:
    """The floor's parts at the shapes of one upo_fast iteration (its rollout's steps, its update's used states)."""
    from upo_fast.training.update import _step_weights  # the states the update uses, drawn the same way

    cfg, policy = setup.cfg, setup.policy
    traj = _rollout(setup, seed)
    S = traj.active.shape[0]
    _, weight = _step_weights(traj, None, cfg.update_options(), seed)
    index = (weight > 0).nonzero(as_tuple=True)
    with torch.no_grad():
        with Clock(setup.device) as mdm_clock:
            for _ in range(S):
                setup.mdm(setup.x)
        with Clock(setup.device) as pol_clock:
            for s in range(S):
                policy(**traj.policy_inputs((s,)))
    chunk = max(1, cfg.update_chunk)
    with Clock(setup.device) as upd_clock:
        for _ in range(cfg.inner_iters):
            for i in range(0, index[0].numel(), chunk):
                part = (index[0][i:i + chunk], index[1][i:i + chunk])
                policy(**traj.policy_inputs(part)).sum().backward()
    policy.zero_grad(set_to_none=True)
    return dict(rollout_ms=mdm_clock.ms + pol_clock.ms, update_ms=upd_clock.ms,
                total_ms=mdm_clock.ms + pol_clock.ms + upd_clock.ms, mdm_forward_ms=mdm_clock.ms,
                policy_forward_ms=pol_clock.ms, policy_fwd_bwd_ms=upd_clock.ms, steps=S,
                states_used=int(index[0].numel()))


def paper_timed(setup, seed: int) -> dict:
    torch.manual_seed(seed)
    with Clock(setup.device) as clock:
        paper_iteration(setup.mdm, setup.policy, setup.optimizer, setup.x, setup.task.mask_id, setup.group,
                        setup.cfg.inner_iters)
    return dict(total_ms=clock.ms)


def peak_mb(fn, device: torch.device) -> float:
    """Peak of the tensor memory ``fn`` allocates above what was live before it: CUDA max allocated on a GPU; on
    the CPU the running sum of the profiler's allocation and free records (torch's CPU allocator, every tensor
    counted; the process's resident set would mostly show what the allocator keeps)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage != 0), key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20


def child(spec: dict) -> dict:
    """One implementation at one shape: warmup, repeats, medians, peak memory (runs in its own process)."""
    torch.set_num_threads(spec["threads"])
    setup = _setup(spec)
    impl = spec["impl"]
    run = {"upo_fast": lambda s: upo_iteration(setup, setup.cfg.certain_keep, s),
           "upo_fast_all": lambda s: upo_iteration(setup, 1.0, s),
           "floor": lambda s: floor_iteration(setup, s), "paper_loop": lambda s: paper_timed(setup, s)}[impl]
    for i in range(spec["warmup"]):
        run(1000 + i)
    samples = [run(i) for i in range(spec["repeats"])]
    row = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
    if spec.get("memory", True):
        row["peak_mem_mb"] = peak_mb(lambda: run(2000), setup.device)  # one more call, not timed
    if impl == "upo_fast":
        cost = policy_cost(setup.mdm, setup.policy, setup.x)
        row.update(policy_params=cost.policy_params, mdm_params=cost.mdm_params, policy_mdm_flop_ratio=cost.ratio,
                   policy_update_mdm_flop_ratio=cost.update_ratio)
    return row


def _run_child(spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("USDT:")]
        return {"error": lines[-1][:300] if lines else f"exit code {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _summaries(rows: list[dict]) -> list[dict]:
    """Per (task, shape): the iteration over its floor, and the paraphrase over upo_fast at equal work."""
    out = []
    for key in dict.fromkeys((r["task"], r["prompts"], r["group"]) for r in rows):
        by = {r["impl"]: r for r in rows if (r["task"], r["prompts"], r["group"]) == key and "error" not in r}
        s = dict(task=key[0], prompts=key[1], group=key[2])
        if "upo_fast" in by and "floor" in by:
            s["iteration_over_floor"] = by["upo_fast"]["total_ms"] / by["floor"]["total_ms"]
            s["rollout_over_floor"] = by["upo_fast"]["rollout_ms"] / by["floor"]["rollout_ms"]
            s["update_over_floor"] = by["upo_fast"]["update_ms"] / by["floor"]["update_ms"]
        if "paper_loop" in by and "upo_fast_all" in by:
            s["speedup_vs_paper_equal_work"] = by["paper_loop"]["total_ms"] / by["upo_fast_all"]["total_ms"]
            if "peak_mem_mb" in by["paper_loop"]:
                s["peak_mem_ratio_vs_paper"] = by["upo_fast_all"]["peak_mem_mb"] / max(by["paper_loop"]["peak_mem_mb"],
                                                                                       1e-9)
        out.append(s)
    return out


def _shapes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in part.split("x")) for part in text.split(",") if part]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/local")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tasks", default="sudoku4,sudoku9")
    parser.add_argument("--shapes", default="16x8,64x8", help="prompts x group, comma-separated")
    parser.add_argument("--paper-shapes", default="16x8", help="shapes at which the paraphrase also runs")
    parser.add_argument("--impls", default=",".join(IMPLS), help="which of " + ", ".join(IMPLS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per measurement (CPU)")
    parser.add_argument("--paper-memory", action="store_true",
                        help="also profile the paraphrase's peak memory on the CPU (small shapes only: the profiler "
                             "keeps a record per op)")
    parser.add_argument("--config", default="{}", help="JSON of TrainConfig fields (e.g. the policy body)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tasks, shapes, paper = args.tasks.split(","), _shapes(args.shapes), set(_shapes(args.paper_shapes))
    warmup, repeats = args.warmup, args.repeats
    if args.quick:
        tasks, shapes, paper, warmup, repeats = ["sudoku4"], [(2, 2)], {(2, 2)}, 0, 1
    rows = []
    for task in tasks:
        for prompts, group in shapes:
            for impl in [i for i in IMPLS if i in args.impls.split(",")]:
                if impl == "paper_loop" and (prompts, group) not in paper:
                    continue
                # the profiler's records of the paraphrase's many batch-1 ops outgrow memory beyond ~2,000 steps
                memory = device == "cuda" or impl != "paper_loop" or args.paper_memory
                spec = dict(task=task, prompts=prompts, group=group, impl=impl, device=device, warmup=warmup,
                            repeats=repeats, threads=args.threads, config=json.loads(args.config), memory=memory)
                row = dict(op="grpo_iteration", impl=impl, task=task, prompts=prompts, group=group,
                           **_run_child(spec))
                print(json.dumps(row), flush=True)
                rows.append(row)
    summary = _summaries(rows)
    print(json.dumps(summary, indent=1))
    return finish(args, "bench_trainer", rows, device, {"summary": summary},
                  meta={"threads": args.threads, "config": json.loads(args.config)})


if __name__ == "__main__":
    sys.exit(main())
