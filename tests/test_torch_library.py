"""The Triton ops are registered with torch.library: schema, fake (meta) implementations and autograd pass
``torch.library.opcheck``, and torch.compile traces through them without a graph break."""

import pytest
import torch
from kernel_device import DEVICE

from upo_fast import ops

pytestmark = [pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")]

# what opcheck tests besides running the op: the schema, the fake implementation against the real one, and that
# autograd goes through the registration (its aot_dispatch tests compile, which is too slow for the interpreter)
CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor")


def _ids(values):
    return torch.tensor(values, dtype=torch.int32, device=DEVICE)


def _seed(value=7):
    return torch.tensor([value], dtype=torch.int64, device=DEVICE)


@pytest.mark.parametrize("sample", [False, True])
def test_vocab_stats_opcheck(sample):
    logits = torch.randn(2, 5, 70, device=DEVICE, dtype=torch.bfloat16)
    rows = torch.tensor([0, 3, 9], device=DEVICE)
    args = (logits, rows, _ids([69]), _ids([69]), _seed(), 1, 1, 4, 0.7 if sample else 0.0, 0.05, True, 32)
    torch.library.opcheck(torch.ops.upo_fast.vocab_stats, args, test_utils=CHECKS)


def test_fused_head_opcheck():
    hidden = torch.randn(6, 16, device=DEVICE)
    weight = torch.randn(40, 16, device=DEVICE)
    args = (hidden, weight, None, None, _ids([39]), _ids([39]), _seed(), 1, 1, 1.0, 3, 1.0, 0.05, True, 16, 32, 16,
            32)
    torch.library.opcheck(torch.ops.upo_fast.fused_head_stats, args, test_utils=CHECKS)


def test_position_ops_opcheck():
    scores = torch.randn(3, 9, device=DEVICE, dtype=torch.float64, requires_grad=True)
    cand = torch.rand(3, 9, device=DEVICE) < 0.6
    cand[:, 0] = True
    ref = ops.reference_distribution("max_confidence", cand, confidence=scores.detach().float(), backend="triton")
    counts = torch.tensor([1, 2, 3], device=DEVICE)
    for op, args in [
        (torch.ops.upo_fast.position_log_softmax, (scores.detach(), cand, 0.5)),
        (torch.ops.upo_fast.select_positions, (scores.detach(), cand, counts, _seed(), 0.8, 0.0, 1)),
        (torch.ops.upo_fast.reference_distribution, (scores.detach(), cand, 1)),
        (torch.ops.upo_fast.policy_divergence, (scores, cand, ref, False, 0.7)),
        (torch.ops.upo_fast.policy_divergence, (scores, cand, ref + 0.01, True, 0.7)),
    ]:
        torch.library.opcheck(op, args, test_utils=CHECKS)


def test_compile_traces_registered_ops_without_graph_break():
    """fullgraph=True fails on any graph break: the ops must appear as single nodes with fake shapes."""
    logits = torch.randn(4, 50, device=DEVICE)
    cand = torch.rand(1, 4, device=DEVICE) < 0.7
    cand[0, 0] = True
    seed = _seed(3)

    def step(logits, seed):
        stats = torch.ops.upo_fast.vocab_stats(logits, None, _ids([49]), _ids([49]), seed, 1, 1, 2, 1.0, 0.05, False,
                                               64)
        conf = stats[1].view(1, 4)
        pick = torch.ops.upo_fast.select_positions(conf, cand, torch.ones(1, dtype=torch.int64, device=DEVICE),
                                                   seed, 0.5, 0.0, 1)
        return stats[0], pick

    eager = step(logits, seed)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)(logits, seed)
    assert torch.equal(eager[0], compiled[0]) and torch.equal(eager[1], compiled[1])


def test_device_seed_tensor_is_read_not_baked():
    """A seed tensor advanced in place changes the draw (what a CUDA-graph replay relies on); the same value gives
    the same tokens as the int seed."""
    logits = torch.zeros(8, 64, device=DEVICE)
    seed = _seed(11)
    a = ops.vocab_stats(logits, temperature=1.0, seed=seed, backend="triton").token
    assert torch.equal(a, ops.vocab_stats(logits, temperature=1.0, seed=11, backend="triton").token)
    seed.add_(1)
    b = ops.vocab_stats(logits, temperature=1.0, seed=seed, backend="triton").token
    assert torch.equal(b, ops.vocab_stats(logits, temperature=1.0, seed=12, backend="triton").token)
    assert not torch.equal(a, b)


def test_bad_seed_tensor():
    logits = torch.zeros(2, 8, device=DEVICE)
    with pytest.raises(ValueError, match="seed must be"):
        ops.vocab_stats(logits, temperature=1.0, seed=torch.tensor([1, 2], device=DEVICE), backend="triton")
    with pytest.raises(ValueError, match="seed must be"):
        ops.vocab_stats(logits, temperature=1.0, seed=1.5, backend="triton")
