"""Likelihoods of a masked diffusion model: the Monte-Carlo estimate LLaDA's evaluation uses for
``log p(target | prefix)``, and the check whether greedy unmasking reproduces a target.

The estimate (LLaDA, "Large Language Diffusion Models", eq. 6 and its lm-evaluation-harness code): each sample
masks ``m`` of the ``T`` target tokens uniformly at random and scores the masked ones, weighted by ``T / m``. The
``m`` of the ``b`` rows of one batch are stratified: ``round(linspace(k, k + (b - 1) T / b, b))`` wrapped into
``[1, T]`` for one uniform ``k``, so that every batch covers the mask ratios evenly. The mean over ``mc_num``
samples is an unbiased estimate of the ELBO, a lower bound of the log-likelihood.

Differences from LLaDA's code, none in the estimator: the noise comes from a ``torch.Generator`` (deterministic per
call), the masks of a batch are drawn at once (no per-row loop), and on a model with a separable head only the
masked rows' logits are computed (no ``[b, L, V]`` tensor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from upo_fast.sampling.adapters import MDMAdapter, wrap_model
from upo_fast.validation import check_finite, check_token_ids


def _check_ids(ids, name: str, vocab_size: int | None, *, allow_empty: bool) -> torch.Tensor:
    if not torch.is_tensor(ids) or ids.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor of token ids, got "
                         f"{tuple(ids.shape) if torch.is_tensor(ids) else type(ids).__name__}")
    if ids.numel() or not allow_empty:
        check_token_ids(ids[None], name, vocab_size)
    return ids.long()


def stratified_masks(batch: int, target_len: int, generator: torch.Generator | None = None,
                     device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """([batch, target_len] bool masks, [batch] masked fractions m / T): row i masks m_i random positions, with
    the m_i stratified over [1, T] as in LLaDA's estimator."""
    k = torch.randint(1, target_len + 1, (), generator=generator).item()
    counts = torch.linspace(k, k + (batch - 1) * (target_len / batch), batch).round().long()
    counts = (counts - 1) % target_len + 1
    order = torch.rand(batch, target_len, generator=generator).argsort(dim=1)  # a random permutation per row
    masks = order < counts[:, None]
    return masks.to(device), (counts.double() / target_len).to(device)


def _target_logits(adapter: MDMAdapter, noisy: torch.Tensor, start: int, rows: torch.Tensor,
                   cfg_scale: float, mask_id: int) -> torch.Tensor:
    """[N, V] float32 logits of the masked target positions ``rows`` ([b, T] bool) of ``noisy`` ([b, L]), with
    classifier-free guidance (the unconditional input masks the prefix), from the final hidden states when the
    head is separable."""
    inputs = noisy
    if cfg_scale > 0:
        uncond = noisy.clone()
        uncond[:, :start] = mask_id
        inputs = torch.cat([noisy, uncond])
    prepared = adapter.prepare_attention(None, *inputs.shape)
    picked = torch.cat([rows, rows]) if cfg_scale > 0 else rows  # conditional rows first, then unconditional
    head = adapter.fused_head()
    if head is not None:
        weight, bias = head
        hidden = adapter.final_hidden(inputs, prepared)[:, start:][picked]
        out = F.linear(hidden.to(weight.dtype), weight, bias).float() * adapter.logit_scale()
    else:
        out = adapter.logits(inputs, prepared)[:, start:][picked].float()
    if cfg_scale > 0:
        cond, uncond = out.chunk(2)
        out = uncond + (cfg_scale + 1) * (cond - uncond)
    return out


@torch.no_grad()
def mc_loglikelihood(model, prefix: torch.Tensor, target: torch.Tensor, *, mc_num: int = 128,
                     batch_size: int = 32, cfg_scale: float = 0.0, generator: torch.Generator | None = None,
                     mask_id: int | None = None, family: str | None = None) -> float:
    """Monte-Carlo estimate of ``log p(target | prefix)`` (nats) under the masked diffusion model ``model``.

    prefix, target: 1-D token ids (prefix may be empty, target may not). ``mc_num`` samples in batches of
    ``batch_size`` (``mc_num`` must be a multiple of it, as in LLaDA's harness); ``cfg_scale`` is LLaDA's
    classifier-free guidance for likelihoods (``cfg``). ``generator`` (CPU) makes the estimate deterministic.
    """
    adapter = wrap_model(model, family, mask_id)
    prefix = _check_ids(prefix, "prefix", adapter.vocab_size, allow_empty=True)
    target = _check_ids(target, "target", adapter.vocab_size, allow_empty=False)
    check_finite(batch_size, "batch_size", low=1, integer=True)
    check_finite(mc_num, "mc_num", low=1, integer=True)
    check_finite(cfg_scale, "cfg_scale", low=0)
    if mc_num % batch_size:
        raise ValueError(f"mc_num ({mc_num}) must be a multiple of batch_size ({batch_size})")
    if bool((target == adapter.mask_id).any()):
        raise ValueError(f"target holds the mask id {adapter.mask_id}: a continuation cannot be scored at a mask")
    device, start, target_len = adapter.device, prefix.numel(), target.numel()
    seq = torch.cat([prefix, target]).to(device)[None].expand(batch_size, -1)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for _ in range(mc_num // batch_size):
        masks, fraction = stratified_masks(batch_size, target_len, generator, device)
        noisy = seq.clone()
        noisy[:, start:] = seq[:, start:].masked_fill(masks, adapter.mask_id)
        logits = _target_logits(adapter, noisy, start, masks, cfg_scale, adapter.mask_id)
        nll = F.cross_entropy(logits, seq[:, start:][masks], reduction="none").double()
        weights = fraction[:, None].expand_as(masks)[masks]
        total += (nll / weights).sum() / batch_size
    return -float(total) / (mc_num // batch_size)


@torch.no_grad()
def greedy_reproduces(model, prefix: torch.Tensor, target: torch.Tensor, *, cfg_scale: float = 0.0,
                      mask_id: int | None = None, family: str | None = None) -> bool:
    """Whether unmasking ``len(target)`` masks after ``prefix`` one position per step by max-confidence, argmax
    tokens (LLaDA's ``suffix_greedy_prediction``), gives exactly ``target``: lm-eval's ``is_greedy``."""
    from upo_fast.sampling.loop import unmask

    adapter = wrap_model(model, family, mask_id)
    prefix = _check_ids(prefix, "prefix", adapter.vocab_size, allow_empty=True)
    target = _check_ids(target, "target", adapter.vocab_size, allow_empty=False)
    masks = torch.full_like(target, adapter.mask_id)
    x = torch.cat([prefix, masks])[None].to(adapter.device)
    filled = unmask(adapter, x, scorer="max_confidence", cfg_scale=cfg_scale, steps=target.numel())
    return bool((filled[0, prefix.numel():] == target.to(filled.device)).all())
