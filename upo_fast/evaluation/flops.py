"""What an unmasking policy costs beside its MDM, per sampling step, in FLOPs that torch counts (issue 13).

One step of the sampler runs the MDM once over the sequence [B, L] and the policy once over the active region
[B, W]; an update runs the policy forward and backward on recorded states. :func:`policy_cost` counts all three with
``torch.utils.flop_counter.FlopCounterMode`` on real inputs: the policy reads the hidden state that the MDM's forward
fed its last block (captured by the adapter's hook) and top-k probabilities from the same logits.

What is counted: torch's formulas cover matrix products (Linear, matmul, bmm, attention); element-wise work (norms,
activations, softmax) counts 0 for the MDM and the policy alike. The count runs attention through sdpa's math
backend, whose matmuls torch counts everywhere: the fused CPU kernel has no formula and would count 0. Custom kernels
(Triton, a model's own attention op) are not counted.

The paper's policy is < 2% of its 8B MDM; a policy whose block is a copy of a tiny MDM's last block is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from upo_fast.sampling.adapters import MDMAdapter, wrap_model


@dataclass(frozen=True)
class PolicyCost:
    """FLOPs of one step at one batch/sequence shape, and parameter counts.

    ratio = policy_flops / mdm_flops (the policy's share of a sampling step, beside one MDM forward);
    update_ratio = policy_update_flops / mdm_flops (one policy forward + backward on the same states, the update's
    cost per recorded step and inner iteration, against the MDM forward that recorded it)."""

    mdm_flops: int
    policy_flops: int
    ratio: float
    policy_params: int
    mdm_params: int
    policy_update_flops: int
    update_ratio: float


def count_flops(fn, *args, **kwargs) -> tuple[int, object]:
    """(FLOPs torch counts for ``fn(*args, **kwargs)``, its result), attention on sdpa's math backend."""
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        out = fn(*args, **kwargs)
    return counter.get_total_flops(), out


def _policy_inputs(adapter: MDMAdapter, logits: torch.Tensor, x: torch.Tensor, width: int, topk: int):
    """The policy's keyword inputs (hidden [B, W, d], candidates [B, W], topk_probs [B, W, k]) at the last ``width``
    positions, as the sampler builds them."""
    probs = logits[:, -width:].float().softmax(-1)
    if adapter.mask_id < probs.shape[-1]:
        probs[..., adapter.mask_id] = 0.0  # the features exclude the mask token
    top = probs.topk(min(topk, probs.shape[-1]), dim=-1)
    return dict(hidden=adapter.position_hidden()[:, -width:], candidates=x[:, -width:] == adapter.mask_id,
                topk_probs=top.values)


def _update_flops(policy, hidden, candidates, topk_probs) -> int:
    """Forward + backward to the policy's parameters (torch.autograd.grad: no .grad is touched)."""
    params = list(policy.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)

        def step():
            with torch.enable_grad():
                scores = policy(hidden.detach(), candidates=candidates, topk_probs=topk_probs)
                return torch.autograd.grad(scores.sum(), params, allow_unused=True)

        return count_flops(step)[0]
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def policy_cost(mdm, policy, x: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                width: int | None = None) -> PolicyCost:
    """Count one MDM forward over ``x`` [B, L] (token ids, masks where the step would have them) and one forward
    (and forward + backward) of ``policy`` over the last ``width`` positions (default: all L, the grid tasks' active
    region; LLaDA-style generation: its block length). ``mdm``: a model or an ``MDMAdapter``."""
    if not torch.is_tensor(x) or x.dim() != 2 or x.dtype != torch.long:
        raise ValueError(f"x must be a [B, L] tensor of token ids (long), got {getattr(x, 'shape', x)}")
    width = x.shape[1] if width is None else width
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= x.shape[1]:
        raise ValueError(f"width must be an int in [1, L={x.shape[1]}], got {width!r}")
    base = wrap_model(mdm)
    adapter = MDMAdapter(base.model, base.family, base.mask_id)  # its own hook, removed below
    adapter.capture_last_block_input()
    try:
        prepared = adapter.prepare_attention(attention_mask, *x.shape)
        with torch.no_grad():
            mdm_flops, logits = count_flops(adapter.logits, x, prepared)
            inputs = _policy_inputs(adapter, logits, x, width, policy.config.feature_topk)
            policy_flops = count_flops(policy, **inputs)[0]
    finally:
        adapter.capture_last_block_input(False)
    update_flops = _update_flops(policy, **inputs)
    return PolicyCost(mdm_flops=mdm_flops, policy_flops=policy_flops, ratio=policy_flops / mdm_flops,
                      policy_params=sum(p.numel() for p in policy.parameters()),
                      mdm_params=sum(p.numel() for p in adapter.model.parameters()),
                      policy_update_flops=update_flops, update_ratio=update_flops / mdm_flops)


__all__ = ["PolicyCost", "count_flops", "policy_cost"]
