"""Supervised pretraining of the unmasking policy toward a reference order (``upo-fast pretrain-policy``):
roll out the *reference* (max_confidence, softmax_confidence or topk) with recording and minimize the cross
entropy of the policy on the reference's choices, -log g_phi(a_ref | x_n), along those trajectories. The result is
a warm start for ``upo-fast train --init PATH``: the paper's runs start from such a policy, its code never
released this step.

``target="oracle"`` (an extension, not in the paper) uses the training puzzles' solutions instead: at each state
of the reference trajectory the target is the most confident candidate whose token the MDM would fill in
*correctly* (states with no such candidate are skipped). The policy thus learns to predict which confident cells
are right, from the MDM's hidden states and statistics, with the task's privileged training labels; validation
and test puzzles never supply labels.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from upo_fast.evaluation import load_model
from upo_fast.tasks import get_task
from upo_fast.training.config import REFERENCES, TrainConfig
from upo_fast.training.losses import step_log_probs
from upo_fast.training.rollout import rollout
from upo_fast.training.trainer import VALIDATION_SEED, make_policy, step_seed, validate

# the sampler's scorer that follows each reference: Top-K's reference is uniform over the K most confident
_REFERENCE_SCORER = {"max_confidence": "max_confidence", "softmax_confidence": "softmax_confidence", "topk": "topk"}


@dataclass
class ImitationConfig:
    task: str = "sudoku9"
    reference: str = "max_confidence"
    target: str = "reference"  # or "oracle": the most confident correctly-filled candidate (see the docstring)
    model: str | None = None
    init: str = "fresh"  # fresh | copy | anchor (see TrainConfig.init)
    block_init: str = "copy"
    mlp_hidden: int = 128
    topk: int = 5
    steps: int = 100
    batch_size: int = 32  # puzzles per step (one reference trajectory each)
    lr: float = 1e-3
    position_temperature: float = 1.0
    out_dir: str = "runs/policy-pretrain"
    seed: int = 0
    eval_puzzles: int = 200
    eval_every: int = 25  # validation every N steps; the best policy on validation is the one saved

    def validate(self) -> ImitationConfig:
        if self.reference not in REFERENCES:
            raise ValueError(f"reference must be one of {', '.join(REFERENCES)}, got {self.reference!r}")
        if self.target not in ("reference", "oracle"):
            raise ValueError(f"target must be 'reference' or 'oracle', got {self.target!r}")
        for name in ("steps", "batch_size", "eval_puzzles"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0 or not self.position_temperature > 0:
            raise ValueError(f"lr and position_temperature must be > 0, got {self.lr} and {self.position_temperature}")
        return self


def pretrain_policy(cfg: ImitationConfig, *, progress: bool = True) -> dict:
    """Fit a policy to the reference's choices; saves it (``save_pretrained``) to ``cfg.out_dir``."""
    cfg.validate()
    task = get_task(cfg.task)
    mdm = load_model(cfg.model, task).eval().requires_grad_(False)
    train_cfg = TrainConfig(task=cfg.task, reference=cfg.reference, model=cfg.model, init=cfg.init,
                            block_init=cfg.block_init, mlp_hidden=cfg.mlp_hidden, topk=cfg.topk).validate()
    policy = make_policy(train_cfg, mdm)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    val = task.make_puzzles(cfg.eval_puzzles, seed=VALIDATION_SEED)
    out = Path(cfg.out_dir)
    log, started = [validate(mdm, policy, task, *val) | {"step": 0}], time.perf_counter()
    best = dict(log[0])
    policy.save_pretrained(out)
    for step in tqdm(range(1, cfg.steps + 1), desc="pretrain policy", disable=not progress):
        seed = step_seed(cfg.seed + 10_000, step)  # not the GRPO run's puzzles
        puzzles, solutions = task.make_puzzles(cfg.batch_size, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        _, traj = rollout(mdm, task.encode(puzzles), scorer=_REFERENCE_SCORER[cfg.reference], generator=gen,
                          feature_topk=policy.config.feature_topk, topk=cfg.topk)
        index = traj.active.nonzero(as_tuple=True)
        candidates, target = traj.candidates[index], traj.chosen[index]
        if cfg.target == "oracle":
            right = candidates & (traj.token[index] == task.encode_solution(puzzles, solutions)[index[1]])
            target = torch.where(right, traj.confidence[index], torch.full_like(traj.confidence[index], -1.0))
            target, keep = target.argmax(-1), right.any(-1)
            index = tuple(i[keep] for i in index)
            candidates, target = candidates[keep], target[keep]
        policy.train()
        scores = policy(traj.hidden[index], traj.stats(index), candidates)
        loss = -step_log_probs(scores, candidates, target, cfg.position_temperature, check=False).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        policy.eval()
        record = {"step": step, "loss": float(loss.detach())}
        if step % cfg.eval_every == 0 or step == cfg.steps:
            record.update(validate(mdm, policy, task, *val))
            if record["val_solved"] > best["val_solved"]:
                best = dict(record)
                policy.save_pretrained(out)  # the policy kept is the best on validation (step 0 included)
        log.append(record)
    summary = {"config": asdict(cfg), "final_loss": log[-1]["loss"], "best": best, **log[-1],
               "seconds": round(time.perf_counter() - started, 1)}
    (out / "pretrain_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(out / "pretrain_log.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in log)
    return summary
