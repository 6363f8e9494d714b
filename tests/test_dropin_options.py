"""The options of the drop-in samplers as objects: ``LLaDAOptions`` and ``DreamOptions`` are frozen, checked once
when made (a ValueError naming the bad field), and keep the public functions' defaults."""

import dataclasses
import inspect
from types import SimpleNamespace

import pytest

import upo_fast
from upo_fast.sampling.dream_dropin import DEFAULTS, DreamOptions
from upo_fast.sampling.llada_dropin import LLaDAOptions


def test_llada_options_are_frozen_and_keep_the_signature_defaults():
    options = LLaDAOptions(steps=8, gen_length=16, block_length=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.steps = 4
    assert (options.num_blocks, options.steps_per_block) == (4, 2)
    signature = inspect.signature(upo_fast.llada_generate).parameters
    for field in dataclasses.fields(LLaDAOptions):
        assert signature[field.name].default == field.default, field.name


@pytest.mark.parametrize("kwargs, message", [
    ({"remasking": "entropy"}, r"^remasking must be one of \('low_confidence', 'random'\), got 'entropy'$"),
    ({"steps": 0}, "^steps must be an integer >= 1, got 0$"),
    ({"gen_length": 8.0}, "^gen_length must be an integer >= 1"),
    ({"temperature": float("nan")}, "^temperature must be a finite number >= 0"),
    ({"gen_length": 10, "block_length": 4}, r"^gen_length \(10\) must be a positive multiple of block_length \(4\)$"),
    ({"steps": 3, "gen_length": 8, "block_length": 4}, r"^steps \(3\) must be a positive multiple of the number"),
])
def test_llada_options_name_the_bad_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LLaDAOptions(**kwargs)


def test_llada_options_check_the_eos_ids_only_when_used():
    LLaDAOptions().check_token_ids(64)  # the flags are off: LLaDA's ids need not fit a small vocabulary
    with pytest.raises(ValueError, match=r"eot_id=126348 is outside the vocabulary \[0, 64\)"):
        LLaDAOptions(confidence_eos_eot_inf=True, eos_id=3).check_token_ids(64)


def test_dream_options_are_frozen_and_default_to_dreams_generation_config():
    options = DreamOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.alg = "entropy"
    assert DEFAULTS == {
        "temperature": 0.0, "top_p": None, "top_k": None, "max_length": 20, "max_new_tokens": None, "eps": 1e-3,
        "steps": 512, "alg": "origin", "alg_temp": None, "num_return_sequences": 1,
        "return_dict_in_generate": False, "output_history": False, "mask_token_id": None,
    }


@pytest.mark.parametrize("name, value", [("alg", "greedy"), ("top_k", 0), ("top_p", 1.5), ("eps", 1.0),
                                         ("steps", 2.0), ("max_length", 0), ("alg_temp", -1.0)])
def test_dream_options_name_the_bad_field(name, value):
    with pytest.raises(ValueError, match=f"^{name} must be "):
        DreamOptions(**{name: value})


def test_dream_options_from_call_resolve_as_dream_does():
    def hook(step, x, logits):
        return x

    config = SimpleNamespace(steps=64, alg="entropy", top_p=None, max_length=20, unrelated=1)
    options = DreamOptions.from_call(config, {"steps": 8, "pad_token_id": 0, "generation_tokens_hook_func": hook})
    assert (options.steps, options.alg, options.top_p) == (8, "entropy", None)  # kwargs > config > defaults
    assert options.tokens_hook is hook and options.logits_hook is None
    assert not options.max_length_given and not options.keeps_history
    assert DreamOptions.from_call(None, {"max_length": 20}).max_length_given
    with pytest.raises(ValueError, match=r"unknown keyword argument\(s\) \['max_new_token'\]"):
        DreamOptions.from_call(config, {"max_new_token": 4})
    with pytest.raises(ValueError, match="^alg must be one of"):
        DreamOptions.from_call(SimpleNamespace(alg="greedy"), {})
