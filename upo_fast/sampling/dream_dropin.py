"""Drop-in replacement for Dream's ``model.diffusion_generate()`` (remote code ``generation_utils.py``).

``dream_generate(model, input_ids, attention_mask=None, **kwargs)`` takes the keyword arguments of
``diffusion_generate`` and returns what it returns; at temperature 0 the tokens are the same. Differences in
cost, not in result:

* token statistics (filters, softmax, confidence) are computed only for the masked rows;
* Dream's one-position logit shift is applied by reading row i-1 for position i, not by copying ``[B, L, V]``.

Like the reference, each step reads two numbers from the device: the masked positions and the batch-mean mask
count that sets k. They cannot be known ahead: alg ``origin`` commits a random number of positions, hooks may
change x, and a model may commit the mask token itself (the position then stays masked). The sync-free loop with
the same schedule is ``upo_fast.generate``/``unmask``.

One deliberate difference: unknown keyword arguments raise a ValueError (the reference ignores them), so that a
misspelt ``max_new_token`` does not silently fall back to the default length.

Fast-dLLM's Dream block sampler (NVlabs/Fast-dLLM's ``diffusion_generate``: KV cache, blocks, the threshold rule)
is the same call with its keyword arguments ``block_length``, ``threshold``, ``dual_cache`` or
``alg="confidence_threshold"`` ("block mode", ``upo_fast.sampling.dream_blocks``; the native Dream only). That
module sits below this one and also holds Dream's token statistics (``token_confidence``), which both samplers call.

The options of a call travel as one :class:`DreamOptions`, resolved and checked once by
:meth:`DreamOptions.from_call`; what the steps share (x, which a tokens hook may replace, the non-finite record)
as one ``_Call``, and what one step found (the masked positions and their logits) as one ``_Masked``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from upo_fast.sampling.adapters import MDMAdapter, dropin_adapter
from upo_fast.sampling.dream_blocks import (
    flag_non_finite,
    naming_step,
    raise_if_non_finite,
    sample_blocks,
    token_confidence,
)
from upo_fast.sampling.schedules import dream_timesteps
from upo_fast.validation import (
    check_attention_mask,
    check_finite,
    check_pad_not_mask,
    check_token_ids,
    field_check,
)

ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")
BLOCK_ALGS = ("confidence_threshold", "entropy")  # block mode (Fast-dLLM's block sampler, ``dream_blocks``)
BLOCK = ("block_length", "threshold", "dual_cache")  # its keyword arguments (not generation-config fields)
IGNORED = ("pad_token_id", "bos_token_id", "eos_token_id", "generation_kwargs")
HOOKS = {"generation_tokens_hook_func": "tokens_hook", "generation_logits_hook_func": "logits_hook"}


@dataclass(frozen=True)
class DreamOptions:
    """The options of Dream's ``diffusion_generate``: DreamGenerationConfig's fields with its defaults, the two hooks,
    and whether ``max_length`` was passed. Checked once, in the order of the reference's own checks (a ValueError
    naming the first bad field)."""

    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    max_length: int = 20
    max_new_tokens: int | None = None
    eps: float = 1e-3
    steps: int = 512
    alg: str = "origin"
    alg_temp: float | None = None
    num_return_sequences: int = 1
    return_dict_in_generate: bool = False
    output_history: bool = False
    mask_token_id: int | None = None
    # not generation-config fields: the call's hooks, and what decides how max_length counts (see _max_length)
    tokens_hook: Callable | None = None  # generation_tokens_hook_func(step, x, logits) -> x
    logits_hook: Callable | None = None  # generation_logits_hook_func(step, x, logits) -> logits
    max_length_given: bool = False
    # Fast-dLLM's keyword arguments; any of them set (or alg "confidence_threshold") is block mode (dream_blocks)
    block_length: int | None = None
    threshold: float | None = None
    dual_cache: bool | None = None

    def __post_init__(self):
        if self.block_mode:
            self._check_block_mode()
        else:
            field_check(self)(self.alg in ALGS, "alg", f"one of {ALGS} ('confidence_threshold' in block mode)")
        check_finite(self.steps, "steps", low=1, integer=True)
        check_finite(self.eps, "eps", low=0, low_inclusive=False, high=1, high_inclusive=False)
        check_finite(self.temperature, "temperature", low=0)
        check_finite(self.top_p, "top_p", low=0, low_inclusive=False, high=1, allow_none=True)
        check_finite(self.top_k, "top_k", low=1, integer=True, allow_none=True)
        check_finite(self.alg_temp, "alg_temp", low=0, allow_none=True)
        check_finite(self.num_return_sequences, "num_return_sequences", low=1, integer=True)
        check_finite(self.max_new_tokens, "max_new_tokens", low=1, integer=True, allow_none=True)
        check_finite(self.max_length, "max_length", low=1, integer=True)

    @property
    def block_mode(self) -> bool:
        return self.alg == "confidence_threshold" or any(getattr(self, name) is not None for name in BLOCK)

    def _check_block_mode(self) -> None:
        check = field_check(self)
        check(self.alg in BLOCK_ALGS, "alg", f"one of {BLOCK_ALGS} with block_length / threshold / dual_cache "
              "(Fast-dLLM ranks every other alg by entropy: pass alg='entropy' for that)")
        check_finite(self.block_length, "block_length", low=1, integer=True, allow_none=True)
        check_finite(self.threshold, "threshold", low=0, low_inclusive=False, high=1, allow_none=True)
        check(self.threshold is None or self.alg == "confidence_threshold", "threshold",
              "None unless alg='confidence_threshold' (the entropy schedule has no threshold)")
        check(self.dual_cache is None or isinstance(self.dual_cache, bool), "dual_cache", "True, False or None")
        for keyword, field in HOOKS.items():
            if getattr(self, field) is not None:
                raise ValueError(f"{keyword} is not supported in block mode (Fast-dLLM's block sampler never "
                                 "calls it)")

    @classmethod
    def from_call(cls, generation_config, kwargs: dict) -> DreamOptions:
        """The options of a call, as Dream resolves them: the defaults, then the generation config's fields that
        are set (not None), then the keyword arguments. Unknown keyword arguments are a ValueError."""
        values = dict(DEFAULTS)
        if generation_config is not None:
            for key in DEFAULTS:
                if getattr(generation_config, key, None) is not None:
                    values[key] = getattr(generation_config, key)
        unknown = sorted(set(kwargs) - set(DEFAULTS) - set(IGNORED) - set(HOOKS) - set(BLOCK))
        if unknown:
            raise ValueError(f"unknown keyword argument(s) {unknown}; dream_generate accepts {sorted(DEFAULTS)}, "
                             "generation_tokens_hook_func / generation_logits_hook_func and Fast-dLLM's "
                             "block_length / threshold / dual_cache")
        values.update({k: v for k, v in kwargs.items() if k in DEFAULTS or k in BLOCK})
        values.update({field: kwargs[key] for key, field in HOOKS.items() if key in kwargs})
        return cls(**values, max_length_given="max_length" in kwargs)

    @property
    def keeps_history(self) -> bool:
        return self.return_dict_in_generate and self.output_history


_NOT_CONFIG = ("tokens_hook", "logits_hook", "max_length_given", *BLOCK)
DEFAULTS = {f.name: f.default for f in dataclasses.fields(DreamOptions) if f.name not in _NOT_CONFIG}


@dataclass
class DreamSampleOutput(ModelOutput):
    sequences: torch.LongTensor = None
    history: tuple | None = None


def _prepare_inputs(options: DreamOptions, adapter: MDMAdapter, input_ids, attention_mask):
    """Check the inputs, move them to the model's device and repeat each row ``num_return_sequences`` times."""
    check_token_ids(input_ids, "input_ids", adapter.vocab_size)
    check_attention_mask(attention_mask, input_ids.shape)
    check_pad_not_mask(input_ids, attention_mask, adapter.mask_id)
    input_ids = input_ids.to(adapter.device)
    if options.num_return_sequences > 1:
        input_ids = input_ids.repeat_interleave(options.num_return_sequences, dim=0)
        if attention_mask is not None:
            attention_mask = attention_mask.repeat_interleave(options.num_return_sequences, dim=0)
    return input_ids, attention_mask


