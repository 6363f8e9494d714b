"""The unmasking loop for any scorer: ``unmask`` (infilling, masks anywhere) and ``generate`` (LLaDA-style blocks).

One step = one MDM forward, token statistics for the positions of the active region only, scores over candidate
positions, selection of k positions per row, commit. Shapes are fixed for the whole call; the per-step counts are
a ``[B, steps]`` device tensor made before the loop, so a step never waits on the host (the ``threshold`` rule,
which may finish early, checks once per step whether anything is left, and the non-finite-logits check is read
once after the loop). What a step writes lives in one ``step_state.StepState`` of preallocated device buffers, written
in place, which CUDA-graph capture saves and restores field by field.

The options of a call travel as one :class:`SamplingOptions`, built and checked once, by ``_begin``, for both
``unmask`` and ``generate``.
The scorer is a ``upo_fast.sampling.scorers.Scorer``: the loop asks it what to prepare (a policy, the last-block input
hook, the reference term of the statistics) and whether it selects by itself (Dream's ``origin``, whose draws come
from the torch generator as the reference's do), never its name.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from upo_fast import ops
from upo_fast.kernels.triton_support import use_triton
from upo_fast.kernels.vocab_stats import MAX_TEMPERATURE, VocabStats
from upo_fast.models.kv_cache import check_cache_mode
from upo_fast.sampling.adapters import MDMAdapter, wrap_model
from upo_fast.sampling.commit_rules import CommitRule, commit_rule
from upo_fast.sampling.schedules import row_counts
from upo_fast.sampling.scorers import SCORERS, ScoringContext, resolve_scorer
from upo_fast.sampling.step_state import StepState
from upo_fast.validation import (
    check_attention_mask,
    check_finite,
    check_pad_not_mask,
    check_token_ids,
    non_finite_logits_error,
    record_first_step,
)

FEATURE_TOPK = 8  # top-k probabilities per position, a policy feature


@dataclass(frozen=True)
class SamplingOptions:
    """How ``unmask`` / ``generate`` sample, checked once (a ValueError naming the first bad option): the numbers
    finite and in range, the scorer's name resolved to its canonical one (an alias such as ``low_confidence`` is
    stored as ``max_confidence``). What is not an option stays a separate argument of the loop: the policy, the
    generator, the recorder; so do the schedule (steps, blocks) and the model's token ids."""

    scorer: str = "max_confidence"
    temperature: float = 0.0  # token temperature (0 = argmax)
    cfg_scale: float = 0.0
    threshold: float | None = None  # parallel unmasking: Fast-dLLM's threshold rule (commit_rules.Threshold)
    factor: float | None = None  # parallel unmasking: Fast-dLLM's factor rule (commit_rules.Factor)
    commit: CommitRule | str | None = None  # any commit rule or its spec; at most one of commit, threshold, factor
    cache: str | None = None  # None, "prefix" or "dual": Fast-dLLM's KV caches (generate only; native models)
    topk: int = 5  # K of the ``topk`` scorer
    position_temperature: float = 1.0  # temperature of a stochastic scorer's position draw
    suppress_tokens: tuple = ()  # token ids never committed (besides the mask token)
    backend: str = "auto"
    fused_head: bool | None = None  # None: on CUDA when the model's head is a separate Linear module
    cuda_graph: bool = False

    def __post_init__(self):
        check_finite(self.temperature, "temperature", low=0)
        check_finite(self.position_temperature, "position_temperature", low=0)
        check_finite(self.cfg_scale, "cfg_scale", low=0)
        check_finite(self.threshold, "threshold", low=0, low_inclusive=False, high=1, allow_none=True)
        check_finite(self.factor, "factor", low=0, low_inclusive=False, allow_none=True)
        check_finite(self.topk, "topk", low=1, integer=True)
        check_cache_mode(self.cache)
        if self.cache is not None and self.cfg_scale > 0:
            raise ValueError("cache='prefix'/'dual' runs without classifier-free guidance (cfg_scale=0), as "
                             "Fast-dLLM's cached generators do")
        rule = commit_rule(self.commit, self.threshold, self.factor)  # at most one, each checked
        if isinstance(self.commit, str):  # a spec string ("policy", "threshold=0.9", ...) is kept as its rule
            object.__setattr__(self, "commit", rule)
        object.__setattr__(self, "scorer", resolve_scorer(self.scorer))  # frozen: __post_init__ normalizes once
        object.__setattr__(self, "suppress_tokens", tuple(self.suppress_tokens or ()))

    @property
    def rule(self) -> CommitRule:
        """The commit rule (``commit_rules``): from ``commit``, ``threshold`` or ``factor``, else the schedule."""
        return commit_rule(self.commit, self.threshold, self.factor)


