"""Model adapters: family detection, mask ids, heads, Dream's shift and padding, the last-block hook."""

import pytest
import torch
from tiny_models import make_dream_like, make_llada_like

from upo_fast.sampling.adapters import MDMAdapter
from upo_fast.sampling.families import DREAM_MASK_ID, LLADA_MASK_ID, detect_family


@pytest.fixture(scope="module")
def llada():
    return make_llada_like(vocab_size=300, mask_id=299, seed=0)


@pytest.fixture(scope="module")
def dream():
    return make_dream_like(vocab_size=300, mask_id=299, seed=0, pad_id=0)


def test_family_detection_and_default_mask_ids(llada, dream):
    assert detect_family(llada) == "llada" and detect_family(dream) == "dream"
    assert MDMAdapter(llada).mask_id == 299  # from the config
    assert MDMAdapter(dream).mask_id == 299  # from the generation config
    assert LLADA_MASK_ID == 126336 and DREAM_MASK_ID == 151666
    with pytest.raises(ValueError, match="family must be one of"):
        MDMAdapter(llada, family="gpt")


def test_head_weight_and_blocks(llada, dream):
    a = MDMAdapter(llada)
    assert a.head_weight() is llada.model.transformer.ff_out.weight and a.vocab_size == 300
    assert a.blocks() is llada.model.transformer.blocks
    tied = make_llada_like(vocab_size=300, mask_id=299, weight_tying=True)
    assert MDMAdapter(tied).head_weight() is tied.model.transformer.wte.weight
    d = MDMAdapter(dream)
    assert d.head_weight() is dream.lm_head.weight and d.blocks() is dream.model.layers


def test_dream_logits_are_shifted_by_one(dream):
    x = torch.randint(0, 298, (2, 7))
    adapter = MDMAdapter(dream)
    raw = dream(x).logits
    shifted = adapter.logits(x, adapter.prepare_attention(None, 2, 7))
    assert torch.equal(shifted[:, 0], raw[:, 0]) and torch.equal(shifted[:, 1:], raw[:, :-1])


def test_dream_left_padding_becomes_4d_mask_and_positions(dream):
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    prepared = MDMAdapter(dream).prepare_attention(mask, 2, 4)
    assert prepared.kwargs["attention_mask"].shape == (2, 1, 4, 4)
    assert prepared.kwargs["position_ids"].tolist() == [[1, 1, 0, 1], [0, 1, 2, 3]]
    assert MDMAdapter(dream).prepare_attention(torch.ones(2, 4), 2, 4).kwargs["attention_mask"] == "full"


def test_last_block_input_is_captured_without_copy(llada):
    adapter = MDMAdapter(llada)
    adapter.capture_last_block_input()
    seen = {}
    handle = llada.model.transformer.blocks[-1].register_forward_pre_hook(
        lambda m, args: seen.update(h=args[0]))  # returns None: leaves the inputs alone
    llada(torch.randint(0, 298, (1, 5)))
    handle.remove()
    adapter.capture_last_block_input(False)
    assert adapter.last_hidden is seen["h"] and adapter.last_hidden.shape == (1, 5, 32)


def test_mask_id_outside_vocabulary_is_rejected(llada):
    with pytest.raises(ValueError, match="mask_id=300 is outside the vocabulary"):
        MDMAdapter(llada, mask_id=300)


def test_position_hidden_is_aligned_like_the_logits(llada, dream):
    """The policy reads, for position i, the hidden state that predicts i: Dream's output i-1."""
    x = torch.randint(0, 298, (2, 6))
    for model, shifted in ((dream, True), (llada, False)):
        adapter = MDMAdapter(model)
        adapter.capture_last_block_input()
        adapter.logits(x, adapter.prepare_attention(None, 2, 6))
        raw, aligned = adapter.last_hidden, adapter.position_hidden()
        if shifted:
            assert torch.equal(aligned[:, 1:], raw[:, :-1]) and torch.equal(aligned[:, 0], raw[:, 0])
        else:
            assert aligned is raw
        adapter.capture_last_block_input(False)
