"""``upo-fast demo``: what the unmasking order does, with the shipped TinyMDMs on held-out puzzles (CPU).

The default (``QUICK``, about 1.5 minutes on 2 idle CPU cores) runs the orders that carry the story on fewer
puzzles, each figure with its 95% interval: the order matters (max-confidence against a random order), a better
order exists (Pass@k of sampled orders against max-confidence), and the learned policy against the best heuristic.
``--full`` (``FULL``) runs every order on 200 puzzles per task. Both then draw the pictures: puzzles as each order
filled them, the aggregate over all puzzles, the Pass@k curves, and one trajectory as text.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from upo_fast.assets import load_task_model, shipped_model_path
from upo_fast.evaluation.demo_text import text_line, text_model_shipped
from upo_fast.evaluation.grids import HELD_OUT_SEED, solve_puzzles
from upo_fast.evaluation.intervals import excludes_zero, mean_interval, paired_difference, points, solved_interval
from upo_fast.policy import load_policy
from upo_fast.sampling.scorers import HEURISTICS, SCORERS
from upo_fast.tasks import get_task
from upo_fast.tasks.metrics import pass_at_k


@dataclass(frozen=True)
class DemoPlan:
    """How much the demo runs. The policy joins ``sudoku_scorers`` when one ships for the model."""

    sudoku_puzzles: int
    sudoku_scorers: tuple[str, ...]
    pass_at_puzzles: int  # the first ones of the Sudoku set, so Pass@k pairs with max-confidence on them
    pass_at_samples: int
    pass_at_topk: int  # the sampled order: uniform over the K most confident cells
    zebra_puzzles: int
    zebra_scorers: tuple[str, ...]
    picture_puzzles: int = 3

    def with_puzzles(self, num: int) -> DemoPlan:
        """The same plan on ``num`` puzzles per task (``--num-puzzles``)."""
        return replace(self, sudoku_puzzles=num, zebra_puzzles=num, pass_at_puzzles=min(num, self.pass_at_puzzles))


# Entropy, topk, softmax-confidence and origin are left to --full: on 1,000 held-out puzzles none is above margin
# (docs/results.md, "Results on 9x9 Sudoku"), so they add minutes and no conclusion. Sizes: about 500 fills of a
# 50-blank Sudoku in all, about 70 s on 2 idle CPU cores; the top-3 order has a larger Pass@8 gap than top-5, so fewer
# puzzles show it; Zebra feeds the pictures (its model solves none, so a larger table would add no conclusion).
QUICK = DemoPlan(sudoku_puzzles=60, sudoku_scorers=("random", "max_confidence", "margin"), pass_at_puzzles=30,
                 pass_at_samples=8, pass_at_topk=3, zebra_puzzles=30,
                 zebra_scorers=("random", "max_confidence", "margin"))
FULL = DemoPlan(sudoku_puzzles=200, sudoku_scorers=HEURISTICS, pass_at_puzzles=200, pass_at_samples=8,
                pass_at_topk=5, zebra_puzzles=200, zebra_scorers=HEURISTICS)


@dataclass(frozen=True)
class OrderResult:
    """One order on one task's puzzles: per-puzzle outcomes, and the record of every fill when it has one
    (``origin`` ranks nothing, so it has none)."""

    scorer: str
    solved: np.ndarray
    cell_accuracy: np.ndarray
    forwards: float
    seconds: float
    record: object = None  # upo_fast.evaluation.order_pictures.OrderRecord

    def summary(self) -> dict:
        solved, cells = solved_interval(self.solved), mean_interval(self.cell_accuracy, within=(0.0, 1.0))
        return {"cell_accuracy": cells["mean"], "cell_accuracy_ci95": cells["ci95"], "solved_rate": solved["rate"],
                "solved_ci95": solved["ci95"], "forwards": self.forwards, "seconds": round(self.seconds, 3)}


class _Phases:
    """Numbers the phases and prints one line per phase with its time."""

    def __init__(self, total: int):
        self.total, self.done, self.times = total, 0, []

    def run(self, description: str, work):
        self.done += 1
        print(f"[{self.done}/{self.total}] {description} ...", end="", flush=True)
        start = time.perf_counter()
        result = work()
        seconds = time.perf_counter() - start
        print(f" {seconds:.1f} s", flush=True)
        self.times.append({"phase": description, "seconds": round(seconds, 1)})
        return result


def _run_order(model, task, puzzles, solutions, scorer: str, options: dict) -> OrderResult:
    from upo_fast.evaluation.order_pictures import record_order

    start = time.perf_counter()
    if not SCORERS[scorer].ranks:  # no ranking to record (origin): the plain evaluation path
        grids, steps = solve_puzzles(model, task, puzzles, scorer, with_steps=True, **options)
        return OrderResult(scorer, task.is_solved(grids, puzzles, solutions),
                           task.cell_accuracy(grids, puzzles, solutions), float(steps.mean()),
                           time.perf_counter() - start)
    record = record_order(model, task, puzzles, solutions, scorer, **options)
    blanks = (record.steps >= 0).reshape(len(record), -1).sum(-1)  # one cell per step
    return OrderResult(scorer, record.solved, record.cell_accuracy, float(blanks.mean()), time.perf_counter() - start,
                       record)


def _order_options(scorer: str, policy, topk: int) -> dict:
    if SCORERS[scorer].needs_policy:
        return {"policy": policy, "position_temperature": 0.0}  # greedy: the policy's own order
    return {"topk": topk} if scorer == "topk" else {}


def _policy_or_none(task, model):
    try:
        return load_policy(None, task, model)
    except ValueError as err:  # no shipped policy (or one for another model): the heuristics alone
        print(f"({task.name}: no learned policy, the heuristics alone: {str(err).split(';')[0]})")
        return None


def _run_task(task, model, policy, scorers, num_puzzles: int, topk: int) -> dict:
    """Every scorer (and the policy, when there is one) on the task's first ``num_puzzles`` held-out puzzles."""
    puzzles, solutions = task.make_puzzles(num_puzzles, seed=HELD_OUT_SEED)
    names = [*scorers, "policy"] if policy is not None else list(scorers)
    orders = {name: _run_order(model, task, puzzles, solutions, name, _order_options(name, policy, topk))
              for name in names}
    return {"task": task, "model": model, "puzzles": puzzles, "solutions": solutions, "orders": orders}


