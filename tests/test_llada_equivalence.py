"""``upo_fast.llada_generate`` (and ``upo_fast.generate`` with the max-confidence scorer) must reproduce LLaDA's
``generate()`` token for token at temperature 0, batched with left padding.

The ground truth is ``reference_samplers.llada_generate_reference`` run on tiny random LLaDA-shaped models
(``tiny_models``).  Every case first checks that it is well posed (no exact confidence tie at a top-k boundary,
every mask filled) and, where a feature is switched on, that the reference output actually depends on it, so that
equality is not vacuous.
"""

import pytest
import torch
from native_factories import make_native_llada
from reference_samplers import llada_generate_reference
from tiny_models import (
    LLADA_EOS_ID,
    LLADA_EOT_ID,
    LLADA_MASK_ID,
    left_padded_batch,
    make_llada_like,
)

import upo_fast

VOCAB, MASK = 320, 317  # small vocabulary with a non-default mask id
PAD = 0
LENGTHS = (5, 3, 7)  # three prompts, left padded to width 7



@pytest.fixture(scope="module", params=[make_llada_like, make_native_llada], ids=["standin", "native"])
def factory(request):
    """Every test runs on the stand-in and on the project's native LLaDA (``upo_fast.models.llada``)."""
    return request.param


@pytest.fixture(scope="module")
def model(factory):
    return factory(vocab_size=VOCAB, mask_id=MASK, seed=1)


@pytest.fixture(scope="module")
def tied_model(factory):
    return factory(vocab_size=VOCAB, mask_id=MASK, seed=2, weight_tying=True)


@pytest.fixture(scope="module")
def batch():
    return left_padded_batch(LENGTHS, 1, 300, PAD, seed=0)


def reference(model, prompt, attention_mask=None, seed=0, check_ties=True, allow_masks=False, **kwargs):
    trace = []
    torch.manual_seed(seed)
    out = llada_generate_reference(model, prompt.clone(), None if attention_mask is None else attention_mask.clone(),
                                   trace=trace, **kwargs)
    mask_id = kwargs.get("mask_id", LLADA_MASK_ID)
    if not allow_masks:
        assert not (out == mask_id).any(), "reference left masks behind: bad test case"
    if check_ties:
        assert not any(rec["tie"] for rec in trace), "exact confidence tie at a top-k boundary: ill-posed case"
    return out, trace


def ours(model, prompt, attention_mask=None, seed=0, **kwargs):
    prompt_before = prompt.clone()
    mask_before = None if attention_mask is None else attention_mask.clone()
    torch.manual_seed(seed)
    out = upo_fast.llada_generate(model, prompt, attention_mask, **kwargs)
    assert torch.equal(prompt, prompt_before), "llada_generate modified the prompt in place"
    if attention_mask is not None:
        assert torch.equal(attention_mask, mask_before), "llada_generate modified the attention mask in place"
    return out


def assert_same(model, prompt, attention_mask=None, seed=0, allow_masks=False, check_rng=False, **kwargs):
    """Same tokens; with ``check_rng`` also the same amount of the global RNG stream consumed."""
    ref, trace = reference(model, prompt, attention_mask, seed=seed, allow_masks=allow_masks, **kwargs)
    ref_next = torch.rand(4)
    got = ours(model, prompt, attention_mask, seed=seed, **kwargs)
    our_next = torch.rand(4)
    if check_rng:
        assert torch.equal(ref_next, our_next), "llada_generate consumed the global RNG differently from LLaDA"
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert got.dtype == torch.long
    assert torch.equal(got.cpu(), ref.cpu()), f"token mismatch at {(got.cpu() != ref.cpu()).nonzero().tolist()}"
    return ref, trace


# ---------------------------------------------------------------------------------------------------------------
# plain low-confidence remasking
# ---------------------------------------------------------------------------------------------------------------


def test_batch_left_padded_with_mask(factory, model, batch):
    ids, am = batch
    ref, _ = assert_same(model, ids, am, steps=8, gen_length=16, block_length=8, mask_id=MASK)
    unmasked, _ = reference(model, ids, None, steps=8, gen_length=16, block_length=8, mask_id=MASK)
    if factory is make_native_llada:
        # as in the official LLaDA code, attention ignores the padding mask: it must change nothing
        assert torch.equal(ref, unmasked)
    else:  # the stand-in honours the mask, and it matters here, so a mask bug would show
        assert not torch.equal(ref, unmasked)
    assert torch.equal(ref[:, : ids.shape[1]], ids)


