"""Tests for the UPO losses (upo_fast/training/losses.py): hand-computed values, gradients, exact enumeration."""

import itertools
import math

import pytest
import torch

from upo_fast.training import (
    REFERENCE_DIVERGENCE,
    group_advantages,
    grpo_loss,
    reference_divergence,
    reference_for,
    sequence_kl_surrogate,
    step_log_probs,
    zero_std_ratio,
)

# ------------------------------------------------------------------------------------------- advantages


def test_group_advantages_values():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0], [3.0, 0.0, 0.0, 0.0]])
    adv = group_advantages(rewards)
    expected = torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0], [2.25, -0.75, -0.75, -0.75]])
    torch.testing.assert_close(adv, expected)
    scaled = group_advantages(rewards, scale_by_std=True, eps=1e-6)
    std = torch.tensor([0.5, 0.0, math.sqrt(27 / 16)])  # population std
    torch.testing.assert_close(scaled, expected / (std[:, None] + 1e-6))
    assert torch.isfinite(scaled).all()  # the all-equal group divides 0 by eps
    # a single-sample group has advantage 0, not NaN; integer rewards are accepted
    assert torch.equal(group_advantages(torch.tensor([[3], [1]]), scale_by_std=True), torch.zeros(2, 1))


def test_zero_std_ratio_and_bad_rewards():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(zero_std_ratio(rewards), torch.tensor(2 / 3))
    assert zero_std_ratio(torch.tensor([[1.0, 2.0]])) == 0
    for bad in [torch.zeros(4), torch.zeros(2, 0), [[1.0, 2.0]]]:
        with pytest.raises(ValueError, match="rewards must be a .P, G."):
            group_advantages(bad)
    with pytest.raises(ValueError, match="eps"):
        group_advantages(rewards, eps=0)


# ------------------------------------------------------------------------------------------- grpo loss

RHO = [1.5, 0.5, 1.1, 0.95]
ADV = [1.0, -1.0, 2.0, -0.5]
DIV = [0.3, 0.1, 0.5, 0.2]


def example(dtype=torch.float32, requires_grad=False):
    new = torch.tensor([math.log(r) for r in RHO], dtype=dtype, requires_grad=requires_grad)
    return new, torch.zeros(4, dtype=dtype), torch.tensor(ADV, dtype=dtype), torch.tensor(DIV, dtype=dtype)


def test_grpo_loss_hand_computed():
    new, old, adv, div = example()
    # eps 0.2: min(1.5, 1.2) = 1.2, min(-0.5, -0.8) = -0.8, min(2.2, 2.2) = 2.2, min(-0.475, -0.475) = -0.475
    loss, metrics = grpo_loss(new, old, adv, div, clip_eps=0.2, beta=0.5)
    policy = -(1.2 - 0.8 + 2.2 - 0.475) / 4
    torch.testing.assert_close(loss, torch.tensor(policy + 0.5 * sum(DIV) / 4))
    torch.testing.assert_close(metrics["policy_loss"], torch.tensor(policy))
    torch.testing.assert_close(metrics["clip_ratio"], torch.tensor(0.5))  # steps 0 and 1 are clipped
    torch.testing.assert_close(metrics["ratio_mean"], torch.tensor(sum(RHO) / 4))
    torch.testing.assert_close(metrics["divergence"], torch.tensor(sum(DIV) / 4))
    # clip-higher: the upper clip at 1.6 no longer binds at step 0
    loss_high, metrics_high = grpo_loss(new, old, adv, clip_eps=0.2, clip_eps_high=0.6)
    torch.testing.assert_close(loss_high, torch.tensor(-(1.5 - 0.8 + 2.2 - 0.475) / 4))
    torch.testing.assert_close(metrics_high["clip_ratio"], torch.tensor(0.25))


def test_grpo_loss_gradients_vanish_where_clipped():
    new, old, adv, div = example(requires_grad=True)
    loss, _ = grpo_loss(new, old, adv, div, clip_eps=0.2, beta=0.0)
    loss.backward()
    expected = torch.tensor([0.0, 0.0, -1.1 * 2.0 / 4, 0.95 * 0.5 / 4])  # d(-rho A / N)/d log rho = -rho A / N
    torch.testing.assert_close(new.grad, expected)


