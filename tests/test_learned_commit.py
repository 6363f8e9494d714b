"""The learned commit rule (issue 32): the policy's commit net, ``LearnedCommit`` in the loop, the spec strings of
``commit=`` / ``--parallel``, the recorder of parallel rollouts and ``pretrain-commit`` (tiny sizes, seconds)."""

import json
import math

import pytest
import torch

from upo_fast.models import TinyMDM, TinyMDMConfig
from upo_fast.names import parse_parallel
from upo_fast.policy import UnmaskingPolicy, UnmaskingPolicyConfig
from upo_fast.sampling.commit_rules import Factor, LearnedCommit, Schedule, Threshold, commit_rule, parse_commit
from upo_fast.sampling.loop import unmask
from upo_fast.training.commit_imitation import CommitConfig, CommitRecorder, choose, commit_loss, pretrain_commit
from upo_fast.training.rollout import TrajectoryRecorder

HIDDEN = 32


def tiny_mdm(seed=0):
    torch.manual_seed(seed)
    config = TinyMDMConfig(vocab_size=6, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=16, position_embedding="grid", grid_size=4,
                           mask_token_id=5, pad_token_id=0)
    return TinyMDM(config).eval()


def policy_with_commit(mdm, logit: float | None = None, seed=0) -> UnmaskingPolicy:
    """A policy beside ``mdm`` with a commit net; ``logit``: make every commit logit exactly this value."""
    torch.manual_seed(seed)
    policy = UnmaskingPolicy.for_mdm(mdm, anchor="confidence", mlp_hidden=16, num_heads=4).add_commit_head(mdm)
    if logit is not None:
        with torch.no_grad():
            policy.commit.head[-1].weight.zero_()
            policy.commit.head[-1].bias.fill_(logit)
    return policy.eval()


def masked_grids(batch=3, blanks=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 5, (batch, 16), generator=g)
    for row in range(batch):
        x[row, torch.randperm(16, generator=g)[:blanks]] = 5
    return x


# ---- specs and rule objects ------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, rule", [("schedule", Schedule()), ("policy", LearnedCommit()),
                                        ("policy=0.8", LearnedCommit(0.8)), ("threshold=0.99", Threshold(0.99)),
                                        ("factor=1.5", Factor(1.5))])
def test_spec_strings_make_their_rules(spec, rule):
    assert parse_commit(spec) == rule
    assert commit_rule(spec, None, None) == rule


@pytest.mark.parametrize("spec", ["polcy", "policy=", "threshold", "threshold=x", "factor=", "schedule=1", "", 3])
def test_bad_spec_strings_name_the_valid_ones(spec):
    with pytest.raises(ValueError, match="schedule, policy, policy=P"):
        parse_parallel(spec)


@pytest.mark.parametrize("spec", ["policy=1", "policy=0", "policy=1.5", "threshold=0", "factor=-1"])
def test_out_of_range_values_are_refused_by_their_rule(spec):
    with pytest.raises(ValueError):
        parse_commit(spec)


def test_commit_spec_excludes_threshold_and_factor():
    with pytest.raises(ValueError, match="at most one"):
        commit_rule("policy", 0.9, None)


def test_learned_rule_compares_log_odds():
    rule = LearnedCommit(0.8)
    logits = torch.tensor([[math.log(4) - 1e-4, math.log(4) + 1e-4, 9.0, -9.0]])
    candidates = torch.tensor([[True, True, False, True]])
    extra = rule.extra(None, candidates, None, logits)
    assert extra.tolist() == [[False, True, False, False]]  # p = 0.8 is log-odds log 4; a non-candidate never


# ---- the policy's commit net ----------------------------------------------------------------------------------

