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
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributions as dists
import torch.nn.functional as F
from transformers.utils import ModelOutput

from upo_fast.sampling.adapters import MDMAdapter
from upo_fast.sampling.schedules import dream_timesteps
from upo_fast.validation import (
    check_attention_mask,
    check_finite,
    check_pad_not_mask,
    check_token_ids,
    non_finite_logits_error,
    record_first_step,
)

ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")
DEFAULTS = {  # DreamGenerationConfig's defaults
    "temperature": 0.0, "top_p": None, "top_k": None, "max_length": 20, "max_new_tokens": None, "eps": 1e-3,
    "steps": 512, "alg": "origin", "alg_temp": None, "num_return_sequences": 1,
    "return_dict_in_generate": False, "output_history": False, "mask_token_id": None,
}
IGNORED = ("pad_token_id", "bos_token_id", "eos_token_id", "generation_kwargs")


@dataclass
class DreamSampleOutput(ModelOutput):
    sequences: torch.LongTensor = None
    history: tuple | None = None


def _resolve_options(model, generation_config, kwargs) -> dict:
    options = dict(DEFAULTS)
    if generation_config is not None:
        for key in DEFAULTS:
            if getattr(generation_config, key, None) is not None:
                options[key] = getattr(generation_config, key)
    unknown = sorted(set(kwargs) - set(DEFAULTS) - set(IGNORED))
    if unknown:
        raise ValueError(f"unknown keyword argument(s) {unknown}; dream_generate accepts {sorted(DEFAULTS)} and "
                         "generation_tokens_hook_func / generation_logits_hook_func")
    options.update({k: v for k, v in kwargs.items() if k in DEFAULTS})
    if options["alg"] not in ALGS:
        raise ValueError(f"alg must be one of {ALGS}, got {options['alg']!r}")
    check_finite(options["steps"], "steps", low=1, integer=True)
    check_finite(options["eps"], "eps", low=0, low_inclusive=False, high=1, high_inclusive=False)
    check_finite(options["temperature"], "temperature", low=0)
    check_finite(options["top_p"], "top_p", low=0, low_inclusive=False, high=1, allow_none=True)
    check_finite(options["top_k"], "top_k", low=1, integer=True, allow_none=True)
    check_finite(options["alg_temp"], "alg_temp", low=0, allow_none=True)
    check_finite(options["num_return_sequences"], "num_return_sequences", low=1, integer=True)
    check_finite(options["max_new_tokens"], "max_new_tokens", low=1, integer=True, allow_none=True)
    check_finite(options["max_length"], "max_length", low=1, integer=True)
    return options


def _top_p_filter(logits, top_p):
    """Keep the smallest set of tokens whose probability reaches top_p (always the first); others -> dtype min."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cumulative > top_p
    drop_sorted[..., 1:] = drop_sorted[..., :-1].clone()
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, torch.finfo(logits.dtype).min)


def _top_k_filter(logits, top_k):
    kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def token_confidence(logits, alg, temperature=0.0, top_p=None, top_k=None):
    """Dream's per-row (confidence, token) for [N, V] logits of the masked positions."""
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = _top_p_filter(logits, top_p)
    if top_k is not None:
        logits = _top_k_filter(logits, top_k)
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        token = dists.Categorical(probs=probs).sample()
        confidence = probs.gather(-1, token[:, None]).squeeze(-1)
    else:
        confidence, token = probs.max(dim=-1)
    if alg == "topk_margin":
        top2 = probs.topk(2, dim=-1).values
        confidence = top2[:, 0] - top2[:, 1]
    elif alg == "entropy":
        confidence = (probs * torch.log(probs + 1e-10)).sum(-1)
    return confidence, token


def _flag(bad_step: torch.Tensor, per_row: torch.Tensor, step: int) -> None:
    """Record ``step`` in ``bad_step`` if ``per_row`` (a confidence or the max logit of each masked row) is
    non-finite somewhere: either is exactly when the row's logits hold a NaN or +inf or are all -inf."""
    record_first_step(bad_step, ~torch.isfinite(per_row).all(), step)


def _raise_if_bad(bad_step: torch.Tensor) -> None:
    first = int(bad_step)
    if first >= 0:
        raise non_finite_logits_error(first)