def test_grpo_loss_gradcheck_float64():
    new, old, adv, div = example(torch.float64)
    new.requires_grad_(True)
    div.requires_grad_(True)
    weight = torch.tensor([1.0, 0.5, 1.0, 2.0], dtype=torch.float64)

    def f(new_logp, divergence):
        return grpo_loss(new_logp, old, adv, divergence, weight, clip_eps=0.2, beta=0.3, clip_eps_high=0.3)[0]

    assert torch.autograd.gradcheck(f, (new, div))
    _, grad_div = torch.autograd.grad(f(new, div), (new, div))
    torch.testing.assert_close(grad_div, 0.3 * weight / weight.sum())


def test_beta_zero_ignores_divergence():
    new, old, adv, _ = example()
    nan_div = torch.full((4,), float("nan"))
    loss, metrics = grpo_loss(new, old, adv, nan_div, beta=0.0)
    assert torch.equal(loss, grpo_loss(new, old, adv, None)[0]) and torch.isfinite(loss)
    assert torch.isnan(metrics["divergence"])  # still reported, but not added to the loss
    with pytest.raises(ValueError, match="beta > 0 needs divergence"):
        grpo_loss(new, old, adv, None, beta=0.1)
    assert not torch.equal(grpo_loss(new, old, adv, torch.ones(4), beta=0.1)[0], loss)


def test_weights_exclude_padding():
    new, old, adv, div = example()
    # padding rows hold what a padded rollout holds: -inf log-probs (no candidate) and NaN advantages
    pad = torch.tensor([float("-inf")] * 2)
    new_p = torch.cat([new, pad]).requires_grad_(True)
    old_p = torch.cat([old, pad])
    adv_p = torch.cat([adv, torch.tensor([float("nan")] * 2)])
    div_p = torch.cat([div, torch.tensor([float("inf")] * 2)]).requires_grad_(True)
    weight = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    loss, metrics = grpo_loss(new_p, old_p, adv_p, div_p, weight, beta=0.5)
    ref_loss, ref_metrics = grpo_loss(new, old, adv, div, beta=0.5)
    torch.testing.assert_close(loss, ref_loss)
    for key in ref_metrics:
        torch.testing.assert_close(metrics[key], ref_metrics[key])
    loss.backward()
    assert torch.isfinite(new_p.grad).all() and torch.equal(new_p.grad[4:], torch.zeros(2))
    assert torch.isfinite(div_p.grad).all() and torch.equal(div_p.grad[4:], torch.zeros(2))
    # all-padding batches give 0, not NaN
    zero_loss, _ = grpo_loss(new, old, adv, div, torch.zeros(4), beta=0.5)
    assert zero_loss == 0


def test_grpo_loss_bad_inputs():
    new, old, adv, div = example()
    with pytest.raises(ValueError, match="old_logp must have N=4"):
        grpo_loss(new, old[:3], adv)
    with pytest.raises(ValueError, match="new_logp must be a 1-D"):
        grpo_loss(new[None], old, adv)
    with pytest.raises(ValueError, match="weight must have N=4"):
        grpo_loss(new, old, adv, weight=torch.ones(5))
    with pytest.raises(ValueError, match="clip_eps must be in"):
        grpo_loss(new, old, adv, clip_eps=1.5)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        grpo_loss(new, old, adv, div, beta=-1.0)


# ------------------------------------------------------------------------------------ position log-probs


def test_step_log_probs_matches_masked_log_softmax():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 7, generator=g).requires_grad_(True)
    candidates = torch.rand(5, 7, generator=g) < 0.6
    candidates[:, 2] = True
    chosen = torch.tensor([2, 2, 2, 2, 2])
    chosen[0] = int(candidates[0].nonzero()[-1])
    logp = step_log_probs(scores, candidates, chosen, temperature=0.7)
    expected = torch.log_softmax((scores / 0.7).masked_fill(~candidates, float("-inf")), dim=-1)
    expected = expected.gather(1, chosen[:, None]).squeeze(1)
    torch.testing.assert_close(logp, expected)
    assert not torch.allclose(logp, step_log_probs(scores, candidates, chosen, temperature=1.0))
    (grad,) = torch.autograd.grad(logp.sum(), scores)
    (grad_expected,) = torch.autograd.grad(expected.sum(), scores)
    torch.testing.assert_close(grad, grad_expected)
    assert torch.equal(grad[~candidates], torch.zeros(int((~candidates).sum())))