PARALLEL_RULES = (("threshold 0.99", "threshold=0.99"), ("learned commit rule", "policy"))


def _parallel(run: dict, policy) -> dict:
    """Parallel unmasking on the demo's Sudoku puzzles, the policy's order with the threshold rule and with its own
    learned commit rule: {label: {"forwards", "solved_rate"}} (forwards: mean MDM forwards per puzzle)."""
    task, puzzles, solutions = run["task"], run["puzzles"], run["solutions"]
    results = {}
    for label, commit in PARALLEL_RULES:
        grids, forwards = solve_puzzles(run["model"], task, puzzles, "policy", with_steps=True, policy=policy,
                                        position_temperature=0.0, commit=commit)
        results[label] = {"commit": commit, "forwards": float(forwards.mean()),
                          "solved_rate": float(task.is_solved(grids, puzzles, solutions).mean())}
    return results


def _parallel_line(parallel: dict, n: int, blanks: int) -> str:
    parts = [f"{label}: {r['forwards']:.1f} MDM forwards per puzzle, solved {r['solved_rate']:.3f}"
             for label, r in parallel.items()]
    return (f"Parallel unmasking, the policy's order on the same {n} puzzles (one cell a step: {blanks} forwards): "
            + "; ".join(parts) + ".")


def _sampled_solved(model, task, puzzles, solutions, plan: DemoPlan) -> np.ndarray:
    """[samples, puzzles] bool: ``plan.pass_at_samples`` sampled top-K orders of each puzzle, all in one batch
    (every row draws its own positions, so repeating the puzzles gives independent samples)."""
    n, count = plan.pass_at_samples, len(puzzles)
    rows = np.tile(np.arange(count), n)
    grids = solve_puzzles(model, task, puzzles[rows], "topk", seed=1, topk=plan.pass_at_topk)
    return task.is_solved(grids, puzzles[rows], solutions[rows]).reshape(n, count)


