"""``upo_fast.dream_generate`` must reproduce Dream's ``diffusion_generate`` token for token at temperature 0,
for every unmasking algorithm, batched with left padding.

The ground truth is ``reference_samplers.dream_generate_reference`` on a tiny random Dream-shaped model.  The
same ``torch.manual_seed`` is set before both calls, so the stochastic parts (the ``origin`` coin flips, the
``alg_temp`` multinomial draws) must consume the global RNG exactly as upstream does.
"""

import pytest
import torch
from native_factories import make_native_dream
from reference_samplers import dream_generate_reference
from tiny_models import left_padded_batch, make_dream_like

import upo_fast

VOCAB, MASK = 320, 317
PAD = 0
LENGTHS = (5, 3, 7)
ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")



@pytest.fixture(scope="module", params=[make_dream_like, make_native_dream], ids=["standin", "native"])
def factory(request):
    """Every test runs on the stand-in and on the project's native Dream (``upo_fast.models.dream``)."""
    return request.param


@pytest.fixture(scope="module")
def model(factory):
    return factory(vocab_size=VOCAB, mask_id=MASK, seed=2, pad_id=PAD)


@pytest.fixture(scope="module")
def sharp_model(factory):
    """A more peaked model, so that top_p=0.9 removes enough mass to reorder the confidences (the seed is the
    first for each model without an exact confidence tie under every filter setting)."""
    model = factory(vocab_size=VOCAB, mask_id=MASK, seed=5 if factory is make_dream_like else 6, pad_id=PAD)
    with torch.no_grad():
        model.lm_head.weight *= 2.0
    return model


@pytest.fixture(scope="module")
def batch():
    return left_padded_batch(LENGTHS, 1, 300, PAD, seed=0)


def _clone(t):
    return None if t is None else t.clone()


def reference(model, input_ids, attention_mask=None, seed=0, **kwargs):
    trace = []
    torch.manual_seed(seed)
    out = dream_generate_reference(model, input_ids.clone(), _clone(attention_mask), trace=trace, **kwargs)
    assert not any(rec["tie"] for rec in trace), "exact confidence tie at a top-k boundary: ill-posed case"
    return out


def ours(model, input_ids, attention_mask=None, seed=0, **kwargs):
    ids_before, mask_before = input_ids.clone(), _clone(attention_mask)
    torch.manual_seed(seed)
    out = upo_fast.dream_generate(model, input_ids, attention_mask, **kwargs)
    assert torch.equal(input_ids, ids_before), "dream_generate modified input_ids in place"
    if attention_mask is not None:
        assert torch.equal(attention_mask, mask_before), "dream_generate modified the attention mask in place"
    return out


def _seq(out):
    return out if isinstance(out, torch.Tensor) else out.sequences


def assert_same(model, input_ids, attention_mask=None, seed=0, allow_masks=False, check_rng=False, **kwargs):
    """Same tokens; with ``check_rng`` also the same amount of the global RNG stream consumed."""
    ref = reference(model, input_ids, attention_mask, seed=seed, **kwargs)
    ref_next = torch.rand(4)
    got = ours(model, input_ids, attention_mask, seed=seed, **kwargs)
    our_next = torch.rand(4)
    if check_rng:
        assert torch.equal(ref_next, our_next), "dream_generate consumed the global RNG differently from Dream"
    r, g = _seq(ref).cpu(), _seq(got).cpu()
    assert g.shape == r.shape, (g.shape, r.shape)
    assert torch.equal(g, r), f"token mismatch at {(g != r).nonzero().tolist()}"
    if not allow_masks:
        assert not (r == MASK).any(), "reference left masks behind: bad test case"
    return ref, got


# ---------------------------------------------------------------------------------------------------------------
# the four algorithms
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGS)
def test_left_padded_batch_with_mask(model, batch, alg):
    ids, am = batch
    # 12 tokens over 5 steps
    ref, _ = assert_same(model, ids, am, check_rng=alg == "origin", max_new_tokens=12, steps=5, alg=alg)
    assert torch.equal(ref[:, : ids.shape[1]], ids)
    unmasked = reference(model, ids, None, max_new_tokens=12, steps=5, alg=alg)
    assert not torch.equal(ref, unmasked), "the padding mask must matter for this case"


@pytest.mark.parametrize("alg", ALGS)
def test_unpadded_without_mask(model, alg):
    ids, am = left_padded_batch((6, 6), 1, 300, PAD, seed=4)
    assert am.all()
    assert_same(model, ids, None, max_new_tokens=10, steps=4, alg=alg)


@pytest.mark.parametrize("alg", ("origin", "entropy"))
def test_all_ones_mask_is_full_attention(model, alg):
    ids, am = left_padded_batch((6, 6), 1, 300, PAD, seed=4)
    ref = reference(model, ids, None, max_new_tokens=10, steps=4, alg=alg)
    got = ours(model, ids, am, max_new_tokens=10, steps=4, alg=alg)
    assert torch.equal(got.cpu(), ref.cpu())