def test_commit_net_saves_loads_and_leaves_the_order_alone(tmp_path):
    from upo_fast.models.saved import load_saved

    mdm = tiny_mdm()
    policy = UnmaskingPolicy.for_mdm(mdm, anchor="confidence", mlp_hidden=16, num_heads=4).eval()
    hidden, candidates = torch.randn(2, 16, HIDDEN), torch.rand(2, 16) > 0.3
    topk = torch.rand(2, 16, 6).sort(-1, descending=True).values
    before = policy(hidden, candidates=candidates, topk_probs=topk)
    tokens = torch.randint(1, 5, (2, 16))
    with pytest.raises(ValueError, match="no commit net"):
        policy.commit_logits(hidden, candidates=candidates, topk_probs=topk, tokens=tokens)
    policy.add_commit_head(mdm)
    assert torch.equal(policy(hidden, candidates=candidates, topk_probs=topk), before)
    assert policy.config.commit_token_buckets == 6  # the MDM's vocabulary
    with pytest.raises(ValueError, match="reads the candidates' tokens"):
        policy.commit_logits(hidden, candidates=candidates, topk_probs=topk)
    logits = policy.commit_logits(hidden, candidates=candidates, topk_probs=topk, tokens=tokens)
    other = policy.commit_logits(hidden, candidates=candidates, topk_probs=topk, tokens=(tokens % 4) + 1)
    assert not torch.equal(other, logits)  # the candidates' tokens are an input
    assert logits.shape == (2, 16) and logits.dtype == torch.float32
    policy.config.commit_threshold = 0.9
    policy.save_pretrained(tmp_path)
    loaded = load_saved(UnmaskingPolicy, tmp_path)
    assert loaded.has_commit_head and loaded.config.commit_threshold == 0.9
    assert torch.equal(loaded.commit_logits(hidden, candidates=candidates, topk_probs=topk, tokens=tokens), logits)
    with pytest.raises(ValueError, match="already has a commit net"):
        loaded.add_commit_head(mdm)


@pytest.mark.parametrize("bad", [0.0, 1.0, True, "0.5"])
def test_commit_threshold_must_be_a_probability(bad):
    with pytest.raises(ValueError, match="commit_threshold"):
        UnmaskingPolicyConfig(mdm_hidden_size=HIDDEN, commit_threshold=bad)


# ---- the rule in the loop ------------------------------------------------------------------------------------

@pytest.mark.parametrize("scorer", ["policy", "max_confidence", "margin"])
def test_a_trusting_commit_net_fills_everything_in_one_forward(scorer):
    mdm, x = tiny_mdm(), masked_grids()
    policy = policy_with_commit(mdm, logit=20.0)
    out, steps = unmask(mdm, x, scorer=scorer, policy=policy, commit="policy", return_steps=True,
                        position_temperature=0.0)
    assert steps.tolist() == [1, 1, 1] and not (out == 5).any()


def test_a_distrusting_commit_net_commits_one_cell_a_step_like_the_order_alone():
    mdm, x = tiny_mdm(), masked_grids(blanks=7)
    policy = policy_with_commit(mdm, logit=-20.0)
    out, steps = unmask(mdm, x, scorer="max_confidence", policy=policy, commit="policy", return_steps=True)
    assert steps.tolist() == [7, 7, 7]
    assert torch.equal(out, unmask(mdm, x, scorer="max_confidence"))


def test_the_policys_threshold_is_the_default_and_policy_p_overrides_it():
    mdm, x = tiny_mdm(), masked_grids(blanks=9)
    policy = policy_with_commit(mdm, logit=0.0)  # probability 0.5 everywhere
    policy.config.commit_threshold = 0.6
    _, steps = unmask(mdm, x, scorer="max_confidence", policy=policy, commit="policy", return_steps=True)
    assert steps.tolist() == [9, 9, 9]
    _, steps = unmask(mdm, x, scorer="max_confidence", policy=policy, commit="policy=0.4", return_steps=True)
    assert steps.tolist() == [1, 1, 1]


def test_learned_rule_without_a_commit_net_is_a_clear_error():
    mdm, x = tiny_mdm(), masked_grids()
    plain = UnmaskingPolicy.for_mdm(mdm, anchor="confidence", mlp_hidden=16, num_heads=4)
    with pytest.raises(ValueError, match="pretrain-commit"):
        unmask(mdm, x, scorer="policy", policy=plain, commit="policy")
    with pytest.raises(ValueError, match="none was given"):
        unmask(mdm, x, commit=LearnedCommit(0.9))


