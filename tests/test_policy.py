"""Tests for the unmasking policy network (upo_fast/policy.py). Tiny sizes: the file runs in a few seconds."""

import logging

import pytest
import torch
from transformers import AutoModel

from upo_fast.kernels.vocab_stats import VocabStats
from upo_fast.models import TinyMDM, TinyMDMConfig
from upo_fast.policy import UnmaskingPolicy, UnmaskingPolicyConfig
from upo_fast.sampling.scorers import ScoringContext, learned_policy

HIDDEN, K = 32, 8


def tiny_mdm(seed=0, hidden=HIDDEN):
    torch.manual_seed(seed)
    config = TinyMDMConfig(vocab_size=12, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, position_embedding="grid", grid_size=4, mask_token_id=11)
    return TinyMDM(config).eval()


def random_inputs(batch=3, width=6, k=K, seed=0, hidden=HIDDEN):
    """(hidden [B, W, d], stats, candidates [B, W]) with descending top-k probabilities and >= 1 candidate a row."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(batch, width, k, generator=g).sort(dim=-1, descending=True).values / k
    zeros = torch.zeros(batch, width)
    stats = VocabStats(zeros.long(), probs[..., 0], zeros, zeros, probs, zeros)
    candidates = torch.rand(batch, width, generator=g) < 0.5
    candidates[:, 0] = True
    return torch.randn(batch, width, hidden, generator=g), stats, candidates


def small_policy(seed=0, **overrides):
    torch.manual_seed(seed)
    fields = dict(mdm_family="tiny_mdm", mdm_hidden_size=HIDDEN, num_heads=4, intermediate_size=64, mlp_hidden=16)
    fields.update(overrides)
    return UnmaskingPolicy(UnmaskingPolicyConfig(**fields)).eval()


def perturb(model, seed=1):
    """Give every parameter nonzero random values, so comparisons cannot pass on zero-initialized weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("policy_dim", [None, 16])
def test_forward_shape_dtype_and_keyword_call(policy_dim):
    policy = small_policy(policy_dim=policy_dim)
    assert (policy.input_proj is not None) == (policy_dim is not None)
    hidden, stats, candidates = random_inputs()
    scores = policy(hidden=hidden, stats=stats, candidates=candidates)
    assert scores.shape == (3, 6) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    # bf16 hidden states (LLaDA/Dream run in bf16) are accepted and still give float32 scores
    assert policy(hidden.bfloat16(), stats, candidates).dtype == torch.float32
    # extra top-k values beyond feature_topk are ignored, not an error
    wide = stats._replace(topk_probs=torch.cat([stats.topk_probs, torch.zeros(3, 6, 2)], dim=-1))
    assert torch.equal(policy(hidden, wide, candidates), scores)


def test_scores_depend_on_hidden_and_features():
    policy = small_policy()
    perturb(policy)
    hidden, stats, candidates = random_inputs()
    base = policy(hidden, stats, candidates)
    assert not torch.allclose(base, policy(hidden + 1.0, stats, candidates))
    assert not torch.allclose(base, policy(hidden, stats, ~candidates))
    other = stats._replace(topk_probs=stats.topk_probs.flip(-1))
    assert not torch.allclose(base, policy(hidden, other, candidates))


def test_attention_mask_hides_pad_positions():
    policy = small_policy()
    perturb(policy)
    hidden, stats, candidates = random_inputs(batch=1)
    mask = torch.ones(1, 6, dtype=torch.long)
    mask[0, 4:] = 0
    changed = hidden.clone()
    changed[0, 4:] += 5.0  # only pad positions change
    a = policy(hidden, stats, candidates, attention_mask=mask)
    b = policy(changed, stats, candidates, attention_mask=mask)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(policy(hidden, stats, candidates)[:, :4], policy(changed, stats, candidates)[:, :4])


@pytest.mark.parametrize("seed", range(4))
def test_confidence_anchor_ranks_like_max_confidence_at_init(seed):
    policy = small_policy(seed=seed, anchor="confidence", anchor_tau=0.1)
    hidden, stats, candidates = random_inputs(batch=8, width=10, seed=seed)
    scores = policy(hidden, stats, candidates)
    top1 = stats.topk_probs[..., 0]
    neg = torch.tensor(float("-inf"))
    assert torch.equal(torch.where(candidates, scores, neg).argmax(-1), torch.where(candidates, top1, neg).argmax(-1))
    torch.testing.assert_close(scores, top1 / 0.1)
    # the same network without the anchor does not rank like max-confidence (the test can fail)
    free = small_policy(seed=seed, anchor="none")
    assert not torch.allclose(free(hidden, stats, candidates), top1 / 0.1)


