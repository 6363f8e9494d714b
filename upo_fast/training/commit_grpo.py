"""The paper's method extended to the commit rule (``upo-fast train-commit``): GRPO with a cost per MDM forward,
regularized toward a reference commit rule (the confidence threshold), as the order is regularized toward its
reference policy.

At each step of a rollout the policy's order picks its first cell (greedy, as at sampling time) and every other
candidate is committed with probability sigmoid((logit - cut) / temperature), drawn independently: the commit net
is a product of Bernoulli policies centred on the deterministic rule it will run (cut: the log-odds of the start
policy's ``commit_threshold``; ``temperature``: how far from that rule the rollouts explore). Sampling at
sigmoid(logit) itself commits every cell whose probability is 0.9 nine times in ten: the rollouts then solve
nothing and the rewards only count forwards. For a group of ``group_size`` rollouts of one puzzle:

    reward     = solved - cost * forwards / blanks          (forwards: the MDM forwards the rollout used)
    advantage  = (reward - group mean) / (group std + 1e-6)
    loss       = - mean over rollouts of advantage * mean over its decisions of log pi(decision)
                 + beta * mean over decisions of CE(reference decision, pi)

The reference decision is the confidence threshold rule's, ``confidence >= ref_threshold`` (a deterministic rule, so
the regularizer is the cross-entropy to it, as the order's CE regularizer to max-confidence). Updates are on-policy
(one gradient step per batch of rollouts, so the importance ratio is 1 and needs no clipping). The order part of the
policy stays frozen. After every ``eval_every`` steps the deterministic rule (commit when the probability is >= p)
is swept on validation puzzles and the best policy is kept exactly as ``pretrain-commit`` keeps it
(``commit_imitation.choose``), so the two methods are compared on the same footing.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from upo_fast.assets import load_task_model
from upo_fast.sampling.adapters import wrap_model
from upo_fast.sampling.commit_rules import LearnedCommit
from upo_fast.sampling.loop import unmask
from upo_fast.tasks import get_task
from upo_fast.training.commit_imitation import (
    SWEEP,
    CommitConfig,
    CommitRecorder,
    choose,
    keep_best,
    one_cell_target,
    start_policy,
    sweep_validation,
    write_log,
)
from upo_fast.training.policy_init import VALIDATION_SEED, step_seed
from upo_fast.validation import field_check


@dataclass(frozen=True)
class SampledCommit(LearnedCommit):
    """The learned rule as a stochastic policy (training rollouts only): each candidate is committed with probability
    sigmoid(commit logit), drawn from ``generator`` (on the MDM's device)."""

    temperature: float = 1.0
    generator: torch.Generator | None = None

    def bind(self, policy) -> SampledCommit:
        return super().bind(policy)  # the checks (a policy with a commit net), the policy's threshold if none

    def extra(self, order, candidates, stats, commit_logits=None):
        draw = torch.rand(candidates.shape, device=candidates.device, generator=self.generator)
        return candidates & (draw < torch.sigmoid(self.centred(commit_logits)))

    def centred(self, commit_logits: torch.Tensor) -> torch.Tensor:
        """The log-odds the rollouts draw from: (logit - cut) / temperature."""
        return (commit_logits - math.log(self.threshold / (1 - self.threshold))) / self.temperature


@dataclass
class CommitGRPOConfig:
    task: str = "sudoku9"
    model: str | None = None
    init: str = "shipped"  # a policy folder with a commit net (e.g. pretrain-commit's), or shipped/anchor (fresh net)
    commit_blocks: int = 1  # as CommitConfig.commit_blocks
    steps: int = 100
    puzzles_per_step: int = 16
    group_size: int = 8
    cost: float = 0.5  # lambda: reward = solved - cost * forwards / blanks
    temperature: float = 0.5  # of the rollouts' Bernoulli draws around the start policy's threshold
    beta: float = 0.05  # weight of the CE to the reference threshold rule
    ref_threshold: float = 0.9
    lr: float = 1e-4
    eval_every: int = 20
    time_limit: float | None = None  # seconds: the step that passes it is the last (and is evaluated)
    eval_puzzles: int = 500
    target: float | None = None  # as CommitConfig.target
    metric: str = "solved"  # as CommitConfig.metric
    sweep: tuple = field(default=SWEEP)
    out_dir: str = "runs/commit-grpo"
    seed: int = 0

    def validate(self) -> CommitGRPOConfig:
        check = field_check(self)
        CommitConfig(task=self.task, init=self.init, eval_puzzles=self.eval_puzzles, target=self.target,
                     metric=self.metric, sweep=self.sweep).validate()  # the fields the two share, checked in one place
        for name in ("steps", "puzzles_per_step", "eval_every"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "an int >= 1")
        check(isinstance(self.group_size, int) and self.group_size >= 2, "group_size", "an int >= 2")
        check(self.cost >= 0, "cost", ">= 0")
        check(self.temperature > 0, "temperature", "> 0")
        check(self.beta >= 0, "beta", ">= 0")
        check(0 < self.ref_threshold <= 1, "ref_threshold", "in (0, 1]")
        check(self.lr > 0, "lr", "> 0")
        check(self.time_limit is None or self.time_limit > 0, "time_limit", "None or > 0 seconds")
        return self


def grouped_rollouts(mdm, task, policy, rule: SampledCommit, cfg: CommitGRPOConfig, step: int, mask_id: int):
    """``puzzles_per_step`` puzzles, each rolled out ``group_size`` times with the sampled rule -> (states, per
    rollout: reward [R], solved [R], forwards [R])."""
    seed = step_seed(cfg.seed + 30_000, step)  # neither the validation nor the test seed
    puzzles, solutions = task.make_puzzles(cfg.puzzles_per_step, seed=seed)
    x = task.encode(puzzles).repeat_interleave(cfg.group_size, 0)
    generator = torch.Generator().manual_seed(seed)
    recorder = CommitRecorder(int((x == mask_id).sum(1).max()), policy.config.feature_topk, with_confidence=True)
    filled, forwards = unmask(mdm, x, scorer="policy", policy=policy, position_temperature=0.0, recorder=recorder,
                              commit=replace(rule, generator=generator), generator=generator,
                              return_steps=True)
    index = torch.arange(cfg.puzzles_per_step).repeat_interleave(cfg.group_size)
    grids = task.decode(filled)
    solved = torch.as_tensor(task.is_solved(grids, puzzles[index.numpy()], solutions[index.numpy()]),
                             dtype=torch.float32)
    blanks = (x == mask_id).sum(1).clamp_min(1).float()
    reward = solved - cfg.cost * forwards.float() / blanks
    return recorder.trajectory_states(), reward, solved, forwards.float()


def group_advantages(reward: torch.Tensor, group_size: int) -> torch.Tensor:
    grouped = reward.view(-1, group_size)
    centred = grouped - grouped.mean(1, keepdim=True)
    return (centred / (grouped.std(1, keepdim=True) + 1e-6)).view(-1)


def grpo_loss(policy, states: dict, advantage: torch.Tensor, cfg: CommitGRPOConfig,
              rule: SampledCommit) -> tuple[torch.Tensor, dict]:
    """The loss of the module docstring over every recorded (step, rollout) state; ``rule``: the rollouts' draw."""
    candidates = states["candidates"]
    logits = rule.centred(policy.commit_logits(states["hidden"].float(), candidates=candidates,
                                               topk_probs=states["topk_probs"], tokens=states["token"]))
    decided = states["select"].float()
    logp = -F.binary_cross_entropy_with_logits(logits, decided, reduction="none") * candidates
    rollout = states["rollout"]
    n_rollouts = advantage.shape[0]
    per_rollout_logp = torch.zeros(n_rollouts).index_add_(0, rollout, logp.sum(-1))
    per_rollout_n = torch.zeros(n_rollouts).index_add_(0, rollout, candidates.sum(-1).float()).clamp_min(1)
    policy_term = -(advantage * per_rollout_logp / per_rollout_n).mean()
    reference = (states["confidence"] >= cfg.ref_threshold).float()  # CE of the centred draw to the reference rule
    ce = F.binary_cross_entropy_with_logits(logits, reference, reduction="none")
    ce = (ce * candidates).sum() / candidates.sum().clamp_min(1)
    return policy_term + cfg.beta * ce, {"policy_term": float(policy_term.detach()), "ref_ce": float(ce.detach())}


def train_commit_grpo(cfg: CommitGRPOConfig, *, progress: bool = True) -> dict:
    """Run GRPO on the commit net (module docstring); saves the best policy on validation to ``cfg.out_dir``, the
    last to ``out_dir/last``, and the log (``grpo_log.jsonl``: per step reward, solved, forwards; per evaluation the
    sweep and the choice)."""
    cfg.validate()
    task = get_task(cfg.task)
    mdm = load_task_model(cfg.model, task).eval().requires_grad_(False)
    policy = start_policy(CommitConfig(task=cfg.task, init=cfg.init, commit_blocks=cfg.commit_blocks), mdm, task)
    optimizer = torch.optim.AdamW(policy.commit.parameters(), lr=cfg.lr)
    val = task.make_puzzles(cfg.eval_puzzles, seed=VALIDATION_SEED)
    target = one_cell_target(mdm, task, policy, val, cfg)
    mask_id, out, started = wrap_model(mdm).mask_id, Path(cfg.out_dir), time.perf_counter()
    sweep = sweep_validation(mdm, task, policy, val, cfg.sweep)
    log = [{"step": 0, "target": target, "sweep": sweep, "chosen": choose(sweep, target, cfg.metric)}]
    best = keep_best(policy, out, log[0], None, target, cfg.metric)
    rule = SampledCommit(policy.config.commit_threshold, temperature=cfg.temperature)  # the cut stays the start's
    for step in tqdm(range(1, cfg.steps + 1), desc="commit GRPO", disable=not progress):
        policy.eval()
        states, reward, solved, forwards = grouped_rollouts(mdm, task, policy, rule, cfg, step, mask_id)
        policy.commit.train()
        loss, parts = grpo_loss(policy, states, group_advantages(reward, cfg.group_size), cfg, rule)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.commit.parameters(), 1.0)
        optimizer.step()
        record = {"step": step, "reward": float(reward.mean()), "solved": float(solved.mean()),
                  "forwards": float(forwards.mean()), **parts, "seconds": round(time.perf_counter() - started, 1)}
        last = step == cfg.steps or (cfg.time_limit is not None and time.perf_counter() - started > cfg.time_limit)
        if step % cfg.eval_every == 0 or last:
            policy.eval()
            record["sweep"] = sweep_validation(mdm, task, policy, val, cfg.sweep)
            record["chosen"] = choose(record["sweep"], target, cfg.metric)
            best = keep_best(policy, out, record, best, target, cfg.metric)
        log.append(record)
        write_log(out / "grpo_log.jsonl", log)
        if last:
            break
    summary = {"config": asdict(cfg), "target": target, "best_step": best["step"], "best": best["chosen"],
               "seconds": round(time.perf_counter() - started, 1)}
    (out / "grpo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


__all__ = ["CommitGRPOConfig", "SampledCommit", "group_advantages", "grpo_loss", "train_commit_grpo"]