class _Loop:
    """What the steps of one sampling call share: the model, the options (checked when they were made), what was
    prepared once, and ``state``, the one object the steps write."""

    def __init__(self, adapter: MDMAdapter, x, attention_mask, options: SamplingOptions, *, policy=None,
                 generator=None, recorder=None):
        self.adapter, self.options = adapter, options
        self.prepared = adapter.prepare_attention(attention_mask, *x.shape)
        self.valid = self.prepared.valid
        self.scorer = SCORERS[options.scorer]
        self.rule = options.rule.bind(policy)  # the learned rule checks the policy's commit net and takes its threshold
        # Fast-dLLM's caches: buffers allocated once for the call; each step says which rows it runs (``rows``)
        self.cache = adapter.allocate_cache(*x.shape) if options.cache is not None else None
        self.one = torch.ones(x.shape[0], dtype=torch.long, device=x.device)  # a schedule-free rule's count
        self.generator = generator
        self.ctx = ScoringContext(topk=options.topk, policy=policy, position_temperature=options.position_temperature)
        # committing the mask token would leave the position masked and break the schedule, so it is never chosen
        self.suppress = torch.tensor(sorted({adapter.mask_id, *options.suppress_tokens}), device=x.device)
        self.exclude = torch.tensor([adapter.mask_id], device=x.device)  # made once: no copies inside a step
        self.recorder = recorder
        self.scorer.check_policy(policy, adapter.model)  # an UnmaskingPolicy trained beside another MDM: clear error
        if self.rule.needs_policy and not self.scorer.needs_policy:  # the commit net's policy, checked once too
            policy.check_compatible(adapter.model)
        # the policy's input (its order or its commit net), and what training records (the hidden state, g_ref's term)
        self.need_hidden = self.scorer.needs_hidden or self.rule.needs_policy or recorder is not None
        self.need_ref = self.scorer.needs_ref or recorder is not None
        self.need_features = self.scorer.needs_features or self.rule.needs_policy or recorder is not None
        if self.need_hidden:
            adapter.capture_last_block_input()
        self.prompt_index = x != adapter.mask_id  # what classifier-free guidance hides
        if options.cfg_scale > 0:  # the doubled batch's attention, prepared once (Dream's preparation reads the device)
            doubled = None if self.valid is None else torch.cat([self.valid] * 2).long()
            self.prepared_cfg = adapter.prepare_attention(doubled, 2 * x.shape[0], x.shape[1])
        self._choose_backend(options.backend, x.device)
        self.state = StepState.start(x, seeds=self.kernels, generator=generator)
        self._choose_head(options.fused_head, x.device)
        self.graphed = None
        if options.cuda_graph:
            from upo_fast.sampling.cuda_graphs import GraphedSteps

            self.graphed = GraphedSteps(self)

    @property
    def x(self) -> torch.Tensor:
        """The sequence being filled (``state.x``), read-only here: for readers such as ``cuda_graphs.unsupported``."""
        return self.state.x

    def _choose_backend(self, backend: str, device: torch.device) -> None:
        """On CUDA the statistics and the selection run as Triton kernels (upo_fast.ops, backend "auto"), which draw
        their noise from seeds kept in the step state and advanced in place each step: one host draw when the state
        is made, none inside the loop. On CPU the references draw from ``generator`` directly."""
        self.kernels = use_triton(backend, device)
        self.backend = "triton" if self.kernels else "torch"
        self.ctx.backend = self.backend  # the Top-K candidate rule of the topk and policy scorers runs there too

    def _choose_head(self, fused_head: bool | None, device: torch.device) -> None:
        """Fused head: the forward stops at the final hidden states and the statistics come from hidden @ head.T
        for the region's rows only, never a [B, L, V] tensor (on CUDA by default when the head is a module)."""
        head = self.adapter.fused_head()
        if fused_head is None:
            fused_head = device.type == "cuda" and head is not None
        if fused_head and head is None:
            with self.adapter.headless():  # raises the ValueError that says why this model has no separable head
                pass
        self.fused = bool(fused_head)
        if self.fused:
            self.head_weight, self.head_bias = head

    def rows(self, start: int, end: int, refresh: bool) -> tuple[int, int]:
        """[first, last) rows of the sequence the step's forward runs: all of them without a cache or when the
        cache is refreshed (a block's first step); else the block and everything after it (prefix) or the block
        alone (dual). A model whose output i scores token i + 1 (Dream) also runs the row before the block, so that
        every position of the block reads an output computed in this step."""
        length = self.state.x.shape[1]
        if self.cache is None or refresh:
            return 0, length
        first = max(start - int(self.adapter.shift_logits), 0)
        return first, (length if self.options.cache == "prefix" else end)

    def region_outputs(self, start: int, end: int, rows: tuple[int, int]) -> torch.Tensor:
        """[B, W, V] logits of the region (or [B, W, d] final hidden states on the fused path), with
        classifier-free guidance applied: it is linear, so it combines hidden states exactly as it does logits.
        ``rows``: what the forward runs (``rows()``); with a cache it writes their keys and values there."""
        x = self.state.x
        forward = self.adapter.final_hidden if self.fused else self.adapter.logits
        first, last = rows
        if self.options.cfg_scale > 0:
            uncond = x.masked_fill(self.prompt_index, self.adapter.mask_id)
            both = forward(torch.cat([x, uncond]), self.prepared_cfg)[:, start:end]
            cond, un = both.chunk(2)
            return un + (self.options.cfg_scale + 1) * (cond - un)
        cached = {} if self.cache is None else dict(cache=self.cache, start=first)
        return forward(x[:, first:last], self.prepared, **cached)[:, start - first:end - first]

    def statistics(self, out: torch.Tensor) -> VocabStats:
        """Token statistics of every row of the region, shaped [B, W] (topk_probs [B, W, k])."""
        batch, width = out.shape[:2]
        noise = dict(seed=self.state.token_seed) if self.kernels else dict(generator=self.generator)
        # above MAX_TEMPERATURE the Gumbel noise swamps any logit gap: the same draw, and no fp32 overflow
        shared = dict(temperature=min(self.options.temperature, MAX_TEMPERATURE), suppress=self.suppress,
                      exclude=self.exclude, check=False, backend=self.backend, **noise)
        if self.fused:
            topk = min(FEATURE_TOPK, self.head_weight.shape[0])
            flat = ops.fused_head_stats(out.to(self.head_weight.dtype), self.head_weight, self.head_bias,
                                        logit_scale=self.adapter.logit_scale(), topk=topk, need_ref=self.need_ref,
                                        features=self.need_features, **shared)
        else:
            flat = ops.vocab_stats(out, topk=min(FEATURE_TOPK, out.shape[-1]), need_ref=self.need_ref,
                                   features=self.need_features, **shared)
        return VocabStats(*(t.view(batch, width, *t.shape[1:]) for t in flat))

    def step(self, start: int, end: int, k: torch.Tensor, transfer_prob: float | None = None,
             refresh: bool = True) -> None:
        """One unmasking step on the region [start, end); k: [B] positions to commit per row; transfer_prob: the
        step's share of the remaining masks, for a scorer with its own selection (Dream's origin); refresh: with
        a cache, run every row (a block's first step) rather than the cached slice."""
        state = self.state
        x = state.x
        if self.kernels:
            state.token_seed.add_(1)
            state.position_seed.add_(1)
        rows = self.rows(start, end, refresh)
        stats = self.statistics(self.region_outputs(start, end, rows))
        if self.need_hidden:  # the policy reads the hidden states of the region's positions (see ranked_select)
            hidden = self.adapter.position_hidden()
            first, batch = start - rows[0], stats.token.shape[0]
            self.ctx.hidden = hidden[:batch, first:first + end - start] if hidden is not None else None
        region = x[:, start:end]
        candidates = region == self.adapter.mask_id
        if self.valid is not None:
            candidates &= self.valid[:, start:end]
        state.row_steps.add_(candidates.any(-1))
        # NaN logits, or a row with nothing finite, at a position we may unmask: reported after the loop
        record_first_step(state.bad_step, (candidates & ~torch.isfinite(stats.confidence)).any(), state.step_index)
        if self.scorer.select is not None:  # no ranking: the factor rule walks down the confidences
            select, order = self.scorer.select(candidates, transfer_prob, self.generator), stats.confidence
            position_temperature = None  # nothing ranked, nothing recorded
        else:
            select, candidates, order, position_temperature = self.ranked_select(stats, candidates, k)
        commit_logits = None
        if self.rule.needs_policy:  # the learned rule: the policy's commit net over the same candidates
            commit_logits = self.ctx.policy.commit_logits(hidden=self.ctx.hidden, stats=stats, candidates=candidates)
        extra = self.rule.extra(order, candidates, stats, commit_logits)
        if extra is not None:
            select |= extra
        if self.recorder is not None and self.scorer.ranks:  # after the rule: it sees every position committed
            self.recorder.write(self.ctx.hidden, stats, candidates, order, select, position_temperature)
        x[:, start:end] = torch.where(select, stats.token, region)
        state.step_index.add_(1)

    def ranked_select(self, stats: VocabStats, candidates: torch.Tensor, k: torch.Tensor):
        """(select, candidates, scores, position_temperature): the k best-scored (or Gumbel-top-k sampled) candidates
        of each row, the candidates as the scorer narrowed them (Top-K), the scores (the order the factor rule walks),
        and the temperature the positions were drawn at (0: taken greedily). A policy reads ``ctx.hidden``, the
        hidden states of the region's positions that ``step`` took from this step's forward (under a cache: attending
        to the cached keys and values)."""
        scored = self.scorer(stats, candidates, self.ctx)
        if scored.candidates is not None:
            candidates = scored.candidates
        if self.scorer.needs_policy:  # a trained policy's scores are finite; NaN or inf would rank at random
            record_first_step(self.state.policy_bad_step, (candidates & ~torch.isfinite(scored.scores)).any(),
                              self.state.step_index)
        noise = dict(seed=self.state.position_seed) if self.kernels else dict(generator=self.generator)
        position_temperature = self.ctx.position_temperature if scored.stochastic else 0.0
        select = ops.select_positions(scored.scores, candidates, k, check=False, backend=self.backend, **noise,
                                      temperature=min(position_temperature, MAX_TEMPERATURE))
        return select, candidates, scored.scores, position_temperature

    def remaining(self, start: int, end: int) -> bool:
        return bool((self.state.x[:, start:end] == self.adapter.mask_id).any())

    def finish(self) -> torch.Tensor:
        state = self.state
        bad_step, policy_bad_step = torch.stack([state.bad_step, state.policy_bad_step]).tolist()  # one host read
        if bad_step >= 0:
            raise non_finite_logits_error(bad_step, self.options.cfg_scale)
        if policy_bad_step >= 0:
            raise ValueError(f"the policy's scores were non-finite (NaN or +-inf) at a candidate position at step "
                             f"{policy_bad_step} (counting from 0 over the whole call); a policy must return finite "
                             "scores for every candidate")
        return state.x


