"""Rollouts with recording: run the sampler with the learned policy (or any scorer) and keep, per step, what the
GRPO update needs, written once into preallocated buffers (no per-step clone and stack).

Recorded per step s and row b (S steps, B rows, W positions of the region, d the MDM's hidden size):

    hidden         [S, B, W, d]  the hidden state entering the MDM's last block (the policy's input)
    topk_probs     [S, B, W, k]  top-k token probabilities, mask token excluded (the policy's features)
    confidence     [S, B, W]     probability of the token the MDM would commit (max-confidence / Top-K reference)
    ref_logsumexp  [S, B, W]     log sum_v exp(p_v / tau_ref) (softmax-confidence reference)
    candidates     [S, B, W]     the positions the policy chose among (Top-K: the K most confident masked ones)
    chosen         [S, B]        the position committed at this step
    behavior_logp  [S, B]        log-probability of ``chosen`` under exactly the distribution that sampled it:
                                 softmax(scores / position_temperature) over the candidates
    active         [S, B]        whether row b committed a position at step s (rows with fewer masks finish early)
    token          [S, B, W]     the token the MDM would commit at each position (what an oracle target checks)
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from upo_fast import ops
from upo_fast.kernels.vocab_stats import VocabStats
from upo_fast.sampling.adapters import wrap_model
from upo_fast.sampling.loop import unmask


class Trajectories(NamedTuple):
    hidden: torch.Tensor
    topk_probs: torch.Tensor
    confidence: torch.Tensor
    ref_logsumexp: torch.Tensor
    candidates: torch.Tensor
    chosen: torch.Tensor
    behavior_logp: torch.Tensor
    active: torch.Tensor
    token: torch.Tensor

    def policy_inputs(self, index: tuple) -> dict[str, torch.Tensor]:
        """The policy's inputs at the recorded steps ``index`` selects (e.g. (steps, rows)):
        ``policy(**traj.policy_inputs(index))`` scores them as the rollout did."""
        return dict(hidden=self.hidden[index], candidates=self.candidates[index], topk_probs=self.topk_probs[index])


class TrajectoryRecorder:
    """The sampler's ``recorder``: buffers sized on the first step (then fixed), one position per row and step.

    ``feature_topk`` top-k probabilities are kept (default: as many as the sampler gives). ``hidden_dtype`` stores
    the hidden states in another dtype (e.g. bfloat16 to halve the memory of long rollouts). Selecting several
    positions in one step is refused when the trajectories are read: the behavior log-prob of a set drawn by
    Gumbel-top-k is not the per-position softmax this recorder stores.
    """

    def __init__(self, max_steps: int, feature_topk: int | None = None, hidden_dtype: torch.dtype | None = None):
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")
        self.max_steps, self.feature_topk, self.hidden_dtype = max_steps, feature_topk, hidden_dtype
        self.step = 0
        self.buffers: Trajectories | None = None
        self.several = None  # device flag: some row committed more than one position in a step

    def _allocate(self, hidden: torch.Tensor, candidates: torch.Tensor, available: int) -> None:
        if self.feature_topk is None:
            self.feature_topk = available
        S, (B, W), dev = self.max_steps, candidates.shape, candidates.device
        f32 = dict(dtype=torch.float32, device=dev)
        self.buffers = Trajectories(
            hidden=torch.zeros(S, B, W, hidden.shape[-1], dtype=self.hidden_dtype or hidden.dtype, device=dev),
            topk_probs=torch.zeros(S, B, W, self.feature_topk, **f32), confidence=torch.zeros(S, B, W, **f32),
            ref_logsumexp=torch.zeros(S, B, W, **f32), candidates=torch.zeros(S, B, W, dtype=torch.bool, device=dev),
            chosen=torch.zeros(S, B, dtype=torch.long, device=dev), behavior_logp=torch.zeros(S, B, **f32),
            active=torch.zeros(S, B, dtype=torch.bool, device=dev),
            token=torch.zeros(S, B, W, dtype=torch.long, device=dev))
        self.several = torch.zeros((), dtype=torch.bool, device=dev)

    def write(self, hidden, stats: VocabStats, candidates, scores, select, position_temperature: float) -> None:
        if hidden is None:
            raise ValueError("recording needs the MDM's last-block input; this model's adapter did not capture it")
        if self.step >= self.max_steps:
            raise ValueError(f"the rollout took more than max_steps={self.max_steps} steps")
        if self.buffers is None:
            self._allocate(hidden, candidates, stats.topk_probs.shape[-1])
        buf, s = self.buffers, self.step
        if stats.topk_probs.shape[-1] < self.feature_topk:
            raise ValueError(f"the sampler gives {stats.topk_probs.shape[-1]} top-k probabilities, the recorder "
                             f"needs feature_topk={self.feature_topk}")
        buf.hidden[s].copy_(hidden)
        buf.topk_probs[s].copy_(stats.topk_probs[..., : self.feature_topk])
        buf.confidence[s].copy_(stats.confidence)
        buf.ref_logsumexp[s].copy_(stats.ref_logsumexp)
        buf.candidates[s].copy_(candidates)
        buf.token[s].copy_(stats.token)
        count = select.sum(-1)
        active = count > 0
        self.several |= (count > 1).any()
        chosen = select.to(torch.int8).argmax(-1)
        buf.chosen[s].copy_(chosen)
        buf.active[s].copy_(active)
        if position_temperature > 0:
            logp = ops.position_log_softmax(scores.float(), candidates, position_temperature, check=False)
            picked = logp.gather(1, chosen[:, None]).squeeze(1)
            buf.behavior_logp[s].copy_(torch.where(active, picked, torch.zeros_like(picked)))
        # at position temperature 0 the choice is deterministic: its log-probability stays 0
        self.step += 1

    def trajectories(self) -> Trajectories:
        if self.buffers is None:
            raise ValueError("nothing was recorded (no step ran)")
        if bool(self.several):  # one read, after the rollout
            raise ValueError("a step committed several positions of one row; record rollouts with one position "
                             "per step (steps=None) and no threshold rule")
        return Trajectories(*(t[: self.step] for t in self.buffers))


@torch.no_grad()
def rollout(mdm, x: torch.Tensor, attention_mask: torch.Tensor | None = None, *, policy=None, scorer: str = "policy",
            position_temperature: float = 1.0, temperature: float = 0.0, generator: torch.Generator | None = None,
            hidden_dtype: torch.dtype | None = None, feature_topk: int | None = None,
            topk: int = 5) -> tuple[torch.Tensor, Trajectories]:
    """Fill every mask of ``x`` [B, L] one position per step with ``scorer`` (the policy by default, sampling at
    ``position_temperature``) and return (filled [B, L], Trajectories). ``attention_mask`` marks padding; ``topk``
    is the K of the ``topk`` scorer."""
    adapter = wrap_model(mdm)  # wrapped once: the sampler reuses it (and the hook it installs)
    masked = x == adapter.mask_id
    if attention_mask is not None:
        masked &= attention_mask.bool()
    steps = int(masked.sum(1).max())  # one host read, before the loop
    if steps == 0:
        raise ValueError("x holds no mask to fill")
    if policy is not None:
        feature_topk = policy.config.feature_topk
    recorder = TrajectoryRecorder(steps, feature_topk, hidden_dtype)
    filled = unmask(adapter, x, attention_mask, scorer=scorer, policy=policy, temperature=temperature,
                    position_temperature=position_temperature, generator=generator, recorder=recorder, topk=topk)
    return filled, recorder.trajectories()
