"""Drop-in replacement for LLaDA's ``generate()`` (the current, batched version with an attention mask).

Same signature, same semantics, same tokens at temperature 0. What differs is the cost: token statistics are
computed only for the rows that can be unmasked in the current block (not the whole ``[B, L, V]``), Gumbel noise
is drawn only for those rows, the per-step transfer counts are known on the host before the loop (so no host
sync inside a step), and the per-row ``topk`` loop is one batched ``topk``.

At temperature > 0 the samples follow the same distribution (float64 Gumbel-max) but not the same random
stream, because the reference draws noise for every position of the sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from upo_fast.sampling.adapters import LLADA_MASK_ID, MDMAdapter
from upo_fast.sampling.schedules import llada_block_counts
from upo_fast.validation import (
    check_attention_mask,
    check_finite,
    check_pad_not_mask,
    check_token_ids,
    check_vocab_id,
    non_finite_logits_error,
    record_first_step,
)

LLADA_EOS_ID = 126081  # <|endoftext|>
LLADA_EOT_ID = 126348  # <|eot_id|>
REMASKING = ("low_confidence", "random")


def _check_llada_args(adapter, prompt, attention_mask, steps, gen_length, block_length, temperature, cfg_scale,
                      remasking, mask_id, logits_eos_inf, confidence_eos_eot_inf, eos_id, eot_id) -> int:
    """Every argument check of ``llada_generate``, in its order (host checks, before the loop); returns the
    number of blocks."""
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")
    check_finite(gen_length, "gen_length", low=1, integer=True)
    check_finite(block_length, "block_length", low=1, integer=True)
    check_finite(steps, "steps", low=1, integer=True)
    if gen_length % block_length != 0:
        raise ValueError(f"gen_length ({gen_length}) must be a positive multiple of block_length ({block_length})")
    num_blocks = gen_length // block_length
    if steps % num_blocks != 0:
        raise ValueError(f"steps ({steps}) must be a positive multiple of the number of blocks ({num_blocks} = "
                         f"gen_length // block_length)")
    check_finite(temperature, "temperature", low=0)
    check_finite(cfg_scale, "cfg_scale", low=0)
    check_token_ids(prompt, "prompt", adapter.vocab_size)
    if logits_eos_inf or confidence_eos_eot_inf:
        check_vocab_id(eos_id, "eos_id", adapter.vocab_size)
        check_vocab_id(eot_id, "eot_id", adapter.vocab_size)
    check_attention_mask(attention_mask, prompt.shape)
    check_pad_not_mask(prompt, attention_mask, mask_id)
    return num_blocks


def _prepare_llada(prompt, attention_mask, gen_length, mask_id, device):
    """x = prompt followed by ``gen_length`` masks, the prompt positions (what guidance masks out), and the
    model's keyword arguments for the plain and the classifier-free-guidance (doubled batch) calls."""
    batch, prompt_len = prompt.shape
    x = torch.full((batch, prompt_len + gen_length), mask_id, dtype=torch.long, device=device)
    x[:, :prompt_len] = prompt.to(device)
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask.to(device), torch.ones(
            (batch, gen_length), dtype=attention_mask.dtype, device=device)], dim=-1)
    prompt_index = x != mask_id
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
    cfg_kwargs = {} if attention_mask is None else {"attention_mask": torch.cat([attention_mask] * 2)}
    return x, prompt_index, kwargs, cfg_kwargs


def _first_candidate(x, block_start, mask_id) -> int:
    """Every mask left of the block end is a candidate (as in the reference): masks in the prompt, and positions
    where an earlier step committed the mask token itself. Normally there are none and the statistics cover the
    block only; one host read per block (not per step) tells."""
    leftover = (x[:, :block_start] == mask_id).any(0).nonzero()
    return int(leftover[0]) if leftover.numel() else block_start


def _step_logits(model, x, prompt_index, start, block_end, cfg_scale, mask_id, kwargs, cfg_kwargs,
                 logits_eos_inf, eos_id):
    """One step's logits for positions ``start:block_end``, with classifier-free guidance and the EOS rule."""
    if cfg_scale > 0:
        un_x = x.masked_fill(prompt_index, mask_id)
        both = model(torch.cat([x, un_x]), **cfg_kwargs).logits[:, start:block_end]
        cond, uncond = both.chunk(2, dim=0)
        logits = uncond + (cfg_scale + 1) * (cond - uncond)
    else:
        logits = model(x, **kwargs).logits[:, start:block_end]
    if logits_eos_inf:
        logits[:, :, eos_id] = float("-inf")  # in place on our slice of the output, as the reference
    return logits


