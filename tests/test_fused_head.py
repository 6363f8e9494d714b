"""The fused LM-head statistics kernel (hidden states x head weight -> VocabStats, no [R, V] logits) against the
reference on the materialized fp32 logits, on the CPU through triton's interpreter (tiny shapes and tiles: tl.dot is
slow there) or on a GPU when there is one, plus the public wrapper ``upo_fast.ops.fused_head_stats``."""

import pytest
import torch
from kernel_device import DEVICE

from upo_fast import ops
from upo_fast.kernels.fused_head import (
    fused_head_stats_ref,
    fused_head_stats_triton,
    head_logits,
)
from upo_fast.kernels.vocab_stats import (
    vocab_stats_ref,
    vocab_stats_triton,
)

FIELDS = ("confidence", "margin", "entropy", "topk_probs", "ref_logsumexp")
TILES = dict(block_r=16, block_v=32, block_d=16)  # small tiles keep the interpreter fast and make several of them
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy overflow on padded rows (interpreter)


def make_head(rows, dim, vocab, dtype, seed=0, bias=True, lead=None):
    """hidden [rows, dim] (or [*lead, dim]), weight [vocab, dim], bias [vocab] in ``dtype`` on DEVICE."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*(lead or (rows,)), dim, generator=g)
    weight = torch.randn(vocab, dim, generator=g) / dim**0.5 * 3.0
    b = torch.randn(vocab, generator=g) if bias else None
    cast = lambda x: None if x is None else x.to(dtype).to(DEVICE)
    return cast(hidden), cast(weight), cast(b)


def lowp_reference(hidden, weight, bias, rows=None, logit_scale=1.0, topk=8, **kw):
    """The reference computed by PyTorch from logits in the inputs' own dtype: the yardstick for low precision."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    if rows is not None:
        flat = flat[rows.long()]
    logits = flat @ weight.t()
    if bias is not None:
        logits = logits + bias
    return vocab_stats_ref((logits * logit_scale).float(), topk=topk, **kw)


def assert_matches(got, want, atol=1e-5, rtol=2e-5, lowp=None):
    """Tokens equal; every statistic within fp32 rounding plus 2x PyTorch's own low-precision error (if given)."""
    assert torch.equal(got.token.cpu(), want.token.cpu())
    for name in FIELDS:
        g, w = getattr(got, name).cpu(), getattr(want, name).cpu().float()
        assert g.dtype == torch.float32 and g.shape == w.shape, name
        slack = 0.0 if lowp is None else 2 * (getattr(lowp, name).cpu() - w).abs().nan_to_num(0.0).max().item()
        torch.testing.assert_close(g, w, atol=atol + slack, rtol=rtol, equal_nan=True,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dim,vocab,rows", [(16, 17, 1), (48, 17, 5), (16, 300, 5), (48, 300, 1), (16, 1030, 5),
                                            (48, 1030, 1)])
def test_matches_reference(dtype, dim, vocab, rows):
    bias = vocab != 300
    hidden, weight, b = make_head(rows, dim, vocab, dtype, seed=dim + vocab, bias=bias)
    topk = min(8, vocab)
    want = fused_head_stats_ref(hidden, weight, b, topk=topk)
    got = fused_head_stats_triton(hidden, weight, b, topk=topk, v_splits=3, **TILES)
    lowp = None if dtype == torch.float32 else lowp_reference(hidden, weight, b, topk=topk)
    assert_matches(got, want, lowp=lowp)
    # the comparison can fail: a wrong answer is far outside the tolerance
    assert (want.confidence - want.topk_probs[:, -1]).abs().min() > 1e-3


def test_results_do_not_depend_on_the_tiling_or_the_splits():
    hidden, weight, b = make_head(5, 48, 300, torch.float32, seed=1)
    want = fused_head_stats_ref(hidden, weight, b, topk=6)
    for kw in (dict(v_splits=1, **TILES), dict(v_splits=7, block_r=16, block_v=16, block_d=32), {}):
        assert_matches(fused_head_stats_triton(hidden, weight, b, topk=6, **kw), want)


