"""``upo_fast.patch``: a loaded LLaDA / Dream model's own ``generate`` / ``diffusion_generate`` gives the reference
samplers' tokens; ``unpatch`` restores what was there; anything else is a named error."""

import pytest
import torch
from native_factories import make_native_dream, make_native_llada
from reference_samplers import dream_generate_reference, llada_generate_reference
from tiny_models import left_padded_batch, make_dream_like, make_llada_like

import upo_fast
from upo_fast.sampling.patching import is_patched

# small vocabularies keep these fast; the ids play LLaDA's / Dream's roles
VOCAB, MASK, PAD = 400, 397, 396
LLADA_FACTORIES = [make_llada_like, make_native_llada]
DREAM_FACTORIES = [make_dream_like, make_native_dream]


@pytest.mark.parametrize("factory", LLADA_FACTORIES, ids=["standin", "native"])
def test_patched_llada_generate_gives_the_reference_tokens(factory):
    model = factory(vocab_size=VOCAB, mask_id=MASK)
    ids, mask = left_padded_batch([5, 3, 6], 10, 300, PAD)
    options = dict(steps=8, gen_length=16, block_length=8, remasking="low_confidence", mask_id=MASK)
    want = llada_generate_reference(model, ids, mask, **options)
    assert upo_fast.patch(model) is model and is_patched(model)
    assert torch.equal(model.generate(ids, attention_mask=mask, **options), want)
    assert torch.equal(model.generate(ids, mask, **options), want)  # positional, as LLaDA's generate(model, ...)
    # scorer= routes to upo_fast.generate: the same schedule, max_confidence == low_confidence
    scored = model.generate(ids, attention_mask=mask, steps=8, gen_length=16, block_length=8,
                            scorer="max_confidence")
    assert torch.equal(scored, upo_fast.generate(model, ids, mask, steps=8, gen_length=16, block_length=8))


@pytest.mark.parametrize("fast", [dict(threshold=0.9, cache="dual"), dict(factor=1.0, cache="prefix"),
                                  dict(threshold=0.8)], ids=["threshold-dual", "factor-prefix", "threshold"])
def test_patched_llada_generate_takes_fast_dllm_options(fast):
    """Fast-dLLM's keywords reach llada_generate as given, and upo_fast.generate with scorer=."""
    model = make_native_llada(vocab_size=VOCAB, mask_id=MASK)
    ids, mask = left_padded_batch([5, 3, 6], 10, 300, PAD)
    schedule = dict(steps=8, gen_length=16, block_length=8)
    want = upo_fast.llada_generate(model, ids, mask, mask_id=MASK, **schedule, **fast)
    upo_fast.patch(model)
    assert torch.equal(model.generate(ids, attention_mask=mask, mask_id=MASK, **schedule, **fast), want)
    scored = model.generate(ids, mask, scorer="margin", **schedule, **fast)
    assert torch.equal(scored, upo_fast.generate(model, ids, mask, scorer="margin", **schedule, **fast))


def test_patched_llada_cache_on_a_model_without_one_is_the_samplers_error():
    """The stand-in's parameters have no native twin (no KV cache): both routes raise the sampler's error."""
    model = upo_fast.patch(make_llada_like(vocab_size=VOCAB, mask_id=MASK))
    ids = torch.randint(10, 300, (1, 5))
    with pytest.raises(ValueError, match="native"):
        model.generate(ids, steps=8, gen_length=16, block_length=8, scorer="max_confidence", cache="dual")
    with pytest.raises(ValueError, match="native"):
        model.generate(ids, steps=8, gen_length=16, block_length=8, cache="dual")


@pytest.mark.parametrize("dual_cache", [False, True])
def test_patched_dream_diffusion_generate_takes_fast_dllm_options(dual_cache):
    """Fast-dLLM's Dream keywords (block_length, dual_cache, threshold, alg="confidence_threshold") reach
    dream_generate as given."""
    model = make_native_dream(vocab_size=VOCAB, mask_id=MASK, pad_id=PAD)
    ids, mask = left_padded_batch([4, 6], 10, 300, PAD)
    options = dict(max_new_tokens=16, steps=16, block_length=8, dual_cache=dual_cache, threshold=0.9,
                   alg="confidence_threshold")
    want = upo_fast.dream_generate(model, ids.clone(), mask.clone(), generation_config=model.generation_config,
                                   **options)
    upo_fast.patch(model)
    assert torch.equal(model.diffusion_generate(ids, attention_mask=mask, **options), want)


@pytest.mark.parametrize("factory", DREAM_FACTORIES, ids=["standin", "native"])
@pytest.mark.parametrize("alg", ["maskgit_plus", "entropy"])
def test_patched_dream_diffusion_generate_gives_the_reference_tokens(factory, alg):
    model = factory(vocab_size=VOCAB, mask_id=MASK, pad_id=PAD)
    ids, mask = left_padded_batch([4, 6], 10, 300, PAD)
    options = dict(max_new_tokens=8, steps=6, alg=alg, return_dict_in_generate=True, output_history=True)
    want = dream_generate_reference(model, ids.clone(), mask.clone(), **options)
    upo_fast.patch(model)
    got = model.diffusion_generate(ids, attention_mask=mask, **options)
    assert torch.equal(got.sequences, want.sequences)
    assert len(got.history) == len(want.history) == 6
    plain = model.diffusion_generate(inputs=ids, attention_mask=mask, max_new_tokens=8, steps=6, alg=alg)
    assert torch.is_tensor(plain) and torch.equal(plain, want.sequences)


def test_dream_uses_the_models_generation_config_as_defaults():
    from transformers import GenerationConfig

    model = make_native_dream(vocab_size=VOCAB, mask_id=MASK, pad_id=PAD)
    model.generation_config = GenerationConfig(mask_token_id=model.config.mask_token_id, steps=4,
                                               max_new_tokens=6, alg="entropy")
    ids = torch.randint(10, 300, (1, 5))
    upo_fast.patch(model)
    got = model.diffusion_generate(ids)
    want = dream_generate_reference(model, ids.clone(), None, max_new_tokens=6, steps=4, alg="entropy")
    assert got.shape == (1, 11) and torch.equal(got, want)


def test_patch_twice_then_unpatch_restores_the_original():
    model = make_llada_like(vocab_size=VOCAB, mask_id=MASK)
    own = lambda *a, **k: "the user's own generate"  # noqa: E731 - an attribute the instance had before
    model.generate = own
    upo_fast.patch(model)
    patched = model.generate
    upo_fast.patch(model)
    assert model.generate == patched and model.generate is not own
    assert upo_fast.unpatch(model) is model and model.generate is own and not is_patched(model)
    assert upo_fast.unpatch(model) is model  # not patched: nothing to do
    dream = make_dream_like(vocab_size=VOCAB, mask_id=MASK, pad_id=PAD)
    had = hasattr(dream, "diffusion_generate")
    upo_fast.unpatch(upo_fast.patch(dream))
    assert hasattr(dream, "diffusion_generate") == had and "diffusion_generate" not in vars(dream)


def test_unknown_models_are_refused_naming_what_is_supported():
    from upo_fast.models import TinyMDM, TinyMDMConfig

    tiny = TinyMDM(TinyMDMConfig(vocab_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=8, mask_token_id=7))
    for model in (tiny, torch.nn.Linear(2, 2)):
        with pytest.raises(ValueError, match="supports LLaDA and Dream"):
            upo_fast.patch(model)
