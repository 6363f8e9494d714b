"""The reference token statistics against direct formulas (the Triton kernel will be tested against this)."""

import pytest
import torch

from upo_fast.kernels.vocab_stats import vocab_stats_ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 67)])
def test_statistics_match_direct_formulas(dtype, shape):
    torch.manual_seed(0)
    logits = (torch.randn(shape) * 3).to(dtype)
    s = vocab_stats_ref(logits, topk=4, exclude=[1])
    p = logits.float().reshape(-1, shape[-1]).softmax(-1)
    assert torch.equal(s.token, p.argmax(-1))
    torch.testing.assert_close(s.confidence, p.max(-1).values)
    top = p.sort(-1, descending=True).values
    torch.testing.assert_close(s.margin, top[:, 0] - top[:, 1])
    torch.testing.assert_close(s.entropy, -(p * p.log()).sum(-1))
    kept = p.clone()
    kept[:, 1] = -1
    torch.testing.assert_close(s.topk_probs, kept.sort(-1, descending=True).values[:, :4])
    torch.testing.assert_close(s.ref_logsumexp, torch.logsumexp(p / 0.05, -1))


def test_rows_suppress_and_minus_inf():
    logits = torch.randn(6, 11)
    logits[2, :5] = float("-inf")
    rows = torch.tensor([2, 4])
    s = vocab_stats_ref(logits, rows, suppress=[logits[4].argmax().item()])
    assert s.token.shape == (2,) and s.token[0] >= 5
    assert s.token[1] != logits[4].argmax()
    assert torch.isfinite(s.entropy).all()


def test_gumbel_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).expand(20000, 3)
    g = torch.Generator().manual_seed(0)
    tokens = vocab_stats_ref(logits, topk=1, temperature=1.0, generator=g).token
    freq = torch.bincount(tokens, minlength=3).float() / tokens.numel()
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.2]), atol=0.015, rtol=0)
    again = vocab_stats_ref(logits, topk=1, temperature=1.0, generator=torch.Generator().manual_seed(0)).token
    assert torch.equal(tokens, again)


def test_bad_arguments():
    with pytest.raises(ValueError, match="topk must be in"):
        vocab_stats_ref(torch.randn(2, 3), topk=4)
    with pytest.raises(ValueError, match="logits must be"):
        vocab_stats_ref(torch.randn(3))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_skipped_statistics_are_nan_and_the_rest_unchanged(temperature):
    """need_ref=False / features=False skip passes over V on the CPU: the token and its confidence stay bit for bit
    what the full pass gives, and what was skipped is NaN (never a plausible number a scorer could read)."""
    logits = torch.randn(5, 70, generator=torch.Generator().manual_seed(3))
    logits[1, 4] = float("-inf")

    def stats(**kw):
        return vocab_stats_ref(logits, topk=4, temperature=temperature, suppress=[3], exclude=[7],
                               generator=torch.Generator().manual_seed(0), **kw)

    full = stats()
    for need_ref, features in [(False, True), (True, False), (False, False)]:
        part = stats(need_ref=need_ref, features=features)
        assert torch.equal(part.token, full.token) and torch.equal(part.confidence, full.confidence)
        kept = {"ref_logsumexp": need_ref, "margin": features, "entropy": features, "topk_probs": features}
        for name, computed in kept.items():
            if computed:
                assert torch.equal(getattr(part, name), getattr(full, name)), name
            else:
                assert getattr(part, name).isnan().all() and getattr(part, name).shape == getattr(full, name).shape