def _begin(call: dict) -> tuple[SamplingOptions, MDMAdapter]:
    """The checked options and the adapter of an ``unmask`` / ``generate`` call, from the call's arguments (its
    ``locals()`` taken first thing). The options are picked by SamplingOptions' own field names, so both entry
    points build them here alike, and an option added to the dataclass and the two signatures needs nothing else."""
    options = SamplingOptions(**{f.name: call[f.name] for f in fields(SamplingOptions)})
    adapter = wrap_model(call["model"], call["family"], call["mask_id"])
    return options, (adapter if options.cache is None else adapter.with_cache())


def _prepare_input(adapter: MDMAdapter, x, attention_mask, name: str):
    check_token_ids(x, name, adapter.vocab_size)
    check_attention_mask(attention_mask, x.shape)
    check_pad_not_mask(x, attention_mask, adapter.mask_id)
    device = adapter.device
    return x.to(device).clone(), (attention_mask.to(device) if attention_mask is not None else None)


def _run(loop: _Loop, start: int, end: int, counts: torch.Tensor) -> None:
    """The steps of one region: the schedule's (``counts`` [B, steps]), or, under a rule that ignores it, one
    forward after another until the region is full (each commits at least one position of a row with a mask)."""
    rule = loop.rule
    steps = counts.shape[1] if rule.follows_schedule else end - start
    step = loop.graphed.step if loop.graphed is not None else loop.step
    for i in range(steps):
        k = counts[:, i] if rule.follows_schedule else loop.one
        step(start, end, k, transfer_prob=1.0 / (steps - i), refresh=loop.cache is None or i == 0)
        if rule.ends_early and not loop.remaining(start, end):
            break  # parallel rules may finish early; this check is their one sync per step