def test_rows_of_a_3d_input_and_strided_views():
    full, weight, b = make_head(0, 16, 300, torch.bfloat16, seed=2, lead=(2, 9))
    hidden = full[:, 2:7]  # [B, L, d] whose batch stride is not L * row stride (the sampler's block slice)
    rows = torch.tensor([0, 4, 9, 3], device=DEVICE)
    want = fused_head_stats_ref(hidden.float(), weight, b, rows=rows, topk=5)
    lowp = lowp_reference(hidden, weight, b, rows=rows, topk=5)
    assert_matches(fused_head_stats_triton(hidden, weight, b, rows=rows, topk=5, **TILES), want, lowp=lowp)
    assert_matches(fused_head_stats_triton(hidden, weight, b, rows=rows.int(), topk=5, **TILES), want, lowp=lowp)
    # unselected rows are never read
    poisoned = full.clone()
    poisoned[0, 0] = float("nan")
    keep = torch.tensor([5, 17], device=DEVICE)
    got = fused_head_stats_triton(poisoned, weight, b, rows=keep, topk=5, **TILES)
    assert all(torch.isfinite(getattr(got, name)).all() for name in FIELDS)


def test_tied_weight_and_logit_scale():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(300, 48).to(DEVICE)  # the head shares the embedding's tensor (LLaDA's tied wte)
    hidden = torch.randn(5, 48, device=DEVICE)
    with torch.no_grad():
        got = fused_head_stats_triton(hidden, emb.weight, logit_scale=0.7, topk=8, **TILES)
        want = vocab_stats_ref((hidden @ emb.weight.t()) * 0.7, topk=8)
    assert_matches(got, want)
    assert not torch.allclose(want.entropy, fused_head_stats_ref(hidden, emb.weight.detach(), topk=8).entropy)


def test_suppress_and_exclude_anywhere_in_the_vocabulary():
    vocab = 300
    hidden, weight, b = make_head(4, 16, vocab, torch.float32, seed=3)
    b[[0, vocab - 1, 157]] += 30.0  # make the handled ids the largest, so getting them wrong shows
    suppress, exclude = [0, 157], torch.tensor([vocab - 1, 0, 3], device=DEVICE)
    want = fused_head_stats_ref(hidden, weight, b, topk=8, suppress=suppress, exclude=exclude)
    assert (want.token == vocab - 1).all()
    got = fused_head_stats_triton(hidden, weight, b, topk=8, suppress=suppress, exclude=exclude, v_splits=4, **TILES)
    assert_matches(got, want)
    every = fused_head_stats_triton(hidden[:1], weight[:17], b[:17], topk=4, suppress=list(range(17)), **TILES)
    assert every.token.item() == 0 and all(torch.isnan(getattr(every, name)).all() for name in FIELDS)


def test_need_ref_false_skips_only_the_reference_term():
    hidden, weight, b = make_head(3, 16, 100, torch.float32, seed=4)
    full = fused_head_stats_triton(hidden, weight, b, topk=4, **TILES)
    short = fused_head_stats_triton(hidden, weight, b, topk=4, need_ref=False, **TILES)
    assert torch.isnan(short.ref_logsumexp).all() and torch.isfinite(full.ref_logsumexp).all()
    for a, c in zip(full[:-1], short[:-1]):
        assert torch.equal(a, c)


def test_sampling_is_reproducible_and_draws_what_vocab_stats_draws():
    hidden, weight, b = make_head(0, 16, 300, torch.float32, seed=5, lead=(2, 4))
    weight = weight * 0.2  # flat distributions, so that samples vary
    rows = torch.tensor([6, 1, 3, 0, 5], device=DEVICE)
    draw = lambda **kw: fused_head_stats_triton(hidden, weight, b, rows=rows, topk=2, temperature=1.3,
                                                need_ref=False, **{**TILES, **kw})
    a = draw(seed=123)
    assert torch.equal(a.token, draw(seed=123).token)
    assert torch.equal(a.token, draw(seed=123, v_splits=5, block_v=16).token)  # independent of the tiling
    assert not torch.equal(a.token, draw(seed=124).token)
    logits = head_logits(hidden, weight, b, rows)
    assert not torch.equal(a.token, logits.argmax(-1))
    torch.testing.assert_close(a.confidence, logits.softmax(-1).gather(1, a.token[:, None]).squeeze(1))
    # the same Gumbel noise as vocab_stats_triton, keyed by the flat row of [B, L]: the same tokens from the same
    # logits (the fp32 logits differ by rounding only, which could flip a ~1e-6 near-tie: none at these seeds)
    full = head_logits(hidden, weight, b).reshape(2, 4, -1)
    for seed in (123, 7, 99):
        want = vocab_stats_triton(full, rows, topk=2, temperature=1.3, seed=seed, need_ref=False).token
        assert torch.equal(draw(seed=seed).token, want)
        assert torch.equal(draw(seed=seed, v_splits=1).token, want)


