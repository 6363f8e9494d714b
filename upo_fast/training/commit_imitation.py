"""Supervised training of the policy's commit net (``upo-fast pretrain-commit``): learned parallel unmasking by
imitation of the oracle filter, with DAgger rounds. Not the paper's method (no GRPO): a classifier.

The oracle filter commits, at each step, every masked cell whose argmax token already equals the solution. The commit
net (``policy.CommitNet``) learns to predict that label from what the policy reads at sampling time (the hidden
states entering the MDM's last block and the top-k token probabilities), never the solution:

* the order part of the policy is kept as it is (frozen): only the commit net is trained, so the order the policy
  was shipped with, and its one-cell-a-step solved rate, are unchanged;
* round 0 rolls out the policy's order with the confidence threshold rule (``round0_threshold``); every later round
  rolls out the policy's order with its own learned rule (``rollout_threshold``), so that the states it learns
  from are the ones its own commits lead to (DAgger). States up to and including a rollout's first wrong commit
  are kept (after it the puzzle is lost whatever is committed);
* loss: binary cross-entropy between each candidate's commit logit and ``token == solution``;
* after each round the threshold is swept on validation puzzles (``VALIDATION_SEED``). The round and threshold
  kept are the fewest MDM forwards whose validation solved rate (``metric="cell_accuracy"``: cell accuracy, for a
  model that solves few puzzles, such as the shipped Zebra one) reaches ``target`` (default: the one-cell-a-step
  policy's own, measured at the start); when none does, the highest. The threshold is saved in the
  policy's ``config.commit_threshold``, which ``commit="policy"`` uses by default.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from upo_fast.assets import load_task_model
from upo_fast.evaluation.grids import evaluate
from upo_fast.policy import UnmaskingPolicy
from upo_fast.sampling.adapters import wrap_model
from upo_fast.sampling.commit_rules import LearnedCommit, Threshold
from upo_fast.sampling.loop import unmask
from upo_fast.tasks import get_task
from upo_fast.training.policy_init import VALIDATION_SEED, PolicyInit, make_policy, step_seed
from upo_fast.validation import field_check

_FIELDS = ("hidden", "topk_probs", "candidates", "token", "correct")
# commit probabilities tried on validation after each round
SWEEP = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)
METRICS = {"solved": ("val_solved", "solved_rate"), "cell_accuracy": ("val_cell_accuracy", "cell_accuracy")}


@dataclass
class CommitConfig:
    task: str = "sudoku9"
    model: str | None = None
    init: str = "shipped"  # the policy whose order is kept: "shipped" (the task's), "anchor" (max-confidence), a folder
    commit_blocks: int = 1  # transformer blocks of a new commit net (a folder's own net keeps its size)
    rounds: int = 6  # round 0: threshold-rule rollouts; rounds 1..: the learned rule's own rollouts (DAgger)
    puzzles_per_round: int = 1024
    rollout_batch: int = 256
    round0_threshold: float = 0.9
    rollout_threshold: float = 0.9
    steps: int = 300  # AdamW steps after each round, on batches of buffered states
    batch_size: int = 128
    lr: float = 3e-4
    eval_puzzles: int = 500
    target: float | None = None  # validation solved rate to reach; None: the one-cell-a-step policy's
    metric: str = "solved"  # what target measures: "solved" (solved rate) or "cell_accuracy"
    sweep: tuple = field(default=SWEEP)
    out_dir: str = "runs/commit"
    seed: int = 0

    def validate(self) -> CommitConfig:
        from upo_fast.tasks import TASKS, is_grid_task

        check = field_check(self)
        check(is_grid_task(self.task), "task", f"a grid task ({', '.join(TASKS)}, zebraHxA)")
        check(self.init in ("shipped", "anchor") or (Path(self.init) / "config.json").is_file(), "init",
              "'shipped', 'anchor' or a saved policy folder (with config.json)")
        for name in ("puzzles_per_round", "rollout_batch", "steps", "batch_size", "eval_puzzles"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "an int >= 1")
        check(isinstance(self.rounds, int) and self.rounds >= 0, "rounds", "an int >= 0")
        check(isinstance(self.commit_blocks, int) and self.commit_blocks >= 0, "commit_blocks", "an int >= 0")
        for name in ("round0_threshold", "rollout_threshold"):
            check(0 < getattr(self, name) < 1, name, "in (0, 1)")
        check(self.target is None or 0 <= self.target <= 1, "target", "None or in [0, 1]")
        check(self.metric in METRICS, "metric", " or ".join(map(repr, METRICS)))
        check(len(self.sweep) > 0 and all(0 < p < 1 for p in self.sweep), "sweep", "probabilities in (0, 1)")
        check(self.lr > 0, "lr", "> 0")
        return self


class CommitRecorder:
    """The sampler's recorder for parallel rollouts: per step the policy's inputs, the tokens and what was
    committed (several positions a step), and with ``with_confidence`` the token confidences (what the threshold
    rule, GRPO's reference, reads). Buffers sized on the first step."""

    def __init__(self, max_steps: int, feature_topk: int, with_confidence: bool = False):
        self.max_steps, self.feature_topk, self.step, self.buffers = max_steps, feature_topk, 0, None
        self.with_confidence = with_confidence

    def write(self, hidden, stats, candidates, scores, select, position_temperature) -> None:
        if self.buffers is None:
            (batch, width), dev = candidates.shape, candidates.device
            shape = (self.max_steps, batch, width)
            self.buffers = dict(hidden=torch.zeros(*shape, hidden.shape[-1], dtype=torch.bfloat16, device=dev),
                                topk_probs=torch.zeros(*shape, self.feature_topk, device=dev),
                                candidates=torch.zeros(shape, dtype=torch.bool, device=dev),
                                token=torch.zeros(shape, dtype=torch.long, device=dev),
                                select=torch.zeros(shape, dtype=torch.bool, device=dev))
            if self.with_confidence:
                self.buffers["confidence"] = torch.zeros(shape, device=dev)
        s, buf = self.step, self.buffers
        buf["hidden"][s].copy_(hidden)
        buf["topk_probs"][s].copy_(stats.topk_probs[..., :self.feature_topk])
        buf["candidates"][s].copy_(candidates)
        buf["token"][s].copy_(stats.token)
        buf["select"][s].copy_(select)
        if self.with_confidence:
            buf["confidence"][s].copy_(stats.confidence)
        self.step += 1

    def trajectory_states(self) -> dict[str, torch.Tensor]:
        """Every recorded (step, row) state with a candidate, each with its row (``rollout``), for GRPO."""
        buf = {name: t[:self.step] for name, t in self.buffers.items()}
        keep = buf["candidates"].any(-1).nonzero(as_tuple=True)
        states = {name: t[keep] for name, t in buf.items()}
        return states | {"rollout": keep[1]}

    def states(self, solution: torch.Tensor) -> tuple[dict[str, torch.Tensor], float]:
        """The states to learn from (each step of each row up to and including its first wrong commit, with a
        candidate) and the fraction of rows that committed a wrong token."""
        buf = {name: t[:self.step] for name, t in self.buffers.items()}
        correct = buf["token"] == solution[None]
        wrong = (buf["select"] & ~correct).any(-1).int()  # [S, B]
        alive = torch.cumsum(wrong, 0) - wrong == 0
        keep = (alive & buf["candidates"].any(-1)).nonzero(as_tuple=True)
        states = dict(hidden=buf["hidden"][keep], topk_probs=buf["topk_probs"][keep],
                      candidates=buf["candidates"][keep], token=buf["token"][keep], correct=correct[keep])
        return states, float(wrong.any(0).float().mean())


def commit_loss(policy: UnmaskingPolicy, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean binary cross-entropy over the batch's candidates: commit logit against ``token == solution``."""
    candidates = batch["candidates"]
    logits = policy.commit_logits(batch["hidden"].float(), candidates=candidates, topk_probs=batch["topk_probs"],
                                  tokens=batch["token"])
    loss = F.binary_cross_entropy_with_logits(logits, batch["correct"].float(), reduction="none")
    return (loss * candidates).sum() / candidates.sum().clamp_min(1)


def start_policy(cfg: CommitConfig, mdm, task) -> UnmaskingPolicy:
    """The policy whose order is kept, with a fresh commit net (its block a copy of the MDM's last block when the
    widths allow), everything but the commit net frozen."""
    from upo_fast.policy import load_policy

    if cfg.init == "shipped":
        policy = load_policy(None, task, mdm)
    else:
        policy = make_policy(PolicyInit(init=cfg.init), mdm)
    if not policy.has_commit_head:
        policy.add_commit_head(mdm, blocks=cfg.commit_blocks)
    policy.requires_grad_(False)
    policy.commit.requires_grad_(True)
    return policy


def sweep_validation(mdm, task, policy, val, thresholds) -> list[dict]:
    """Per threshold: validation solved rate, cell accuracy and mean MDM forwards of the learned rule."""
    rows = []
    for p in thresholds:
        r = evaluate(mdm, task, *val, ["policy"], progress=False, policy=policy, position_temperature=0.0,
                     commit=LearnedCommit(p))["policy"]
        rows.append({"threshold": p, "val_solved": r["solved_rate"], "val_cell_accuracy": r["cell_accuracy"],
                     "val_forwards": r["forwards"]})
    return rows


def choose(rows: list[dict], target: float, metric: str = "solved") -> dict:
    """The fewest forwards among the rows whose ``metric`` reaches ``target``, else the highest ``metric`` (then
    the fewest forwards)."""
    key = METRICS[metric][0]
    reached = [r for r in rows if r[key] >= target]
    if reached:
        return min(reached, key=lambda r: (r["val_forwards"], -r[key]))
    return max(rows, key=lambda r: (r[key], -r["val_forwards"]))


def keep_best(policy, out: Path, record: dict, best: dict | None, target: float, metric: str) -> dict:
    """Give the policy the threshold ``record`` chose; save it to ``out`` when it beats ``best`` by ``choose`` (the
    first record always does), and to ``out/last`` in any case. Returns the best record."""
    chosen = record["chosen"]
    policy.config.commit_threshold = chosen["threshold"]
    if best is None or choose([best["chosen"], chosen], target, metric) is chosen:
        best = record
        policy.save_pretrained(out)
    policy.save_pretrained(out / "last")
    return best


def write_log(path: Path, log: list[dict]) -> None:
    """Rewrite the whole log after each round or step: a stopped run keeps it."""
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in log)


def one_cell_target(mdm, task, policy, val, cfg) -> float:
    """``cfg.target``, else the one-cell-a-step policy's ``cfg.metric`` on the validation puzzles."""
    if cfg.target is not None:
        return cfg.target
    result = evaluate(mdm, task, *val, ["policy"], progress=False, policy=policy, position_temperature=0.0)
    return result["policy"][METRICS[cfg.metric][1]]


def _collect(mdm, task, policy, cfg: CommitConfig, round_: int) -> tuple[dict, dict]:
    rule = Threshold(cfg.round0_threshold) if round_ == 0 else LearnedCommit(cfg.rollout_threshold)
    parts, failed, n_total = {name: [] for name in _FIELDS}, 0.0, 0
    mask_id = wrap_model(mdm).mask_id
    for b in range(-(-cfg.puzzles_per_round // cfg.rollout_batch)):
        n = min(cfg.rollout_batch, cfg.puzzles_per_round - b * cfg.rollout_batch)
        seed = step_seed(cfg.seed + 20_000, round_ * 1_000 + b)  # neither the validation nor the test seed
        puzzles, solutions = task.make_puzzles(n, seed=seed)
        x = task.encode(puzzles)
        recorder = CommitRecorder(int((x == mask_id).sum(1).max()), policy.config.feature_topk)
        unmask(mdm, x, scorer="policy", policy=policy, position_temperature=0.0, commit=rule, recorder=recorder,
               generator=torch.Generator().manual_seed(seed))
        states, wrong = recorder.states(task.encode_solution(puzzles, solutions))
        for name in _FIELDS:
            parts[name].append(states[name])
        failed, n_total = failed + wrong * n, n_total + n
    states = {name: torch.cat(t) for name, t in parts.items()}
    return states, {"rollout": type(rule).__name__, "rollout_failed": round(failed / n_total, 4),
                    "states_added": len(states["candidates"])}


def pretrain_commit(cfg: CommitConfig, *, progress: bool = True) -> dict:
    """Train the commit net by DAgger rounds (module docstring); saves the chosen policy (order unchanged, commit net
    and ``commit_threshold``) to ``cfg.out_dir``, the last round's to ``out_dir/last``, and the per-round log."""
    cfg.validate()
    task = get_task(cfg.task)
    mdm = load_task_model(cfg.model, task).eval().requires_grad_(False)
    policy = start_policy(cfg, mdm, task)
    optimizer = torch.optim.AdamW(policy.commit.parameters(), lr=cfg.lr)
    val = task.make_puzzles(cfg.eval_puzzles, seed=VALIDATION_SEED)
    target = one_cell_target(mdm, task, policy, val, cfg)
    out, generator, started = Path(cfg.out_dir), torch.Generator().manual_seed(cfg.seed), time.perf_counter()
    buffer: dict[str, list[torch.Tensor]] = {name: [] for name in _FIELDS}
    log, best = [{"round": -1, "metric": cfg.metric, "target": target}], None
    for round_ in tqdm(range(cfg.rounds + 1), desc="pretrain commit (DAgger rounds)", disable=not progress):
        states, record = _collect(mdm, task, policy, cfg, round_)
        for name in _FIELDS:
            buffer[name].append(states[name])
        data = {name: torch.cat(t) for name, t in buffer.items()}
        policy.commit.train()
        losses = []
        for _ in range(cfg.steps):
            index = torch.randint(len(data["candidates"]), (cfg.batch_size,), generator=generator)
            loss = commit_loss(policy, {name: t[index] for name, t in data.items()})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.commit.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.detach())
        policy.eval()
        losses = torch.stack(losses).tolist()
        sweep = sweep_validation(mdm, task, policy, val, cfg.sweep)
        chosen = choose(sweep, target, cfg.metric)
        record |= {"round": round_, "states": len(data["candidates"]), "first_loss": losses[0],
                   "last_loss": losses[-1], "sweep": sweep, "chosen": chosen,
                   "seconds": round(time.perf_counter() - started, 1)}
        best = keep_best(policy, out, record, best, target, cfg.metric)
        log.append(record)
        write_log(out / "commit_log.jsonl", log)
    summary = {"config": asdict(cfg), "target": target, "best_round": best["round"], "best": best["chosen"],
               "seconds": round(time.perf_counter() - started, 1)}
    (out / "commit_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


__all__ = ["CommitConfig", "CommitRecorder", "METRICS", "commit_loss", "choose", "keep_best", "one_cell_target",
           "pretrain_commit", "sweep_validation", "write_log"]
