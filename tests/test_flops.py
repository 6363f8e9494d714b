"""Tests for upo_fast/evaluation/flops.py: the policy's FLOPs beside its MDM's, counted by torch."""

import pytest
import torch
import torch.nn.functional as F
from test_policy import tiny_mdm

from upo_fast.evaluation.flops import count_flops, policy_cost
from upo_fast.policy import UnmaskingPolicy


def puzzle_rows(batch=2, length=16, mask_id=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 10, (batch, length), generator=g)
    return x.masked_fill(torch.rand(batch, length, generator=g) < 0.5, mask_id)


def test_count_matches_analytic_linear_and_attention():
    linear = torch.nn.Linear(24, 40)
    flops, out = count_flops(linear, torch.randn(5, 24))
    assert out.shape == (5, 40) and flops == 2 * 5 * 24 * 40  # one multiply-add = 2 FLOPs, the bias not counted
    # attention counts on the CPU too (sdpa's fused CPU kernel has no formula in torch: it would count 0)
    q = torch.randn(2, 4, 16, 8)
    flops, _ = count_flops(F.scaled_dot_product_attention, q, q, q)
    assert flops == 2 * (2 * 2 * 4 * 16 * 16 * 8)  # q @ k^T and weights @ v


def test_mdm_count_is_its_linears_and_attention():
    mdm = tiny_mdm()
    x = puzzle_rows()
    cost = policy_cost(mdm, UnmaskingPolicy.for_mdm(mdm, mlp_hidden=16), x)
    cfg = mdm.config
    B, L, d, f, V = 2, 16, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    per_layer = 2 * B * L * (3 * d * d + d * d + 2 * d * f + f * d) + 2 * 2 * B * L * L * d
    assert cost.mdm_flops == cfg.num_hidden_layers * per_layer + 2 * B * L * d * V
    assert cost.mdm_params == sum(p.numel() for p in mdm.parameters())


def test_ratio_grows_with_mlp_hidden_and_features_body_is_cheaper():
    mdm = tiny_mdm()
    x = puzzle_rows()
    costs = {name: policy_cost(mdm, UnmaskingPolicy.for_mdm(mdm, **kw), x) for name, kw in {
        "small": dict(mlp_hidden=16), "large": dict(mlp_hidden=64),
        "features": dict(mlp_hidden=16, body="features"), "narrow": dict(mlp_hidden=16, policy_dim=8)}.items()}
    assert costs["small"].mdm_flops == costs["large"].mdm_flops  # the same MDM forward
    assert costs["small"].ratio < costs["large"].ratio
    assert costs["features"].policy_flops < costs["narrow"].policy_flops < costs["small"].policy_flops
    assert costs["features"].policy_params < costs["small"].policy_params
    for cost in costs.values():
        assert cost.ratio == cost.policy_flops / cost.mdm_flops
        # forward + backward to the weights: about 3x the forward (no gradient for the input hidden states)
        assert 2 * cost.policy_flops < cost.policy_update_flops <= 3 * cost.policy_flops
        assert cost.update_ratio == cost.policy_update_flops / cost.mdm_flops


def test_width_counts_the_region_only():
    mdm = tiny_mdm()
    policy = UnmaskingPolicy.for_mdm(mdm, mlp_hidden=16, body="features")  # per position: linear in the width
    x = puzzle_rows()
    full, half = policy_cost(mdm, policy, x), policy_cost(mdm, policy, x, width=8)
    assert half.mdm_flops == full.mdm_flops and 2 * half.policy_flops == full.policy_flops


def test_counting_leaves_the_models_as_they_were():
    mdm = tiny_mdm()
    policy = UnmaskingPolicy.for_mdm(mdm, mlp_hidden=16)
    policy.head[0].weight.requires_grad_(False)
    policy_cost(mdm, policy, puzzle_rows())
    assert all(p.grad is None for p in policy.parameters())
    assert not policy.head[0].weight.requires_grad and policy.head[0].bias.requires_grad
    assert not mdm.model.layers[-1]._forward_pre_hooks  # the capture hook is removed


@pytest.mark.parametrize("kwargs, match", [
    (dict(width=0), "width"), (dict(width=17), "width"), (dict(x=torch.zeros(2, 16)), "x must be"),
])
def test_bad_input(kwargs, match):
    mdm = tiny_mdm()
    args = dict(x=puzzle_rows()) | kwargs
    with pytest.raises(ValueError, match=match):
        policy_cost(mdm, UnmaskingPolicy.for_mdm(mdm, mlp_hidden=16), **args)