def test_recorders_see_every_position_a_step_commits():
    mdm, x = tiny_mdm(), masked_grids()
    recorder = TrajectoryRecorder(10)
    unmask(mdm, x, scorer="max_confidence", threshold=0.01, recorder=recorder)
    with pytest.raises(ValueError, match="several positions"):
        recorder.trajectories()


# ---- training --------------------------------------------------------------------------------------------------

def test_commit_recorder_keeps_states_up_to_the_first_wrong_commit():
    recorder = CommitRecorder(max_steps=3, feature_topk=2)
    solution = torch.tensor([[1, 2, 3], [1, 2, 3]])
    tokens = [torch.tensor([[1, 9, 3], [1, 2, 3]]), torch.tensor([[1, 2, 3], [1, 2, 3]])]
    selects = [torch.tensor([[True, True, False], [True, False, False]]),  # row 0 commits a wrong token at step 0
               torch.tensor([[False, False, True], [False, True, True]])]
    for token, select in zip(tokens, selects):
        stats = type("Stats", (), dict(topk_probs=torch.ones(2, 3, 2), token=token))
        recorder.write(torch.zeros(2, 3, 4), stats, torch.ones(2, 3, dtype=torch.bool), None, select, 0.0)
    states, failed = recorder.states(solution)
    assert len(states["candidates"]) == 3  # row 0: step 0 only; row 1: both steps
    assert states["correct"][0].tolist() == [True, False, True] and failed == 0.5


def test_commit_loss_reads_candidates_only():
    mdm = tiny_mdm()
    policy = policy_with_commit(mdm, logit=0.0)
    batch = dict(hidden=torch.randn(2, 16, HIDDEN), topk_probs=torch.rand(2, 16, 6),
                 candidates=torch.zeros(2, 16, dtype=torch.bool), correct=torch.ones(2, 16, dtype=torch.bool),
                 token=torch.ones(2, 16, dtype=torch.long))
    batch["candidates"][:, :3] = True
    assert commit_loss(policy, batch).item() == pytest.approx(math.log(2), abs=1e-5)  # p = 0.5 on every label


def test_choose_takes_the_fewest_forwards_that_reach_the_target():
    rows = [dict(threshold=0.5, val_solved=0.6, val_forwards=3.0),
            dict(threshold=0.9, val_solved=0.8, val_forwards=9.0),
            dict(threshold=0.99, val_solved=0.82, val_forwards=20.0)]
    assert choose(rows, 0.75)["threshold"] == 0.9
    assert choose(rows, 0.9)["threshold"] == 0.99  # none reaches it: the highest solved rate


def test_pretrain_commit_runs_and_saves_a_policy_the_cli_evaluates(sudoku4_mdm_dir, tmp_path):
    from upo_fast.cli.commands import main

    out = tmp_path / "commit"
    summary = pretrain_commit(CommitConfig(task="sudoku4", model=sudoku4_mdm_dir, init="anchor", rounds=1,
                                           puzzles_per_round=16, rollout_batch=8, steps=3, batch_size=8,
                                           eval_puzzles=8, sweep=(0.5, 0.9), out_dir=str(out)), progress=False)
    assert summary["best"]["threshold"] in (0.5, 0.9)
    log = [json.loads(line) for line in (out / "commit_log.jsonl").read_text().splitlines()]
    assert [r["round"] for r in log] == [-1, 0, 1] and log[1]["rollout"] == "Threshold"
    saved = json.loads((out / "config.json").read_text())
    assert saved["commit_head"] is True and saved["commit_threshold"] == summary["best"]["threshold"]
    report = tmp_path / "eval.json"
    code = main(["eval", "--task", "sudoku4", "--model", sudoku4_mdm_dir, "--policy", str(out), "--scorer", "policy",
                 "--scorer", "max_confidence", "--parallel", "policy", "--num-puzzles", "6", "--json", str(report)])
    assert code == 0
    results = json.loads(report.read_text())["results"]
    assert set(results) == {"policy", "max_confidence"}
    assert all(1 <= r["forwards"] <= 16 for r in results.values())