def test_bad_arguments_raise_value_errors():
    hidden, weight, b = make_head(4, 16, 20, torch.float32, seed=6)
    cases = [
        (dict(hidden=hidden.long()), "hidden must be"),
        (dict(hidden=hidden[0]), "hidden must be"),
        (dict(weight=weight[:, :8]), "weight must be"),
        (dict(weight=weight.t()), "weight must be"),
        (dict(weight=weight.half()), "weight dtype"),
        (dict(weight=weight.to("meta")), "weight is on"),
        (dict(bias=b[:5]), "bias must be"),
        (dict(bias=b.long()), "bias must be"),
        (dict(topk=0), "topk must be"),
        (dict(topk=17), "topk must be"),
        (dict(rows=torch.tensor([4], device=DEVICE)), "rows holds"),
        (dict(rows=torch.tensor([-1], device=DEVICE)), "rows holds"),
        (dict(rows=torch.tensor([], dtype=torch.int64, device=DEVICE)), "rows is empty"),
        (dict(rows=torch.tensor([0.0], device=DEVICE)), "rows must be"),
        (dict(temperature=-1.0), "temperature must be"),
        (dict(ref_tau=0.0), "ref_tau must be"),
        (dict(suppress=[20]), "suppress holds"),
        (dict(exclude=torch.tensor([-1], device=DEVICE)), "exclude holds"),
        (dict(block_v=48), "block_v must be"),
        (dict(v_splits=0), "v_splits must be"),
    ]
    for kwargs, message in cases:
        h = kwargs.pop("hidden", hidden)
        w = kwargs.pop("weight", weight)
        bias = kwargs.pop("bias", b)
        with pytest.raises(ValueError, match=message):
            fused_head_stats_triton(h, w, bias, **kwargs)


def test_public_wrapper_backends(monkeypatch):
    hidden, weight, b = make_head(5, 16, 40, torch.float32, seed=8)
    want = fused_head_stats_ref(hidden, weight, b, topk=4, exclude=[1])
    assert_matches(ops.fused_head_stats(hidden, weight, b, topk=4, exclude=[1], backend="triton"), want)
    auto = ops.fused_head_stats(hidden, weight, b, topk=4, exclude=[1])
    if DEVICE == "cpu":  # auto runs the reference on CPU tensors, bit for bit
        assert all(torch.equal(x, y) for x, y in zip(auto, want))
    else:
        assert_matches(auto, want)
    first = ops.fused_head_stats(hidden, weight, b, topk=4, temperature=1.0, seed=7, backend="torch").token
    assert torch.equal(first, ops.fused_head_stats(hidden, weight, b, topk=4, temperature=1.0, seed=7,
                                                   backend="torch").token)
    g1, g2 = torch.Generator(device=DEVICE).manual_seed(3), torch.Generator(device=DEVICE).manual_seed(3)
    assert torch.equal(ops.fused_head_stats(hidden, weight, topk=4, temperature=1.0, generator=g1,
                                            backend="triton").token,
                       ops.fused_head_stats(hidden, weight, topk=4, temperature=1.0, generator=g2,
                                            backend="triton").token)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.fused_head_stats(hidden, weight, backend="cuda")
    with pytest.raises(ValueError, match="seed or generator"):
        ops.fused_head_stats(hidden, weight, seed=1, generator=torch.Generator())
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        ops.fused_head_stats(hidden.cpu(), weight.cpu(), backend="triton")
