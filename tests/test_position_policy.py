"""The position ops (``upo_fast.kernels.position_select`` and ``policy_divergence``): Triton kernels against the
PyTorch references (on the CPU through triton's interpreter, on a GPU when there is one), sampling distributions,
gradients, bad input."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_device import DEVICE

from upo_fast.kernels import policy_divergence as pd
from upo_fast.kernels import position_select as ps

# triton's interpreter runs the kernels in numpy, which warns about log(0) and inf - inf on masked lanes
pytestmark = [pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")]

SHAPES = [(1, 1), (3, 5), (1, 37), (3, 200)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make_rows(shape, dtype=torch.float32, seed=0, density=0.6, neg_inf=True):
    """Random scores with a few -inf entries, candidates with a one-candidate row and (B > 2) an empty row."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(shape, generator=g) * 2
    c = torch.rand(shape, generator=g) < density
    c[:, 0] = True
    if shape[0] > 1:
        c[1] = False
        c[1, shape[1] // 2] = True
    if shape[0] > 2:
        c[2] = False
    if neg_inf and shape[1] > 3:
        s[0, 1] = float("-inf")
    return s.to(dtype).to(DEVICE), c.to(DEVICE)


def cpu(x):
    return x.detach().cpu()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_log_softmax_matches_reference(shape, dtype):
    s, c = make_rows(shape, dtype)
    got = ps.position_log_softmax(s, c, 0.7, check=False, backend="triton")
    want = ps.position_log_softmax_ref(s, c, 0.7)
    assert got.dtype == want.dtype == torch.float32
    assert torch.equal(cpu(got).isneginf(), cpu(want).isneginf())
    torch.testing.assert_close(cpu(got), cpu(want), atol=2e-6, rtol=1e-5)
    assert torch.equal(cpu(want).isneginf(), ~cpu(c) | cpu(s).isneginf())
    has = cpu(c & s.isfinite()).any(-1)
    torch.testing.assert_close(cpu(want).exp().sum(-1)[has], torch.ones(int(has.sum())))  # a distribution
    assert ps.position_log_softmax(s, c, 0.7, check=False, backend="auto").device == s.device


def test_log_softmax_is_max_subtracted_and_checks_empty_rows():
    s = torch.tensor([[1000.0, 999.0, -1000.0]], device=DEVICE)
    c = torch.tensor([[True, True, False]], device=DEVICE)
    for backend in ("triton", "torch"):
        out = cpu(ps.position_log_softmax(s, c, backend=backend))
        torch.testing.assert_close(out[0, :2], torch.tensor([-0.31326169, -1.31326169]))
        with pytest.raises(ValueError, match="no candidate"):
            ps.position_log_softmax(s, torch.zeros_like(c), backend=backend)
        assert cpu(ps.position_log_softmax(s, torch.zeros_like(c), check=False, backend=backend)).isneginf().all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_deterministic_topk_matches_sorting(shape, dtype):
    s, c = make_rows(shape, dtype, neg_inf=False)
    s = (s.float() * 2).round().to(dtype)  # integer scores: exact ties
    k = torch.randint(0, shape[1] + 2, (shape[0],), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    want = torch.zeros(shape, dtype=torch.bool)
    for b in range(shape[0]):  # sort the candidates by (score descending, position) and keep the first k
        order = sorted(cpu(c[b]).nonzero().flatten().tolist(), key=lambda i: (-float(s[b, i]), i))
        want[b, order[:int(k[b])]] = True
    for backend in ("triton", "torch"):
        got = ps.select_positions(s, c, k, temperature=0.0, backend=backend)
        assert torch.equal(cpu(got), cpu(want)), backend
    assert torch.equal(cpu(want.sum(-1)), cpu(torch.minimum(k, c.sum(-1))))


def test_ties_go_to_the_lower_position_and_minus_inf_candidates_count():
    s = torch.tensor([[0.0, 1.0, 1.0, 1.0, float("-inf"), 2.0]], device=DEVICE)
    c = torch.tensor([[True, True, False, True, True, True]], device=DEVICE)
    for backend in ("triton", "torch"):
        def top(k, backend=backend):
            return cpu(ps.select_positions(s, c, torch.tensor([k], device=DEVICE), temperature=0.0,
                                           backend=backend))[0].nonzero().flatten().tolist()
        assert top(2) == [1, 5]
        assert top(3) == [1, 3, 5]
        assert top(5) == [0, 1, 3, 4, 5]  # the -inf candidate before the non-candidate at 2
        assert top(9) == [0, 1, 3, 4, 5]
        assert top(0) == []
        assert cpu(ps.topk_candidates(s, c, 2, backend=backend))[0].nonzero().flatten().tolist() == [1, 5]


@pytest.mark.parametrize("shape", SHAPES)
def test_gumbel_topk_counts_and_candidates(shape):
    s, c = make_rows(shape, seed=3)
    k = torch.randint(0, shape[1] + 2, (shape[0],), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    for backend in ("triton", "torch"):
        got = ps.select_positions(s, c, k, temperature=0.8, seed=5, backend=backend)
        assert not (got & ~c).any()
        assert torch.equal(cpu(got.sum(-1)), cpu(torch.minimum(k, c.sum(-1))))
        assert torch.equal(got, ps.select_positions(s, c, k, temperature=0.8, seed=5, backend=backend))


def sample_rows(backend, cpu_rows=600):
    """Rows for the distribution tests: triton's interpreter costs ~10 ms per program, so fewer on the CPU."""
    return 3000 if backend == "torch" or DEVICE == "cuda" else cpu_rows


def chi_square(counts, expected):
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("width", [4, 100])  # 100: the kernel's bisection path for rows longer than 64
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_gumbel_top1_follows_softmax(backend, width):
    rows, temperature = sample_rows(backend, 600 if width == 4 else 200), 0.7
    s = torch.zeros(rows, width, device=DEVICE)
    s[:, :4] = torch.tensor([0.5, -0.3, 1.0, 0.0], device=DEVICE)
    c = torch.zeros(rows, width, dtype=torch.bool, device=DEVICE)
    c[:, :4] = True
    got = ps.select_positions(s, c, torch.ones(rows, dtype=torch.int64, device=DEVICE), temperature=temperature,
                              seed=11, backend=backend)
    assert torch.equal(cpu(got.sum(-1)), torch.ones(rows, dtype=torch.int64))
    p = torch.softmax(cpu(s[0, :4]) / temperature, -1).double()
    counts = cpu(got).sum(0).double()[:4]
    assert chi_square(counts, rows * p) < 16.27  # chi2(3 dof) at p = 0.001
    assert chi_square(counts, torch.full((4,), rows / 4.0, dtype=torch.float64)) > 0.15 * rows  # not uniform
    other = ps.select_positions(s, c, torch.ones(rows, dtype=torch.int64, device=DEVICE), temperature=temperature,
                                seed=12, backend=backend)
    assert not torch.equal(got, other)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_gumbel_top2_draws_without_replacement(backend):
    rows = sample_rows(backend)
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    s = logits.to(DEVICE).expand(rows, 4).contiguous()
    c = torch.ones(rows, 4, dtype=torch.bool, device=DEVICE)
    got = cpu(ps.select_positions(s, c, torch.full((rows,), 2, device=DEVICE), temperature=1.0, seed=7,
                                  backend=backend))
    assert torch.equal(got.sum(-1), torch.full((rows,), 2))
    p = torch.softmax(logits, -1).double()
    # P(a among two draws without replacement) = p_a + sum_{b != a} p_b p_a / (1 - p_b)
    inclusion = p + p * ((p / (1 - p)).sum() - p / (1 - p))
    counts = got.sum(0).double()
    assert abs(float(inclusion.sum()) - 2) < 1e-6
    assert chi_square(counts, rows * inclusion) < 16.27
    assert chi_square(counts, rows * 2 * p) > 30  # with replacement-like inclusion 2p would be wrong


@pytest.mark.parametrize("shape", SHAPES)
def test_threshold_matches_reference(shape):
    s, c = make_rows(shape, seed=4)
    for threshold in (0.05, 0.3, 1.0):
        got = ps.select_positions(s, c, threshold=threshold, temperature=0.9, backend="triton")
        want = ps.select_positions_ref(s, c, threshold=threshold, temperature=0.9)
        assert torch.equal(cpu(got), cpu(want))
        assert torch.equal(cpu(want.any(-1)), cpu(c.any(-1)))  # at least one where there is a candidate
        p = ps.position_log_softmax_ref(s, c, 0.9).exp()
        assert (cpu(p)[cpu(want)] >= threshold).sum() >= cpu(want).sum() - shape[0]  # only the argmax may be below


@pytest.mark.parametrize("shape", SHAPES)
def test_topk_candidates_and_reference_distributions(shape):
    s, c = make_rows(shape, seed=6, neg_inf=False)
    conf = torch.softmax(s.float(), -1).round(decimals=2)  # rounded: exact ties
    lse = torch.randn(shape, generator=torch.Generator().manual_seed(8)).to(DEVICE) * 3
    for K in (1, 3, 300):
        got = ps.topk_candidates(conf, c, K, backend="triton")
        assert torch.equal(cpu(got), cpu(ps.topk_candidates_ref(conf, c, K)))
        assert torch.equal(cpu(got.sum(-1)), cpu(c.sum(-1).clamp_max(K)))
    for kind in pd.REFERENCE_KINDS:
        got = pd.reference_distribution(kind, c, confidence=conf, ref_logsumexp=lse, K=3, backend="triton")
        want = pd.reference_distribution_ref(kind, c, confidence=conf, ref_logsumexp=lse, K=3)
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(cpu(got), cpu(want), atol=1e-6, rtol=1e-5)
        assert not cpu(want)[~cpu(c)].any()
        torch.testing.assert_close(cpu(want).sum(-1), cpu(c.any(-1)).float())


def test_max_confidence_ties_share_the_mass():
    conf = torch.tensor([[0.2, 0.5, 0.5, 0.1, 0.9]], device=DEVICE)
    c = torch.tensor([[True, True, True, True, False]], device=DEVICE)
    for backend in ("triton", "torch"):
        got = cpu(pd.reference_distribution("max_confidence", c, confidence=conf, backend=backend))
        assert torch.equal(got, torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.0]]))