def test_cli_parallel_errors_are_one_line(sudoku4_mdm_dir, capsys):
    from upo_fast.cli.commands import main

    assert main(["eval", "--task", "sudoku4", "--parallel", "policy=2"]) == 2
    assert "commit probability must be in (0, 1)" in capsys.readouterr().err
    assert main(["eval", "--task", "sudoku4", "--model", sudoku4_mdm_dir, "--parallel", "policy",
                 "--num-puzzles", "2"]) == 2
    err = capsys.readouterr().err
    assert "policy" in err and "Traceback" not in err


# ---- GRPO with a cost per forward ------------------------------------------------------------------------------

def test_group_advantages_are_zero_mean_per_group():
    from upo_fast.training.commit_grpo import group_advantages

    adv = group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0, 0.5, 0.5]), 2)
    assert adv[:4].tolist() == pytest.approx([0.7071, -0.7071, 0.7071, -0.7071], abs=1e-3)
    assert adv[4:].tolist() == [0.0, 0.0]  # equal rewards: no signal


def test_grpo_loss_raises_the_log_prob_of_the_better_rollout():
    from upo_fast.training.commit_grpo import CommitGRPOConfig, SampledCommit, grpo_loss

    mdm = tiny_mdm()
    policy = policy_with_commit(mdm, logit=0.0)
    hidden, topk = torch.randn(2, 16, HIDDEN), torch.rand(2, 16, 6)
    candidates = torch.ones(2, 16, dtype=torch.bool)
    select = torch.zeros(2, 16, dtype=torch.bool)
    select[0] = True  # rollout 0 committed everything, rollout 1 nothing
    states = dict(hidden=hidden, topk_probs=topk, candidates=candidates, select=select, token=torch.ones(2, 16).long(),
                  confidence=torch.zeros(2, 16), rollout=torch.tensor([0, 1]))
    rule = SampledCommit(0.5, temperature=0.5)
    loss, _ = grpo_loss(policy, states, torch.tensor([1.0, -1.0]), CommitGRPOConfig(beta=0.0), rule)
    loss.backward()
    bias_grad = policy.commit.head[-1].bias.grad.item()
    assert bias_grad < 0  # gradient descent raises the commit logit: rollout 0 (commit everything) was better