def _max_length(options: DreamOptions, adapter: MDMAdapter, prompt_len: int) -> int:
    """The total length, as Dream resolves it (``max_new_tokens`` first; the untouched default ``max_length``
    counts new tokens, capped by the model's positions)."""
    if options.max_new_tokens is not None:
        max_length = options.max_new_tokens + prompt_len
    elif not options.max_length_given and options.max_length == DEFAULTS["max_length"]:
        max_length = options.max_length + prompt_len
        limit = getattr(adapter.config, "max_position_embeddings", None)
        max_length = min(max_length, limit) if limit is not None else max_length
    else:
        max_length = options.max_length
    if prompt_len >= max_length:
        raise ValueError(f"input length {prompt_len} must be smaller than max_length {max_length} "
                         "(set max_new_tokens)")
    return max_length


@dataclass
class _Call:
    """What the steps of one call share. ``x`` is written in place by the steps and replaced by a tokens hook;
    ``shape`` is x's [B, L] before any hook; ``bad_step`` is the first step whose logits were non-finite at a
    masked position, -1 = none: a device tensor read once after the loop (or when the sampling itself refuses the
    NaN probabilities)."""

    adapter: MDMAdapter
    x: torch.Tensor
    prepared: object  # the adapter's PreparedAttention
    timesteps: torch.Tensor
    shape: tuple
    device: torch.device  # read once: the adapter finds it by walking the parameters
    bad_step: torch.Tensor

    @classmethod
    def start(cls, options: DreamOptions, adapter: MDMAdapter, input_ids, attention_mask) -> _Call:
        """Checks the inputs, pads them to the resolved length with masks (x) and ones (the attention mask)."""
        input_ids, attention_mask = _prepare_inputs(options, adapter, input_ids, attention_mask)
        device, prompt_len = adapter.device, input_ids.shape[1]
        max_length = _max_length(options, adapter, prompt_len)
        x = F.pad(input_ids, (0, max_length - prompt_len), value=adapter.mask_id)
        if attention_mask is not None:
            attention_mask = F.pad(attention_mask.to(device), (0, max_length - prompt_len), value=1)
        prepared = adapter.prepare_attention(attention_mask, *x.shape)
        timesteps = dream_timesteps(options.steps, options.eps, device)
        return cls(adapter=adapter, x=x, prepared=prepared, timesteps=timesteps, shape=tuple(x.shape), device=device,
                   bad_step=torch.full((), -1, dtype=torch.long, device=device))