def test_anchor_correction_is_trainable():
    policy = small_policy(anchor="confidence")
    hidden, stats, candidates = random_inputs()
    policy(hidden, stats, candidates).sum().backward()
    last = policy.head[-1]
    assert last.weight.grad is not None and last.weight.grad.abs().sum() > 0 and last.bias.grad.abs().sum() > 0


def test_copy_init_equals_mdm_last_block():
    mdm = tiny_mdm()
    policy = UnmaskingPolicy.for_mdm(mdm, block_init="copy", mlp_hidden=16)
    assert policy.config.mdm_family == "tiny_mdm" and policy.config.mdm_hidden_size == HIDDEN
    mdm_block = mdm.model.layers[-1]
    mdm_params = dict(mdm_block.named_parameters())
    policy_params = dict(policy.block.named_parameters())
    assert mdm_params.keys() == policy_params.keys()
    for name, value in mdm_params.items():
        assert torch.equal(policy_params[name], value), name
        assert policy_params[name].data_ptr() != value.data_ptr()  # a copy, not shared storage
    x = torch.randn(2, 5, HIDDEN)
    torch.testing.assert_close(policy.block(x), mdm_block(x))
    # the fresh policy's block differs (so the comparison above is not trivially true)
    fresh = UnmaskingPolicy.for_mdm(mdm, block_init="fresh", num_heads=4, intermediate_size=64, mlp_hidden=16)
    assert not torch.equal(fresh.block.self_attn.qkv_proj.weight, mdm_block.self_attn.qkv_proj.weight)


def test_copy_init_needs_tiny_mdm_with_matching_width():
    mdm = tiny_mdm()
    with pytest.raises(ValueError, match="copy. needs a TinyMDM MDM with matching width"):
        UnmaskingPolicy.for_mdm(mdm, block_init="copy", policy_dim=16)
    with pytest.raises(ValueError, match="num_heads"):
        UnmaskingPolicy.for_mdm(mdm, block_init="copy", num_heads=2)

    class Generic(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = TinyMDMConfig(hidden_size=HIDDEN, num_attention_heads=4)
            self.config.model_type = "something_else"
            self.w = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="copy. needs a TinyMDM MDM"):
        UnmaskingPolicy.for_mdm(Generic(), block_init="copy")
    assert UnmaskingPolicy.for_mdm(Generic(), mlp_hidden=16).config.mdm_family == "generic"


def test_extra_blocks_start_as_the_identity_and_train():
    base = small_policy()
    perturb(base)
    deeper = small_policy(extra_blocks=2)
    info = deeper.load_state_dict(base.state_dict(), strict=False)
    assert not info.unexpected_keys and all(k.startswith("extra_blocks.") for k in info.missing_keys)
    hidden, stats, candidates = random_inputs()
    torch.testing.assert_close(deeper(hidden, stats, candidates), base(hidden, stats, candidates), rtol=0, atol=0)
    deeper(hidden, stats, candidates).sum().backward()
    for block in deeper.extra_blocks:  # zero output projections still get gradients: the blocks can learn
        assert block.self_attn.o_proj.weight.grad.abs().sum() > 0 and block.mlp.down_proj.weight.grad.abs().sum() > 0
    perturb(deeper, seed=3)  # once trained, the extra blocks change the scores
    assert not torch.allclose(deeper(hidden, stats, candidates), base(hidden, stats, candidates))


def test_for_mdm_logs_parameter_count(caplog):
    with caplog.at_level(logging.INFO, logger="upo_fast.policy"):
        policy = UnmaskingPolicy.for_mdm(tiny_mdm(), num_heads=4, mlp_hidden=16)
    assert f"{policy.num_parameters() / 1e6:.2f}M parameters" in caplog.text


@pytest.mark.parametrize("overrides", [dict(anchor="confidence", anchor_tau=0.25), dict(policy_dim=16),
                                       dict(extra_blocks=1)])
