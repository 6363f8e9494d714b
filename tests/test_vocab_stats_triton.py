"""The fused Triton vocabulary-statistics kernel against the PyTorch reference (on the CPU through triton's
interpreter, on a GPU when there is one), plus the public wrapper ``upo_fast.ops.vocab_stats``."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_device import DEVICE

from upo_fast import ops
from upo_fast.kernels.vocab_stats import (
    vocab_stats_ref,
    vocab_stats_triton,
)

FIELDS = ("confidence", "margin", "entropy", "topk_probs", "ref_logsumexp")
# (dtype, atol, rtol): the kernel reads the same values as the fp32-upcast reference and accumulates in fp32, so
# its own error is fp32 rounding for every input dtype; the bound also admits 2x PyTorch's low-precision error
DTYPES = [(torch.float32, 2e-6, 2e-5), (torch.bfloat16, 2e-6, 2e-5), (torch.float16, 2e-6, 2e-5)]


def random_logits(shape, dtype, seed=0, scale=3.0):
    """Random logits whose row maximum beats the runner-up by >= 1, so the argmax token is unambiguous."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * scale
    flat = x.view(-1, shape[-1])
    winner = torch.randint(shape[-1], (flat.shape[0],), generator=g)
    flat[torch.arange(flat.shape[0]), winner] = flat.max(-1).values + 1.0
    return x.to(dtype).to(DEVICE)


def lowp_stats(x, topk, tau=0.05):
    """The statistics computed by PyTorch in the input's own dtype: the yardstick for low-precision error."""
    p = x.reshape(-1, x.shape[-1]).softmax(-1)
    top = p.topk(topk, -1).values
    second = p.topk(2, -1).values[:, 1] if p.shape[-1] > 1 else torch.zeros_like(top[:, 0])
    plogp = torch.where(p > 0, p * p.log(), torch.zeros_like(p))
    return dict(confidence=top[:, 0], margin=top[:, 0] - second, entropy=-plogp.sum(-1), topk_probs=top,
                ref_logsumexp=torch.logsumexp(p / tau, -1))


def assert_matches(got, want, atol=2e-6, rtol=2e-5, lowp=None):
    assert torch.equal(got.token.cpu(), want.token.cpu())
    for name in FIELDS:
        g, w = getattr(got, name).cpu(), getattr(want, name).cpu().float()
        assert g.dtype == torch.float32 and g.shape == w.shape, name
        slack = 0.0 if lowp is None else 2 * (lowp[name].cpu().float() - w).abs().max().item()
        torch.testing.assert_close(g, w, atol=atol + slack, rtol=rtol, equal_nan=True,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 2), (7, 17), (3, 1000), (1, 2049), (3, 3001)])
def test_matches_reference(dtype, atol, rtol, shape):
    x = random_logits(shape, dtype)
    topk = min(8, shape[-1])
    want = vocab_stats_ref(x.float(), topk=topk)
    assert_matches(vocab_stats_triton(x, topk=topk), want, atol, rtol, lowp_stats(x, topk))
    if shape[-1] > 1:  # the comparison can fail: a wrong answer is far outside the tolerance
        assert (want.confidence - want.topk_probs[:, -1]).abs().max() > 100 * (atol + rtol)


def test_exact_ties_take_the_first_index_like_torch_argmax():
    x = torch.zeros(4, 40, device=DEVICE)
    x[1, [5, 17, 33]] = 2.0  # tied maximum across tiles (block_v=16)
    x[2, [20, 22]] = 1.0  # tied maximum inside one tile
    x[3, 39] = 1.0
    got = vocab_stats_triton(x, topk=4, block_v=16)
    assert got.token.tolist() == [0, 5, 20, 39] == x.argmax(-1).tolist()
    assert got.margin[1].item() == 0.0 and got.margin[2].item() == 0.0  # a tied maximum counts twice, as in topk
    assert_matches(got, vocab_stats_ref(x, topk=4))


def test_3d_input_with_rows_and_strided_views():
    full = random_logits((2, 9, 301), torch.bfloat16, seed=1)
    x = full[:, 2:7]  # [B, L, V] whose batch stride is not L * row stride (the sampler's block slice)
    x_ref = x.float().clone()
    rows = torch.tensor([0, 4, 9, 3], device=DEVICE)
    assert_matches(vocab_stats_triton(x, rows, topk=5), vocab_stats_ref(x_ref, rows, topk=5))
    assert_matches(vocab_stats_triton(x, rows.int(), topk=5), vocab_stats_ref(x_ref, rows, topk=5))
    wide = random_logits((6, 1000), torch.float32, seed=2)
    strided = wide[::2, 100:600]  # row stride 2000 elements, inner dim contiguous
    assert_matches(vocab_stats_triton(strided, topk=8), vocab_stats_ref(strided.clone(), topk=8))
    transposed = random_logits((50, 3), torch.float32, seed=3).t()  # inner dim not contiguous: copied
    assert_matches(vocab_stats_triton(transposed, topk=3), vocab_stats_ref(transposed, topk=3))