@contextlib.contextmanager
def _naming_step(bad_step: torch.Tensor, logits: torch.Tensor, step: int):
    """At temperature > 0 sampling refuses NaN probabilities before the check after the loop: then say which
    step's logits caused it. torch.distributions refuses them with a ValueError while it validates its arguments,
    and ``multinomial`` with a RuntimeError once that is off (torch.compile turns it off for the whole process);
    any other error is raised as it is."""
    try:
        yield
    except (ValueError, RuntimeError):
        _flag(bad_step, logits.amax(dim=-1), step)
        _raise_if_bad(bad_step)
        raise


def _prepare_inputs(adapter, input_ids, attention_mask, num_return_sequences):
    """Check the inputs, move them to the model's device and repeat each row ``num_return_sequences`` times."""
    check_token_ids(input_ids, "input_ids", adapter.vocab_size)
    check_attention_mask(attention_mask, input_ids.shape)
    check_pad_not_mask(input_ids, attention_mask, adapter.mask_id)
    input_ids = input_ids.to(adapter.device)
    if num_return_sequences > 1:
        input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)
        if attention_mask is not None:
            attention_mask = attention_mask.repeat_interleave(num_return_sequences, dim=0)
    return input_ids, attention_mask


def _max_length(adapter, opts, kwargs, prompt_len) -> int:
    """The total length, as Dream resolves it (``max_new_tokens`` first; the untouched default ``max_length``
    counts new tokens, capped by the model's positions)."""
    if opts["max_new_tokens"] is not None:
        max_length = opts["max_new_tokens"] + prompt_len
    elif "max_length" not in kwargs and opts["max_length"] == DEFAULTS["max_length"]:
        max_length = opts["max_length"] + prompt_len
        limit = getattr(adapter.config, "max_position_embeddings", None)
        max_length = min(max_length, limit) if limit is not None else max_length
    else:
        max_length = opts["max_length"]
    if prompt_len >= max_length:
        raise ValueError(f"input length {prompt_len} must be smaller than max_length {max_length} "
                         "(set max_new_tokens)")
    return max_length


def _masked_logits(adapter, x, prepared, mask_index, logits_hook, step, length):
    """One forward pass. Returns the raw output, the logits hook's result (None without a hook), the masked
    positions' flat indices and their (shifted) logits [N, V]."""
    raw = adapter.model(x, prepared.kwargs["attention_mask"], prepared.kwargs.get("position_ids")).logits
    vocab = raw.shape[-1]
    logits = None
    if logits_hook is not None:
        logits = logits_hook(step, x, torch.cat([raw[:, :1], raw[:, :-1]], dim=1))
        source = logits.reshape(-1, vocab)
        shift = 0
    else:  # row i reads output i-1 (output 0 for the first position), no shifted copy
        source, shift = raw.reshape(-1, vocab), 1
    flat_idx = mask_index.view(-1).nonzero().squeeze(1)  # the masked rows, in the reference's order
    src_idx = flat_idx - (flat_idx % length > 0).long() * shift
    return raw, logits, flat_idx, source.index_select(0, src_idx)


def _origin_step(x, flat_idx, mask_logits, t, s, step, last, opts, mask_id, bad_step, device) -> None:
    """alg ``origin``: each masked position is committed with probability 1 - s/t (all at the last step)."""
    p_transfer = 1 - s / t if not last else 1
    transfer = torch.rand(flat_idx.shape[0], device=device) < p_transfer
    # every masked row, transferred now or not (as unmask checks every candidate): NaN, +inf, all -inf
    _flag(bad_step, mask_logits.amax(dim=-1), step)
    x0 = torch.full_like(flat_idx, mask_id)
    if bool(transfer.any()):
        rows = mask_logits[transfer]
        with _naming_step(bad_step, rows, step):
            _, x0[transfer] = token_confidence(rows, "maskgit_plus", opts["temperature"], opts["top_p"],
                                               opts["top_k"])
    x.view(-1)[flat_idx] = x0