@torch.no_grad()
def unmask(model, x, attention_mask=None, *, steps=None, scorer="max_confidence", temperature=0.0,
           cfg_scale=0.0, mask_id=None, policy=None, threshold=None, generator=None, family=None, topk=5,
           position_temperature=1.0, suppress_tokens=None, backend="auto", recorder=None, fused_head=None,
           factor=None, return_steps=False, cuda_graph=False, commit=None, cache=None):
    """Fill every mask of ``x`` ([B, L] token ids; masks anywhere, e.g. Sudoku blanks) and return [B, L] ids.

    steps: number of MDM forwards (default: one position per step, i.e. the largest mask count of a row). Each
    row's masks are spread over the steps with LLaDA's linear schedule (remainder on early steps).
    scorer: random, max_confidence (low_confidence), margin (topk_margin), entropy, topk (uniform over the
    ``topk`` most confident), softmax_confidence, origin, policy. temperature: token temperature (0 = argmax).
    Parallel unmasking (``upo_fast.sampling.commit_rules``; the loop then ends as soon as nothing is masked):
    threshold: Fast-dLLM's threshold rule, the scorer's first pick plus every candidate whose token confidence is
    >= threshold, the schedule ignored; factor: Fast-dLLM's factor rule, the first pick plus, along the scorer's
    order, every candidate n with (n + 1)(1 - confidence_n) < factor; commit: any ``CommitRule`` (e.g.
    ``ScheduleAndThreshold(t)``: the schedule's count plus the candidates >= t) or its spec string; ``"policy"`` is
    the learned rule (``LearnedCommit``: the first pick plus every candidate the policy's commit net gives a
    probability >= its ``commit_threshold``; needs ``policy=`` with a commit net, whatever the scorer). At most one
    of the three.
    return_steps: also return [B] the number of forwards in which each row still had a mask (the steps it used).
    cache: only ``generate`` has blocks to cache around; here it must be None.
    Padding positions (attention_mask == 0) are never unmasked. backend: "auto" (Triton kernels for the statistics
    and the selection on CUDA, PyTorch references elsewhere), "triton" or "torch" (see ``upo_fast.ops``); the two
    give the same tokens at temperature 0 and different random streams otherwise. recorder: an object whose
    ``write(hidden, stats, candidates, scores, select, position_temperature)`` is called once per step with the
    step's policy inputs and decision (``upo_fast.training.TrajectoryRecorder`` keeps them for GRPO).
    fused_head: compute the statistics from the final hidden states and the LM head for the region's rows only
    (``upo_fast.ops.fused_head_stats``), never materializing [B, L, V] logits; None = on CUDA when the model's
    head is a separate Linear module (True on a tied head is a ValueError). cuda_graph: capture each step once
    and replay it (``upo_fast.sampling.cuda_graphs``; CUDA and the Triton path only; off by default until verified
    on a GPU).
    """
    options, adapter = _begin(locals())  # first statement: locals() holds the arguments only
    if options.cache is not None:
        raise ValueError("cache='prefix'/'dual' caches around the active block of upo_fast.generate; unmask has one "
                         "region, the whole sequence, so there is nothing to cache: use cache=None")
    x, attention_mask = _prepare_input(adapter, x, attention_mask, "x")
    masked = x == adapter.mask_id
    if attention_mask is not None:
        masked &= attention_mask.bool()
    per_row = masked.sum(1)
    most = int(per_row.max())  # one host read, before the loop
    if most == 0:
        return (x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device)) if return_steps else x
    steps = most if steps is None else steps
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= most:
        raise ValueError(f"steps must be an integer in [1, {most}] (the largest number of masks in a row), "
                         f"got {steps!r}")
    loop = _Loop(adapter, x, attention_mask, options, policy=policy, generator=generator, recorder=recorder)
    _run(loop, 0, x.shape[1], row_counts(per_row, steps))
    out = loop.finish()
    return (out, loop.state.row_steps) if return_steps else out


