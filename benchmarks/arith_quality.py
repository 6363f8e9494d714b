"""Text-side quality on the generated ``arith`` task (column addition with the carries written out) with a small
LLaDA or Dream trained on it: the unmasking orders, and Fast-dLLM's KV caches and parallel commit rules.

Two tables, on the same problems (the first ``--num-problems`` of arith's test split), greedy tokens, 64-token
answers in blocks of 16 (``upo_fast.tasks.arith``), all sampled by ``upo_fast.evaluation.text.evaluate_math``:

1. Orders, one token a step, no cache: the heuristic scorers (max_confidence, margin, entropy, topk=5, random;
   topk and random draw their positions with seed 0) and, when a policy folder is given (``--policy``, or the model
   folder's ``policy/``), the learned policy with greedy positions (position_temperature=0).
2. Cache and parallel decoding, with the max-confidence order (and the policy's, when given): ``cache`` in
   {none, prefix, dual} (``--caches``) x commit rule in {one token a step, ``threshold=T`` (``--thresholds``),
   ``factor=F`` (``--factors``)}.

Per row: exact-match accuracy with its Wilson 95% interval, mean MDM forwards per problem, seconds (after a
warm-up of each order and cache on one batch), and the paired difference of accuracy against the reference row
(max_confidence, no cache, one token a step) with its 95% interval. A row shared by both tables (the reference, the
policy with no cache) runs once. A row that fails is kept with its ``error`` and the run goes on.

    OMP_NUM_THREADS=2 python benchmarks/arith_quality.py --model arith_llada --num-problems 500 \\
        --out benchmarks/results/arith_quality_llada
    OMP_NUM_THREADS=2 python benchmarks/arith_quality.py --model arith_dream --num-problems 500 \\
        --out benchmarks/results/arith_quality_dream
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import metadata, write_results  # noqa: E402

from upo_fast.assets import model_folder  # noqa: E402
from upo_fast.evaluation.intervals import paired_difference, points, solved_interval  # noqa: E402
from upo_fast.evaluation.text import evaluate_math  # noqa: E402
from upo_fast.models.loading import load_text_model  # noqa: E402
from upo_fast.tasks import arith  # noqa: E402

HEURISTICS = ("max_confidence", "margin", "entropy", "topk", "random")
TOPK = 5
ONE = "one token a step"
REFERENCE = ("max_confidence", "none", ONE)


def order_label(order: str) -> str:
    return f"topk={TOPK}" if order == "topk" else order


def rules(thresholds: list[float], factors: list[float]) -> list[str]:
    return [ONE, *(f"threshold={t:g}" for t in thresholds), *(f"factor={f:g}" for f in factors)]


def rule_options(rule: str) -> dict:
    """``evaluate_math``'s threshold / factor of a rule label."""
    if rule == ONE:
        return {}
    name, value = rule.split("=")
    return {name: float(value)}


def table_keys(orders: list[str], cache_orders: list[str], caches: list[str],
               rule_names: list[str]) -> tuple[list[tuple], list[tuple]]:
    """The (order, cache, rule) of the orders table's rows and of the cache table's, in table order."""
    return ([(order, "none", ONE) for order in orders],
            [(order, cache, rule) for order in cache_orders for cache in caches for rule in rule_names])


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _caches(text: str) -> list[str]:
    caches = [c.strip().lower() for c in text.split(",") if c.strip()]
    bad = [c for c in caches if c not in ("none", "prefix", "dual")]
    if bad:
        raise SystemExit(f"--caches: unknown cache {bad[0]!r} (choose from none, prefix, dual)")
    return caches