def _pass_at(sudoku: dict, plan: DemoPlan) -> dict:
    """Pass@k (k = 1..n) of the sampled order with per-k 95% intervals over puzzles, max-confidence on the same
    puzzles, and the paired difference Pass@n - max-confidence."""
    count = min(plan.pass_at_puzzles, len(sudoku["puzzles"]))
    puzzles, solutions = sudoku["puzzles"][:count], sudoku["solutions"][:count]
    correct = _sampled_solved(sudoku["model"], sudoku["task"], puzzles, solutions, plan).sum(0)
    n = plan.pass_at_samples
    per_puzzle = {k: np.array([pass_at_k(n, [c], k) for c in correct]) for k in range(1, n + 1)}
    greedy = sudoku["orders"]["max_confidence"].solved[:count]
    greedy_interval = solved_interval(greedy)
    sampled = f"topk (uniform over the {plan.pass_at_topk} most confident)"
    return {"puzzles": count, "samples": n, "topk": plan.pass_at_topk, "sampled_label": sampled,
            "curves": {sampled: {str(k): float(v.mean()) for k, v in per_puzzle.items()},
                       "max_confidence (deterministic)": {str(k): greedy_interval["rate"] for k in per_puzzle}},
            "ci95": {sampled: {str(k): mean_interval(v, within=(0.0, 1.0))["ci95"] for k, v in per_puzzle.items()},
                     "max_confidence (deterministic)": {str(k): greedy_interval["ci95"] for k in per_puzzle}},
            "vs_max_confidence": paired_difference(per_puzzle[n], greedy)}


def _best_heuristic(orders: dict[str, OrderResult], exclude=("random", "policy")) -> str:
    """The heuristic with the highest solved rate on these puzzles (ties: the first listed)."""
    candidates = [name for name in orders if name not in exclude]
    return max(candidates, key=lambda name: orders[name].solved.mean())


def _comparisons(orders: dict[str, OrderResult]) -> dict:
    """Paired solved-rate differences on the same puzzles: the story's three comparisons."""
    best = _best_heuristic(orders)
    out = {"best_heuristic": best}
    if "random" in orders:
        out["max_confidence_vs_random"] = paired_difference(orders["max_confidence"].solved, orders["random"].solved)
    if "policy" in orders:
        out["policy_vs_best_heuristic"] = paired_difference(orders["policy"].solved, orders[best].solved)
        out["policy_vs_max_confidence"] = paired_difference(orders["policy"].solved,
                                                            orders["max_confidence"].solved)
    return out


def _picture_orders(orders: dict[str, OrderResult]) -> list[str]:
    """max-confidence | the best other heuristic | the policy (or a random order when none ships)."""
    drawable = {name: result for name, result in orders.items() if result.record is not None}
    others = [name for name in drawable if name not in ("random", "policy", "max_confidence")]
    best_other = max(others, key=lambda name: drawable[name].solved.mean()) if others else None
    third = "policy" if "policy" in drawable else "random"
    return [name for name in ("max_confidence", best_other, third) if name in drawable]


def _format_table(run: dict) -> str:
    task, orders = run["task"], run["orders"]
    lines = [f"{task.name}: {len(run['puzzles'])} held-out puzzles ({task.default_blanks} blanks), one cell per step;"
             " [95% interval]",
             f"  {'order':<20} {'solved':>6} {'[interval]':<14} {'cell accuracy':>13} {'[interval]':<14} "
             f"{'seconds':>7}"]
    for name, result in orders.items():
        s = result.summary()
        lines.append(f"  {name:<20} {s['solved_rate']:>6.3f} {_bracket(s['solved_ci95']):<14} "
                     f"{s['cell_accuracy']:>13.3f} {_bracket(s['cell_accuracy_ci95']):<14} {s['seconds']:>7.1f}")
    return "\n".join(lines)


