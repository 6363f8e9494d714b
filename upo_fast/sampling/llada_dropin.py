"""Drop-in replacement for LLaDA's ``generate()`` (the current, batched version with an attention mask).

Same signature, same semantics, same tokens at temperature 0. What differs is the cost: token statistics are
computed only for the rows that can be unmasked in the current block (not the whole ``[B, L, V]``), Gumbel noise
is drawn only for those rows, the per-step transfer counts are known on the host before the loop (so no host
sync inside a step), and the per-row ``topk`` loop is one batched ``topk``.

At temperature > 0 the samples follow the same distribution (float64 Gumbel-max) but not the same random
stream, because the reference draws noise for every position of the sequence.

The options of a call travel as one :class:`LLaDAOptions`, checked once when ``llada_generate`` makes it; the
tensors its steps share (x, written in place, the guidance inputs, the non-finite record) as one ``_Call``.

Fast-dLLM's samplers (NVlabs/Fast-dLLM, ``llada/generate.py``) are the same call with ``threshold=``, ``factor=``
or ``cache=``: ``generate(..., threshold)`` is ``llada_generate(..., threshold=t)``, ``generate_with_prefix_cache``
is ``cache="prefix"``, ``generate_with_dual_cache`` is ``cache="dual"``. Those run through ``upo_fast.generate``
(the fused loop, any batch size, left padding) with the max-confidence (or random) order and Fast-dLLM's commit
rules (``upo_fast.sampling.commit_rules``); at temperature 0 the tokens are Fast-dLLM's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from upo_fast.sampling.adapters import MDMAdapter, dropin_adapter
from upo_fast.sampling.schedules import llada_block_counts
from upo_fast.validation import (
    check_attention_mask,
    check_finite,
    check_pad_not_mask,
    check_token_ids,
    check_vocab_id,
    field_check,
    non_finite_logits_error,
    record_first_step,
)

LLADA_EOS_ID = 126081  # <|endoftext|>
LLADA_EOT_ID = 126348  # <|eot_id|>
REMASKING = ("low_confidence", "random")


@dataclass(frozen=True)
class LLaDAOptions:
    """The keyword arguments of LLaDA's ``generate()`` (same names and defaults), checked once in its order (a
    ValueError naming the first bad one). The token ids are checked against the vocabulary by
    :meth:`check_token_ids`, which needs the model. ``mask_id`` None means the model's (from its config, else
    LLaDA's 126336): ``llada_generate`` resolves it through the adapter before making the options."""

    steps: int = 128
    gen_length: int = 128
    block_length: int = 128
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"
    mask_id: int | None = None
    logits_eos_inf: bool = False  # EOS never proposed
    confidence_eos_eot_inf: bool = False  # EOS/EoT proposals never confident
    eos_id: int = LLADA_EOS_ID
    eot_id: int = LLADA_EOT_ID

    def __post_init__(self):
        field_check(self)(self.remasking in REMASKING, "remasking", f"one of {REMASKING}")
        check_finite(self.gen_length, "gen_length", low=1, integer=True)
        check_finite(self.block_length, "block_length", low=1, integer=True)
        check_finite(self.steps, "steps", low=1, integer=True)
        if self.gen_length % self.block_length != 0:
            raise ValueError(f"gen_length ({self.gen_length}) must be a positive multiple of block_length "
                             f"({self.block_length})")
        if self.steps % self.num_blocks != 0:
            raise ValueError(f"steps ({self.steps}) must be a positive multiple of the number of blocks "
                             f"({self.num_blocks} = gen_length // block_length)")
        check_finite(self.temperature, "temperature", low=0)
        check_finite(self.cfg_scale, "cfg_scale", low=0)

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks

    def check_token_ids(self, vocab_size: int | None) -> None:
        """eos_id/eot_id inside the vocabulary, when a flag uses them (unused ids may be anything, as upstream)."""
        if self.logits_eos_inf or self.confidence_eos_eot_inf:
            check_vocab_id(self.eos_id, "eos_id", vocab_size)
            check_vocab_id(self.eot_id, "eot_id", vocab_size)


def _check_inputs(options: LLaDAOptions, adapter: MDMAdapter, prompt, attention_mask) -> None:
    """The checks of the call's tensors (host checks, before the loop), in the order the reference meets them."""
    check_token_ids(prompt, "prompt", adapter.vocab_size)
    options.check_token_ids(adapter.vocab_size)
    check_attention_mask(attention_mask, prompt.shape)
    check_pad_not_mask(prompt, attention_mask, options.mask_id)