def test_save_load_round_trip(tmp_path, overrides):
    policy = small_policy(**overrides)
    perturb(policy)  # nonzero everywhere: a re-initialized tensor after loading would show
    policy.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded, info = UnmaskingPolicy.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    for key, value in overrides.items():
        assert getattr(loaded.config, key) == value
    assert loaded.config.mdm_family == "tiny_mdm" and loaded.config.mdm_hidden_size == HIDDEN
    hidden, stats, candidates = random_inputs()
    expected = policy(hidden, stats, candidates)
    assert torch.equal(loaded.eval()(hidden, stats, candidates), expected)
    assert torch.equal(AutoModel.from_pretrained(tmp_path).eval()(hidden, stats, candidates), expected)


def test_wrong_inputs_raise():
    policy = small_policy()
    hidden, stats, candidates = random_inputs()
    with pytest.raises(ValueError, match="mdm_hidden_size"):
        policy(torch.randn(3, 6, HIDDEN + 1), stats, candidates)
    with pytest.raises(ValueError, match="feature_topk=8"):
        policy(hidden, stats._replace(topk_probs=stats.topk_probs[..., :5]), candidates)
    with pytest.raises(ValueError, match="hidden is required"):
        policy(None, stats, candidates)
    with pytest.raises(ValueError, match="candidates"):
        policy(hidden, stats, candidates.float())
    with pytest.raises(ValueError, match="attention_mask"):
        policy(hidden, stats, candidates, attention_mask=torch.ones(3, 5))



def test_topk_probs_alone_give_the_scores_of_the_full_statistics():
    """Recorded states pass only what the policy reads (topk_probs=), the sampler's protocol passes stats=."""
    policy = small_policy(anchor="confidence")
    perturb(policy)
    hidden, stats, candidates = random_inputs()
    want = policy(hidden=hidden, stats=stats, candidates=candidates)
    assert torch.equal(policy(hidden, candidates=candidates, topk_probs=stats.topk_probs), want)
    with pytest.raises(ValueError, match="exactly one; got both"):
        policy(hidden, stats, candidates, topk_probs=stats.topk_probs)
    with pytest.raises(ValueError, match="exactly one; got neither"):
        policy(hidden, candidates=candidates)
    with pytest.raises(ValueError, match="^topk_probs has 5 values"):
        policy(hidden, candidates=candidates, topk_probs=stats.topk_probs[..., :5])

@pytest.mark.parametrize("field, value, valid", [
    ("anchor", "max", "none, confidence"), ("block_init", "random", "fresh, copy"),
    ("mdm_family", "gpt", "llada, dream, tiny_mdm, generic"), ("anchor_tau", 0.0, "> 0"),
    ("feature_topk", 0, "positive int"), ("num_heads", 5, "must divide"), ("extra_blocks", -1, "int >= 0"),
])
def test_config_validation(field, value, valid):
    with pytest.raises(ValueError, match=field) as err:
        UnmaskingPolicyConfig(mdm_hidden_size=HIDDEN, **{field: value})
    assert valid in str(err.value)


def test_check_compatible():
    mdm = tiny_mdm()
    policy = UnmaskingPolicy.for_mdm(mdm, mlp_hidden=16)
    policy.check_compatible(mdm)  # fits: no error
    with pytest.raises(ValueError, match="hidden size 32.*hidden size is 64"):
        policy.check_compatible(tiny_mdm(hidden=64))
    other = UnmaskingPolicy(UnmaskingPolicyConfig(mdm_family="llada", mdm_hidden_size=HIDDEN, mlp_hidden=16))
    with pytest.raises(ValueError, match="'llada'.*'tiny_mdm'"):
        other.check_compatible(mdm)


def test_learned_policy_scorer_calls_the_policy():
    policy = small_policy()
    hidden, stats, candidates = random_inputs()
    ctx = ScoringContext(policy=policy, hidden=hidden, position_temperature=1.0)
    scored = learned_policy(stats, candidates, ctx)
    expected = policy(hidden, stats, candidates)
    assert torch.equal(scored.scores[candidates], expected[candidates]) and scored.stochastic
    assert torch.isneginf(scored.scores[~candidates]).all()
