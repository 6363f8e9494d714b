"""Fast-dLLM's Dream block sampler (NVlabs/Fast-dLLM, ``dream/model/generation_utils_block.py``) for
``dream_generate``'s block mode: ``block_length``, ``threshold`` or ``dual_cache`` passed, or
``alg="confidence_threshold"`` (unset ones take Fast-dLLM's defaults 32, 0.9, False). Below ``dream_dropin``, so
Dream's token statistics (its ``sample_tokens``), which both samplers call, live here too.

The generation (max_length - prompt length) is cut into blocks, filled left to right with ``steps // num_blocks``
steps each and Dream's timesteps ``linspace(1, eps, steps_per_block + 1)``. A block:

1. one forward over every row fills the static KV cache (``upo_fast.models.kv_cache``, allocated once per call) and
   commits the block's first position only (its argmax or sampled token);
2. then cached forwards over rows [block start, L) (prefix) or [block start, block end) (``dual_cache=True``: the
   rows after the block keep the keys and values of step 1), each followed by one commit:
   ``alg="confidence_threshold"``: per row, the most confident masked position of the block plus every one whose
   token confidence is >= ``threshold``, until the block has no mask left; ``alg="entropy"`` (Fast-dLLM ranks
   every other alg so too): Dream's schedule, steps i = 1 .. steps_per_block - 1, k = int(batch-mean mask count
   of the block * (1 - s/t)) (all of the mean at the last step), the k of best negative entropy (or drawn at
   ``alg_temp``).

Host reads: one per cached forward (the block's mask count, with the entropy schedule's k), and at temperature > 0
the masked positions. Left padding: the non-block path's attention mask and position ids, so a row gets the tokens
of its prompt alone. Hooks are refused; ``output_history`` records x after every forward.

Differences from Fast-dLLM, whose tokens (and, at temperature > 0, random draws) are reproduced at batch 1:

* forwards: the end-of-block check comes before the forward. Fast-dLLM runs one cached forward that it never reads
  when a block is full after its first forward (``block_length=1``) or, with the entropy schedule, still has masks
  after ``steps_per_block - 1`` steps (``steps_per_block=1``, a committed [MASK], rows of unequal counts).
* the threshold rule is per row (Fast-dLLM's sums the counts over the batch and writes row 0: batch 1 only); a
  model that keeps committing [MASK] ends a block after ``block_length`` threshold forwards (Fast-dLLM: never).
* left padding and dual-cache batches: Fast-dLLM's cached model ignores the position ids and slices the padding
  mask by keys, and its dual cache fails for batch > 1.
* ``output_history``: Fast-dLLM's stays empty.
* temperature > 0 samples the rows that Fast-dLLM samples (every row at a block's first forward, every masked row
  run by the threshold rule with the prefix cache), for the same draws; at temperature 0 only the block's rows.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributions as dists
import torch.nn.functional as F

from upo_fast.sampling.schedules import dream_timesteps
from upo_fast.validation import non_finite_logits_error, record_first_step

FASTDLLM_BLOCK_LENGTH, FASTDLLM_THRESHOLD = 32, 0.9


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


def flag_non_finite(bad_step: torch.Tensor, per_row: torch.Tensor, step: int) -> None:
    """Record ``step`` in ``bad_step`` if ``per_row`` (a confidence or the max logit of each masked row) is
    non-finite somewhere: either is exactly when the row's logits hold a NaN or +inf or are all -inf."""
    record_first_step(bad_step, ~torch.isfinite(per_row).all(), step)


def raise_if_non_finite(bad_step: torch.Tensor) -> None:
    first = int(bad_step)
    if first >= 0:
        raise non_finite_logits_error(first)


@contextlib.contextmanager
def naming_step(bad_step: torch.Tensor, logits: torch.Tensor, step: int):
    """At temperature > 0 sampling refuses NaN probabilities before the check after the loop: then say which
    step's logits caused it. torch.distributions refuses them with a ValueError while it validates its arguments,
    and ``multinomial`` with a RuntimeError once that is off (torch.compile turns it off for the whole process);
    any other error is raised as it is."""
    try:
        yield
    except (ValueError, RuntimeError):
        flag_non_finite(bad_step, logits.amax(dim=-1), step)
        raise_if_non_finite(bad_step)
        raise