@dataclass
class _Call:
    """What the steps of one call share. ``x`` is written in place; ``prompt_index`` is what guidance masks out;
    ``kwargs``/``cfg_kwargs`` are the model's keyword arguments for the plain and the doubled (guided) batch;
    ``bad_step`` is the first step (over the whole call) whose logits were non-finite at a candidate, -1 = none: a
    device tensor read once after the loop."""

    model: object
    x: torch.Tensor
    prompt_index: torch.Tensor
    kwargs: dict
    cfg_kwargs: dict
    positions: torch.Tensor
    bad_step: torch.Tensor

    @classmethod
    def start(cls, options: LLaDAOptions, model, prompt, attention_mask, device) -> _Call:
        """x = prompt followed by ``gen_length`` masks, and what the steps read beside it."""
        batch, prompt_len = prompt.shape
        gen_length, mask_id = options.gen_length, options.mask_id
        x = torch.full((batch, prompt_len + gen_length), mask_id, dtype=torch.long, device=device)
        x[:, :prompt_len] = prompt.to(device)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask.to(device), torch.ones(
                (batch, gen_length), dtype=attention_mask.dtype, device=device)], dim=-1)
        kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
        cfg_kwargs = {} if attention_mask is None else {"attention_mask": torch.cat([attention_mask] * 2)}
        return cls(model=model, x=x, prompt_index=x != mask_id, kwargs=kwargs, cfg_kwargs=cfg_kwargs,
                   positions=torch.arange(x.shape[1], device=device),
                   bad_step=torch.full((), -1, dtype=torch.long, device=device))


class _Window(NamedTuple):
    """The positions a step reads logits for: from the first candidate to the end of the block."""

    start: int
    end: int


def _first_candidate(x, block_start, mask_id) -> int:
    """Every mask left of the block end is a candidate (as in the reference): masks in the prompt, and positions
    where an earlier step committed the mask token itself. Normally there are none and the statistics cover the
    block only; one host read per block (not per step) tells."""
    leftover = (x[:, :block_start] == mask_id).any(0).nonzero()
    return int(leftover[0]) if leftover.numel() else block_start


def _step_logits(options: LLaDAOptions, call: _Call, window: _Window):
    """One step's logits for the window's positions, with classifier-free guidance and the EOS rule."""
    start, block_end = window
    if options.cfg_scale > 0:
        un_x = call.x.masked_fill(call.prompt_index, options.mask_id)
        both = call.model(torch.cat([call.x, un_x]), **call.cfg_kwargs).logits[:, start:block_end]
        cond, uncond = both.chunk(2, dim=0)
        logits = uncond + (options.cfg_scale + 1) * (cond - uncond)
    else:
        logits = call.model(call.x, **call.kwargs).logits[:, start:block_end]
    if options.logits_eos_inf:
        logits[:, :, options.eos_id] = float("-inf")  # in place on our slice of the output, as the reference
    return logits


def _propose(options: LLaDAOptions, logits):
    """The step's proposal x0 [B, block_end - start]: Gumbel-max in float64 above temperature 0, else argmax."""
    if options.temperature > 0:
        uniform = torch.rand_like(logits, dtype=torch.float64)
        noisy = logits.double().exp() / (-torch.log(uniform)) ** options.temperature
        return noisy.argmax(dim=-1)
    return logits.argmax(dim=-1)


def _sample_and_score(options: LLaDAOptions, call: _Call, logits, window: _Window):
    """The step's proposal x0 [B, window], the confidence of every position ([B, L], -inf where no confidence is
    set) and which rows the proposal could be read from (finite logits)."""
    start, block_end = window
    shape, device = call.x.shape, call.x.device
    x0 = _propose(options, logits)
    if options.remasking == "random":  # what the argmax read: NaN, +inf or all -inf rows give a bogus token
        finite = torch.isfinite(logits.amax(dim=-1))
    if options.confidence_eos_eot_inf:
        # The reference writes `logits_with_noise[..., eos] = logits[..., eot] = -inf`; at temperature 0
        # both names are the same tensor, so EOS and EoT both lose their confidence; above 0 only EoT.
        logits[:, :, options.eot_id] = float("-inf")
        if options.temperature == 0:
            logits[:, :, options.eos_id] = float("-inf")
    if options.remasking == "low_confidence":
        full_conf = torch.full(shape, float("-inf"), device=device, dtype=logits.dtype)
        x0_p = F.softmax(logits, dim=-1).gather(-1, x0[..., None]).squeeze(-1)
        full_conf[:, start:block_end] = x0_p
        finite = torch.isfinite(x0_p)  # NaN exactly when the row holds a NaN or +inf or is all -inf
    else:  # the reference draws one uniform per position of the whole sequence
        full_conf = torch.rand(shape, device=device)
        full_conf[:, block_end:] = float("-inf")
    return x0, full_conf, finite


def _commit(x, window: _Window, select, x0, mask_index) -> None:
    """Write the proposals at ``select`` ([B, k] positions, inside the window) into x (in place)."""
    region = x[:, window.start:window.end]  # a view: the scatter writes into x; the selection never leaves it
    proposal = torch.where(mask_index[:, window.start:window.end], x0, region)
    region.scatter_(1, select - window.start, proposal.gather(1, select - window.start))


