"""Every entry point takes the [MASK] id from the model when the caller gives none (issue 30): LLaDA's 126336 and
Dream's 151666 apply only where the model records no id. A bad id names the recorded one; the drop-in of the other
family and a path where a loaded model belongs are refused by name."""

from pathlib import Path

import pytest
import torch
from native_factories import make_native_dream, make_native_llada
from reference_samplers import dream_generate_reference, llada_generate_reference
from tiny_models import left_padded_batch, make_dream_like, make_llada_like

import upo_fast
from upo_fast.sampling.likelihood import mc_loglikelihood

# a small vocabulary whose [MASK] id is neither LLaDA's nor Dream's official one (both lie outside it)
VOCAB, MASK, PAD = 128, 126, 0
LLADA_OPTIONS = dict(steps=8, gen_length=16, block_length=8)


@pytest.fixture(scope="module")
def llada():
    return make_native_llada(vocab_size=VOCAB, mask_id=MASK)


@pytest.fixture(scope="module")
def dream():
    return make_native_dream(vocab_size=VOCAB, mask_id=MASK, pad_id=PAD)


@pytest.fixture(scope="module")
def batch():
    return left_padded_batch([5, 3, 6], 1, 100, PAD)


def _estimate(model, **kwargs):
    prefix, target = torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10, 11])
    return mc_loglikelihood(model, prefix, target, mc_num=4, batch_size=2, generator=torch.Generator().manual_seed(0),
                            **kwargs)


# ------------------------------------------------------------------------------------------------------------
# the id from the config
# ------------------------------------------------------------------------------------------------------------


def test_llada_generate_takes_the_mask_id_from_the_config(llada, batch):
    ids, mask = batch
    want = llada_generate_reference(llada, ids, mask, mask_id=MASK, **LLADA_OPTIONS)
    assert (want[:, ids.shape[1]:] != MASK).any()  # the id was used: the reference filled the masks
    assert torch.equal(upo_fast.llada_generate(llada, ids, mask, **LLADA_OPTIONS), want)
    assert torch.equal(upo_fast.llada_generate(llada, ids, mask, mask_id=None, **LLADA_OPTIONS), want)


def test_a_patched_llada_generate_takes_the_mask_id_from_the_config(batch):
    model = make_native_llada(vocab_size=VOCAB, mask_id=MASK)
    ids, mask = batch
    want = llada_generate_reference(model, ids, mask, mask_id=MASK, **LLADA_OPTIONS)
    upo_fast.patch(model)
    assert torch.equal(model.generate(ids, attention_mask=mask, **LLADA_OPTIONS), want)
    scored = model.generate(ids, attention_mask=mask, scorer="max_confidence", **LLADA_OPTIONS)
    assert torch.equal(scored, upo_fast.generate(model, ids, mask, mask_id=MASK, **LLADA_OPTIONS))


@pytest.mark.parametrize("name", ["llada", "dream"])
def test_mc_loglikelihood_takes_the_mask_id_from_the_config(name, request):
    model = request.getfixturevalue(name)
    estimate = _estimate(model)
    assert estimate == _estimate(model, mask_id=MASK) and estimate < 0
    assert estimate != _estimate(model, mask_id=MASK - 1)  # the id matters to the estimate


@pytest.mark.parametrize("generation_config_has_it", [True, False])
def test_dream_generate_takes_the_mask_id_from_the_model(generation_config_has_it, batch):
    model = make_native_dream(vocab_size=VOCAB, mask_id=MASK, pad_id=PAD)
    if not generation_config_has_it:  # then the config's
        model.generation_config.mask_token_id = None
    ids, mask = batch
    options = dict(max_new_tokens=8, steps=6, alg="maskgit_plus")
    want = dream_generate_reference(model, ids.clone(), mask.clone(), **options)
    assert torch.equal(upo_fast.dream_generate(model, ids, mask, **options), want)
    upo_fast.patch(model)
    assert torch.equal(model.diffusion_generate(ids, attention_mask=mask, **options), want)


def test_the_official_id_applies_only_where_the_model_records_none(batch):
    model = make_llada_like(vocab_size=VOCAB, mask_id=MASK)
    model.config.mask_token_id = None
    ids, mask = batch
    with pytest.raises(ValueError, match=r"^mask_id=126336 is outside the vocabulary \[0, 128\) \(the LLaDA "
                                         r"default: this model records no mask_token_id\); pass the model's "
                                         r"\[MASK\] token id as mask_id=$"):
        upo_fast.llada_generate(model, ids, mask, **LLADA_OPTIONS)
    want = llada_generate_reference(model, ids, mask, mask_id=MASK, **LLADA_OPTIONS)
    assert torch.equal(upo_fast.llada_generate(model, ids, mask, mask_id=MASK, **LLADA_OPTIONS), want)


