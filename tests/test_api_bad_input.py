"""Bad numbers and bad model outputs at the public samplers (unmask, generate, llada_generate, dream_generate):
a ValueError that names the argument (or the step at which the model or policy went non-finite), never a
silent pad id, mask token or token 0."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import make_dream_like, make_llada_like

import upo_fast
from upo_fast import ops
from upo_fast.kernels.vocab_stats import check_stat_options, vocab_stats_ref
from upo_fast.validation import check_finite

VOCAB, MASK = 13, 12
NAN, INF = float("nan"), float("inf")
BAD_NUMBERS = [NAN, INF, -INF, -1.0, "0.5", torch.tensor(0.5), True, None]


@pytest.fixture(scope="module")
def tiny_mdm():
    from upo_fast.models import TinyMDM, TinyMDMConfig

    torch.manual_seed(0)
    config = TinyMDMConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=32, mask_token_id=MASK)
    return TinyMDM(config).eval()


@pytest.fixture(scope="module")
def llada():
    return make_llada_like(vocab_size=64, mask_id=63, seed=0, hidden=16, n_layers=1)


@pytest.fixture(scope="module")
def dream():
    return make_dream_like(vocab_size=64, mask_id=63, seed=0, pad_id=0, hidden=16, n_layers=1)


def masked_x():
    x = torch.arange(8).remainder(MASK).repeat(2, 1)
    x[:, ::2] = MASK
    return x


PROMPT = torch.tensor([[5, 6, 7]])


# ------------------------------------------------------------------------------------------------------------
# the helper
# ------------------------------------------------------------------------------------------------------------


def test_check_finite_accepts_numbers_in_range_and_names_the_argument_otherwise():
    assert check_finite(0, "t", low=0) == 0 and check_finite(2.5, "t", low=0) == 2.5
    assert check_finite(None, "t", allow_none=True) is None
    assert check_finite(1, "p", low=0, low_inclusive=False, high=1) == 1
    for bad in [NAN, INF, -INF, "1", torch.tensor(1.0), True, None, 1 + 0j]:
        with pytest.raises(ValueError, match=r"^t must be a finite number >= 0, got "):
            check_finite(bad, "t", low=0)
    with pytest.raises(ValueError, match=r"p must be a finite number in \(0, 1\] or None, got 0"):
        check_finite(0, "p", low=0, low_inclusive=False, high=1, allow_none=True)
    with pytest.raises(ValueError, match=r"k must be an integer >= 1, got 2.0"):
        check_finite(2.0, "k", low=1, integer=True)


@pytest.mark.parametrize("name, value", [("temperature", NAN), ("temperature", INF), ("temperature", -1.0),
                                         ("temperature", "1"), ("ref_tau", NAN), ("ref_tau", 0.0),
                                         ("ref_tau", INF)])
def test_statistics_options_are_checked(name, value):
    with pytest.raises(ValueError, match=f"{name} must be"):
        vocab_stats_ref(torch.randn(2, 5), topk=2, **{name: value})
    with pytest.raises(ValueError, match=f"{name} must be"):
        check_stat_options(4, 5, **{"temperature": 0.0, "ref_tau": 0.05, name: value})
    if name == "temperature":  # the public entry point checks before routing
        with pytest.raises(ValueError, match="temperature must be"):
            ops.vocab_stats(torch.randn(2, 5), topk=2, temperature=value)


def test_kernel_checks_bound_the_fp32_range():
    with pytest.raises(ValueError, match="temperature must be a finite number in"):
        check_stat_options(4, 5, 1e35, 0.05)
    with pytest.raises(ValueError, match="ref_tau must be a finite number >= 1e-30"):
        check_stat_options(4, 5, 1.0, 1e-40)


# ------------------------------------------------------------------------------------------------------------
# unmask / generate
# ------------------------------------------------------------------------------------------------------------

SAMPLER_OPTIONS = {  # name: (bad values, what the message says is valid)
    "temperature": ([NAN, INF, -INF, -1.0, "0.5", torch.tensor(0.5), True, None], "a finite number >= 0"),
    "position_temperature": ([NAN, INF, -1.0, "1", torch.tensor(1.0), False, None], "a finite number >= 0"),
    "cfg_scale": ([NAN, INF, -0.5, "1", torch.tensor(1.0), True, None], "a finite number >= 0"),
    "threshold": ([NAN, INF, 0.0, -1.0, 1.5, "0.9", torch.tensor(0.9), True], r"a finite number in \(0, 1\] or None"),
    "factor": ([NAN, INF, 0.0, -1.0, "1", torch.tensor(1.0), True], "a finite number > 0 or None"),
    "topk": ([0, -1, 2.0, NAN, "3", True, None], "an integer >= 1"),
}
CASES = [(name, value, valid) for name, (values, valid) in SAMPLER_OPTIONS.items() for value in values]


@pytest.mark.parametrize("name, value, valid", CASES, ids=[f"{n}={v!r}" for n, v, _ in CASES])
def test_unmask_and_generate_refuse_bad_numbers(tiny_mdm, name, value, valid):
    with pytest.raises(ValueError, match=f"^{name} must be {valid}, got "):
        upo_fast.unmask(tiny_mdm, masked_x(), **{name: value})
    with pytest.raises(ValueError, match=f"^{name} must be {valid}, got "):
        upo_fast.generate(tiny_mdm, PROMPT, gen_length=4, block_length=4, steps=2, mask_id=MASK, **{name: value})


def test_options_are_checked_even_with_nothing_to_unmask(tiny_mdm):
    with pytest.raises(ValueError, match="temperature must be"):
        upo_fast.unmask(tiny_mdm, torch.zeros(1, 4, dtype=torch.long), temperature=NAN)


@pytest.mark.parametrize("kwargs, message", [
    ({"gen_length": 0}, "gen_length must be an integer >= 1"),
    ({"gen_length": -4}, "gen_length must be an integer >= 1"),
    ({"gen_length": 4.0}, "gen_length must be an integer >= 1"),
    ({"block_length": 0}, "block_length must be an integer >= 1"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"steps": -2}, "steps must be an integer >= 1"),
    ({"steps": "2"}, "steps must be an integer >= 1"),
])
def test_generate_refuses_bad_lengths(tiny_mdm, kwargs, message):
    with pytest.raises(ValueError, match=message):
        upo_fast.generate(tiny_mdm, PROMPT, mask_id=MASK, **{"gen_length": 4, "block_length": 4, "steps": 2,
                                                            **kwargs})


@pytest.mark.parametrize("steps", [0, -1, True, 2.0, "2"])
def test_unmask_refuses_bad_steps(tiny_mdm, steps):
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, "):
        upo_fast.unmask(tiny_mdm, masked_x(), steps=steps)


def test_huge_but_finite_options_are_valid(tiny_mdm):
    g = torch.Generator().manual_seed(0)
    for kwargs in [dict(temperature=1e300), dict(temperature=1e-300), dict(position_temperature=1e300,
                   scorer="random"), dict(factor=1e300), dict(topk=10**9, scorer="topk"), dict(threshold=1)]:
        out = upo_fast.unmask(tiny_mdm, masked_x(), generator=g, **kwargs)
        assert not (out == MASK).any(), kwargs


@pytest.mark.parametrize("bad", [2, -1, 3])
def test_attention_mask_values_other_than_0_and_1(tiny_mdm, llada, dream, bad):
    am = torch.tensor([[1, 1, bad]])
    with pytest.raises(ValueError, match=f"attention_mask must hold only 0 .* and 1 .*, found {bad}"):
        upo_fast.generate(tiny_mdm, PROMPT, am, gen_length=4, block_length=4, steps=2, mask_id=MASK)
    with pytest.raises(ValueError, match=f"found {bad}"):
        upo_fast.unmask(tiny_mdm, masked_x()[:1, :3], am)
    with pytest.raises(ValueError, match=f"found {bad}"):
        upo_fast.llada_generate(llada, PROMPT, am, steps=4, gen_length=4, block_length=4, mask_id=63)
    with pytest.raises(ValueError, match=f"found {bad}"):
        upo_fast.dream_generate(dream, PROMPT, am, max_new_tokens=4, steps=4)


def test_attention_mask_found_values_listed_and_float_refused(tiny_mdm):
    with pytest.raises(ValueError, match="found -3, 2, 7"):
        upo_fast.unmask(tiny_mdm, masked_x()[:, :4], torch.tensor([[1, 2, 7, 1], [0, 1, -3, 2]]))
    with pytest.raises(ValueError, match="attention_mask must be a bool or integer 0/1 tensor, got dtype"):
        upo_fast.unmask(tiny_mdm, masked_x()[:, :4], torch.ones(2, 4))
    out = upo_fast.unmask(tiny_mdm, masked_x()[:, :4], torch.ones(2, 4, dtype=torch.bool))  # bool is fine
    assert not (out == MASK).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.bool])
def test_token_ids_of_another_dtype_are_named_by_dtype(tiny_mdm, llada, dream, dtype):
    ids = PROMPT.to(dtype)
    message = rf"must be integer token ids \(torch.int64 or torch.int32\), got dtype {dtype}"
    with pytest.raises(ValueError, match=f"input_ids {message}"):
        upo_fast.generate(tiny_mdm, ids, gen_length=4, block_length=4, steps=2, mask_id=MASK)
    with pytest.raises(ValueError, match=message):
        upo_fast.unmask(tiny_mdm, masked_x().to(dtype))
    with pytest.raises(ValueError, match=f"prompt {message}"):
        upo_fast.llada_generate(llada, ids, steps=4, gen_length=4, block_length=4, mask_id=63)
    with pytest.raises(ValueError, match=f"input_ids {message}"):
        upo_fast.dream_generate(dream, ids, max_new_tokens=4, steps=4)
    with pytest.raises(ValueError, match=r"must be a \[batch, length\] integer tensor, got shape \(3,\)"):
        upo_fast.generate(tiny_mdm, PROMPT[0], gen_length=4, block_length=4, steps=2, mask_id=MASK)


# ------------------------------------------------------------------------------------------------------------
# llada_generate / dream_generate options
# ------------------------------------------------------------------------------------------------------------

LLADA_CASES = [("temperature", v) for v in [NAN, INF, -INF, -1.0, "0", torch.tensor(0.0), True, None]] + \
              [("cfg_scale", v) for v in [NAN, INF, -1.0, "0", torch.tensor(1.0), False]] + \
              [("steps", v) for v in [0, -4, 4.0]] + [("gen_length", v) for v in [0, -8]] + \
              [("block_length", v) for v in [0, -8]]


@pytest.mark.parametrize("name, value", LLADA_CASES, ids=[f"{n}={v!r}" for n, v in LLADA_CASES])
def test_llada_generate_refuses_bad_numbers(llada, name, value):
    args = {"steps": 4, "gen_length": 8, "block_length": 8, "mask_id": 63, name: value}
    with pytest.raises(ValueError, match=f"^{name} must be "):
        upo_fast.llada_generate(llada, PROMPT, **args)


DREAM_CASES = (
    [("temperature", v) for v in [NAN, INF, -INF, -1.0, "0", torch.tensor(0.0), True]]
    + [("top_p", v) for v in [NAN, INF, 0.0, -0.5, 1.5, "0.9", torch.tensor(0.9), True]]
    + [("top_k", v) for v in [0, -1, 2.5, NAN, INF, "5", True]]
    + [("alg_temp", v) for v in [NAN, INF, -1.0, "0.1", torch.tensor(0.1), True]]
    + [("eps", v) for v in [NAN, INF, 0.0, 1.0, -0.1, "1e-3", True]]
    + [("num_return_sequences", v) for v in [0, -1, 2.0, "2", True, None]]
    + [("steps", v) for v in [0, -1, 2.0, NAN]]
    + [("max_new_tokens", v) for v in [0, -1, 2.5, "4"]]
)


@pytest.mark.parametrize("name, value", DREAM_CASES, ids=[f"{n}={v!r}" for n, v in DREAM_CASES])
def test_dream_generate_refuses_bad_numbers(dream, name, value):
    kwargs = {"max_new_tokens": 4, "steps": 4, "alg": "entropy", name: value}
    with pytest.raises(ValueError, match=f"^{name} must be "):
        upo_fast.dream_generate(dream, PROMPT, **kwargs)


def test_dream_generate_accepts_the_edges_of_the_ranges(dream):
    for kwargs in [dict(top_p=1.0), dict(top_k=1), dict(alg_temp=0.0), dict(alg_temp=None, top_p=None),
                   dict(num_return_sequences=2)]:
        out = upo_fast.dream_generate(dream, PROMPT, max_new_tokens=4, steps=4, alg="entropy", **kwargs)
        assert out.shape == (kwargs.get("num_return_sequences", 1), 7) and not (out == 63).any()


# ------------------------------------------------------------------------------------------------------------
# non-finite logits and policy scores: a ValueError naming the step
# ------------------------------------------------------------------------------------------------------------


def poison(model, at_call: int, value: float):
    """A forward hook that overwrites every logit of the ``at_call``-th forward (0-based) with ``value``."""
    calls = [0]

    def hook(module, args, output):
        if calls[0] == at_call:
            output.logits.fill_(value)
        calls[0] += 1
        return output

    return model.register_forward_hook(hook)


@pytest.mark.parametrize("value", [NAN, -INF])
@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_llada_generate_non_finite_logits_name_the_step(llada, value, remasking, temperature):
    handle = poison(llada, 5, value)  # blocks of 4 steps: the second step of the second block
    try:
        with pytest.raises(ValueError, match=r"non-finite logits .* at step 5 "):
            upo_fast.llada_generate(llada, PROMPT, steps=8, gen_length=8, block_length=4, mask_id=63,
                                    remasking=remasking, temperature=temperature)
    finally:
        handle.remove()
    out = upo_fast.llada_generate(llada, PROMPT, steps=8, gen_length=8, block_length=4, mask_id=63,
                                  remasking=remasking, temperature=temperature)  # the hook is gone: fine again
    assert out.shape == (1, 11)


def test_llada_generate_non_finite_logits_with_cfg(llada):
    handle = poison(llada, 0, NAN)
    try:
        with pytest.raises(ValueError, match=r"at step 0 .*cfg_scale=1.0"):
            upo_fast.llada_generate(llada, PROMPT, steps=4, gen_length=4, block_length=4, mask_id=63, cfg_scale=1.0)
    finally:
        handle.remove()


@pytest.mark.parametrize("value", [NAN, -INF])
@pytest.mark.parametrize("alg", ["origin", "maskgit_plus", "topk_margin", "entropy"])
@pytest.mark.parametrize("extra", [{}, {"temperature": 1.0}, {"alg_temp": 0.5}, {"top_p": 0.9, "top_k": 5}])
def test_dream_generate_non_finite_logits_name_the_step(dream, value, alg, extra):
    handle = poison(dream, 2, value)
    try:
        with pytest.raises(ValueError, match=r"non-finite logits .* at step 2 "):
            upo_fast.dream_generate(dream, PROMPT, max_new_tokens=6, steps=6, alg=alg, **extra)
    finally:
        handle.remove()


@pytest.mark.parametrize("value", [NAN, -INF])
def test_unmask_non_finite_logits_name_the_step(tiny_mdm, value):
    handle = poison(tiny_mdm, 1, value)
    try:
        with pytest.raises(ValueError, match=r"non-finite logits .* at step 1 "):
            upo_fast.unmask(tiny_mdm, masked_x(), steps=4)
    finally:
        handle.remove()
    handle = poison(tiny_mdm, 3, value)  # generate counts its steps over all blocks
    try:
        with pytest.raises(ValueError, match=r"non-finite logits .* at step 3 "):
            upo_fast.generate(tiny_mdm, PROMPT, gen_length=8, block_length=4, steps=4, mask_id=MASK)
    finally:
        handle.remove()


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_policy_with_non_finite_scores_is_reported_with_the_step(tiny_mdm, bad):
    calls = [0]

    def policy(hidden, stats, candidates):
        scores = stats.confidence.float().clone()
        if calls[0] == 2:
            scores[candidates.nonzero()[0].tolist()] = bad  # one candidate of one row
        calls[0] += 1
        return scores

    with pytest.raises(ValueError, match=r"policy's scores were non-finite .* at step 2 "):
        upo_fast.unmask(tiny_mdm, masked_x(), steps=4, scorer="policy", policy=policy, position_temperature=0.0)
    calls[0] = -100  # never bad: the same policy passes
    out = upo_fast.unmask(tiny_mdm, masked_x(), steps=4, scorer="policy", policy=policy, position_temperature=0.0)
    assert not (out == MASK).any()


def test_policy_scores_at_non_candidates_are_not_checked(tiny_mdm):
    def policy(hidden, stats, candidates):  # whatever a policy says where nothing may be chosen is ignored
        return torch.where(candidates, stats.confidence.float(), torch.full_like(stats.confidence, NAN))

    out = upo_fast.unmask(tiny_mdm, masked_x(), steps=4, scorer="policy", policy=policy, position_temperature=1.0,
                          generator=torch.Generator().manual_seed(0))
    assert not (out == MASK).any()


# ------------------------------------------------------------------------------------------------------------
# property: any value of any sampler option raises a ValueError naming it, or the call fills every mask
# ------------------------------------------------------------------------------------------------------------

ANY_VALUE = st.one_of(
    st.sampled_from([NAN, INF, -INF, None, True, False, "1", torch.tensor(0.5), 0, 1, -1]),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(min_value=0.0, max_value=1.0),
)


def _valid(name, value):
    kind_ok = not isinstance(value, (bool, str, torch.Tensor))
    if name == "topk":
        return kind_ok and isinstance(value, int) and value >= 1
    if value is None:
        return name in ("threshold", "factor")
    if not kind_ok or not math.isfinite(value):
        return False
    if name == "threshold":
        return 0 < value <= 1
    if name == "factor":
        return value > 0
    return value >= 0


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(sorted(SAMPLER_OPTIONS)), value=ANY_VALUE, use_generate=st.booleans())
def test_property_sampler_options_raise_naming_the_argument_or_fill_every_mask(tiny_mdm, name, value,
                                                                               use_generate):
    g = torch.Generator().manual_seed(0)
    try:
        if use_generate:
            out = upo_fast.generate(tiny_mdm, PROMPT, gen_length=4, block_length=4, steps=2, mask_id=MASK,
                                    generator=g, **{name: value})
        else:
            out = upo_fast.unmask(tiny_mdm, masked_x(), generator=g, **{name: value})
    except ValueError as err:
        if _valid(name, value):  # a huge guidance scale may overflow the guided logits: said, naming it
            assert name == "cfg_scale" and f"cfg_scale={value}" in str(err) and "overflow" in str(err), str(err)
        else:
            assert str(err).startswith(f"{name} must be "), str(err)
        return
    assert _valid(name, value), f"{name}={value!r} was accepted"
    assert torch.is_tensor(out) and not (out == MASK).any()


@pytest.mark.parametrize("alg", ["origin", "entropy"])
def test_dream_names_the_step_when_distribution_validation_is_off(dream, alg):
    # torch.compile turns torch.distributions' argument validation off for the whole process; the sampling then
    # refuses NaN probabilities with a RuntimeError, which must still become the error that names the step
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        test_dream_generate_non_finite_logits_name_the_step(dream, NAN, alg, {"temperature": 1.0})
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)