class _Masked(NamedTuple):
    """What one step found: the masked positions ([B, L] bool and flat indices, in the reference's order), their
    (shifted) logits [N, V], the step and its pair of timesteps."""

    index: torch.Tensor
    flat_idx: torch.Tensor
    logits: torch.Tensor
    step: int
    t: torch.Tensor
    s: torch.Tensor
    last: bool


def _forward(options: DreamOptions, call: _Call, step: int):
    """One forward pass. Returns the raw output, the logits hook's result (None without a hook) and the step's
    ``_Masked``."""
    x, length = call.x, call.shape[1]
    mask_index = x == call.adapter.mask_id
    kwargs = call.prepared.kwargs
    raw = call.adapter.model(x, kwargs["attention_mask"], kwargs.get("position_ids")).logits
    vocab = raw.shape[-1]
    hooked = None
    if options.logits_hook is not None:
        hooked = options.logits_hook(step, x, torch.cat([raw[:, :1], raw[:, :-1]], dim=1))
        source, shift = hooked.reshape(-1, vocab), 0
    else:  # row i reads output i-1 (output 0 for the first position), no shifted copy
        source, shift = raw.reshape(-1, vocab), 1
    flat_idx = mask_index.view(-1).nonzero().squeeze(1)  # the masked rows, in the reference's order
    src_idx = flat_idx - (flat_idx % length > 0).long() * shift
    t, s = call.timesteps[step], call.timesteps[step + 1]
    masked = _Masked(mask_index, flat_idx, source.index_select(0, src_idx), step, t, s, step == options.steps - 1)
    return raw, hooked, masked


def _origin_step(options: DreamOptions, call: _Call, masked: _Masked) -> None:
    """alg ``origin``: each masked position is committed with probability 1 - s/t (all at the last step)."""
    p_transfer = 1 - masked.s / masked.t if not masked.last else 1
    transfer = torch.rand(masked.flat_idx.shape[0], device=call.device) < p_transfer
    # every masked row, transferred now or not (as unmask checks every candidate): NaN, +inf, all -inf
    flag_non_finite(call.bad_step, masked.logits.amax(dim=-1), masked.step)
    x0 = torch.full_like(masked.flat_idx, call.adapter.mask_id)
    if bool(transfer.any()):
        rows = masked.logits[transfer]
        with naming_step(call.bad_step, rows, masked.step):
            _, x0[transfer] = token_confidence(rows, "maskgit_plus", options.temperature, options.top_p,
                                               options.top_k)
    call.x.view(-1)[masked.flat_idx] = x0


