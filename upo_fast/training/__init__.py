"""UPO training: the KL-regularized GRPO losses over unmasking steps (rollouts and the trainer build on them)."""

from upo_fast.training.losses import (
    REFERENCE_DIVERGENCE,
    group_advantages,
    grpo_loss,
    reference_divergence,
    reference_for,
    sequence_kl_surrogate,
    step_log_probs,
    zero_std_ratio,
)

__all__ = ["REFERENCE_DIVERGENCE", "grpo_loss", "group_advantages", "reference_divergence", "reference_for",
           "sequence_kl_surrogate", "step_log_probs", "zero_std_ratio"]