def test_single_prompt_without_mask(model, batch):
    ids, _ = batch
    prompt = ids[2:3]  # the unpadded row
    assert_same(model, prompt, None, steps=8, gen_length=16, block_length=16, mask_id=MASK)


def test_batch_without_mask_equal_lengths(model):
    ids, _ = left_padded_batch((6, 6), 1, 300, PAD, seed=5)
    assert_same(model, ids, None, steps=6, gen_length=12, block_length=4, mask_id=MASK)


def test_all_ones_mask_same_as_no_mask(model):
    ids, am = left_padded_batch((6, 6), 1, 300, PAD, seed=5)
    assert am.all()
    ref, _ = reference(model, ids, None, steps=6, gen_length=12, block_length=4, mask_id=MASK)
    got = ours(model, ids, am, steps=6, gen_length=12, block_length=4, mask_id=MASK)
    assert torch.equal(got.cpu(), ref.cpu())


@pytest.mark.parametrize(
    "gen_length, block_length, steps",
    [
        (24, 8, 9),  # 3 steps per block, 8 % 3 = 2 -> counts 3, 3, 2
        (20, 10, 8),  # 4 steps per block, 10 % 4 = 2 -> counts 3, 3, 2, 2
        (15, 5, 6),  # 2 steps per block, 5 % 2 = 1 -> counts 3, 2
        (16, 16, 5),  # one block, 16 % 5 = 1 -> counts 4, 3, 3, 3, 3
    ],
)
def test_uneven_schedules_several_blocks(model, batch, gen_length, block_length, steps):
    ids, am = batch
    assert block_length % (steps // (gen_length // block_length)) != 0
    assert_same(model, ids, am, steps=steps, gen_length=gen_length, block_length=block_length, mask_id=MASK)


def test_more_steps_than_block_tokens(model, batch):
    # 6 steps per block of 4 tokens: counts 1, 1, 1, 1, 0, 0 -- zero-transfer steps are legal in LLaDA
    ids, am = batch
    assert_same(model, ids, am, steps=12, gen_length=8, block_length=4, mask_id=MASK)


def test_uneven_schedule_changes_the_result(model, batch):
    ids, am = batch
    a, _ = reference(model, ids, am, steps=9, gen_length=24, block_length=8, mask_id=MASK)
    b, _ = reference(model, ids, am, steps=24, gen_length=24, block_length=8, mask_id=MASK)
    assert not torch.equal(a, b)


def test_tied_head(tied_model, batch):
    ids, am = batch
    assert "ff_out" not in tied_model.model.transformer
    assert_same(tied_model, ids, am, steps=8, gen_length=16, block_length=8, mask_id=MASK)


# ---------------------------------------------------------------------------------------------------------------
# classifier-free guidance
# ---------------------------------------------------------------------------------------------------------------


def test_cfg_with_mask(model, batch):
    ids, am = batch
    ref, _ = assert_same(model, ids, am, steps=8, gen_length=16, block_length=8, cfg_scale=1.5, mask_id=MASK)
    plain, _ = reference(model, ids, am, steps=8, gen_length=16, block_length=8, mask_id=MASK)
    assert not torch.equal(ref, plain), "cfg must change this case"


def test_cfg_single_prompt_without_mask(model, batch):
    # upstream cannot run cfg without a mask (undefined name); the reference runs it unmasked
    ids, _ = batch
    assert_same(model, ids[2:3], None, steps=6, gen_length=12, block_length=6, cfg_scale=0.7, mask_id=MASK)


# ---------------------------------------------------------------------------------------------------------------
# random remasking
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gen_length, block_length, steps",
    [(16, 8, 8), (24, 8, 9), (8, 4, 12)],
)
def test_random_remasking_same_seed(model, batch, gen_length, block_length, steps):
    ids, am = batch
    kwargs = dict(steps=steps, gen_length=gen_length, block_length=block_length, remasking="random", mask_id=MASK)
    ref, _ = assert_same(model, ids, am, seed=123, check_rng=True, **kwargs)
    conf, _ = reference(model, ids, am, steps=steps, gen_length=gen_length, block_length=block_length,
                        mask_id=MASK)
    assert not torch.equal(ref, conf), "random and low_confidence remasking must differ here"
    other_seed, _ = reference(model, ids, am, seed=321, **kwargs)
    assert not torch.equal(ref, other_seed), "the seed must matter for random remasking"


# ---------------------------------------------------------------------------------------------------------------
# eos / eot handling (real vocabulary so that the hard-coded ids exist)
# ---------------------------------------------------------------------------------------------------------------