def test_train_commit_runs_from_a_pretrained_commit_net(sudoku4_mdm_dir, tmp_path):
    from upo_fast.cli.commands import main

    start = tmp_path / "start"
    pretrain_commit(CommitConfig(task="sudoku4", model=sudoku4_mdm_dir, init="anchor", rounds=0, puzzles_per_round=8,
                                 rollout_batch=8, steps=2, batch_size=4, eval_puzzles=6, sweep=(0.5,),
                                 out_dir=str(start)), progress=False)
    out = tmp_path / "grpo"
    code = main(["train-commit", "--task", "sudoku4", "--model", sudoku4_mdm_dir, "--init", str(start), "--steps", "2",
                 "--puzzles-per-step", "2", "--group-size", "3", "--eval-every", "1", "--eval-puzzles", "6",
                 "--out", str(out)])
    assert code == 0
    log = [json.loads(line) for line in (out / "grpo_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1, 2] and all("chosen" in r for r in log)
    assert all(1 <= r["forwards"] <= 16 and 0 <= r["solved"] <= 1 for r in log[1:])
    assert json.loads((out / "config.json").read_text())["commit_head"] is True


@pytest.mark.gpu
def test_learned_rule_replays_in_a_cuda_graph_with_the_eager_tokens():
    mdm = tiny_mdm().cuda()
    policy = policy_with_commit(mdm, seed=1).cuda()
    with torch.no_grad():  # spread the commit probabilities so that some steps commit several cells, some one
        policy.commit.head[-1].weight.normal_(std=2.0)
    x = masked_grids(batch=4, blanks=10).cuda()
    options = dict(scorer="policy", policy=policy, commit="policy=0.6", position_temperature=0.0, return_steps=True)
    eager, eager_steps = unmask(mdm, x, **options)
    graphed, graphed_steps = unmask(mdm, x, cuda_graph=True, **options)
    assert torch.equal(graphed, eager) and torch.equal(graphed_steps, eager_steps)


def test_benchmark_table_scores_every_rule_and_the_oracle(sudoku4_mdm_dir, tmp_path):
    """benchmarks/learned_commit_table.py end to end on a tiny model: every row, the oracle filter within one cell a
    step's forwards, the paired comparison against the policy's one-cell row, and the run's metadata."""
    import subprocess
    import sys
    from pathlib import Path

    policy_dir = tmp_path / "policy"
    pretrain_commit(CommitConfig(task="sudoku4", model=sudoku4_mdm_dir, init="anchor", rounds=0, puzzles_per_round=8,
                                 rollout_batch=8, steps=2, batch_size=4, eval_puzzles=6, sweep=(0.5,),
                                 out_dir=str(policy_dir)), progress=False)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "learned_commit_table.py"
    done = subprocess.run([sys.executable, str(script), "--task", "sudoku4", "--model", sudoku4_mdm_dir, "--policy",
                           str(policy_dir), "--num-puzzles", "12", "--thresholds", "0.9", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "learned_commit_table.json").read_text())
    rows = {(r["order"], r["rule"]): r for r in result["results"]}
    assert set(rows) == {("max_confidence", "schedule"), ("policy", "schedule"), ("max_confidence", "threshold=0.9"),
                         ("policy", "threshold=0.9"), ("max_confidence", "learned"), ("policy", "learned"),
                         ("max_confidence", "oracle")}
    assert rows[("policy", "schedule")]["vs_policy_one_cell"]["diff"] == 0
    assert rows[("max_confidence", "oracle")]["forwards"] <= rows[("max_confidence", "schedule")]["forwards"]
    assert result["meta"]["commit"] and result["meta"]["n"] == 12
    assert (tmp_path / "learned_commit_table.md").read_text().count("\n| ") == 8  # header + 7 rows


def test_the_command_lines_default_sweep_is_the_trainers():
    from upo_fast.cli import commit
    from upo_fast.training import commit_imitation

    assert commit.SWEEP == commit_imitation.SWEEP


def test_grpo_rollouts_draw_around_the_threshold_rule():
    from upo_fast.training.commit_grpo import SampledCommit

    rule = SampledCommit(0.8, temperature=0.25, generator=torch.Generator().manual_seed(0))
    cut = math.log(4)  # the log-odds of 0.8
    logits = torch.full((1, 4000), cut)
    logits[0, 2000:] = cut + 1.0
    drawn = rule.extra(None, torch.ones(1, 4000, dtype=torch.bool), None, logits)
    assert drawn[0, :2000].float().mean().item() == pytest.approx(0.5, abs=0.04)  # at the cut: a coin
    assert drawn[0, 2000:].float().mean().item() == pytest.approx(torch.sigmoid(torch.tensor(4.0)).item(), abs=0.02)


def test_generate_with_a_trusting_commit_net_fills_each_block_in_one_forward():
    from upo_fast.sampling.loop import generate

    mdm = tiny_mdm()
    prompt = torch.randint(1, 5, (2, 8), generator=torch.Generator().manual_seed(3))
    trusting, distrusting = policy_with_commit(mdm, logit=20.0), policy_with_commit(mdm, logit=-20.0)
    options = dict(gen_length=8, block_length=4, scorer="max_confidence")
    one_step_a_block = generate(mdm, prompt, steps=2, **options)  # the schedule commits a whole block at once
    assert torch.equal(generate(mdm, prompt, steps=8, policy=trusting, commit="policy", **options), one_step_a_block)
    one_a_step = generate(mdm, prompt, steps=8, **options)
    assert torch.equal(generate(mdm, prompt, steps=8, policy=distrusting, commit="policy", **options), one_a_step)