def test_algorithms_differ(model, batch):
    ids, am = batch
    outs = [reference(model, ids, am, max_new_tokens=12, steps=5, alg=alg) for alg in ALGS]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert not torch.equal(outs[i], outs[j]), (ALGS[i], ALGS[j])


def test_origin_depends_on_seed(model, batch):
    ids, am = batch
    a = reference(model, ids, am, seed=0, max_new_tokens=12, steps=5, alg="origin")
    b = reference(model, ids, am, seed=1, max_new_tokens=12, steps=5, alg="origin")
    assert not torch.equal(a, b)
    assert_same(model, ids, am, seed=1, check_rng=True, max_new_tokens=12, steps=5, alg="origin")


@pytest.mark.parametrize("alg", ("origin", "maskgit_plus"))
def test_more_steps_than_tokens(model, batch, alg):
    # 6 tokens over 10 steps: several steps commit nothing (k truncates to 0)
    ids, am = batch
    assert_same(model, ids, am, max_new_tokens=6, steps=10, alg=alg)


# ---------------------------------------------------------------------------------------------------------------
# lengths
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ("origin", "topk_margin"))
def test_max_length(model, batch, alg):
    ids, am = batch
    ref, _ = assert_same(model, ids, am, check_rng=alg == "origin", max_length=ids.shape[1] + 9, steps=4, alg=alg)
    assert ref.shape == (3, ids.shape[1] + 9)


def test_max_new_tokens_takes_precedence_over_max_length(model, batch):
    ids, am = batch
    ref, _ = assert_same(model, ids, am, max_new_tokens=8, max_length=ids.shape[1] + 20, steps=4,
                         alg="maskgit_plus")
    assert ref.shape == (3, ids.shape[1] + 8)


def test_default_length_is_prompt_plus_20(model, batch):
    ids, am = batch
    ref, _ = assert_same(model, ids, am, steps=5, alg="entropy")
    assert ref.shape == (3, ids.shape[1] + 20)


# ---------------------------------------------------------------------------------------------------------------
# confidence filters and stochastic position choice
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("filters", [dict(top_p=0.9), dict(top_k=5), dict(top_p=0.9, top_k=5)])
def test_top_p_top_k_with_maskgit_plus(sharp_model, batch, filters):
    ids, am = batch
    ref, _ = assert_same(sharp_model, ids, am, max_new_tokens=12, steps=8, alg="maskgit_plus", **filters)
    plain = reference(sharp_model, ids, am, max_new_tokens=12, steps=8, alg="maskgit_plus")
    assert not torch.equal(ref, plain), "the filters must change the confidences (and the order) here"


@pytest.mark.parametrize("alg", ("maskgit_plus", "entropy"))
def test_alg_temp_same_seed(model, batch, alg):
    ids, am = batch
    ref, _ = assert_same(model, ids, am, seed=7, check_rng=True, max_new_tokens=12, steps=5, alg=alg, alg_temp=0.5)
    greedy = reference(model, ids, am, max_new_tokens=12, steps=5, alg=alg)
    other_seed = reference(model, ids, am, seed=8, max_new_tokens=12, steps=5, alg=alg, alg_temp=0.5)
    assert not torch.equal(ref, greedy)
    assert not torch.equal(ref, other_seed)


# ---------------------------------------------------------------------------------------------------------------
# outputs, hooks, num_return_sequences
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ("origin", "maskgit_plus"))
def test_return_dict_and_history(model, batch, alg):
    ids, am = batch
    kwargs = dict(max_new_tokens=10, steps=4, alg=alg, return_dict_in_generate=True, output_history=True)
    ref, got = assert_same(model, ids, am, **kwargs)
    assert ref.history is not None and len(ref.history) == 4
    assert got.history is not None and len(got.history) == len(ref.history)
    for step, (r, g) in enumerate(zip(ref.history, got.history)):
        assert torch.equal(g.cpu(), r.cpu()), f"history differs at step {step}"
    assert torch.equal(got.history[-1].cpu(), got.sequences.cpu())


def test_return_dict_without_history(model, batch):
    ids, am = batch
    ref, got = assert_same(model, ids, am, max_new_tokens=10, steps=4, alg="entropy", return_dict_in_generate=True)
    assert ref.history is None
    assert not got.history  # None (upstream) -- an empty container would also be harmless


def _hooks(prompt_width):
    calls = {"tokens": [], "logits": []}

    def tokens_hook(step, x, logits):
        calls["tokens"].append((step, logits is None))
        x[:, prompt_width + 2] = 5  # force a token on every call
        if step is not None:
            x[:, prompt_width + 3 + step] = 6  # and one more after each step (so the history sees the hook)
        return x

    def logits_hook(step, x, logits):
        calls["logits"].append(step)
        bias = torch.zeros_like(logits)
        bias[..., 7] = 3.0  # make token 7 attractive
        return logits + bias

    return calls, tokens_hook, logits_hook