def plan_blocks(options, prompt_len: int, length: int) -> tuple[int, int, int]:
    """(block_length, num_blocks, steps_per_block) of a call, with Fast-dLLM's divisibility rules as ValueErrors."""
    block_length = options.block_length if options.block_length is not None else FASTDLLM_BLOCK_LENGTH
    gen_length = length - prompt_len
    if gen_length % block_length != 0:
        raise ValueError(f"block_length ({block_length}) must divide the generation length ({gen_length} = "
                         "max_length - prompt length), as in Fast-dLLM")
    num_blocks = gen_length // block_length
    if options.steps % num_blocks != 0:
        raise ValueError(f"steps ({options.steps}) must be a multiple of the number of blocks ({num_blocks} = "
                         f"{gen_length} // block_length {block_length}), as in Fast-dLLM")
    return block_length, num_blocks, options.steps // num_blocks


@dataclass
class _Run:
    """What the blocks of one call share: its options (a ``DreamOptions``) and ``_Call`` (x written in place), the
    cache, the timesteps of a block, the history (None: not kept) and the forwards so far (an error names one)."""

    options: object
    call: object
    cache: object  # the adapter's KVCache
    timesteps: torch.Tensor
    steps_per_block: int
    history: list | None
    forwards: int = 0

    def forward(self, first: int, last: int) -> torch.Tensor:
        """Logits [B, last - first, V] of the rows [first, last), which write their keys and values into the cache
        and attend to all of it; shifted by one within those rows, as Fast-dLLM shifts them."""
        self.forwards += 1
        return self.call.adapter.logits(self.call.x[:, first:last], self.call.prepared, cache=self.cache,
                                        start=first)

    @property
    def step(self) -> int:
        return self.forwards - 1

    def record(self) -> None:
        if self.history is not None:
            self.history.append(self.call.x.clone())


def _token_stats(run: _Run, logits: torch.Tensor, masked: torch.Tensor, alg: str):
    """(confidence, token) [B, W] of the rows ``logits`` [B, W, V]; -inf and [MASK] where ``masked`` is False. At
    temperature 0 every row is scored (no host read); at temperature > 0 the masked rows only, in Fast-dLLM's
    order, so that the draws are its draws (finding them is a host read)."""
    options, bad_step = run.options, run.call.bad_step
    rows = logits.reshape(-1, logits.shape[-1])
    sampled = options.temperature > 0
    if sampled:
        flat = masked.view(-1).nonzero().squeeze(1)
        rows = rows.index_select(0, flat)
    with naming_step(bad_step, rows, run.step):
        confidence, token = token_confidence(rows, alg, options.temperature, options.top_p, options.top_k)
    if sampled:
        confidence = confidence.new_full(masked.shape, float("-inf")).view(-1).index_copy(0, flat, confidence)
        token = torch.zeros_like(masked, dtype=torch.long).view(-1).index_copy(0, flat, token)
    confidence, token = confidence.view(masked.shape), token.view(masked.shape)
    flag_non_finite(bad_step, torch.where(masked, confidence, 0.0), run.step)  # the masked rows, no host read
    return confidence.masked_fill(~masked, float("-inf")), token.masked_fill(~masked, run.call.adapter.mask_id)


def _open_block(run: _Run, start: int) -> None:
    """A block's first forward: every row (fills the cache); commits the block's first position only."""
    options, x = run.options, run.call.x
    logits = run.forward(0, x.shape[1])
    sampled = options.temperature > 0
    rows = logits if sampled else logits[:, start:start + 1]  # Fast-dLLM samples every row
    with naming_step(run.call.bad_step, rows, run.step):
        confidence, token = token_confidence(rows.reshape(-1, rows.shape[-1]), "maskgit_plus", options.temperature,
                                             options.top_p, options.top_k)
    column = start if sampled else 0
    flag_non_finite(run.call.bad_step, confidence.view(x.shape[0], -1)[:, column], run.step)
    x[:, start] = token.view(x.shape[0], -1)[:, column]
    run.record()