def _step(options: LLaDAOptions, call: _Call, window: _Window, k: int, step: int) -> None:
    """One step: propose, score, record non-finite logits at a candidate, commit the ``k`` most confident."""
    mask_index = call.x == options.mask_id
    logits = _step_logits(options, call, window)
    x0, full_conf, finite = _sample_and_score(options, call, logits, window)
    bad = (mask_index[:, window.start:window.end] & ~finite).any()
    record_first_step(call.bad_step, bad, step)
    confidence = torch.where(mask_index & (call.positions < window.end), full_conf, float("-inf"))
    if k > 0:
        select = confidence.topk(k, dim=-1).indices  # [B, k]; k never exceeds the candidates
        _commit(call.x, window, select, x0, mask_index)


@torch.no_grad()
def llada_generate(model, prompt, attention_mask=None, steps=128, gen_length=128, block_length=128,
                   temperature=0.0, cfg_scale=0.0, remasking="low_confidence", mask_id=None,
                   logits_eos_inf=False, confidence_eos_eot_inf=False, *, eos_id=LLADA_EOS_ID,
                   eot_id=LLADA_EOT_ID, threshold=None, factor=None, cache=None):
    """LLaDA sampling. prompt: [B, P] token ids (left-padded when B > 1); attention_mask: [B, P] 0/1 or None.

    Returns [B, P + gen_length] token ids. ``steps`` is split evenly over ``gen_length // block_length`` blocks;
    inside a block the per-step counts are ``block_length // steps_per_block`` with the remainder on the early
    steps. ``eos_id``/``eot_id`` are the ids that ``logits_eos_inf``/``confidence_eos_eot_inf`` act on (LLaDA's
    by default; set them for other tokenizers). ``mask_id``: None (the default) takes the model's
    ``config.mask_token_id``, else 126336, LLaDA's own default (LLaDA-8B's config says 126336, so there the tokens
    are those of LLaDA's ``generate()``). A Dream model is refused (its logits are shifted): use ``dream_generate``.

    Fast-dLLM's options (see the module docstring): ``threshold`` (commit the most confident candidate plus every
    one at or above it; the step count then only has to divide into the blocks), ``factor`` (its factor rule),
    ``cache`` (None, "prefix" or "dual": its KV caches, for models loaded with ``upo_fast.load_model``).
    """
    # first: a path, a Dream model, a mask id outside the vocabulary; the options then take the resolved id
    adapter = dropin_adapter(model, "llada_generate", mask_id)
    options = LLaDAOptions(steps=steps, gen_length=gen_length, block_length=block_length, temperature=temperature,
                           cfg_scale=cfg_scale, remasking=remasking, mask_id=adapter.mask_id,
                           logits_eos_inf=logits_eos_inf, confidence_eos_eot_inf=confidence_eos_eot_inf,
                           eos_id=eos_id, eot_id=eot_id)
    _check_inputs(options, adapter, prompt, attention_mask)
    if threshold is not None or factor is not None or cache is not None:
        return _fast_dllm_generate(options, adapter, prompt, attention_mask, threshold, factor, cache)
    prompt_len = prompt.shape[1]
    call = _Call.start(options, model, prompt, attention_mask, adapter.device)
    steps_per_block = options.steps_per_block
    counts = llada_block_counts(options.block_length, steps_per_block)  # host ints, identical for every row

    for block in range(options.num_blocks):
        block_end = prompt_len + (block + 1) * options.block_length
        window = _Window(_first_candidate(call.x, prompt_len + block * options.block_length, options.mask_id),
                         block_end)
        for step in range(steps_per_block):
            _step(options, call, window, counts[step], block * steps_per_block + step)
    first_bad = int(call.bad_step)  # the one host read of the check
    if first_bad >= 0:
        raise non_finite_logits_error(first_bad, options.cfg_scale)
    return call.x


def _fast_dllm_generate(options: LLaDAOptions, adapter: MDMAdapter, prompt, attention_mask, threshold, factor,
                        cache):
    """Fast-dLLM's ``generate`` (with a threshold), ``generate_with_prefix_cache`` and ``generate_with_dual_cache``,
    as ``upo_fast.generate`` with LLaDA's order and Fast-dLLM's commit rule."""
    from upo_fast.sampling.loop import generate

    check = field_check(options)
    rule_given = threshold is not None or factor is not None
    check(not (rule_given and options.remasking == "random"), "remasking",
          "'low_confidence' with threshold/factor (they read token confidences; random remasking has none)")
    check(not options.confidence_eos_eot_inf, "confidence_eos_eot_inf",
          "False with threshold/factor/cache (Fast-dLLM's samplers have no such flag)")
    scorer = "max_confidence" if options.remasking == "low_confidence" else "random"
    suppress = (options.eos_id,) if options.logits_eos_inf else ()
    return generate(adapter, prompt, attention_mask, gen_length=options.gen_length,
                    block_length=options.block_length, steps=options.steps, scorer=scorer,
                    temperature=options.temperature, cfg_scale=options.cfg_scale, mask_id=options.mask_id,
                    threshold=threshold, factor=factor, cache=cache, suppress_tokens=suppress)
