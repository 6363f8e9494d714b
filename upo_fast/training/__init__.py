"""UPO training: the KL-regularized GRPO losses over unmasking steps, the reference policies they regularize toward
(``references``), rollouts, the update and the trainer built on them."""

from upo_fast.training.losses import (
    group_advantages,
    grpo_loss,
    sequence_kl_surrogate,
    step_log_probs,
    zero_std_ratio,
)
from upo_fast.training.references import (
    REFERENCE_DIVERGENCE,
    REFERENCES,
    Reference,
    get_reference,
    reference_divergence,
    reference_for,
)

__all__ = ["REFERENCE_DIVERGENCE", "REFERENCES", "Reference", "get_reference", "grpo_loss", "group_advantages",
           "reference_divergence", "reference_for", "sequence_kl_surrogate", "step_log_probs", "zero_std_ratio"]