def test_a_generic_model_still_runs_through_llada_generate():
    from upo_fast.models import TinyMDM, TinyMDMConfig

    torch.manual_seed(0)
    tiny = TinyMDM(TinyMDMConfig(vocab_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=32, mask_token_id=15)).eval()
    prompt = torch.tensor([[3, 4, 5]])
    want = llada_generate_reference(tiny, prompt, mask_id=15, steps=4, gen_length=4, block_length=4)
    assert torch.equal(upo_fast.llada_generate(tiny, prompt, steps=4, gen_length=4, block_length=4), want)


# ------------------------------------------------------------------------------------------------------------
# a bad id names the recorded one
# ------------------------------------------------------------------------------------------------------------


def test_an_id_outside_the_vocabulary_names_the_configs(llada, dream):
    with pytest.raises(ValueError, match=r"^mask_id=126336 is outside the vocabulary \[0, 128\); this model's "
                                         r"config says mask_token_id=126: pass mask_id=126 or leave it unset$"):
        upo_fast.llada_generate(llada, torch.tensor([[5, 6]]), mask_id=126336, **LLADA_OPTIONS)
    with pytest.raises(ValueError, match=r"^mask_id=200 is outside .* config says mask_token_id=126: pass "
                                         "mask_id=126"):
        upo_fast.generate(llada, torch.tensor([[5, 6]]), mask_id=200, **LLADA_OPTIONS)
    with pytest.raises(ValueError, match=r"^mask_token_id=151666 is outside the vocabulary \[0, 128\); this "
                                         r"model's generation_config says mask_token_id=126: pass "
                                         r"mask_token_id=126 or leave it unset$"):
        upo_fast.dream_generate(dream, torch.tensor([[5, 6]]), mask_token_id=151666, max_new_tokens=4, steps=4)


# ------------------------------------------------------------------------------------------------------------
# the other family's drop-in
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make_dream", [make_native_dream, make_dream_like], ids=["native", "standin"])
def test_llada_generate_refuses_a_dream_model(make_dream):
    model = make_dream(vocab_size=VOCAB, mask_id=MASK, pad_id=PAD)
    with pytest.raises(ValueError, match=r"^llada_generate got a Dream model \(logits shifted by one\); use "
                                         r"upo_fast.dream_generate$"):
        upo_fast.llada_generate(model, torch.tensor([[5, 6]]), mask_id=MASK, **LLADA_OPTIONS)


@pytest.mark.parametrize("make_llada", [make_native_llada, make_llada_like], ids=["native", "standin"])
def test_dream_generate_refuses_a_llada_model(make_llada):
    model = make_llada(vocab_size=VOCAB, mask_id=MASK)
    with pytest.raises(ValueError, match=r"^dream_generate got a LLaDA model \(logits not shifted\); use "
                                         r"upo_fast.llada_generate$"):
        upo_fast.dream_generate(model, torch.tensor([[5, 6]]), max_new_tokens=4, steps=4)


# ------------------------------------------------------------------------------------------------------------
# a path where a loaded model belongs
# ------------------------------------------------------------------------------------------------------------


PATH_MESSAGE = (r"^model must be a loaded model, got the path 'path/to/folder': load it with "
                r"upo_fast.load_model\(path\)$")


@pytest.mark.parametrize("folder", ["path/to/folder", Path("path/to/folder")], ids=["str", "Path"])
@pytest.mark.parametrize("call", [
    lambda m: upo_fast.generate(m, torch.tensor([[5, 6]]), gen_length=4, block_length=4, steps=4),
    lambda m: upo_fast.unmask(m, torch.tensor([[5, MASK]])),
    lambda m: upo_fast.llada_generate(m, torch.tensor([[5, 6]]), steps=4, gen_length=4, block_length=4),
    lambda m: upo_fast.dream_generate(m, torch.tensor([[5, 6]]), max_new_tokens=4, steps=4),
    lambda m: mc_loglikelihood(m, torch.tensor([5]), torch.tensor([6]), mc_num=1, batch_size=1),
    upo_fast.patch,
], ids=["generate", "unmask", "llada_generate", "dream_generate", "mc_loglikelihood", "patch"])
def test_a_path_as_the_model_says_how_to_load_it(folder, call):
    with pytest.raises(ValueError, match=PATH_MESSAGE):
        call(folder)