def _bracket(interval) -> str:
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def _conclusions(sudoku: dict, comparisons: dict, pass_at: dict | None) -> list[str]:
    """The story in numbers; each claim with its paired 95% interval, and a warning where it does not exclude 0."""
    orders, n = sudoku["orders"], len(sudoku["puzzles"])
    rate = {name: result.solved.mean() for name, result in orders.items()}
    lines = ["What this shows (sudoku9, paired differences on the same held-out puzzles, 95% intervals):"]
    if "max_confidence_vs_random" in comparisons:
        lines.append(f"1. The order matters: max-confidence solves {rate['max_confidence']:.3f} of {n} puzzles, a "
                     f"random order {rate['random']:.3f}: {points(comparisons['max_confidence_vs_random'])}.")
    if pass_at is not None:
        curve = pass_at["curves"][pass_at["sampled_label"]]
        k = str(pass_at["samples"])
        lines.append(f"2. A better order exists: random orders among the {pass_at['topk']} most confident cells solve "
                     f"{curve['1']:.3f}"
                     f" at Pass@1 and {curve[k]:.3f} at Pass@{k} on the first {pass_at['puzzles']} puzzles, where "
                     f"max-confidence solves {orders['max_confidence'].solved[:pass_at['puzzles']].mean():.3f}: "
                     f"Pass@{k} {points(pass_at['vs_max_confidence'])}. Better orders exist for these puzzles; a "
                     "learned policy has to pick one without sampling.")
    if "policy_vs_best_heuristic" in comparisons:
        best, versus = comparisons["best_heuristic"], comparisons["policy_vs_best_heuristic"]
        lines.append(f"3. The learned policy solves {rate['policy']:.3f}, the best heuristic here ({best}) "
                     f"{rate[best]:.3f}: {points(versus)}.")
        if not excludes_zero(versus):
            lines.append(f"   The interval includes 0: {n} puzzles cannot settle a difference this size. `upo-fast "
                         "demo --full` runs every order; the 1,000-puzzle comparison is in docs/results.md (Results "
                         "on 9x9 Sudoku, `benchmarks/upo_results.py`).")
    return lines


def _pictures(runs: dict, pass_at: dict | None, out_dir: Path, plan: DemoPlan) -> list[Path]:
    from upo_fast.evaluation.order_pictures import pick_puzzles, write_order_pictures
    from upo_fast.evaluation.plots import plot_pass_at

    written = []
    for run in runs.values():
        names = _picture_orders(run["orders"])
        records = [run["orders"][name].record for name in names]
        indices = pick_puzzles(records, plan.picture_puzzles)
        differ = [i for i in indices if len({bool(r.solved[i]) for r in records}) > 1]
        note = (f"puzzles {', '.join(map(str, differ))}: one of these orders solves it and another does not"
                if differ else "the first held-out puzzles (these orders solve the same ones)")
        written += write_order_pictures(run["task"], run["puzzles"], run["solutions"], records, indices, out_dir,
                                        note=note)
    if pass_at is not None:
        versus = pass_at["vs_max_confidence"]
        title = (f"sudoku9: Pass@k over {pass_at['puzzles']} held-out puzzles (bands: 95% intervals)\n"
                 f"paired on the same puzzles, Pass@{pass_at['samples']} - max-confidence: "
                 f"{points(versus).split(' points')[0]} points")
        written.insert(2, plot_pass_at(pass_at["curves"], out_dir / "sudoku9_pass_at.png", title, pass_at["ci95"]))
    return written


def _shipped_zebra():
    zebra = get_task("zebra")
    try:
        shipped_model_path(zebra.name)
    except ValueError as err:
        print(f"(no zebra phase: {err})")
        return None
    return zebra


def _busy_cores(window: float = 0.3) -> float | None:
    """Cores kept busy by other processes right now: the non-idle share of /proc/stat's CPU time over ``window``
    seconds (Linux), times the core count; None where there is no /proc/stat. The load average would lag by
    minutes after a job ends."""
    def sample():
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    share = 1.0 - (idle1 - idle0) / max(total1 - total0, 1e-9)
    return share * (os.cpu_count() or 1)


def _free_threads() -> int:
    """Torch threads for the demo: its default, less the cores other processes keep busy. On a 2-core machine
    with another job running, two threads run several times slower than one (CONTRIBUTING)."""
    default = torch.get_num_threads()
    busy = None if os.environ.get("OMP_NUM_THREADS") else _busy_cores()
    if busy is None:
        return default  # the user chose, or nothing to go by
    return max(1, min(default, (os.cpu_count() or 1) - round(busy)))


def run_demo(plan: DemoPlan = QUICK, model_path=None, out_dir: str | Path = "demo_out", json_path=None) -> dict:
    """Run ``plan``; print a line per phase with its time, the tables, the conclusions and where the files are;
    write the pictures and ``demo.json`` (or ``json_path``) into ``out_dir``; return the report."""
    threads, default = _free_threads(), torch.get_num_threads()
    torch.set_num_threads(threads)
    print(f"upo-fast demo ({'full' if plan.sudoku_scorers == FULL.sudoku_scorers else 'quick; --full for every order'}"
          f", {threads} torch thread{'s' * (threads > 1)})")
    try:
        return _run_plan(plan, model_path, Path(out_dir), json_path)
    finally:
        torch.set_num_threads(default)