@torch.no_grad()
def generate(model, input_ids, attention_mask=None, *, gen_length=128, block_length=32, steps=128,
             scorer="max_confidence", temperature=0.0, cfg_scale=0.0, mask_id=None, policy=None, threshold=None,
             generator=None, family=None, topk=5, position_temperature=1.0, suppress_tokens=None, backend="auto",
             recorder=None, fused_head=None, factor=None, cuda_graph=False, commit=None, cache=None,
             return_steps=False):
    """Append ``gen_length`` masks to ``input_ids`` ([B, P], left-padded) and fill them block by block.

    Blocks of ``block_length`` are filled left to right with ``steps // num_blocks`` steps each (a parallel commit
    rule may use fewer, ``threshold``/``factor`` ignore the count); candidates are the masks of the active block.
    Returns [B, P + gen_length] token ids. Works for LLaDA, Dream (logit shift and 4-D padding mask handled by the
    adapter), TinyMDM and any model with ``.logits`` given ``mask_id``.

    cache: None (every step runs the whole sequence: exact), "prefix" or "dual" (Fast-dLLM's KV caches, an
    approximation): a block's first step runs every row and fills a static cache of keys and values; its other
    steps run the block and everything after it (prefix) or the block alone (dual), attending to the cache. For
    the native LLaDA and Dream models (``upo_fast.load_model``); every scorer, the policy included (it reads the
    hidden states of the block's positions from the step's forward). Other options as in ``unmask`` (``return_steps``:
    also the [B] forwards each row used).
    """
    options, adapter = _begin(locals())  # first statement: locals() holds the arguments only
    check_finite(gen_length, "gen_length", low=1, integer=True)
    check_finite(block_length, "block_length", low=1, integer=True)
    check_finite(steps, "steps", low=1, integer=True)
    if gen_length % block_length != 0:
        raise ValueError(f"gen_length ({gen_length}) must be a positive multiple of block_length ({block_length})")
    num_blocks = gen_length // block_length
    if steps % num_blocks != 0:
        raise ValueError(f"steps ({steps}) must be a positive multiple of the number of blocks ({num_blocks})")
    steps_per_block = steps // num_blocks
    if steps_per_block > block_length:
        raise ValueError(f"steps per block ({steps_per_block}) exceeds the masks per block ({block_length}); "
                         f"use steps <= {gen_length}")
    input_ids, attention_mask = _prepare_input(adapter, input_ids, attention_mask, "input_ids")
    batch, prompt_len = input_ids.shape
    device = input_ids.device
    x = torch.cat([input_ids, torch.full((batch, gen_length), adapter.mask_id, dtype=input_ids.dtype,
                                         device=device)], dim=1)
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, gen_length)], dim=1)
    loop = _Loop(adapter, x, attention_mask, options, policy=policy, generator=generator, recorder=recorder)
    counts = row_counts(torch.full((batch,), block_length, device=device), steps_per_block)
    for block in range(num_blocks):
        start = prompt_len + block * block_length
        _run(loop, start, start + block_length, counts)
    out = loop.finish()
    return (out, loop.state.row_steps) if return_steps else out