EOS_FLAGS = {
    "plain": {},
    "logits": dict(logits_eos_inf=True),
    "confidence": dict(confidence_eos_eot_inf=True),
    "both": dict(logits_eos_inf=True, confidence_eos_eot_inf=True),
}


def _eos_runs(model, ids, am):
    runs = {}
    for name, flags in EOS_FLAGS.items():
        trace = []
        out = llada_generate_reference(model, ids, am, trace=trace, **EOS_KW, **flags)
        runs[name] = (out, trace)
    return runs


def _eos_case_is_informative(runs) -> bool:
    """Every flag combination must be tie-free, let eos/eot win somewhere, and change the result."""
    if any(rec["tie"] for _, trace in runs.values() for rec in trace):
        return False
    out = {name: o for name, (o, _) in runs.items()}
    return (
        _count(runs["plain"][1], "eos_argmax") > 0
        and _count(runs["confidence"][1], "eos_argmax") > 0
        and _count(runs["confidence"][1], "eot_argmax") > 0
        and _count(runs["both"][1], "eot_argmax") > 0
        and not torch.equal(out["logits"], out["plain"])
        and not torch.equal(out["confidence"], out["plain"])
        and not torch.equal(out["both"], out["logits"])
    )


@pytest.fixture(scope="module")
def eos_model(factory):
    """Real-vocabulary LLaDA-like model (hidden 16) whose eos and eot head rows copy those of two tokens that are
    the argmax at a few generated positions, so eos/eot win there without flooding the output.  The pair is the
    first (in a fixed order) for which every flag setting is informative (see ``_eos_case_is_informative``)."""
    ids, am = eos_batch()
    for seed in (3, 4, 5):
        model = _eos_model_for_seed(factory, seed, ids, am)
        if model is not None:
            return model
    pytest.fail("no informative eos/eot configuration found: bad fixture")


def _eos_model_for_seed(factory, seed, ids, am):
    probe = factory(seed=seed, hidden=16)
    gen = EOS_KW["gen_length"]
    x = torch.cat([ids, torch.full((ids.shape[0], gen), LLADA_MASK_ID)], 1)
    full_mask = torch.cat([am, torch.ones(ids.shape[0], gen, dtype=am.dtype)], 1)
    with torch.no_grad():
        top = probe(x, attention_mask=full_mask).logits[:, ids.shape[1]:].argmax(-1).flatten()
    tokens, counts = top.unique(return_counts=True)
    ranked = [tok for _, tok in sorted(zip(counts.tolist(), tokens.tolist()), key=lambda ct: (-ct[0], ct[1]))]
    # Without learned positions (the native model) the first forward predicts few distinct tokens at the all-mask
    # positions; the tokens a plain run commits in later steps extend the candidates.
    plain = llada_generate_reference(probe, ids, am, **EOS_KW)[:, ids.shape[1]:].flatten().tolist()
    ranked += sorted(set(plain) - set(ranked), key=lambda tok: (-plain.count(tok), tok))
    # the two most frequent argmax tokens make eos/eot win nearly everywhere (ties at confidence 0): skip them
    for i in range(2, len(ranked)):
        for j in range(2, len(ranked)):
            if i == j:
                continue
            model = factory(seed=seed, hidden=16)
            with torch.no_grad():
                head = model.model.transformer["ff_out"].weight
                head[LLADA_EOS_ID] = head[ranked[i]] * 1.02
                head[LLADA_EOT_ID] = head[ranked[j]] * 1.02
            if _eos_case_is_informative(_eos_runs(model, ids, am)):
                return model
    return None


def eos_batch():
    return left_padded_batch((4, 6), 0, 126000, LLADA_EOS_ID, seed=1)


EOS_KW = dict(steps=4, gen_length=16, block_length=8)


def _count(trace, key):
    return sum(rec[key] for rec in trace)


def test_logits_eos_inf(eos_model):
    ids, am = eos_batch()
    plain, trace = reference(eos_model, ids, am, **EOS_KW)
    assert _count(trace, "eos_argmax") > 0, "eos must win somewhere for the flag to matter"
    ref, _ = assert_same(eos_model, ids, am, logits_eos_inf=True, **EOS_KW)
    assert not (ref[:, ids.shape[1]:] == LLADA_EOS_ID).any()
    assert not torch.equal(ref, plain)


def test_confidence_eos_eot_inf(eos_model):
    ids, am = eos_batch()
    plain, _ = reference(eos_model, ids, am, **EOS_KW)
    ref, trace = assert_same(eos_model, ids, am, confidence_eos_eot_inf=True, **EOS_KW)
    assert _count(trace, "eos_argmax") > 0 and _count(trace, "eot_argmax") > 0
    assert not torch.equal(ref, plain)