def _policy_dir(args, folder: Path) -> str | None:
    if args.policy:
        return args.policy
    own = folder / "policy"
    return str(own) if (own / "config.json").is_file() else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a LLaDA / Dream folder trained on arith, or a shipped "
                        "folder's name (arith_llada, arith_dream)")
    parser.add_argument("--policy", default=None, help="a policy folder (default: the model folder's policy/ when "
                        "there is one; else no policy rows)")
    parser.add_argument("--num-problems", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=125)
    parser.add_argument("--thresholds", default="0.9,0.7")
    parser.add_argument("--factors", default="1.0")
    parser.add_argument("--caches", default="none,prefix,dual")
    parser.add_argument("--no-warmup", action="store_true", help="time every row from cold (first-call kernel "
                        "compilation and autotuning included)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    caches, rule_names = _caches(args.caches), rules(_floats(args.thresholds), _floats(args.factors))
    if "none" not in caches:
        caches.insert(0, "none")  # the reference row
    folder = model_folder(args.model, None)
    model, tokenizer = load_text_model(str(folder), args.device)
    model.eval()
    policy_dir = _policy_dir(args, folder)
    policy = None
    if policy_dir:
        from upo_fast.policy import load_policy

        policy = load_policy(policy_dir, None, model, str(folder))
        policy.eval()
    problems = arith.make_problems(args.num_problems, "test")
    orders = [*HEURISTICS, *(["policy"] if policy is not None else [])]
    cache_orders = ["max_confidence", *(["policy"] if policy is not None else [])]
    order_keys, cache_keys = table_keys(orders, cache_orders, caches, rule_names)
    keys = list(dict.fromkeys(order_keys + cache_keys))  # a row in both tables runs once

    def run(order, cache, rule, part):
        return evaluate_math(model, tokenizer, part, task=arith.NAME, scorer=order, gen_length=arith.GEN_LENGTH,
                             block_length=arith.BLOCK_LENGTH, batch_size=args.batch_size,
                             position_temperature=0.0 if order == "policy" else 1.0,
                             policy=policy if order == "policy" else None, topk=TOPK,
                             cache=None if cache == "none" else cache, progress=False, seed=0, **rule_options(rule))

    if not args.no_warmup:
        for order, cache in dict.fromkeys((order, cache) for order, cache, _ in keys):
            try:
                run(order, cache, ONE, problems[:args.batch_size])
            except Exception:  # noqa: BLE001 - the row itself reports it
                pass
    rows, correct = [], {}
    for order, cache, rule in keys:
        row = dict(order=order_label(order), cache=cache, rule=rule)
        try:
            result = run(order, cache, rule, problems)
        except Exception as exc:  # noqa: BLE001 - e.g. a cache the model does not support: keep the other rows
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            print(f"{row['order']:15s} {cache:6s} {rule:18s} ERROR {row['error']}", flush=True)
            rows.append(row)
            continue
        correct[(order, cache, rule)] = result["correct"]
        interval = solved_interval(result["correct"])
        row.update(accuracy=interval["rate"], accuracy_ci95=interval["ci95"], forwards=result["forwards"],
                   seconds=result["seconds"], format_rate=result["format_rate"],
                   flexible_accuracy=result["flexible_accuracy"])
        rows.append(row)
        print(f"{row['order']:15s} {cache:6s} {rule:18s} accuracy {row['accuracy']:.3f}  forwards "
              f"{row['forwards']:5.1f}  {row['seconds']:.1f} s", flush=True)
    reference = correct.get(REFERENCE)
    for (order, cache, rule), row in zip(keys, rows):
        if reference is not None and (order, cache, rule) in correct:
            row["vs_reference"] = paired_difference(correct[(order, cache, rule)], reference)
    meta = metadata(args.device) | {
        "task": arith.NAME, "n": len(problems), "split": "test", "model": str(folder), "policy": policy_dir,
        "gen_length": arith.GEN_LENGTH, "block_length": arith.BLOCK_LENGTH, "batch_size": args.batch_size,
        "topk": TOPK, "warmup": not args.no_warmup,
        "reference": dict(zip(("order", "cache", "rule"), REFERENCE))}
    write_results(args.out, "arith_quality", rows, meta)
    by_key = dict(zip(keys, rows))
    table = markdown([by_key[k] for k in order_keys], [by_key[k] for k in cache_keys], meta)
    (Path(args.out) / "arith_quality.md").write_text(table + "\n")
    print(table)
    return 0


def _cells(r: dict) -> str:
    if "error" in r:
        return f"error: {r['error']} | | | |"
    low, high = r["accuracy_ci95"]
    vs = points(r["vs_reference"]) if "vs_reference" in r else "n/a (no reference row)"
    return f"{r['accuracy']:.3f} [{low:.3f}, {high:.3f}] | {r['forwards']:.1f} | {r['seconds']:.1f} | {vs} |"


def markdown(order_rows: list[dict], cache_rows: list[dict], meta: dict) -> str:
    """The two tables: orders (one token a step, no cache), then cache x commit rule."""
    vs = "vs max_confidence (no cache, one token a step), points [95%]"
    lines = [f"arith: the first {meta['n']} test problems, {meta['gen_length']}-token answers in blocks of "
             f"{meta['block_length']}; model {Path(meta['model']).name}; policy {meta['policy'] or 'none'}; "
             f"{meta['device']}, {meta['date']}, commit {meta['commit']}", "",
             "Orders (one token a step, no cache):", "",
             f"| order | accuracy [95%] | MDM forwards per problem | seconds | {vs} |", "|---|---|---|---|---|"]
    lines += [f"| {r['order']} | {_cells(r)}" for r in order_rows]
    lines += ["", "Cache and parallel decoding:", "",
              f"| order | cache | commit rule | accuracy [95%] | MDM forwards per problem | seconds | {vs} |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['order']} | {r['cache']} | {r['rule']} | {_cells(r)}" for r in cache_rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
