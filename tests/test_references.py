"""The reference policies are objects in one registry (upo_fast/training/references.py): each pairs its candidate
restriction, its g_ref kernel kind, its divergence and its sampling scorer, and everything that names a reference
(the configs, the update, imitation) looks it up there."""

import pytest
import torch

import upo_fast.training as training
from upo_fast import ops
from upo_fast.kernels.policy_divergence import REFERENCE_KINDS
from upo_fast.sampling.scorers import SCORERS
from upo_fast.training import references
from upo_fast.training.imitation import ImitationConfig
from upo_fast.training.references import REFERENCES, Reference, get_reference


def test_every_reference_names_a_kernel_kind_a_divergence_and_a_scorer():
    assert list(REFERENCES) == ["max_confidence", "softmax_confidence", "topk"]
    for name, ref in REFERENCES.items():
        assert ref.name == name and ref.kernel_kind in REFERENCE_KINDS and ref.divergence in ("ce", "kl")
        assert ref.scorer in SCORERS  # rollouts of the reference (imitation's round 0) use this scorer
    assert references.REFERENCE_DIVERGENCE == {"max_confidence": "ce", "softmax_confidence": "kl", "topk": "kl"}
    assert [n for n, r in REFERENCES.items() if r.top_k] == ["topk"]
    assert [n for n, r in REFERENCES.items() if not r.sequence_kl] == ["max_confidence"]


def test_the_package_re_exports_the_one_implementation():
    for name in ("REFERENCE_DIVERGENCE", "REFERENCES", "Reference", "get_reference", "reference_for",
                 "reference_divergence"):
        assert getattr(training, name) is getattr(references, name)


def test_lookup_names_the_argument_and_the_valid_names():
    assert get_reference("topk") is REFERENCES["topk"] and get_reference(REFERENCES["topk"]) is REFERENCES["topk"]
    with pytest.raises(ValueError, match="^reference must be one of max_confidence, softmax_confidence, topk, "
                                         "got 'margin'$"):
        get_reference("margin")
    with pytest.raises(ValueError, match="^kind must be one of"):
        references.reference_for("margin", torch.ones(1, 2, dtype=torch.bool), confidence=torch.ones(1, 2))
    with pytest.raises(ValueError, match="reference must be one of"):
        get_reference(["topk"])  # unhashable: still the ValueError


def test_terms_are_the_kernels_with_the_reference_s_kind_and_restriction():
    g = torch.Generator().manual_seed(0)
    confidence, lse = torch.rand(4, 7, generator=g), torch.randn(4, 7, generator=g)
    candidates = torch.rand(4, 7, generator=g) < 0.7
    candidates[:, 0] = True
    scores = torch.randn(4, 7, generator=g)
    for ref in REFERENCES.values():
        g_ref, cands = ref.terms(candidates, confidence, lse, K=2)
        want = ops.reference_distribution(ref.kernel_kind, candidates, confidence=confidence, ref_logsumexp=lse, K=2)
        assert torch.equal(g_ref, want)
        restricted = ops.topk_candidates(confidence, candidates, 2) if ref.top_k else candidates
        assert torch.equal(cands, restricted)
        torch.testing.assert_close(ref.regularizer(scores, cands, g_ref, 0.7),
                                   ops.policy_divergence(scores, cands, g_ref, ref.divergence, 0.7))


def test_a_new_reference_is_one_entry(monkeypatch):
    """Registered once, it is a valid reference of the update's options and of imitation."""
    from upo_fast.training.update import UpdateOptions

    monkeypatch.setitem(REFERENCES, "max_confidence_kl", Reference("max_confidence_kl", "softmax_confidence", "kl"))
    options = UpdateOptions(reference="max_confidence_kl", beta=0.1, position_temperature=1.0)
    assert options.reference.divergence == "kl"
    ImitationConfig(reference="max_confidence_kl").validate()