def test_step_log_probs_checks():
    scores, candidates = torch.zeros(2, 3), torch.tensor([[True, False, True], [True, True, False]])
    with pytest.raises(ValueError, match="not a candidate"):
        step_log_probs(scores, candidates, torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="positions in"):
        step_log_probs(scores, candidates, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="chosen must have N=2"):
        step_log_probs(scores, candidates, torch.tensor([0]))
    with pytest.raises(ValueError, match="no candidate"):
        step_log_probs(scores, torch.tensor([[True, False, True], [False] * 3]), torch.tensor([0, 0]))
    # unchecked padding rows give -inf (weight 0 in grpo_loss removes them)
    logp = step_log_probs(scores, torch.tensor([[True, False, True], [False] * 3]), torch.tensor([0, 0]), check=False)
    assert logp[0] == pytest.approx(math.log(0.5)) and torch.isneginf(logp[1])
    with pytest.raises(ValueError, match="no backward"):
        step_log_probs(scores.requires_grad_(True), candidates, torch.tensor([0, 0]), backend="triton")


# ------------------------------------------------------------------------------------------- references


def test_reference_for_and_divergence_pairing():
    assert REFERENCE_DIVERGENCE == {"max_confidence": "ce", "softmax_confidence": "kl", "topk": "kl"}
    confidence = torch.tensor([[0.9, 0.2, 0.5, 0.7, 0.1]])
    candidates = torch.tensor([[False, True, True, True, True]])
    ref, cands = reference_for("max_confidence", candidates, confidence=confidence)
    assert torch.equal(ref, torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0]])) and torch.equal(cands, candidates)
    ref, cands = reference_for("topk", candidates, confidence=confidence, K=2)
    assert torch.equal(cands, torch.tensor([[False, False, True, True, False]]))  # the 2 most confident candidates
    torch.testing.assert_close(ref, torch.tensor([[0.0, 0.0, 0.5, 0.5, 0.0]]))
    scores = torch.tensor([[0.3, -1.0, 0.4, 2.0, 0.0]], requires_grad=True)
    kl = reference_divergence("topk", scores, cands, ref)
    g = torch.softmax(torch.tensor([0.4, 2.0]), dim=0)
    torch.testing.assert_close(kl, (math.log(2) + (g * g.log()).sum())[None])  # log K - H(g)
    ce = reference_divergence("max_confidence", scores, candidates, reference_for(
        "max_confidence", candidates, confidence=confidence)[0])
    logg = torch.log_softmax(torch.tensor([-1.0, 0.4, 2.0, 0.0]), dim=0)
    torch.testing.assert_close(ce, -logg[2:3])
    (kl + ce).sum().backward()
    assert scores.grad[0, 0] == 0 and scores.grad.abs().sum() > 0
    ref, _ = reference_for("softmax_confidence", candidates, ref_logsumexp=confidence)
    torch.testing.assert_close(ref[0, 1:], torch.softmax(confidence[0, 1:], dim=0))
    with pytest.raises(ValueError, match="kind must be one of"):
        reference_for("margin", candidates, confidence=confidence)


# ------------------------------------------------------------------------------------- sequence-level KL


def _toy_policy_rows(theta1, theta2, trajectories):
    """A 2-step toy MDP over 3 positions: step 1 scores theta1 [3]; step 2, after a1, scores theta2[a1] [3] over
    the two positions left. -> (scores [2T, 3], candidates [2T, 3], chosen [2T], trajectory ids [2T])."""
    scores, candidates, chosen, ids = [], [], [], []
    for t, (a1, a2) in enumerate(trajectories):
        scores += [theta1, theta2[a1]]
        candidates += [torch.ones(3, dtype=torch.bool), torch.arange(3) != a1]
        chosen += [a1, a2]
        ids += [t, t]
    return torch.stack(scores), torch.stack(candidates), torch.tensor(chosen), torch.tensor(ids)


def _trajectory_logp(theta1, theta2, trajectories):
    scores, candidates, chosen, ids = _toy_policy_rows(theta1, theta2, trajectories)
    logp = torch.log_softmax(scores.masked_fill(~candidates, float("-inf")), dim=-1)
    step = logp.gather(1, chosen[:, None]).squeeze(1)
    return step, ids, step.view(-1, 2).sum(-1)


