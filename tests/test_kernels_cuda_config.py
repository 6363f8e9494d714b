"""The launch configurations the kernels use on CUDA, executed in triton's interpreter before any GPU has run them:
``force_launch_target`` makes the launchers take their CUDA branch (the fused head's [64, 64] / [32, 128] tiles,
BLOCK_D 64, fp32's [32, 128, 32], V splits for the multiprocessor count; vocab_stats' BLOCK_V 1024; the position
kernels' bisection path), on small shapes that cross every tile boundary (V and d not multiples of the tiles, a
last partial row block, a last partial V split), compared with the references. One difference is left: the
interpreter's bf16/fp16 tl.dot is wrong (triton 3.9), so there the dots run on fp32 copies of the inputs; the
products of bf16/fp16 values are exact in fp32, as in the GPU's MMA, so the sums are the same up to their order.
On a GPU (benchmarks/gpu_check.sh) the same tests run the CUDA configuration natively.

Also: the three random kernels draw the same Gumbel noise for the same seed and counter (triton_support's shared
helper)."""

import pytest
import torch
from kernel_device import DEVICE
from test_fused_head import assert_matches, lowp_reference, make_head

from upo_fast.kernels import fused_head
from upo_fast.kernels.fused_head import fused_head_stats_ref, fused_head_stats_triton, head_logits
from upo_fast.kernels.position_select import select_positions, select_positions_ref
from upo_fast.kernels.triton_support import LaunchTarget, force_launch_target, launch_target
from upo_fast.kernels.vocab_stats import vocab_stats_ref, vocab_stats_triton

# On a GPU the same tests run the CUDA configuration for real (forcing changes nothing for CUDA tensors).
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy overflow on padded rows (interpreter)
CUDA_IN_INTERPRETER = LaunchTarget(gpu=True, sm_count=1, interpreter=True)


@pytest.fixture
def chosen_tiles(monkeypatch):
    """The (BLOCK_R, BLOCK_V, BLOCK_D) the fused-head launcher picked, recorded as it picks them."""
    seen, original = [], fused_head._tiles

    def spy(*args):
        seen.append(original(*args))
        return seen[-1]

    monkeypatch.setattr(fused_head, "_tiles", spy)
    return seen


def test_launch_target_is_the_interpreter_on_cpu_unless_forced():
    cpu = torch.device("cpu")
    assert launch_target(cpu) == LaunchTarget(False, 1, True)
    with force_launch_target(CUDA_IN_INTERPRETER):
        assert launch_target(cpu) == CUDA_IN_INTERPRETER
    assert launch_target(cpu) == LaunchTarget(False, 1, True)


@pytest.mark.parametrize("dtype,rows,tiles", [
    (torch.bfloat16, 70, (64, 64, 64)),  # 2 row tiles (the last 6 rows), V 150 = 3 tiles of 64, d 100 = 2 of 64
    (torch.float16, 20, (32, 128, 64)),  # V 150 = a full and a partial tile of 128
    (torch.float32, 40, (32, 128, 32)),  # fp32: IEEE dots, BLOCK_D 32 (d 100 = 4 slices, the last of 4)
])
def test_fused_head_cuda_tiles_match_the_reference(chosen_tiles, dtype, rows, tiles):
    hidden, weight, b = make_head(rows, 100, 150, dtype, seed=rows)
    with force_launch_target(CUDA_IN_INTERPRETER):
        got = fused_head_stats_triton(hidden, weight, b, topk=8)
    assert chosen_tiles == [tiles]
    # sm_count 1: 4 programs wanted, so the V range is split between the row tiles' programs (2 splits for 2 row
    # tiles, 3 for one): a last partial split whenever V is not a multiple of the chunk
    want = fused_head_stats_ref(hidden, weight, b, topk=8)
    lowp = None if dtype == torch.float32 else lowp_reference(hidden, weight, b, topk=8)
    assert_matches(got, want, lowp=lowp)
    assert (want.confidence - want.topk_probs[:, -1]).abs().min() > 1e-3  # a wrong answer would show


def test_fused_head_cuda_tiles_sample_what_vocab_stats_samples(chosen_tiles):
    hidden, weight, b = make_head(70, 100, 150, torch.bfloat16, seed=3)
    weight = weight * 0.2  # flat distributions: samples differ from the argmax
    rows = torch.arange(3, 70, 2, device=DEVICE)  # 34 rows: BLOCK_R 64, one partial row tile
    with force_launch_target(CUDA_IN_INTERPRETER):
        got = fused_head_stats_triton(hidden, weight, b, rows=rows, topk=8, temperature=1.0, seed=11,
                                      need_ref=False)
    assert chosen_tiles == [(64, 64, 64)]
    logits = head_logits(hidden, weight, b)
    want = vocab_stats_triton(logits, rows, topk=8, temperature=1.0, seed=11, need_ref=False)
    assert torch.equal(got.token, want.token)
    assert not torch.equal(got.token, logits[rows].argmax(-1))  # (sampling did happen)


def test_vocab_stats_cuda_block_crosses_tiles():
    # the launcher picks BLOCK_V = min(next_pow2(V), 1024) on every device: V = 1061 is a full and a partial tile
    logits = (torch.randn(5, 1061, generator=torch.Generator().manual_seed(0)) * 3).to(DEVICE, torch.bfloat16)
    got = vocab_stats_triton(logits, topk=8)
    want = vocab_stats_ref(logits.float(), topk=8)
    assert torch.equal(got.token, want.token)
    for name in ("confidence", "margin", "entropy", "topk_probs", "ref_logsumexp"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=1e-5, rtol=2e-5)


@pytest.mark.parametrize("length", [40, 300])  # BLOCK_L 64 (pairwise ranks) and 512 (bisection, partial block)
def test_position_kernels_at_block_edges(length):
    g = torch.Generator().manual_seed(length)
    scores = torch.randn(3, length, generator=g).to(DEVICE)
    cand = (torch.rand(3, length, generator=g) < 0.7).to(DEVICE)
    k = torch.tensor([0, 5, length], dtype=torch.int64, device=DEVICE)
    for kw in (dict(k=k, temperature=0.0), dict(threshold=0.02, temperature=0.5)):
        got = select_positions(scores, cand, backend="triton", **kw)
        assert torch.equal(got, select_positions_ref(scores, cand, **kw))


def test_the_three_kernels_draw_the_same_noise_for_the_same_seed_and_counter():
    """Zero logits: each draw is the argmax of the Gumbel noise itself, keyed by (seed, row * V + v) in vocab_stats
    and the fused head and by (seed, row * L + position) in select_positions: with V = L the same counters."""
    rows, width = 24, 48
    zeros = torch.zeros(rows, width, device=DEVICE)
    hidden, weight = torch.zeros(rows, 16, device=DEVICE), torch.zeros(width, 16, device=DEVICE)
    cand = torch.ones(rows, width, dtype=torch.bool, device=DEVICE)
    one = torch.ones(rows, dtype=torch.int64, device=DEVICE)
    draws = {}
    for seed in (5, 6):
        a = vocab_stats_triton(zeros, topk=2, temperature=1.0, seed=seed, need_ref=False).token
        b = fused_head_stats_triton(hidden, weight, topk=2, temperature=1.0, seed=seed, need_ref=False).token
        c = select_positions(zeros, cand, one, temperature=1.0, seed=seed, backend="triton").int().argmax(-1)
        assert torch.equal(a, b) and torch.equal(a, c)
        draws[seed] = a
    # the draws are noise, not a constant: different seeds and rows give different tokens
    assert not torch.equal(draws[5], draws[6]) and draws[5].unique().numel() > 5