def reference_for(s, c, seed):
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(s.shape, generator=g).to(DEVICE) * c
    return r / r.sum(-1, keepdim=True).clamp_min(1e-9)


@pytest.mark.parametrize("kind", pd.DIVERGENCES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_divergence_and_gradient_match_reference(shape, dtype, kind):
    s, c = make_rows(shape, dtype, seed=9, neg_inf=kind == "kl")
    r = reference_for(s, c, 10)
    w = torch.randn(shape[0], generator=torch.Generator().manual_seed(3)).to(DEVICE)
    out, grads = {}, {}
    for backend in ("triton", "torch"):
        x = s.detach().clone().requires_grad_()
        out[backend] = pd.policy_divergence(x, c, r, kind, 0.8, backend=backend)
        (out[backend] * w).sum().backward()
        grads[backend] = x.grad.float()
        assert x.grad.dtype == dtype
    torch.testing.assert_close(cpu(out["triton"]), cpu(out["torch"]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cpu(grads["triton"]), cpu(grads["torch"]), atol=1e-5 if dtype == torch.float32
                               else 1e-2, rtol=1e-5 if dtype == torch.float32 else 1e-2)
    assert (cpu(out["torch"]) >= -1e-6).all()
    if shape[1] > 3:
        assert cpu(grads["torch"]).abs().max() > 1e-3  # the comparison can fail


@pytest.mark.parametrize("kind", pd.DIVERGENCES)
def test_reference_gradient_gradcheck_and_closed_form(kind):
    s, c = make_rows((3, 7), torch.float64, seed=12, neg_inf=False)
    r = reference_for(s, c, 13).double()
    x = s.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: pd.policy_divergence_ref(v, c, r, kind, 0.6), (x,))
    pd.policy_divergence_ref(x, c, r, kind, 0.6).sum().backward()
    logg = ps.position_log_softmax_ref(s, c, 0.6).double()
    g = logg.exp()
    if kind == "kl":
        kl = pd.policy_divergence_ref(s, c, r, "kl", 0.6)
        closed = torch.where(g > 0, g * (logg - r.log() - kl[:, None]), 0.0) / 0.6
    else:
        closed = torch.where(c, g * (r * c).sum(-1, keepdim=True) - r, 0.0) / 0.6
    torch.testing.assert_close(x.grad, closed)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_divergence_identities(backend):
    s, c = make_rows((3, 37), seed=14, neg_inf=False)
    g = ps.position_log_softmax_ref(s, c, 1.3).exp()
    kl = cpu(pd.policy_divergence(s, c, g, "kl", 1.3, backend=backend))
    torch.testing.assert_close(kl, torch.zeros(3), atol=1e-6, rtol=0)  # KL(g || g) = 0
    kl_random = cpu(pd.policy_divergence(s, c, reference_for(s, c, 1), "kl", 1.3, backend=backend))
    assert kl_random[0] > 1e-3  # (row 1 has one candidate: KL 0 to anything)
    onehot = torch.zeros_like(g)
    onehot[0, 0] = onehot[1, 18] = 1.0
    ce = cpu(pd.policy_divergence(s, c, onehot, "ce", 1.3, backend=backend))
    logg = cpu(ps.position_log_softmax_ref(s, c, 1.3))
    torch.testing.assert_close(ce[:2], -torch.stack([logg[0, 0], logg[1, 18]]))
    assert ce[2] == 0  # empty row, zero reference
    # Top-K: KL to uniform over the K candidates = log K - H(g)
    top = ps.topk_candidates(s, c, 4, backend=backend)
    uniform = pd.reference_distribution("topk", c, confidence=s, K=4, backend=backend)
    kl = cpu(pd.policy_divergence(s, top, uniform, "kl", backend=backend))
    p = ps.position_log_softmax_ref(s, top).exp()
    entropy = -cpu(torch.where(p > 0, p * p.log(), 0.0)).sum(-1)
    torch.testing.assert_close(kl[:1], (math.log(4) - entropy)[:1], atol=1e-5, rtol=1e-5)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(B=st.integers(1, 4), L=st.integers(1, 70), density=st.floats(0.0, 1.0), seed=st.integers(0, 2**16),
       temperature=st.sampled_from([0.3, 1.0, 2.5]), kind=st.sampled_from(pd.DIVERGENCES))
def test_fuzz_triton_matches_reference(B, L, density, seed, temperature, kind):
    s, c = make_rows((B, L), seed=seed, density=density)
    if not density:
        c[:] = False
    lsm = ps.position_log_softmax(s, c, temperature, check=False, backend="triton")
    torch.testing.assert_close(cpu(lsm), cpu(ps.position_log_softmax_ref(s, c, temperature)), atol=2e-6, rtol=1e-5)
    k = torch.randint(0, L + 1, (B,), generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    assert torch.equal(cpu(ps.select_positions(s, c, k, temperature=0.0, backend="triton")),
                       cpu(ps.select_positions_ref(s, c, k, temperature=0.0)))
    assert torch.equal(cpu(ps.select_positions(s, c, threshold=0.2, temperature=temperature, backend="triton")),
                       cpu(ps.select_positions_ref(s, c, threshold=0.2, temperature=temperature)))
    sel = ps.select_positions(s, c, k, temperature=temperature, seed=seed, backend="triton")
    assert not (sel & ~c).any() and torch.equal(cpu(sel.sum(-1)), cpu(torch.minimum(k, c.sum(-1))))
    s = torch.where(s.isinf(), 0.0, s)
    r = reference_for(s, c, seed + 1)
    outs = [pd.policy_divergence(s, c, r, kind, temperature, backend=b) for b in ("triton", "torch")]
    torch.testing.assert_close(cpu(outs[0]), cpu(outs[1]).float(), atol=1e-5, rtol=1e-5)


def test_bad_input_raises_value_error_naming_the_argument():
    s, c = make_rows((2, 5))
    k = torch.tensor([1, 2], device=DEVICE)
    bad = [
        (lambda: ps.position_log_softmax(s, c[:, :4]), "candidates"),
        (lambda: ps.position_log_softmax(s, c.int()), "candidates"),
        (lambda: ps.position_log_softmax(s[0], c[0]), "scores"),
        (lambda: ps.position_log_softmax(s, c, 0.0), "temperature"),
        (lambda: ps.position_log_softmax(s, c, backend="cuda"), "backend"),
        (lambda: ps.select_positions(s, c), "exactly one"),
        (lambda: ps.select_positions(s, c, k, threshold=0.5), "exactly one"),
        (lambda: ps.select_positions(s, c, k[:1]), "k must"),
        (lambda: ps.select_positions(s, c, k.float()), "k must"),
        (lambda: ps.select_positions(s, c, torch.tensor([1, -1], device=DEVICE)), "k must be >= 0"),
        (lambda: ps.select_positions(s, c, k, temperature=-1.0), "temperature"),
        (lambda: ps.select_positions(s, c, threshold=0.0), "threshold"),
        (lambda: ps.select_positions(s, c, threshold=1.5), "threshold"),
        (lambda: ps.select_positions(s, c, threshold=0.5, temperature=0.0), "temperature"),
        (lambda: ps.select_positions(s, c, k, seed=1, generator=torch.Generator()), "seed or generator"),
        (lambda: ps.topk_candidates(s, c, 0), "K must"),
        (lambda: pd.reference_distribution("uniform", c, confidence=s), "kind"),
        (lambda: pd.reference_distribution("topk", c, confidence=s), "K must"),
        (lambda: pd.reference_distribution("softmax_confidence", c, confidence=s), "ref_logsumexp"),
        (lambda: pd.policy_divergence(s, c, s, "js"), "kind"),
        (lambda: pd.policy_divergence(s, c, s[:, :3]), "reference"),
        (lambda: pd.policy_divergence(s, c, s, temperature=0.0), "temperature"),
    ]
    if DEVICE == "cpu" and torch.backends.mps.is_available() is False:
        bad.append((lambda: ps.select_positions(s, c, k.to("meta")), "k is on"))
        bad.append((lambda: ps.position_log_softmax(s, c.to("meta")), "candidates is on"))
    for fn, match in bad:
        with pytest.raises(ValueError, match=match):
            fn()