def test_unselected_rows_are_never_read():
    x = random_logits((5, 70), torch.float32, seed=4)
    x[[0, 2, 4]] = float("nan")
    rows = torch.tensor([3, 1], device=DEVICE)
    got = vocab_stats_triton(x, rows, topk=4)
    assert all(torch.isfinite(getattr(got, name)).all() for name in FIELDS)
    assert_matches(got, vocab_stats_ref(x, rows, topk=4))


def test_a_nan_logit_makes_the_row_statistics_nan_like_the_reference():
    x = random_logits((3, 80), torch.float32, seed=11)
    x[1, 50] = float("nan")
    got, want = vocab_stats_triton(x, topk=4, block_v=32), vocab_stats_ref(x, topk=4)
    for name in FIELDS:  # what the sampler's non-finite check relies on
        assert torch.isnan(getattr(got, name)[1]).all() and torch.isnan(getattr(want, name)[1]).all(), name
    assert 0 <= got.token[1] < 80
    keep = torch.tensor([0, 2], device=DEVICE)
    assert_matches(vocab_stats_triton(x, keep, topk=4), vocab_stats_ref(x, keep, topk=4))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy, in triton's interpreter, on the all -inf row
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_minus_inf_entries_and_an_all_minus_inf_row(temperature):
    x = random_logits((4, 100), torch.float32, seed=5)
    x[0, :60] = float("-inf")
    x[1, ::3] = float("-inf")
    x[2] = float("-inf")  # defined result: token 0, NaN statistics
    x[3, 99] = float("-inf")
    got = vocab_stats_triton(x, topk=8, temperature=temperature, seed=0, block_v=32)
    assert got.token[2].item() == 0
    assert all(torch.isnan(getattr(got, name)[2]).all() for name in FIELDS)
    assert got.token[0] >= 60 and got.token[1] % 3 != 0 and got.token[3] != 99
    if temperature == 0:
        assert_matches(got, vocab_stats_ref(x, topk=8))
    else:  # the sampled token's confidence is still its temperature-1 probability
        p = x.softmax(-1)
        keep = torch.tensor([0, 1, 3])
        torch.testing.assert_close(got.confidence[keep], p[keep, got.token[keep]])


@pytest.mark.parametrize("as_tensor", [False, True])
def test_suppress_and_exclude_anywhere_in_the_vocabulary(as_tensor):
    vocab = 1000
    x = random_logits((3, vocab), torch.float16, seed=6).float()
    x[:, [0, vocab - 1, 517]] += 20.0  # make the handled ids the largest, so getting them wrong shows
    suppress, exclude = [0, 517], [vocab - 1, 0, 3]
    if as_tensor:
        suppress = torch.tensor(suppress, device=DEVICE)
        exclude = torch.tensor(exclude, device=DEVICE)
    want = vocab_stats_ref(x, topk=8, suppress=suppress, exclude=exclude)
    assert (want.token == vocab - 1).all()
    for block_v in (64, None):  # ids in several tiles, and the default tile
        got = vocab_stats_triton(x, topk=8, suppress=suppress, exclude=exclude, block_v=block_v)
        assert_matches(got, want)


def test_vocabulary_over_64k():
    x = random_logits((2, 70_000), torch.bfloat16, seed=7)
    x[0, 69_999] = 30.0  # the winner sits in the last, partial tile
    exclude = [69_999, 65_536]
    got = vocab_stats_triton(x, topk=8, exclude=exclude)
    assert got.token[0].item() == 69_999
    assert_matches(got, vocab_stats_ref(x.float(), topk=8, exclude=exclude), atol=1e-6, rtol=1e-4)


def test_need_ref_false_skips_only_the_reference_term():
    x = random_logits((3, 500), torch.float32, seed=8)
    full, short = vocab_stats_triton(x, topk=4), vocab_stats_triton(x, topk=4, need_ref=False)
    assert torch.isnan(short.ref_logsumexp).all() and torch.isfinite(full.ref_logsumexp).all()
    for a, b in zip(full[:-1], short[:-1]):
        assert torch.equal(a, b)


def test_sampling_is_reproducible_and_independent_of_the_tiling():
    x = random_logits((6, 300), torch.float32, seed=9, scale=0.5)  # flat enough that samples vary
    draw = lambda **kw: vocab_stats_triton(x, topk=2, temperature=1.3, need_ref=False, **kw).token
    a = draw(seed=123)
    assert torch.equal(a, draw(seed=123))
    assert torch.equal(a, draw(seed=123, block_v=16))
    assert not torch.equal(a, draw(seed=124))
    assert not torch.equal(a, x.argmax(-1))
    rows = torch.tensor([4, 1], device=DEVICE)  # keyed by flat row: a subset draws the same tokens
    assert torch.equal(vocab_stats_triton(x, rows, topk=2, temperature=1.3, seed=123).token, a[rows])
    torch.manual_seed(0)
    b = draw()  # seed=None draws from torch's global generator
    torch.manual_seed(0)
    assert torch.equal(b, draw())