def _confidence_step(options: DreamOptions, call: _Call, masked: _Masked) -> None:
    """algs ``maskgit_plus``/``topk_margin``/``entropy``: commit the k (batch-mean schedule) most confident masked
    positions of each row, or k drawn by confidence at ``alg_temp``."""
    dtype, alg_temp = masked.logits.dtype, options.alg_temp  # the dtype of the logits the rows were read from
    with naming_step(call.bad_step, masked.logits, masked.step):
        confidence, x0 = token_confidence(masked.logits, options.alg, options.temperature, options.top_p,
                                          options.top_k)
    flag_non_finite(call.bad_step, confidence, masked.step)
    if alg_temp is not None and alg_temp != 0:  # multinomial must not meet NaN
        confidence = confidence.nan_to_num(nan=0.0, posinf=float("inf"), neginf=float("-inf"))
    mean_masks = masked.index.sum() / call.shape[0]
    k = int(mean_masks * (1 - masked.s / masked.t)) if not masked.last else int(mean_masks)
    full_conf = torch.full(call.shape, float("-inf"), device=call.device, dtype=dtype)
    full_conf.view(-1)[masked.flat_idx] = confidence.to(dtype)
    if k > 0:
        if alg_temp is None or alg_temp == 0:
            chosen = full_conf.topk(k, dim=-1).indices
        else:
            chosen = torch.multinomial(F.softmax(full_conf / alg_temp, dim=-1), num_samples=k)
        proposal = torch.full_like(call.x, call.adapter.mask_id)
        proposal.view(-1)[masked.flat_idx] = x0
        call.x.scatter_(1, chosen, proposal.gather(1, chosen))


def _sample(options: DreamOptions, call: _Call, history: list | None) -> None:
    """Dream's own loop: ``steps`` forwards over the whole sequence, x written in place (or replaced by a hook)."""
    if options.tokens_hook is not None:
        call.x = options.tokens_hook(None, call.x, None)

    for i in range(options.steps):
        raw, hooked, masked = _forward(options, call, i)
        if options.alg == "origin":
            _origin_step(options, call, masked)
        else:
            _confidence_step(options, call, masked)
        if options.tokens_hook is not None:
            shifted = hooked if options.logits_hook is not None else torch.cat([raw[:, :1], raw[:, :-1]], dim=1)
            call.x = options.tokens_hook(i, call.x, shifted)
        if history is not None:
            history.append(call.x.clone())


@torch.no_grad()
def dream_generate(model, input_ids, attention_mask=None, generation_config=None, **kwargs):
    """Dream diffusion sampling. input_ids: [B, P] (left-padded when B > 1); attention_mask: [B, P] 0/1 or None.

    Returns [B, max_length] token ids, or ``DreamSampleOutput(sequences, history)`` when
    ``return_dict_in_generate=True``. Hooks: ``generation_tokens_hook_func(step, x, logits) -> x`` and
    ``generation_logits_hook_func(step, x, logits) -> logits``, called as Dream calls them. ``mask_token_id``
    unset (here and in ``generation_config``) takes the model's generation config's, then its config's, else
    151666. A LLaDA model is refused (its logits are not shifted): use ``llada_generate``.

    Block mode (Fast-dLLM's block sampler, ``upo_fast.sampling.dream_blocks``): ``block_length`` (default 32),
    ``threshold`` (default 0.9, with ``alg="confidence_threshold"``), ``dual_cache`` (default False); alg
    "confidence_threshold" or "entropy"; no hooks; needs a model with a KV cache (``upo_fast.load_model``).
    """
    options = DreamOptions.from_call(generation_config, kwargs)
    adapter = dropin_adapter(model, "dream_generate", options.mask_token_id, mask_arg="mask_token_id")
    call = _Call.start(options, adapter, input_ids, attention_mask)
    history = [] if options.keeps_history else None
    if options.block_mode:
        sample_blocks(options, call, input_ids.shape[1], history)
    else:
        _sample(options, call, history)
    raise_if_non_finite(call.bad_step)
    if options.return_dict_in_generate:
        return DreamSampleOutput(sequences=call.x, history=history)
    return call.x