@pytest.mark.parametrize("on_policy", [True, False])
def test_sequence_kl_surrogate_is_exact_in_expectation(on_policy):
    g = torch.Generator().manual_seed(0)
    theta1 = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    theta2 = torch.randn(3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    ref1, ref2 = torch.randn(3, generator=g, dtype=torch.float64), torch.randn(3, 3, generator=g, dtype=torch.float64)
    old1, old2 = torch.randn(3, generator=g, dtype=torch.float64), torch.randn(3, 3, generator=g, dtype=torch.float64)
    trajectories = [(a1, a2) for a1, a2 in itertools.permutations(range(3), 2)]  # all 6 of them

    new_step, ids, new_seq = _trajectory_logp(theta1, theta2, trajectories)
    ref_step, _, ref_seq = _trajectory_logp(ref1, ref2, trajectories)
    true_kl = (new_seq.exp() * (new_seq - ref_seq)).sum()  # KL(G_phi || G_ref) by enumeration
    true_grad = torch.autograd.grad(true_kl, (theta1, theta2), retain_graph=True)

    if on_policy:
        old_step, behavior = None, new_seq.detach().exp()
    else:
        old_step, _, old_seq = _trajectory_logp(old1, old2, trajectories)
        behavior = old_seq.exp()
    assert torch.allclose(behavior.sum(), torch.tensor(1.0, dtype=torch.float64))
    surrogate = sequence_kl_surrogate(new_step, ref_step, ids, len(trajectories), old_logp=old_step)
    expected_value = (behavior * surrogate).sum()  # E_{tau ~ G_old}[S]
    expected_grad = torch.autograd.grad(expected_value, (theta1, theta2))
    torch.testing.assert_close(expected_value, true_kl)
    for got, want in zip(expected_grad, true_grad):
        torch.testing.assert_close(got, want)
    assert true_grad[0].abs().sum() > 1e-3  # the check is not trivially 0 == 0
    if on_policy:  # value = the sampled log-ratio R
        torch.testing.assert_close(surrogate, (new_seq - ref_seq).detach())


def test_sequence_kl_surrogate_without_score_term_is_biased():
    """The pathwise part alone (the log-ratio R, no score-function term) misses the gradient: the test above can
    fail."""
    g = torch.Generator().manual_seed(1)
    theta1 = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    theta2 = torch.randn(3, 3, generator=g, dtype=torch.float64)
    trajectories = list(itertools.permutations(range(3), 2))
    new_step, _, new_seq = _trajectory_logp(theta1, theta2, trajectories)
    ref_step, _, ref_seq = _trajectory_logp(torch.zeros(3, dtype=torch.float64), theta2 * 0, trajectories)
    true = torch.autograd.grad((new_seq.exp() * (new_seq - ref_seq)).sum(), theta1, retain_graph=True)[0]
    naive = torch.autograd.grad((new_seq.detach().exp() * (new_seq - ref_seq)).sum(), theta1)[0]
    assert not torch.allclose(true, naive)


def test_sequence_kl_surrogate_padding_and_checks():
    new = torch.tensor([-0.5, -1.0, float("-inf"), -0.2], requires_grad=True)
    ref = torch.tensor([-1.0, -1.0, float("-inf"), -0.7])
    ids = torch.tensor([0, 0, 0, 1])
    weight = torch.tensor([1.0, 1.0, 0.0, 1.0])
    s = sequence_kl_surrogate(new, ref, ids, 2, weight)
    torch.testing.assert_close(s, torch.tensor([0.5, 0.5]))
    s.sum().backward()
    assert torch.isfinite(new.grad).all() and new.grad[2] == 0
    with pytest.raises(ValueError, match="not finite"):
        sequence_kl_surrogate(new, ref, ids, 2)  # the padding step counted as real
    with pytest.raises(ValueError, match="ids in"):
        sequence_kl_surrogate(new, ref, ids, 1, weight)
    with pytest.raises(ValueError, match="num_trajectories"):
        sequence_kl_surrogate(new, ref, ids, 0, weight)
    with pytest.raises(ValueError, match="trajectory must have N=4"):
        sequence_kl_surrogate(new, ref, ids[:3], 2, weight)
