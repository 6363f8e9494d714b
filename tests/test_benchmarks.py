"""The benchmark scripts run end to end (their --quick CPU smoke mode) and write results with the run's metadata,
so that the GPU check does not discover a broken script on borrowed device time."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("triton")
REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script", ["bench_kernels.py", "bench_position_ops.py", "bench_sampler.py",
                                    "bench_trainer.py", "bench_cache.py"])
def test_quick_benchmark_writes_results(tmp_path, script):
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--quick", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / script.replace(".py", ".json")).read_text())
    assert result["meta"]["device"] and result["meta"]["torch"]
    rows = result["results"]
    impls = {r["impl"] for r in rows}
    expected = {"bench_sampler.py": {"llada_ref_bf16", "paper_rollout", "floor"},
                "bench_trainer.py": {"paper_loop", "upo_fast"},
                # without --official (Fast-dLLM's code, transformers 4.49) it measures ours only
                "bench_cache.py": {"ours", "ours_unfused", "ours_loop"}}.get(script, {"torch", "triton"})
    assert impls >= expected
    assert not [r for r in rows if "error" in r], [r["error"] for r in rows if "error" in r]
    if script == "bench_cache.py":  # fused = unfused tokens; each left-padded row (mask_padding) = its prompt alone
        checks = result["checks"]
        assert all(c["unfused_equals_fused"] for c in checks if c["batch"] == 1)
        assert all(c["rows_differing"] == [] for c in checks if c["batch"] > 1)


def test_upo_results_table_compares_paired_with_max_confidence(tmp_path):
    from upo_fast.assets import load_task_model, shipped_model_path
    from upo_fast.policy import UnmaskingPolicy
    from upo_fast.tasks import get_task

    sys.path.insert(0, str(REPO / "benchmarks"))
    import upo_results  # noqa: I001 (found through the path set just above)

    mdm = load_task_model(shipped_model_path("sudoku4"), get_task("sudoku4"))
    UnmaskingPolicy.for_mdm(mdm, anchor="confidence", mlp_hidden=8).save_pretrained(tmp_path / "anchored")
    assert upo_results.main(["--task", "sudoku4", "--num-puzzles", "12", "--seed", "3", "--heuristics",
                             "random", "--oracle-topk", "0,2", "--run", f"anchored={tmp_path / 'anchored'}",
                             "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "upo_results.json").read_text())
    assert report["seed"] == 3 and report["n"] == 12
    assert list(report["results"]) == ["max_confidence", "random", "anchored", "oracle bound (any cell)",
                                       "oracle bound (top 2)"]  # the baseline always runs
    oracle = report["results"]["oracle bound (any cell)"]
    assert oracle["solved_rate"] == 1.0 and oracle["vs_max_confidence"]["losses"] == 0
    base = report["results"]["max_confidence"]
    assert base["vs_max_confidence"] == {"diff": 0.0, "ci95": [0.0, 0.0], "wins": 0, "losses": 0}
    # a fresh anchored policy ranks exactly like max-confidence
    assert report["results"]["anchored"]["solved_rate"] == base["solved_rate"]
    random = report["results"]["random"]["vs_max_confidence"]
    assert random["diff"] == pytest.approx((random["wins"] - random["losses"]) / 12)
    # per-puzzle outcomes are kept, and the best-heuristic pairing is computed from the same flags
    best = report["best_heuristic"]
    assert best in ("max_confidence", "random")
    flags = {name: np.array([c == "1" for c in r["solved_flags"]]) for name, r in report["results"].items()}
    for name, f in flags.items():
        assert len(f) == 12 and f.mean() == pytest.approx(report["results"][name]["solved_rate"])
    vs_best = report["results"]["oracle bound (top 2)"]["vs_best_heuristic"]
    d = flags["oracle bound (top 2)"].astype(float) - flags[best]
    assert vs_best["diff"] == pytest.approx(d.mean()) and vs_best["wins"] == int((d > 0).sum())
    assert "| anchored |" in (tmp_path / "upo_results.md").read_text()
    with pytest.raises(SystemExit):
        upo_results.main(["--heuristics", "confidence", "--out", str(tmp_path)])


def test_upo_results_groups_seeds_and_pairs_cell_accuracy(tmp_path):
    """--group: the runs' per-puzzle mean, compared paired, with the runs' min-max; --metric cells leads with
    cell accuracy; --model takes a shipped model's name."""
    from upo_fast.assets import load_task_model
    from upo_fast.policy import UnmaskingPolicy
    from upo_fast.tasks import get_task

    sys.path.insert(0, str(REPO / "benchmarks"))
    import upo_results  # noqa: I001 (found through the path set just above)

    import torch

    mdm = load_task_model("sudoku4_weak", get_task("sudoku4"))
    torch.manual_seed(0)
    UnmaskingPolicy.for_mdm(mdm, anchor="none", mlp_hidden=8).save_pretrained(tmp_path / "p0")
    UnmaskingPolicy.for_mdm(mdm, anchor="confidence", mlp_hidden=8).save_pretrained(tmp_path / "p1")
    assert upo_results.main(["--task", "sudoku4", "--model", "sudoku4_weak", "--num-puzzles", "30", "--blanks",
                             "8", "--seed", "4", "--metric", "cells", "--heuristics", "random",
                             "--run", f"a={tmp_path / 'p0'}", "--run", f"b={tmp_path / 'p1'}", "--group", "ab=a,b",
                             "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "upo_results.json").read_text())
    results = report["results"]
    cells = {name: np.array(results[name]["cells"]) for name in ("a", "b", "max_confidence")}
    group = results["ab"]
    assert group["cell_accuracy"] == pytest.approx((cells["a"].mean() + cells["b"].mean()) / 2)
    assert group["spread"]["cells"] == pytest.approx(sorted([cells["a"].mean(), cells["b"].mean()]))
    d = (cells["a"] + cells["b"]) / 2 - cells["max_confidence"]
    assert group["cells_vs_max_confidence"]["diff"] == pytest.approx(d.mean())
    assert results["b"]["cells_vs_max_confidence"]["diff"] == 0  # anchored = max-confidence, puzzle by puzzle
    table = (tmp_path / "upo_results.md").read_text()
    assert "| order | cell accuracy | solved |" in table and "| ab |" in table
    with pytest.raises(SystemExit):
        upo_results.main(["--run", f"a={tmp_path / 'p0'}", "--group", "g=a,zz", "--out", str(tmp_path)])


def test_arith_quality_tables_on_a_tiny_random_model(tmp_path):
    """benchmarks/arith_quality.py end to end on a tiny random LLaDA with a policy in its folder's policy/: one row
    per (order, cache, rule), every cache x rule runs, the parallel rules save forwards, the reference row pairs
    to zero, and the markdown holds both tables."""
    import torch

    from upo_fast.models.loading import load_text_model
    from upo_fast.policy import UnmaskingPolicy
    from upo_fast.tasks import arith
    from upo_fast.training.pretrain_text import TextModelSize, build_model, save_folder

    sys.path.insert(0, str(REPO / "benchmarks"))
    import arith_quality  # noqa: I001 (found through the path set just above)

    torch.manual_seed(0)
    tokenizer = arith.build_tokenizer()
    save_folder(build_model("llada", tokenizer, TextModelSize(hidden_size=32, layers=1, heads=2, kv_heads=1)),
                tokenizer, tmp_path / "model")
    model, _ = load_text_model(tmp_path / "model", "cpu")
    UnmaskingPolicy.for_mdm(model, block_init="fresh").save_pretrained(tmp_path / "model" / "policy")
    out = tmp_path / "out"
    assert arith_quality.main(["--model", str(tmp_path / "model"), "--num-problems", "4", "--batch-size", "3",
                               "--thresholds", "0.9,0.01", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads((out / "arith_quality.json").read_text())
    assert report["meta"]["n"] == 4 and report["meta"]["policy"] == str(tmp_path / "model" / "policy")
    rows = report["results"]
    assert not [r for r in rows if "error" in r], [r["error"] for r in rows if "error" in r]
    keys = [(r["order"], r["cache"], r["rule"]) for r in rows]
    one = "one token a step"
    rules = [one, "threshold=0.9", "threshold=0.01", "factor=1"]
    expected = {(o, "none", one) for o in ("max_confidence", "margin", "entropy", "topk=5", "random", "policy")}
    expected |= {(o, c, r) for o in ("max_confidence", "policy") for c in ("none", "prefix", "dual") for r in rules}
    assert len(keys) == len(set(keys)) and set(keys) == expected
    for r in rows:
        assert 0 < r["forwards"] <= 64 and 0 <= r["accuracy"] <= 1
        assert r["accuracy_ci95"][0] <= r["accuracy"] <= r["accuracy_ci95"][1]
        # the random model is nowhere near 90% sure of a token and always above 1% (about 1 / its vocabulary):
        # threshold=0.9 commits one token a step, threshold=0.01 a whole 16-token block per forward
        assert r["forwards"] == (4 if r["rule"] == "threshold=0.01" else 64)
    reference = rows[keys.index(("max_confidence", "none", one))]
    assert reference["vs_reference"] == {"diff": 0.0, "ci95": [0.0, 0.0], "wins": 0, "losses": 0}
    table = (out / "arith_quality.md").read_text()
    assert "Orders (one token a step, no cache)" in table and "Cache and parallel decoding" in table
    assert "| topk=5 |" in table and "| policy | dual | threshold=0.01 |" in table
