"""``upo-fast parallel-curve`` (issue 32): solved rate against MDM forwards for every (order, commit rule) family,
the learned rule compared with the best threshold/factor point at or below its forwards, and one-line errors for
bad knob lists. A random 4x4 TinyMDM and a policy whose commit net gives every candidate probability 0.5, so the
learned rule's forwards are known: p < 0.5 commits everything at the first step, p > 0.5 one cell a step."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from upo_fast.cli.commands import main
from upo_fast.evaluation import parallel_curve as pc
from upo_fast.models import load_tiny_mdm
from upo_fast.policy import UnmaskingPolicy
from upo_fast.tasks import get_task

ORDERS = ["max_confidence", "policy"]
FAMILIES = ["one", "threshold", "factor", "learned"]


def half_commit_policy(mdm, with_commit: bool = True) -> UnmaskingPolicy:
    """A policy beside ``mdm``; with its commit net's logit 0 everywhere (commit probability 0.5)."""
    torch.manual_seed(0)
    policy = UnmaskingPolicy.for_mdm(mdm, anchor="confidence", mlp_hidden=16)
    if with_commit:
        policy.add_commit_head(mdm)
        with torch.no_grad():
            policy.commit.head[-1].weight.zero_()
            policy.commit.head[-1].bias.zero_()
    return policy.eval()


@pytest.fixture(scope="module")
def model_dir(sudoku4_mdm_dir):
    return Path(sudoku4_mdm_dir)


@pytest.fixture(scope="module")
def setup(model_dir):
    task = get_task("sudoku4")
    mdm = load_tiny_mdm(model_dir)
    puzzles, solutions = task.make_puzzles(4, blanks=10, seed=3)
    return task, mdm, puzzles, solutions


@pytest.fixture(scope="module")
def policy_dirs(setup, tmp_path_factory):
    mdm = setup[1]
    dirs = {}
    for name, with_commit in (("commit", True), ("plain", False)):
        dirs[name] = tmp_path_factory.mktemp(f"policy_{name}")
        half_commit_policy(mdm, with_commit).save_pretrained(dirs[name])
    return dirs


@pytest.fixture(scope="module")
def curve(setup):
    task, mdm, puzzles, solutions = setup
    rules = {"threshold": [0.9, 0.5, 0.3, 0.01], "factor": [1.0, 4.0], "learned": [0.4, 0.6]}
    return pc.parallel_curve(mdm, task, puzzles, solutions, orders=ORDERS, rules=rules,
                             policy=half_commit_policy(mdm), batch_size=2)


def test_the_curve_has_every_order_and_rule_family(curve):
    assert [(p.order, p.rule) for p in curve if p.rule == "one"] == [(o, "one") for o in ORDERS]
    assert {(p.order, p.rule) for p in curve} == {(o, f) for o in ORDERS for f in FAMILIES}
    assert len(curve) == 2 * (1 + 4 + 2 + 2)
    for point in curve:
        row = point.as_dict()
        assert set(row) == {"order", "rule", "knob", "commit", "label", "forwards", "solved_rate", "cell_accuracy",
                            "seconds"}
        assert 0 <= row["solved_rate"] <= 1 and 1 <= row["forwards"] <= 10 and point.solved.shape == (4,)
    assert {p.label for p in curve} >= {"policy schedule", "max_confidence threshold=0.9", "policy factor=4",
                                        "max_confidence policy=0.4"}


def test_forwards_fall_as_the_rules_loosen(curve):
    for order in ORDERS:
        one = next(p for p in curve if p.order == order and p.rule == "one")
        assert one.forwards == 10  # ten blanks, one a step
        thresholds = [p.forwards for p in curve if p.order == order and p.rule == "threshold"]  # 0.9 ... 0.01
        assert thresholds == sorted(thresholds, reverse=True) and thresholds[-1] < one.forwards, thresholds
        assert thresholds[-1] == 1  # every candidate's confidence is >= 0.01: all in one step
        learned = {p.knob: p.forwards for p in curve if p.order == order and p.rule == "learned"}
        assert learned == {0.4: 1.0, 0.6: 10.0}  # commit probability 0.5 everywhere


def test_each_learned_point_is_compared_with_a_cheaper_heuristic(curve):
    rows = pc.compare(curve)
    assert [r["learned"] for r in rows] == [p.label for p in curve if p.rule == "learned"]
    by_label = {p.label: p for p in curve}
    for row in rows:
        baseline = by_label[row["baseline"]]
        assert baseline.rule in ("threshold", "factor") and baseline.forwards <= row["forwards"]
        cheaper = [p for p in curve if p.rule in ("threshold", "factor") and p.forwards <= row["forwards"]]
        assert baseline.solved_rate == max(p.solved_rate for p in cheaper)
        assert row["diff"] == pytest.approx(by_label[row["learned"]].solved_rate - baseline.solved_rate)
        assert "points" in pc.format_comparison(row)


def point(order, rule, knob, forwards, solved):
    solved = np.array(solved, dtype=bool)
    return pc.CurvePoint(order, rule, knob, forwards, solved, solved.astype(float))