def test_both_eos_flags(eos_model):
    ids, am = eos_batch()
    ref, trace = assert_same(eos_model, ids, am, logits_eos_inf=True, confidence_eos_eot_inf=True, **EOS_KW)
    assert _count(trace, "eot_argmax") > 0
    only_logits, _ = reference(eos_model, ids, am, logits_eos_inf=True, **EOS_KW)
    assert not torch.equal(ref, only_logits), "eot's confidence must matter on top of logits_eos_inf"


def test_eos_ids_are_keywords_for_small_vocabularies(model, batch):
    # With a small vocabulary the eos/eot ids are passed explicitly.  eos := the most frequent generated token
    # (so logits_eos_inf matters); eot := a rarer one whose zero confidence causes no top-k boundary tie.
    ids, am = batch
    base = dict(steps=8, gen_length=16, block_length=8, mask_id=MASK)
    plain, _ = reference(model, ids, am, **base)
    tokens, counts = plain[:, ids.shape[1]:].flatten().unique(return_counts=True)
    ranked = [tok for _, tok in sorted(zip(counts.tolist(), tokens.tolist()), key=lambda ct: (-ct[0], ct[1]))]
    eos = ranked[0]
    for eot in reversed(ranked[1:]):
        trace = []
        llada_generate_reference(model, ids, am, logits_eos_inf=True, confidence_eos_eot_inf=True, eos_id=eos,
                                 eot_id=eot, trace=trace, **base)
        if _count(trace, "eot_argmax") > 0 and not any(rec["tie"] for rec in trace):
            break
    else:
        pytest.fail("no usable eot candidate: bad fixture")
    ref, trace = assert_same(model, ids, am, logits_eos_inf=True, confidence_eos_eot_inf=True, eos_id=eos,
                             eot_id=eot, **base)
    assert not (ref[:, ids.shape[1]:] == eos).any()
    assert not torch.equal(ref, plain)


# ---------------------------------------------------------------------------------------------------------------
# a model that sometimes predicts [MASK] itself
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("remasking", ("low_confidence", "random"))
def test_model_that_predicts_the_mask_token(factory, batch, remasking):
    """Upstream commits whatever the argmax is, [MASK] included: such a position stays masked, and masks left in
    an earlier block remain candidates (with their own argmax) in every later block.  The mask token's head row
    is made a copy of a commonly generated token's row (the first, by frequency, for which [MASK] is left in the
    output without a top-k tie), so [MASK] wins at some positions."""
    ids, am = batch
    base = dict(steps=8, gen_length=16, block_length=8, mask_id=MASK, remasking=remasking)
    plain, _ = reference(factory(vocab_size=VOCAB, mask_id=MASK, seed=1), ids, am, **base)
    tokens, counts = plain[:, ids.shape[1]:].flatten().unique(return_counts=True)
    ranked = [tok for _, tok in sorted(zip(counts.tolist(), tokens.tolist()), key=lambda ct: (-ct[0], ct[1]))]
    for tok in ranked:
        model = factory(vocab_size=VOCAB, mask_id=MASK, seed=1)
        with torch.no_grad():
            head = model.model.transformer["ff_out"].weight
            head[MASK] = head[tok] * 1.02
        trace = []
        torch.manual_seed(0)
        out = llada_generate_reference(model, ids, am, trace=trace, **base)
        if (out[:, ids.shape[1]:] == MASK).any() and not any(rec["tie"] for rec in trace):
            break
    else:
        pytest.fail("no token makes the model predict [MASK]: bad fixture")
    assert_same(model, ids, am, seed=0, allow_masks=True, **base)


# ---------------------------------------------------------------------------------------------------------------
# the generic sampler with the max-confidence scorer is LLaDA's low-confidence remasking
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gen_length, block_length, steps", [(16, 8, 8), (24, 8, 9)])
def test_generate_max_confidence_matches_llada_generate(model, batch, gen_length, block_length, steps):
    ids, am = batch
    ref, _ = reference(model, ids, am, steps=steps, gen_length=gen_length, block_length=block_length,
                       mask_id=MASK)
    via_llada = ours(model, ids, am, steps=steps, gen_length=gen_length, block_length=block_length, mask_id=MASK)
    torch.manual_seed(0)
    via_generate = upo_fast.generate(model, ids, am, gen_length=gen_length, block_length=block_length,
                                     steps=steps, scorer="max_confidence", temperature=0.0)
    assert via_generate.shape == ref.shape
    assert torch.equal(via_generate.cpu(), via_llada.cpu())
    assert torch.equal(via_generate.cpu(), ref.cpu())