def _sample_and_score(logits, shape, start, block_end, temperature, remasking, confidence_eos_eot_inf, eos_id,
                      eot_id, device):
    """The step's proposal x0 [B, block_end - start], the confidence of every position ([B, L], -inf where no
    confidence is set) and which rows the proposal could be read from (finite logits)."""
    if temperature > 0:
        uniform = torch.rand_like(logits, dtype=torch.float64)
        noisy = logits.double().exp() / (-torch.log(uniform)) ** temperature
        x0 = noisy.argmax(dim=-1)
    else:
        x0 = logits.argmax(dim=-1)
    if remasking == "random":  # what the argmax read: NaN, +inf or all -inf rows give a bogus token
        finite = torch.isfinite(logits.amax(dim=-1))
    if confidence_eos_eot_inf:
        # The reference writes `logits_with_noise[..., eos] = logits[..., eot] = -inf`; at temperature 0
        # both names are the same tensor, so EOS and EoT both lose their confidence; above 0 only EoT.
        logits[:, :, eot_id] = float("-inf")
        if temperature == 0:
            logits[:, :, eos_id] = float("-inf")
    full_conf = torch.full(shape, float("-inf"), device=device,
                           dtype=logits.dtype if remasking == "low_confidence" else torch.float32)
    if remasking == "low_confidence":
        x0_p = F.softmax(logits, dim=-1).gather(-1, x0[..., None]).squeeze(-1)
        full_conf[:, start:block_end] = x0_p
        finite = torch.isfinite(x0_p)  # NaN exactly when the row holds a NaN or +inf or is all -inf
    else:  # the reference draws one uniform per position of the whole sequence
        full_conf = torch.rand(shape, device=device)
        full_conf[:, block_end:] = float("-inf")
    return x0, full_conf, finite


def _commit(x, confidence, k, x0, mask_index, start, block_end) -> None:
    """Write the proposals of the ``k`` most confident candidates of each row into x (in place)."""
    if k == 0:
        return
    select = confidence.topk(k, dim=-1).indices  # [B, k]; k never exceeds the candidates
    region = x[:, start:block_end]  # a view: the scatter writes into x; the selection never leaves it
    proposal = torch.where(mask_index[:, start:block_end], x0, region)
    region.scatter_(1, select - start, proposal.gather(1, select - start))


@torch.no_grad()
def llada_generate(model, prompt, attention_mask=None, steps=128, gen_length=128, block_length=128,
                   temperature=0.0, cfg_scale=0.0, remasking="low_confidence", mask_id=LLADA_MASK_ID,
                   logits_eos_inf=False, confidence_eos_eot_inf=False, *, eos_id=LLADA_EOS_ID,
                   eot_id=LLADA_EOT_ID):
    """LLaDA sampling. prompt: [B, P] token ids (left-padded when B > 1); attention_mask: [B, P] 0/1 or None.

    Returns [B, P + gen_length] token ids. ``steps`` is split evenly over ``gen_length // block_length`` blocks;
    inside a block the per-step counts are ``block_length // steps_per_block`` with the remainder on the early
    steps. ``eos_id``/``eot_id`` are the ids that ``logits_eos_inf``/``confidence_eos_eot_inf`` act on (LLaDA's
    by default; set them for other tokenizers).
    """
    adapter = MDMAdapter(model, family="llada", mask_id=mask_id)
    num_blocks = _check_llada_args(adapter, prompt, attention_mask, steps, gen_length, block_length, temperature,
                                   cfg_scale, remasking, mask_id, logits_eos_inf, confidence_eos_eot_inf, eos_id,
                                   eot_id)
    prompt_len = prompt.shape[1]
    device = adapter.device
    x, prompt_index, kwargs, cfg_kwargs = _prepare_llada(prompt, attention_mask, gen_length, mask_id, device)
    steps_per_block = steps // num_blocks
    counts = llada_block_counts(block_length, steps_per_block)  # host ints, identical for every row
    positions = torch.arange(x.shape[1], device=device)
    # the first step (counting over the whole call) whose logits were non-finite at a candidate, -1 = none; a
    # device tensor, read once after the loop
    bad_step = torch.full((), -1, dtype=torch.long, device=device)

    for block in range(num_blocks):
        block_end = prompt_len + (block + 1) * block_length
        start = _first_candidate(x, prompt_len + block * block_length, mask_id)
        for step in range(steps_per_block):
            mask_index = x == mask_id
            logits = _step_logits(model, x, prompt_index, start, block_end, cfg_scale, mask_id, kwargs, cfg_kwargs,
                                  logits_eos_inf, eos_id)
            x0, full_conf, finite = _sample_and_score(logits, x.shape, start, block_end, temperature, remasking,
                                                      confidence_eos_eot_inf, eos_id, eot_id, device)
            bad = (mask_index[:, start:block_end] & ~finite).any()
            record_first_step(bad_step, bad, block * steps_per_block + step)
            confidence = torch.where(mask_index & (positions < block_end), full_conf, float("-inf"))
            _commit(x, confidence, counts[step], x0, mask_index, start, block_end)
    first_bad = int(bad_step)  # the one host read of the check
    if first_bad >= 0:
        raise non_finite_logits_error(first_bad, cfg_scale)
    return x
