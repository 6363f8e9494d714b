"""The policy's lighter bodies (issue 13): body="features" (no transformer block) and the narrow block (policy_dim)."""

import json

import pytest
import torch
from test_policy import HIDDEN, perturb, random_inputs, small_policy, tiny_mdm

from upo_fast.policy import UnmaskingPolicy, UnmaskingPolicyConfig
from upo_fast.training.config import TrainConfig
from upo_fast.training.policy_init import make_policy


@pytest.mark.parametrize("policy_dim", [None, 16])
def test_features_body_shapes_and_no_block(policy_dim):
    policy = small_policy(body="features", policy_dim=policy_dim)
    block = small_policy(policy_dim=policy_dim)
    assert policy.block is None and len(policy.extra_blocks) == 0
    assert not any(name.startswith("block.") for name in policy.state_dict())
    assert policy.num_parameters() < block.num_parameters()
    hidden, stats, candidates = random_inputs()
    scores = policy(hidden, stats, candidates, attention_mask=torch.ones(3, 6))
    assert scores.shape == (3, 6) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    assert policy(hidden.bfloat16(), stats, candidates).dtype == torch.float32


def test_features_body_scores_each_position_alone():
    hidden, stats, candidates = random_inputs()
    changed = hidden.clone()
    changed[:, 0] += 1.0
    for body, alone in [("features", True), ("block", False)]:  # the block attends across positions: it must differ
        policy = small_policy(body=body)
        perturb(policy)
        before, after = policy(hidden, stats, candidates), policy(changed, stats, candidates)
        assert not torch.equal(before[:, 0], after[:, 0])
        assert torch.equal(before[:, 1:], after[:, 1:]) == alone


def test_features_body_anchor_is_exact_at_init_and_trains():
    mdm = tiny_mdm()
    policy = make_policy(TrainConfig(task="sudoku4", policy_body="features", mlp_hidden=16).validate(), mdm)
    assert policy.config.body == "features" and policy.config.block_init == "fresh"  # the default copy: no block
    hidden, stats, candidates = random_inputs()
    expected = stats.topk_probs[..., 0] / policy.config.anchor_tau
    assert torch.equal(policy(hidden, stats, candidates), expected)
    policy(hidden, stats, candidates).sum().backward()
    assert policy.head[-1].weight.grad.abs().sum() > 0  # the zero correction still learns


def test_make_policy_narrow_block():
    policy = make_policy(TrainConfig(task="sudoku4", policy_dim=16, block_init="fresh", mlp_hidden=16).validate(),
                         tiny_mdm())
    assert policy.config.body == "block" and policy.input_proj is not None and policy.config.width == 16


def test_features_body_save_load_round_trip(tmp_path):
    policy = small_policy(body="features", policy_dim=16)
    perturb(policy)
    policy.save_pretrained(tmp_path)
    loaded, info = UnmaskingPolicy.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert loaded.config.body == "features" and loaded.block is None
    hidden, stats, candidates = random_inputs()
    assert torch.equal(loaded.eval()(hidden, stats, candidates), policy(hidden, stats, candidates))


def test_saved_config_without_body_loads_as_a_block_policy(tmp_path):
    policy = small_policy(anchor="confidence")
    perturb(policy)
    policy.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["body"]  # a policy saved before the field existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = UnmaskingPolicy.from_pretrained(tmp_path).eval()
    assert loaded.config.body == "block" and loaded.block is not None
    hidden, stats, candidates = random_inputs()
    assert torch.equal(loaded(hidden, stats, candidates), policy(hidden, stats, candidates))


@pytest.mark.parametrize("fields, valid", [
    (dict(body="mlp"), "block, features"),
    (dict(body="features", block_init="copy"), "block_init='fresh'"),
    (dict(body="features", extra_blocks=1), "extra_blocks=0"),
])
def test_config_validation_names_body(fields, valid):
    with pytest.raises(ValueError, match="body") as err:
        UnmaskingPolicyConfig(mdm_hidden_size=HIDDEN, **fields)
    assert valid in str(err.value)


def test_features_body_skips_the_block_width_check():
    UnmaskingPolicyConfig(mdm_hidden_size=HIDDEN, body="features", policy_dim=15)  # 4 heads need not divide 15
    with pytest.raises(ValueError, match="must divide"):
        UnmaskingPolicyConfig(mdm_hidden_size=HIDDEN, policy_dim=15)


def test_for_mdm_refuses_copying_into_a_features_body():
    with pytest.raises(ValueError, match="body='features'"):
        UnmaskingPolicy.for_mdm(tiny_mdm(), body="features", block_init="copy")


@pytest.mark.parametrize("fields, name", [
    (dict(policy_body="mlp"), "policy_body"), (dict(policy_body="features", init="copy"), "policy_body"),
    (dict(policy_body="features", extra_blocks=1), "policy_body"), (dict(policy_dim=0), "policy_dim"),
])
def test_train_config_validation_names_the_option(fields, name):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        TrainConfig(**fields).validate()
