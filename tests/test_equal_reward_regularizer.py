"""The regularizer counts on groups whose rewards are all equal (issue 14 §1).

Such a group has advantage 0 everywhere, so its policy-gradient weight is 0 (``drop_zero_std`` leaves it out of
the policy-gradient mean); but its states still belong in the regularizer's mean, which holds the policy near the
reference there. With beta = 0 such a batch must leave the policy exactly as it was."""

import pytest
import torch
from update_cases import B, make_policy, synthetic_batch  # the synthetic rollouts of the update-equivalence test

from upo_fast.training import trainer as trainer_module
from upo_fast.training.losses import grpo_loss, step_log_probs
from upo_fast.training.references import get_reference
from upo_fast.training.update import UpdateOptions, update_policy


def _sgd_update(policy, traj, adv, pg_rows=None, **options):
    before = [p.detach().clone() for p in policy.parameters()]
    opt = torch.optim.SGD(policy.parameters(), lr=0.5)
    options = UpdateOptions(position_temperature=0.8, grad_clip=0.0, **options)
    metrics = update_policy(policy, opt, traj, adv, options, seed=5, pg_rows=pg_rows)
    moved = [(p.detach() - q) for p, q in zip(policy.parameters(), before)]
    return metrics, moved


def _mean_divergence(policy, traj, reference="max_confidence"):
    index = traj.active.nonzero(as_tuple=True)
    with torch.no_grad():
        scores = policy(**traj.policy_inputs(index))
        ref = get_reference(reference)
        g_ref, cand = ref.terms(traj.candidates[index], confidence=traj.confidence[index],
                                ref_logsumexp=traj.ref_logsumexp[index], K=3)
        return float(ref.regularizer(scores, cand, g_ref, 0.8).mean())


@pytest.mark.parametrize("reference", ["max_confidence", "softmax_confidence"])
def test_equal_reward_groups_move_toward_the_reference_when_beta_is_positive(reference):
    traj, _ = synthetic_batch()
    policy = make_policy()
    before = _mean_divergence(policy, traj, reference)
    no_pg = torch.zeros(B, dtype=torch.bool)  # every group had equal rewards
    metrics, moved = _sgd_update(policy, traj, torch.zeros(B), reference=reference, beta=0.5, inner_iters=3,
                                 pg_rows=no_pg)
    assert metrics["update_pg_steps"] == 0 and metrics["update_steps"] == int(traj.active.sum())
    assert any(m.abs().max() > 0 for m in moved)
    assert _mean_divergence(policy, traj, reference) < before


def test_equal_reward_groups_leave_the_policy_unchanged_without_the_regularizer():
    traj, _ = synthetic_batch()
    policy = make_policy()
    metrics, moved = _sgd_update(policy, traj, torch.zeros(B), reference="max_confidence", beta=0.0,
                                 inner_iters=3, pg_rows=torch.zeros(B, dtype=torch.bool))
    assert metrics["update_steps"] == 0
    assert all(m.abs().max() == 0 for m in moved)


@pytest.mark.parametrize("chunk_states", [4, 10_000])
def test_the_two_means_run_over_their_own_steps(chunk_states):
    """pg_rows = half the rows: the policy-gradient mean runs over their steps, the regularizer's over every step;
    the update's gradient equals that of the loss written out over all states at once, for any chunking."""
    traj, adv = synthetic_batch()
    pg_rows = torch.arange(B) % 2 == 1
    beta = 0.3
    policy = make_policy()
    index = traj.active.nonzero(as_tuple=True)
    scores = policy(**traj.policy_inputs(index))
    new_logp = step_log_probs(scores, traj.candidates[index], traj.chosen[index], 0.8)
    max_confidence = get_reference("max_confidence")
    g_ref, cand = max_confidence.terms(traj.candidates[index], confidence=traj.confidence[index])
    divergence = max_confidence.regularizer(scores, cand, g_ref, 0.8)
    rho = torch.exp(new_logp - traj.behavior_logp[index])
    a = adv[index[1]]
    surrogate = torch.minimum(rho * a, rho.clamp(0.8, 1.2) * a)
    in_pg = pg_rows[index[1]]
    loss = -surrogate[in_pg].mean() + beta * divergence.mean()
    want = torch.autograd.grad(loss, list(policy.parameters()), allow_unused=True)

    fresh = make_policy()
    metrics, moved = _sgd_update(fresh, traj, adv, reference="max_confidence", beta=beta, inner_iters=1,
                                 pg_rows=pg_rows, chunk_states=chunk_states)
    assert metrics["update_pg_steps"] == int(in_pg.sum())
    for g, m in zip(want, moved):
        expected = torch.zeros_like(m) if g is None else -0.5 * g
        torch.testing.assert_close(m, expected, atol=1e-6, rtol=1e-4)


def test_grpo_loss_pg_weight_and_totals():
    """grpo_loss with pg_weight 0 on a step: that step is in the divergence mean only; totals replace the sums."""
    new = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    old = torch.tensor([-1.0, -1.5, -0.7])
    adv = torch.tensor([1.0, -1.0, 0.0])
    div = torch.tensor([0.2, 0.4, 0.9])
    v = torch.tensor([1.0, 1.0, 0.0])
    loss, m = grpo_loss(new, old, adv, div, pg_weight=v, beta=1.0)
    rho = torch.exp(new - old)
    surrogate = torch.minimum(rho * adv, rho.clamp(0.8, 1.2) * adv)
    torch.testing.assert_close(m["policy_loss"], -(surrogate[:2].sum() / 2).detach())
    torch.testing.assert_close(m["divergence"], div.mean())
    halved, _ = grpo_loss(new, old, adv, div, pg_weight=v, beta=1.0, totals=(torch.tensor(4.0), torch.tensor(6.0)))
    torch.testing.assert_close(halved, -surrogate[:2].sum() / 4 + div.sum() / 6)


@pytest.mark.parametrize("beta, moves", [(0.5, True), (0.0, False)])
def test_the_trainer_keeps_the_regularizer_on_equal_reward_groups(sudoku4_mdm_dir, tmp_path, monkeypatch, beta,
                                                                  moves):
    """Every group's rewards equal (a constant reward): with drop_zero_std (the default) the trainer still takes a
    regularizer step when beta > 0, and none when beta = 0."""
    import numpy as np
    from safetensors.torch import load_file

    from upo_fast.training.config import TrainConfig
    from upo_fast.training.policy_init import make_policy as make_run_policy

    monkeypatch.setattr(trainer_module, "rewards_for", lambda task, filled, *a: np.full(len(filled), 0.5))
    cfg = TrainConfig(task="sudoku4", model=sudoku4_mdm_dir, out_dir=str(tmp_path), steps=1, prompts_per_step=2,
                      group_size=3, mlp_hidden=16, eval_every=0, checkpoint_every=1, certain_keep=1.0, beta=beta,
                      lr=1e-2, tensorboard=False, init="fresh", block_init="fresh")
    assert cfg.drop_zero_std
    torch.manual_seed(cfg.seed)
    mdm = trainer_module.load_task_model(cfg.model, trainer_module.get_task("sudoku4"))
    start = make_run_policy(cfg, mdm)
    trainer_module.train(cfg, progress=False)
    after = load_file(str(tmp_path / "checkpoint-last" / "model.safetensors"))
    changed = any(not torch.equal(after[k], v) for k, v in start.state_dict().items() if k in after)
    assert changed is moves
