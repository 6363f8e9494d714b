"""The reference policies g_ref of UPO, one object each (DESIGN.md, "UPO in our own words" and "Two protocols").

A :class:`Reference` holds everything that differs between references:

    candidates    the action set the policy samples from and is scored on: every masked candidate, or (Top-K) the K
                  most confident of them (``upo_fast.ops.topk_candidates``, ties to the lower position)
    distribution  g_ref over those candidates (``upo_fast.ops.reference_distribution`` with its ``kernel_kind``)
    regularizer   D_n between g_phi and g_ref (``upo_fast.ops.policy_divergence`` with its ``divergence`` mode)
    scorer        the sampling scorer of the same name (``upo_fast.sampling.scorers``), which rolls the reference out

Losses, the update, the trainer, imitation, the configs and the trainer benchmark read references from
:data:`REFERENCES` / :func:`get_reference`; adding a reference is one entry there (its kernel kind and its scorer
live in ``kernels/`` and ``scorers.py``, which cannot import training and keep their own names).

    reference_for        name, candidates [N, W], confidence / ref_logsumexp [N, W] -> (g_ref [N, W], candidates)
    reference_divergence name, scores [N, W], candidates, g_ref -> D_n [N]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from upo_fast.ops import policy_divergence, reference_distribution, topk_candidates


@dataclass(frozen=True)
class Reference:
    """One reference policy g_ref and its regularizer. See the module docstring."""

    name: str  # TrainConfig.reference / ImitationConfig.reference, and the scorer that samples it
    kernel_kind: str  # its kind in upo_fast.ops.reference_distribution
    divergence: str  # "ce" or "kl": its mode in upo_fast.ops.policy_divergence
    top_k: bool = False  # the policy chooses among the K most confident candidates only (else all of them)
    # False where g_ref is zero on some policy candidates (one-hot max-confidence): log g_ref(a_n) is then -inf and
    # the sequence-level KL surrogate has no finite value
    sequence_kl: bool = True

    @property
    def scorer(self) -> str:
        """The sampling scorer of the same name (``upo_fast.sampling.scorers``): what rolls this reference out."""
        return self.name

    def candidates(self, candidates: torch.Tensor, confidence: torch.Tensor | None = None, K: int | None = None, *,
                   backend: str = "auto") -> torch.Tensor:
        """[N, W] bool: the policy's action set. The Top-K restriction is what keeps KL(g || uniform on the top K)
        finite; rollouts against Top-K must use the same restriction (the policy's ``candidate_topk``)."""
        return topk_candidates(confidence, candidates, K, backend=backend) if self.top_k else candidates

    def distribution(self, candidates: torch.Tensor, confidence: torch.Tensor | None = None,
                     ref_logsumexp: torch.Tensor | None = None, K: int | None = None, *,
                     backend: str = "auto") -> torch.Tensor:
        """[N, W] float32 g_ref over ``candidates`` (all masked candidates: the Top-K kernel restricts itself)."""
        return reference_distribution(self.kernel_kind, candidates, confidence=confidence,
                                      ref_logsumexp=ref_logsumexp, K=K, backend=backend)

    def terms(self, candidates: torch.Tensor, confidence: torch.Tensor | None = None,
              ref_logsumexp: torch.Tensor | None = None, K: int | None = None, *,
              backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """(g_ref [N, W] float32, policy candidates [N, W] bool): what the regularizer needs at these states."""
        g_ref = self.distribution(candidates, confidence, ref_logsumexp, K, backend=backend)
        return g_ref, self.candidates(candidates, confidence, K, backend=backend)

    def regularizer(self, scores: torch.Tensor, candidates: torch.Tensor, g_ref: torch.Tensor,
                    temperature: float = 1.0, *, backend: str = "auto") -> torch.Tensor:
        """[N] D_n between g = softmax(scores / temperature) over ``candidates`` (the policy candidates of
        :meth:`terms`) and ``g_ref``: CE(g_ref, g) or KL(g || g_ref). Differentiable w.r.t. ``scores``."""
        return policy_divergence(scores, candidates, g_ref, self.divergence, temperature, backend=backend)


# max-confidence pairs with cross-entropy: its g_ref is one-hot, so KL(g || g_ref) would be infinite wherever g puts
# mass off the argmax, while CE is finite and pulls g toward it. Top-K's KL to its uniform g_ref is log K - H(g).
REFERENCES: dict[str, Reference] = {ref.name: ref for ref in (
    Reference("max_confidence", kernel_kind="max_confidence", divergence="ce", sequence_kl=False),
    Reference("softmax_confidence", kernel_kind="softmax_confidence", divergence="kl"),
    Reference("topk", kernel_kind="topk", divergence="kl", top_k=True),
)}

# name -> its regularizer's mode ("ce" or "kl"): a view of REFERENCES
REFERENCE_DIVERGENCE: dict[str, str] = {name: ref.divergence for name, ref in REFERENCES.items()}


def get_reference(name, what: str = "reference") -> Reference:
    """The reference called ``name`` (a :class:`Reference` is returned as it is); a ValueError names ``what`` (the
    argument) and the valid names."""
    if isinstance(name, Reference):
        return name
    reference = REFERENCES.get(name) if isinstance(name, str) else None
    if reference is None:
        raise ValueError(f"{what} must be one of {', '.join(REFERENCES)}, got {name!r}")
    return reference


def reference_for(kind: str, candidates: torch.Tensor, confidence: torch.Tensor | None = None,
                  ref_logsumexp: torch.Tensor | None = None, K: int | None = None, *,
                  backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(g_ref [N, W] float32, policy candidates [N, W] bool) of the reference ``kind``: :meth:`Reference.terms`."""
    return get_reference(kind, "kind").terms(candidates, confidence, ref_logsumexp, K, backend=backend)


def reference_divergence(kind: str, scores: torch.Tensor, candidates: torch.Tensor, reference: torch.Tensor,
                         temperature: float = 1.0, *, backend: str = "auto") -> torch.Tensor:
    """[N] regularizer D_n of the reference ``kind`` (CE or KL, see REFERENCE_DIVERGENCE):
    :meth:`Reference.regularizer`."""
    return get_reference(kind, "kind").regularizer(scores, candidates, reference, temperature, backend=backend)


__all__ = ["Reference", "REFERENCES", "REFERENCE_DIVERGENCE", "get_reference", "reference_for",
           "reference_divergence"]