def _confidence_step(x, flat_idx, mask_logits, mask_index, t, s, step, last, opts, mask_id, bad_step,
                     shape, device) -> None:
    """algs ``maskgit_plus``/``topk_margin``/``entropy``: commit the k (batch-mean schedule) most confident masked
    positions of each row, or k drawn by confidence at ``alg_temp``. ``shape`` is x's [B, L] before any hook."""
    batch, dtype = shape[0], mask_logits.dtype  # the dtype of the logits the rows were read from
    alg_temp = opts["alg_temp"]
    with _naming_step(bad_step, mask_logits, step):
        confidence, x0 = token_confidence(mask_logits, opts["alg"], opts["temperature"], opts["top_p"],
                                          opts["top_k"])
    _flag(bad_step, confidence, step)
    if alg_temp is not None and alg_temp != 0:  # multinomial must not meet NaN
        confidence = confidence.nan_to_num(nan=0.0, posinf=float("inf"), neginf=float("-inf"))
    mean_masks = mask_index.sum() / batch
    k = int(mean_masks * (1 - s / t)) if not last else int(mean_masks)
    full_conf = torch.full(shape, float("-inf"), device=device, dtype=dtype)
    full_conf.view(-1)[flat_idx] = confidence.to(dtype)
    if k > 0:
        if alg_temp is None or alg_temp == 0:
            chosen = full_conf.topk(k, dim=-1).indices
        else:
            chosen = torch.multinomial(F.softmax(full_conf / alg_temp, dim=-1), num_samples=k)
        proposal = torch.full_like(x, mask_id)
        proposal.view(-1)[flat_idx] = x0
        x.scatter_(1, chosen, proposal.gather(1, chosen))


@torch.no_grad()
def dream_generate(model, input_ids, attention_mask=None, generation_config=None, **kwargs):
    """Dream diffusion sampling. input_ids: [B, P] (left-padded when B > 1); attention_mask: [B, P] 0/1 or None.

    Returns [B, max_length] token ids, or ``DreamSampleOutput(sequences, history)`` when
    ``return_dict_in_generate=True``. Hooks: ``generation_tokens_hook_func(step, x, logits) -> x`` and
    ``generation_logits_hook_func(step, x, logits) -> logits``, called as Dream calls them.
    """
    tokens_hook = kwargs.pop("generation_tokens_hook_func", None)
    logits_hook = kwargs.pop("generation_logits_hook_func", None)
    opts = _resolve_options(model, generation_config, kwargs)
    adapter = MDMAdapter(model, family="dream", mask_id=opts["mask_token_id"])
    mask_id = adapter.mask_id
    input_ids, attention_mask = _prepare_inputs(adapter, input_ids, attention_mask, opts["num_return_sequences"])
    device = adapter.device
    prompt_len = input_ids.shape[1]
    max_length = _max_length(adapter, opts, kwargs, prompt_len)

    x = F.pad(input_ids, (0, max_length - prompt_len), value=mask_id)
    batch, length = x.shape
    if attention_mask is not None:
        attention_mask = F.pad(attention_mask.to(device), (0, max_length - prompt_len), value=1)
    prepared = adapter.prepare_attention(attention_mask, batch, length)
    steps = opts["steps"]
    timesteps = dream_timesteps(steps, opts["eps"], device)
    history = [] if (opts["return_dict_in_generate"] and opts["output_history"]) else None
    if tokens_hook is not None:
        x = tokens_hook(None, x, None)

    # the first step whose logits were non-finite at a masked position, -1 = none: a device tensor read once
    # after the loop (or when the sampling itself refuses the NaN probabilities)
    bad_step = torch.full((), -1, dtype=torch.long, device=device)
    for i in range(steps):
        mask_index = x == mask_id
        raw, logits, flat_idx, mask_logits = _masked_logits(adapter, x, prepared, mask_index, logits_hook, i, length)
        t, s = timesteps[i], timesteps[i + 1]
        if opts["alg"] == "origin":
            _origin_step(x, flat_idx, mask_logits, t, s, i, i == steps - 1, opts, mask_id, bad_step, device)
        else:
            _confidence_step(x, flat_idx, mask_logits, mask_index, t, s, i, i == steps - 1, opts, mask_id, bad_step,
                             (batch, length), device)
        if tokens_hook is not None:
            shifted = logits if logits_hook is not None else torch.cat([raw[:, :1], raw[:, :-1]], dim=1)
            x = tokens_hook(i, x, shifted)
        if history is not None:
            history.append(x.clone())

    _raise_if_bad(bad_step)
    if opts["return_dict_in_generate"]:
        return DreamSampleOutput(sequences=x, history=history)
    return x
