"""The sampler's fused-head path (final hidden states x LM head for the region's rows, no [B, L, V] logits) gives
the tokens of the logits path at temperature 0: TinyMDM, LLaDA- and Dream-like models, left padding, CFG, the
policy scorer; and the adapter swaps the head out and back."""

import pytest
import torch
from tiny_models import left_padded_batch, make_dream_like, make_llada_like

import upo_fast
from upo_fast.models import TinyMDM, TinyMDMConfig
from upo_fast.sampling.adapters import MDMAdapter

SCORERS = ["max_confidence", "margin", "entropy", "topk", "softmax_confidence"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = TinyMDMConfig(vocab_size=13, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64, mask_token_id=12)
    return TinyMDM(config).eval()


@pytest.mark.parametrize("scorer", SCORERS)
def test_unmask_fused_equals_logits_path(tiny, scorer):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 12, (3, 20), generator=g).masked_fill(torch.rand(3, 20, generator=g) < 0.6, 12)
    attn = torch.ones_like(x)
    attn[0, :4] = 0
    x[0, :4] = 0
    want = upo_fast.unmask(tiny, x, attn, scorer=scorer, fused_head=False)
    got = upo_fast.unmask(tiny, x, attn, scorer=scorer, fused_head=True)
    assert torch.equal(got, want)


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_generate_fused_equals_logits_path_on_llada_and_dream(family, cfg_scale):
    maker = make_llada_like if family == "llada" else make_dream_like
    model = maker(vocab_size=64, mask_id=63, seed=1, **({"pad_id": 0} if family == "dream" else {}))
    ids, attn = left_padded_batch((4, 2, 6), 1, 60, pad_id=0, seed=2)
    kwargs = dict(gen_length=8, block_length=4, steps=8, scorer="max_confidence", cfg_scale=cfg_scale)
    want = upo_fast.generate(model, ids, attn, fused_head=False, **kwargs)
    got = upo_fast.generate(model, ids, attn, fused_head=True, **kwargs)
    assert torch.equal(got, want)


def test_headless_swaps_the_head_and_restores_it(tiny):
    adapter = MDMAdapter(tiny)
    head = tiny.lm_head
    x = torch.randint(0, 12, (2, 5))
    hidden = adapter.final_hidden(x, adapter.prepare_attention(None, 2, 5))
    assert hidden.shape == (2, 5, 32) and tiny.lm_head is head
    torch.testing.assert_close(head(hidden), tiny(x).logits)


def test_tied_head_has_no_fused_path():
    tied = make_llada_like(vocab_size=64, mask_id=63, seed=1, weight_tying=True)
    ids, _ = left_padded_batch((3,), 1, 60, pad_id=0, seed=2)
    with pytest.raises(ValueError, match="tied head"):
        upo_fast.generate(tied, ids, gen_length=4, block_length=4, steps=4, fused_head=True)
    upo_fast.generate(tied, ids, gen_length=4, block_length=4, steps=4)  # auto: the logits path


def test_policy_scorer_on_the_fused_path(tiny):
    calls = []

    def policy(hidden, stats, candidates):
        calls.append(hidden.shape)
        return stats.margin

    x = torch.full((2, 10), 12)
    a = upo_fast.unmask(tiny, x, scorer="policy", policy=policy, fused_head=True, position_temperature=0.0)
    b = upo_fast.unmask(tiny, x, scorer="margin", fused_head=False)
    assert torch.equal(a, b) and calls and calls[0] == (2, 10, 32)
