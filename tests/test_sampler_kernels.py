"""The sampler on its Triton path (what CUDA runs by default; on the CPU through triton's interpreter): the same tokens
as the PyTorch path at temperature 0, reproducible draws at temperature > 0, and on a GPU no host sync in a step."""

import warnings

import pytest
import torch
from kernel_device import DEVICE

import upo_fast
from upo_fast.models import TinyMDM, TinyMDMConfig

pytestmark = [pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")]

VOCAB, MASK = 13, 12


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = TinyMDMConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64, mask_token_id=MASK)
    return TinyMDM(config).to(DEVICE).eval()


def masked_batch(batch=3, length=12, seed=0, p=0.6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, MASK, (batch, length), generator=g)
    return x.masked_fill(torch.rand(batch, length, generator=g) < p, MASK).to(DEVICE)


@pytest.mark.parametrize("scorer", ["max_confidence", "topk"])
def test_triton_path_gives_the_same_tokens_at_temperature_zero(model, scorer):
    x = masked_batch()
    attn = torch.ones_like(x)
    attn[0, :3] = 0  # left padding
    x[0, :3] = 0
    want = upo_fast.unmask(model, x, attn, scorer=scorer, backend="torch")
    got = upo_fast.unmask(model, x, attn, scorer=scorer, backend="triton")
    assert torch.equal(got, want)
    ids = torch.randint(0, MASK, (2, 4), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    kwargs = dict(gen_length=8, block_length=4, steps=4, scorer=scorer)
    assert torch.equal(upo_fast.generate(model, ids, backend="triton", **kwargs),
                       upo_fast.generate(model, ids, backend="torch", **kwargs))


def test_topk_scorer_keeps_exactly_k_tied_candidates_on_both_paths():
    # the Top-K rule of the topk scorer (upo_fast.ops.topk_candidates, ties to the lower position) on the kernel path
    from upo_fast.kernels.vocab_stats import vocab_stats_ref
    from upo_fast.sampling.scorers import SCORERS, ScoringContext

    table = torch.zeros(2, 8, VOCAB)
    table[0, 1:7, 0] = 5.0  # row 0: positions 1..6 tie at the top
    table[1, :, 3] = 2.0  # row 1: every position ties
    stats = vocab_stats_ref(table.view(16, VOCAB).to(DEVICE))
    stats = type(stats)(*(t.view(2, 8, *t.shape[1:]) for t in stats))
    cand = torch.ones(2, 8, dtype=torch.bool, device=DEVICE)
    cand[0, 2] = cand[1, 0] = False
    for backend in ("torch", "triton"):
        scored = SCORERS["topk"](stats, cand, ScoringContext(topk=3, backend=backend))
        assert [r.nonzero().flatten().tolist() for r in scored.candidates.cpu()] == [[1, 3, 4], [1, 2, 3]]
        assert torch.isfinite(scored.scores).sum(-1).tolist() == [3, 3]


def test_triton_path_sampling_is_reproducible_and_fills_every_mask(model):
    # random positions (the selection kernel's Gumbel-top-k) and sampled tokens (vocab_stats' Gumbel-max)
    x = masked_batch(batch=2, length=8, seed=3)

    def run(seed):
        g = torch.Generator(device=DEVICE).manual_seed(seed)
        return upo_fast.unmask(model, x, scorer="random", temperature=1.0, generator=g, backend="triton")

    a = run(5)
    assert not (a == MASK).any() and torch.equal(a[x != MASK], x[x != MASK])
    assert torch.equal(a, run(5))
    assert not torch.equal(a, run(6))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_auto_on_cuda_is_the_triton_path(model, temperature):
    from upo_fast.sampling.adapters import MDMAdapter
    from upo_fast.sampling.loop import SamplingOptions, _Loop

    loop = _Loop(MDMAdapter(model), masked_batch(), None, SamplingOptions(temperature=temperature))
    assert loop.kernels


def test_fused_head_triton_path_gives_the_same_tokens(model):
    """What CUDA runs by default: statistics straight from the final hidden states through the fused-head kernel."""
    x = masked_batch(batch=2, length=8, seed=5)
    want = upo_fast.unmask(model, x, scorer="max_confidence", backend="torch", fused_head=False)
    got = upo_fast.unmask(model, x, scorer="max_confidence", backend="triton", fused_head=True)
    assert torch.equal(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("scorer", ["max_confidence", "topk", "softmax_confidence"])
def test_cuda_default_path_gives_the_cpu_tokens(model, scorer):
    """On CUDA the defaults are the fused head + Triton kernels; at temperature 0 the tokens are those of the CPU
    reference path (the tiny model's fp32 logits have no near-ties at these seeds)."""
    x = masked_batch(batch=4, length=12, seed=7)
    got = upo_fast.unmask(model, x, scorer=scorer)
    want = upo_fast.unmask(model.cpu(), x.cpu(), scorer=scorer, backend="torch", fused_head=False)
    model.to(DEVICE)
    assert torch.equal(got.cpu(), want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("scorer", ["max_confidence", "topk", "random"])
def test_cuda_graph_replay_gives_the_eager_tokens(model, scorer):
    x = masked_batch(batch=4, length=12, seed=8)

    def run(graph):
        g = torch.Generator(device=DEVICE).manual_seed(3)
        return upo_fast.unmask(model, x, scorer=scorer, cuda_graph=graph, generator=g, temperature=0.5)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed capture (eager fallback) must not pass silently here
        graphed = run(True)
    assert torch.equal(graphed, run(False))  # same seeds, same kernels: the same draws step by step
    assert not (graphed == MASK).any()
