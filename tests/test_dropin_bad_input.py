"""Bad input to the drop-in samplers: a ValueError naming the argument, before any model call."""

import pytest
import torch
from tiny_models import make_dream_like, make_llada_like

import upo_fast


@pytest.fixture(scope="module")
def llada():
    return make_llada_like(vocab_size=64, mask_id=63, seed=0)


@pytest.fixture(scope="module")
def dream():
    return make_dream_like(vocab_size=64, mask_id=63, seed=0, pad_id=0)


PROMPT = torch.tensor([[5, 6, 7]])


@pytest.mark.parametrize("kwargs, message", [
    ({"gen_length": 10, "block_length": 4}, "gen_length .* multiple of block_length"),
    ({"gen_length": 8, "block_length": 4, "steps": 3}, "steps .* multiple of the number of blocks"),
    ({"remasking": "entropy"}, "remasking must be one of"),
    ({"mask_id": 64}, r"^mask_id=64 is outside the vocabulary \[0, 64\); this model's config says mask_token_id=63: "
                      "pass mask_id=63 or leave it unset$"),
    ({"logits_eos_inf": True}, "eos_id=126081 is outside the vocabulary"),
    ({"temperature": -1.0}, "temperature must be a finite number >= 0"),
    ({"cfg_scale": float("nan")}, "cfg_scale must be a finite number >= 0"),
])
def test_llada_generate_bad_arguments(llada, kwargs, message):
    args = {"steps": 4, "gen_length": 8, "block_length": 8, "mask_id": 63, **kwargs}
    with pytest.raises(ValueError, match=message):
        upo_fast.llada_generate(llada, PROMPT, **args)


def test_llada_generate_pad_equal_to_mask_and_mask_shape(llada):
    with pytest.raises(ValueError, match="pad id must differ from mask_id"):
        upo_fast.llada_generate(llada, torch.tensor([[63, 5]]), torch.tensor([[0, 1]]), steps=4, gen_length=4,
                                block_length=4, mask_id=63)
    with pytest.raises(ValueError, match="attention_mask must be a 0/1 tensor of shape"):
        upo_fast.llada_generate(llada, PROMPT, torch.ones(1, 2), steps=4, gen_length=4, block_length=4, mask_id=63)


@pytest.mark.parametrize("kwargs, message", [
    ({"alg": "greedy"}, "alg must be one of"),
    ({"max_new_token": 8}, r"unknown keyword argument\(s\) \['max_new_token'\]"),
    ({"max_new_tokens": None, "max_length": 3}, "input length 3 must be smaller than max_length 3"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"eps": 1.5}, r"eps must be a finite number in \(0, 1\)"),
])
def test_dream_generate_bad_arguments(dream, kwargs, message):
    with pytest.raises(ValueError, match=message):
        upo_fast.dream_generate(dream, PROMPT, **{"max_new_tokens": 4, "steps": 4, **kwargs})


def test_the_mask_id_defaults_to_the_models(llada, dream):
    """The fixtures' configs say 63 (LLaDA's 126336 and Dream's 151666 lie outside their vocabulary of 64)."""
    out = upo_fast.llada_generate(llada, PROMPT, steps=4, gen_length=4, block_length=4)
    assert torch.equal(out, upo_fast.llada_generate(llada, PROMPT, steps=4, gen_length=4, block_length=4, mask_id=63))
    with pytest.raises(ValueError, match=r"^mask_token_id=64 is outside the vocabulary \[0, 64\); this model's "
                                         "generation_config says mask_token_id=63: pass mask_token_id=63 or leave"):
        upo_fast.dream_generate(dream, PROMPT, max_new_tokens=4, steps=4, mask_token_id=64)


def test_the_wrong_family_is_refused_naming_the_right_drop_in(llada, dream):
    with pytest.raises(ValueError, match=r"^llada_generate got a Dream model \(logits shifted by one\); use "
                                         "upo_fast.dream_generate$"):
        upo_fast.llada_generate(dream, PROMPT, steps=4, gen_length=4, block_length=4, mask_id=63)
    with pytest.raises(ValueError, match=r"^dream_generate got a LLaDA model \(logits not shifted\); use "
                                         "upo_fast.llada_generate$"):
        upo_fast.dream_generate(llada, PROMPT, max_new_tokens=4, steps=4)


def test_dream_generate_token_ids_outside_vocabulary(dream):
    with pytest.raises(ValueError, match="input_ids holds token ids outside the vocabulary"):
        upo_fast.dream_generate(dream, torch.tensor([[70, 1]]), max_new_tokens=4, steps=4)