def _threshold_block(run: _Run, start: int, end: int, last: int) -> None:
    """alg ``confidence_threshold``: per row, the most confident masked position of the block plus every one at or
    above the threshold, until the block is full (at most ``block_length`` forwards)."""
    options, x, mask_id = run.options, run.call.x, run.call.adapter.mask_id
    threshold = options.threshold if options.threshold is not None else FASTDLLM_THRESHOLD
    width = end - start
    scored = last - start if options.temperature > 0 else width  # the masked rows Fast-dLLM samples
    for _ in range(width):
        masked = x[:, start:start + scored] == mask_id
        if not bool(masked[:, :width].any()):  # the forward's one host read
            break
        logits = run.forward(start, last)
        confidence, token = _token_stats(run, logits[:, :scored], masked, options.alg)
        confidence, token, masked = confidence[:, :width], token[:, :width], masked[:, :width]
        best = torch.zeros_like(masked).scatter_(1, confidence.argmax(-1, keepdim=True), True)
        commit = masked & (best | (confidence >= threshold))  # compared in the logits' dtype, as Fast-dLLM does
        x[:, start:end] = torch.where(commit, token, x[:, start:end])
        run.record()


def _entropy_block(run: _Run, start: int, end: int, last: int) -> None:
    """alg ``entropy``: Dream's schedule over the block for steps 1 .. steps_per_block - 1 (step 0 was the block's
    first forward), ranked over the rows the forward ran (-inf past the block), as Fast-dLLM ranks them."""
    options, x, mask_id = run.options, run.call.x, run.call.adapter.mask_id
    batch, width = x.shape[0], end - start
    for i in range(1, run.steps_per_block):
        masked = x[:, start:end] == mask_id
        count = masked.sum()
        share = count / batch  # float32 on the device, as Dream computes it; all of the mean at the last step
        if i < run.steps_per_block - 1:
            share = share * (1 - run.timesteps[i + 1] / run.timesteps[i])
        left, k = torch.stack([count, share.long()]).tolist()  # the forward's one host read (.long() truncates)
        if left == 0:
            break
        logits = run.forward(start, last)
        confidence, token = _token_stats(run, logits[:, :width], masked, "entropy")
        if k > 0:
            ranked = F.pad(confidence, (0, last - end), value=float("-inf"))
            if options.alg_temp is None or options.alg_temp == 0:
                chosen = ranked.topk(k, dim=-1).indices
            else:
                chosen = torch.multinomial(F.softmax(ranked / options.alg_temp, dim=-1), num_samples=k)
            proposal = F.pad(token, (0, last - end), value=mask_id)  # [MASK] where nothing is masked
            x[:, start:last].scatter_(1, chosen, proposal.gather(1, chosen))
        run.record()


def sample_blocks(options, call, prompt_len: int, history: list | None) -> int:
    """Fill ``call.x`` ([B, L]: the prompt, then masks) block by block, in place; returns the number of forwards.
    ``options``: the call's ``DreamOptions`` in block mode; ``call``: its ``_Call`` (``dream_dropin``)."""
    block_length, num_blocks, steps_per_block = plan_blocks(options, prompt_len, call.shape[1])
    cache = call.adapter.allocate_cache(*call.shape)  # once per call: every forward writes its rows in place
    timesteps = dream_timesteps(steps_per_block, options.eps, call.device)
    run = _Run(options, call, cache, timesteps, steps_per_block, history)
    fill = _threshold_block if options.alg == "confidence_threshold" else _entropy_block
    for block in range(num_blocks):
        start = prompt_len + block * block_length
        _open_block(run, start)
        fill(run, start, start + block_length, start + block_length if options.dual_cache else call.shape[1])
    return run.forwards