def _run_plan(plan: DemoPlan, model_path, out_dir: Path, json_path) -> dict:
    start = time.perf_counter()
    zebra = _shipped_zebra()
    sudoku_task = get_task("sudoku9")
    model = load_task_model(model_path, sudoku_task)
    policy = _policy_or_none(sudoku_task, model)
    learned_commit = policy is not None and policy.has_commit_head
    text = text_model_shipped()
    phases = _Phases(3 + (zebra is not None) + learned_commit + text)
    names = ", ".join([*plan.sudoku_scorers, *(["policy"] if policy is not None else [])])
    runs = {"sudoku9": phases.run(f"sudoku9: {names} on {plan.sudoku_puzzles} held-out puzzles", lambda: _run_task(
        sudoku_task, model, policy, plan.sudoku_scorers, plan.sudoku_puzzles, plan.pass_at_topk))}
    print(_format_table(runs["sudoku9"]) + "\n")
    parallel = None
    if learned_commit:
        parallel = phases.run("sudoku9: parallel unmasking, the threshold rule and the learned commit rule",
                              lambda: _parallel(runs["sudoku9"], policy))
        print(_parallel_line(parallel, plan.sudoku_puzzles, sudoku_task.default_blanks) + "\n")
    pass_at = None
    if "max_confidence" in runs["sudoku9"]["orders"]:
        pass_at = phases.run(f"sudoku9: Pass@k of {plan.pass_at_samples} sampled top-{plan.pass_at_topk} orders on "
                             f"{min(plan.pass_at_puzzles, plan.sudoku_puzzles)} puzzles",
                             lambda: _pass_at(runs["sudoku9"], plan))
    if zebra is not None:
        zebra_model = load_task_model(None, zebra)
        zebra_policy = None  # Zebra's shipped policy/ is a commit net over the max-confidence order: no order to show
        runs["zebra"] = phases.run(f"zebra: {', '.join(plan.zebra_scorers)} on {plan.zebra_puzzles} held-out "
                                   "puzzles", lambda: _run_task(zebra, zebra_model, zebra_policy, plan.zebra_scorers,
                                                                plan.zebra_puzzles, plan.pass_at_topk))
        print(_format_table(runs["zebra"]) + "\n")
    arith_line = phases.run("arith: a held-out prompt, the small Dream and its policy", text_line) if text else None
    written = phases.run("pictures", lambda: _pictures(runs, pass_at, out_dir, plan))
    comparisons = _comparisons(runs["sudoku9"]["orders"])
    print("\n" + "\n".join(_conclusions(runs["sudoku9"], comparisons, pass_at)))
    report = _report(plan, runs, comparisons, pass_at, written, phases, time.perf_counter() - start)
    if parallel is not None:
        report["sudoku9"]["parallel"] = parallel
    report["arith"] = arith_line
    json_path = Path(json_path) if json_path else out_dir / "demo.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    _print_files(out_dir, written, json_path, report["seconds"])
    return report


def _report(plan, runs, comparisons, pass_at, written, phases, seconds) -> dict:
    report = {"plan": asdict(plan), "seconds": round(seconds, 1), "phases": phases.times}
    for name, run in runs.items():
        report[name] = {"task": name, "n": len(run["puzzles"]),
                        "results": {scorer: result.summary() for scorer, result in run["orders"].items()}}
    report["sudoku9"]["comparisons"] = comparisons
    if pass_at is not None:
        report["sudoku9"]["pass_at"] = pass_at["curves"]
        report["sudoku9"]["pass_at_detail"] = {key: pass_at[key] for key in ("puzzles", "samples", "topk", "ci95",
                                                                             "vs_max_confidence")}
    report["pictures"] = [str(path) for path in written]
    return report


def _print_files(out_dir: Path, written: list[Path], json_path: Path, seconds: float) -> None:
    print(f"\nFiles in {out_dir}/ ({seconds:.0f} s in all). Open {written[0].name} first: a few puzzles as each order "
          "filled them (the number in a cell is the step that filled it; red frames are wrong fills). Then:")
    for path in written[1:]:
        print(f"  {path.name}")
    print(f"  {json_path.name if json_path.parent == out_dir else json_path}  (every number above, with intervals)")