@pytest.mark.parametrize("alg", ("origin", "maskgit_plus", "topk_margin"))
def test_hooks(model, batch, alg):
    ids, am = batch
    width = ids.shape[1]
    ref_calls, ref_tok, ref_log = _hooks(width)
    our_calls, our_tok, our_log = _hooks(width)
    base = dict(max_new_tokens=10, steps=4, alg=alg, return_dict_in_generate=True, output_history=True)
    ref = reference(model, ids, am, generation_tokens_hook_func=ref_tok, generation_logits_hook_func=ref_log, **base)
    got = ours(model, ids, am, generation_tokens_hook_func=our_tok, generation_logits_hook_func=our_log, **base)
    assert torch.equal(got.sequences.cpu(), ref.sequences.cpu())
    assert len(got.history) == len(ref.history) == 4
    for step, (r, g) in enumerate(zip(ref.history, got.history)):
        assert torch.equal(g.cpu(), r.cpu()), f"history differs at step {step} (is it recorded after the hook?)"
    assert (ref.sequences[:, width + 2] == 5).all()
    assert ref_calls["tokens"] == [(None, True), (0, False), (1, False), (2, False), (3, False)]
    assert ref_calls["logits"] == [0, 1, 2, 3]
    assert our_calls == ref_calls
    plain = reference(model, ids, am, **base)
    assert not torch.equal(ref.sequences, plain.sequences), "the hooks must change this case"


@pytest.mark.parametrize("alg", ("maskgit_plus", "entropy"))
def test_tokens_hook_on_one_row_only(model, batch, alg):
    """A hook that fills a position of row 0 only leaves the rows with different mask counts.  Upstream then uses
    the batch-mean count for every row (truncated), so rows can end with masks left, and a row with fewer
    masks than k gets top-k picks at -inf positions, which are written back as [MASK].  Same output expected."""
    ids, am = batch
    width = ids.shape[1]

    def one_row(step, x, logits):
        x[0, width + 1: width + 4] = 9  # row 0 ends up with 3 masks fewer than the others
        return x

    ref, _ = assert_same(model, ids, am, allow_masks=True, max_new_tokens=10, steps=4, alg=alg,
                         generation_tokens_hook_func=one_row)
    assert (ref[0, width + 1: width + 4] == 9).all()


@pytest.mark.parametrize("alg", ("origin", "maskgit_plus"))
def test_num_return_sequences(model, batch, alg):
    ids, am = batch
    ref, _ = assert_same(model, ids, am, seed=3, check_rng=alg == "origin", max_new_tokens=10, steps=4, alg=alg,
                         num_return_sequences=2)
    assert ref.shape[0] == 2 * ids.shape[0]
    assert torch.equal(ref[0::2, : ids.shape[1]], ids) and torch.equal(ref[1::2, : ids.shape[1]], ids)
    if alg == "origin":  # copies of a prompt draw different coins, so they should not all agree
        assert not torch.equal(ref[0::2], ref[1::2])
    else:  # greedy: copies agree
        assert torch.equal(ref[0::2], ref[1::2])


@pytest.mark.parametrize("alg", ("maskgit_plus", "entropy", "origin"))
def test_model_that_predicts_the_mask_token(factory, batch, alg):
    """Upstream commits whatever the argmax is, [MASK] included: such a position stays masked, and the next
    step's count is computed from the masks actually left.  The mask token's head row is made a copy of a
    commonly generated token's row (the first, by frequency, for which [MASK] does win somewhere without a
    top-k tie), so [MASK] wins at some positions."""
    ids, am = batch
    plain = reference(factory(vocab_size=VOCAB, mask_id=MASK, seed=2, pad_id=PAD), ids, am,
                      max_new_tokens=12, steps=5, alg=alg)
    tokens, counts = plain[:, ids.shape[1]:].flatten().unique(return_counts=True)
    ranked = [tok for _, tok in sorted(zip(counts.tolist(), tokens.tolist()), key=lambda ct: (-ct[0], ct[1]))]
    for tok in ranked:
        model = factory(vocab_size=VOCAB, mask_id=MASK, seed=2, pad_id=PAD)
        with torch.no_grad():
            model.lm_head.weight[MASK] = model.lm_head.weight[tok] * 1.02
        trace = []
        torch.manual_seed(0)
        out = dream_generate_reference(model, ids, am, trace=trace, max_new_tokens=12, steps=5, alg=alg)
        if (out[:, ids.shape[1]:] == MASK).any() and not any(rec["tie"] for rec in trace):
            break
    else:
        pytest.fail("no token makes the model predict [MASK]: bad fixture")
    assert_same(model, ids, am, allow_masks=True, max_new_tokens=12, steps=5, alg=alg)