def test_compare_takes_the_best_heuristic_within_the_budget_only():
    curve = [point("max_confidence", "one", None, 20.0, [1, 1, 1, 1]),      # not a heuristic rule
             point("max_confidence", "threshold", 0.9, 12.0, [1, 1, 1, 0]),  # over the learned budget
             point("policy", "threshold", 0.5, 6.0, [1, 0, 0, 0]),
             point("max_confidence", "factor", 2.0, 8.0, [1, 1, 0, 0]),      # the best within 10 forwards
             point("policy", "factor", 3.0, 7.0, [0, 1, 1, 0]),              # as good, but 8 > 7: kept by fewer
             point("policy", "learned", 0.9, 10.0, [1, 1, 1, 0]),
             point("policy", "learned", 0.5, 5.0, [1, 0, 0, 0])]             # cheaper than every heuristic
    first, second = pc.compare(curve)
    assert first["baseline"] == "policy factor=3" and first["baseline_forwards"] == 7.0
    assert first["diff"] == pytest.approx(0.25) and (first["wins"], first["losses"]) == (1, 0)
    assert second["baseline"] is None and "no threshold/factor point" in pc.format_comparison(second)
    report = pc.report("sudoku4", 4, curve, [first, second])
    assert report["orders"] == ["max_confidence", "policy"] and report["rules"] == ["one", "threshold", "factor",
                                                                                     "learned"]
    json.dumps(report)  # the arrays stay out of the report


def test_the_learned_rule_needs_a_commit_net(setup):
    task, mdm, puzzles, solutions = setup
    with pytest.raises(ValueError, match="commit net"):
        pc.parallel_curve(mdm, task, puzzles, solutions, orders=["max_confidence"], rules={"learned": [0.5]},
                          policy=half_commit_policy(mdm, with_commit=False))
    with pytest.raises(ValueError, match="factor"):
        pc.parallel_curve(mdm, task, puzzles, solutions, orders=["max_confidence"], rules={"factor": [-1.0]})


def test_the_command_writes_points_comparisons_and_a_picture(model_dir, policy_dirs, tmp_path, capsys):
    out, js = tmp_path / "c.png", tmp_path / "c.json"
    assert main(["parallel-curve", "--task", "sudoku4", "--model", str(model_dir), "--policy",
                 str(policy_dirs["commit"]), "--thresholds", "0.5,0.2", "--factors", "1,4", "--commit-probs",
                 "0.4,0.6", "--num-puzzles", "3", "--blanks", "8", "--batch-size", "2", "--out", str(out), "--json",
                 str(js)]) == 0
    report = json.loads(js.read_text())
    assert report["task"] == "sudoku4" and report["n"] == 3 and report["orders"] == ORDERS
    assert {(p["order"], p["rule"]) for p in report["points"]} == {(o, f) for o in ORDERS for f in FAMILIES}
    assert [c["learned"] for c in report["comparisons"]] == [f"{o} policy={p}" for o in ORDERS for p in (0.4, 0.6)]
    printed = capsys.readouterr().out
    assert printed.count(" vs ") + printed.count("no threshold/factor point") == 4, printed
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_without_a_policy_the_curve_leaves_out_the_policy(model_dir, policy_dirs, tmp_path, capsys):
    js = tmp_path / "c.json"
    args = ["parallel-curve", "--task", "sudoku4", "--model", str(model_dir), "--thresholds", "0.5",
            "--factors", "2", "--num-puzzles", "2", "--blanks", "6"]
    assert main([*args, "--json", str(js)]) == 0  # the test model's folder has no policy/
    assert "no policy order and no learned rule" in capsys.readouterr().out
    report = json.loads(js.read_text())
    assert report["orders"] == ["max_confidence"] and report["rules"] == ["one", "threshold", "factor"]
    assert report["comparisons"] == []
    assert main([*args, "--policy", str(policy_dirs["plain"]), "--json", str(js)]) == 0
    assert "no commit net" in capsys.readouterr().out and json.loads(js.read_text())["orders"] == ORDERS
    for extra in (["--commit-probs", "0.9"], ["--policy", str(policy_dirs["plain"]), "--commit-probs", "0.9"]):
        assert main([*args, *extra]) == 2  # asked for the learned rule: an error, not a note
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error:" in err[0], err


@pytest.mark.parametrize("option, bad, valid", [
    ("--thresholds", "0.9,1.5", "in (0, 1]"), ("--thresholds", "0.9,x", "in (0, 1]"), ("--thresholds", "", "(0, 1]"),
    ("--factors", "0", "> 0"), ("--factors", "1,nan", "> 0"), ("--factors", "inf", "> 0"),
    ("--commit-probs", "1", "in (0, 1)"), ("--commit-probs", "0.5,-0.1", "in (0, 1)"),
    ("--commit-probs", "0.5,,0.9", "in (0, 1)")])
def test_bad_knob_lists_are_one_line_errors(model_dir, capsys, option, bad, valid):
    assert main(["parallel-curve", "--task", "sudoku4", "--model", str(model_dir), option, bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and option in err[0] and valid in err[0] and repr(bad) in err[0], err


def test_the_help_names_the_default_sweeps(capsys):
    """The command line mirrors ``DEFAULT_KNOBS`` in its help (parsing must not import numpy): kept equal here."""
    assert main(["parallel-curve", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for values in pc.DEFAULT_KNOBS.values():
        assert f"default {','.join(f'{v:g}' for v in values)}" in text