def chi_square(counts, probs):
    expected = probs * counts.sum()
    return ((counts - expected) ** 2 / expected).sum().item()


def test_samples_follow_the_tempered_softmax():
    probs = torch.tensor([0.4, 0.25, 0.2, 0.1, 0.05])
    temperature, n = 0.7, 1000  # one sample per row: the interpreter runs ~100 rows a second
    x = probs.log().expand(n, 5).to(DEVICE)
    tokens = vocab_stats_triton(x, topk=1, temperature=temperature, seed=2024, need_ref=False).token.cpu()
    counts = torch.bincount(tokens, minlength=5).double()
    target = (probs.log() / temperature).softmax(-1).double()
    critical = 18.467  # chi-square, 4 degrees of freedom, p = 0.001
    assert chi_square(counts, target) < critical
    assert chi_square(counts, probs.double()) > critical  # the test can tell temperature 0.7 from 1.0


def test_bad_arguments_raise_value_errors():
    x = torch.randn(4, 20, device=DEVICE)
    cases = [
        (dict(logits=torch.ones(4, 20, dtype=torch.int64, device=DEVICE)), "logits must be"),
        (dict(logits=torch.randn(20, device=DEVICE)), "logits must be"),
        (dict(logits=torch.randn(0, 20, device=DEVICE)), "at least one row"),
        (dict(topk=0), "topk must be"),
        (dict(topk=17), "topk must be"),
        (dict(logits=torch.randn(4, 3, device=DEVICE), topk=4), "topk must be"),
        (dict(rows=torch.tensor([[0]], device=DEVICE)), "rows must be"),
        (dict(rows=torch.tensor([0.0], device=DEVICE)), "rows must be"),
        (dict(rows=torch.tensor([4], device=DEVICE)), "rows holds"),
        (dict(rows=torch.tensor([-1], device=DEVICE)), "rows holds"),
        (dict(rows=torch.tensor([], dtype=torch.int64, device=DEVICE)), "rows is empty"),
        (dict(rows=torch.tensor([0], device="meta")), "rows is on"),
        (dict(temperature=-0.5), "temperature must be"),
        (dict(ref_tau=0.0), "ref_tau must be"),
        (dict(suppress=[20]), "suppress holds"),
        (dict(exclude=torch.tensor([-1], device=DEVICE)), "exclude holds"),
        (dict(exclude=torch.tensor([1.0])), "exclude must be"),
        (dict(block_v=48), "block_v must be"),
    ]
    for kwargs, message in cases:
        logits = kwargs.pop("logits", x)
        with pytest.raises(ValueError, match=message):
            vocab_stats_triton(logits, **kwargs)


def test_public_wrapper_backends(monkeypatch):
    x = random_logits((5, 40), torch.float32, seed=10)
    want = vocab_stats_ref(x, topk=4, exclude=[1])
    got = ops.vocab_stats(x, topk=4, exclude=[1], backend="triton")
    assert_matches(got, want)
    auto = ops.vocab_stats(x, topk=4, exclude=[1])
    if DEVICE == "cpu":  # auto runs the reference on CPU tensors, bit for bit
        assert all(torch.equal(a, b) for a, b in zip(auto, want))
    else:
        assert_matches(auto, want)
    first = ops.vocab_stats(x, topk=4, temperature=1.0, seed=7, backend="torch").token
    assert torch.equal(first, ops.vocab_stats(x, topk=4, temperature=1.0, seed=7, backend="torch").token)
    g1, g2 = torch.Generator(device=DEVICE).manual_seed(3), torch.Generator(device=DEVICE).manual_seed(3)
    assert torch.equal(ops.vocab_stats(x, topk=4, temperature=1.0, generator=g1, backend="triton").token,
                       ops.vocab_stats(x, topk=4, temperature=1.0, generator=g2, backend="triton").token)
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'triton', 'torch'"):
        ops.vocab_stats(x, backend="cuda")
    with pytest.raises(ValueError, match="seed or generator"):
        ops.vocab_stats(x, seed=1, generator=torch.Generator())
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        ops.vocab_stats(x.cpu(), backend="triton")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 4), vocab=st.integers(1, 600),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float64]),
       topk=st.integers(1, 16), block_v=st.sampled_from([16, 128, None]), seed=st.integers(0, 2**16))
def test_random_shapes_and_dtypes(rows, vocab, dtype, topk, block_v, seed):
    x = random_logits((rows, vocab), dtype, seed=seed)
    topk = min(topk, vocab)
    exclude = [seed % vocab]
    got = vocab_stats_triton(x, topk=topk, exclude=exclude, block_v=block_v)
    assert_matches(got, vocab_stats_ref(x.float(), topk=topk, exclude=exclude))
