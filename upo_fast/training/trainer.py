"""The UPO trainer (``upo-fast train``): rollouts of the unmasking policy on a task, rewards, group advantages,
KL-regularized clipped GRPO updates, validation, JSONL (+ TensorBoard) metrics, atomic checkpoints with exact
resume, and several processes through torchrun.

One step: P prompts (sharded over processes), each repeated G times -> one rollout batch with recording -> rewards
[P, G] -> advantages r - group mean -> ``update_policy`` (mu inner iterations). Validation puzzles come from their
own seed, never from the held-out test seed that ``upo-fast eval`` reports on.

What depends on the task is an *environment*: :class:`GridEnv` (Sudoku, Zebra: a TinyMDM fills the grid, one
cell a step) or ``upo_fast.training.text_env.TextEnv`` (arith: LLaDA / Dream complete the prompt block by block,
one token a step, the paper's text setting). Each makes a step's prompts, runs the recorded rollout, scores it and
validates the policy; the GRPO step around it is the same.

Resuming (``--out`` holds a checkpoint) keeps the run's saved settings: only those in ``RESUME_MAY_CHANGE`` may
differ (applied and logged); any other difference is refused with a ValueError listing them. A step whose loss,
gradients or resulting parameters are not finite leaves the policy and the optimizer state as they were (the
metrics record says ``skipped``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from upo_fast.assets import load_task_model
from upo_fast.checkpoints import check_resume, json_default, restore, save_checkpoint, should_stop
from upo_fast.policy import UnmaskingPolicy
from upo_fast.tasks import get_task
from upo_fast.training.config import SELECT_ON, TrainConfig
from upo_fast.training.distributed import ProcessGroup
from upo_fast.training.losses import group_advantages, zero_std_ratio
from upo_fast.training.policy_init import VALIDATION_SEED, make_policy, step_seed, validate
from upo_fast.training.rollout import rollout
from upo_fast.training.update import update_policy

logger = logging.getLogger(__name__)
# Settings a resume may change: they take effect from the resumed step on and change nothing that the checkpoint
# already holds (the optimizer state, the RNG, the step seeds, the policy's architecture). ``steps`` only moves the
# end (there is no lr schedule here); ``update_chunk`` is a memory bound (it regroups the same sums). Not
# ``eval_puzzles``: ``best`` compares validation scores on one puzzle set. Every other difference is refused.
RESUME_MAY_CHANGE = frozenset({"steps", "time_limit_s", "stop_at_step", "device", "tensorboard", "checkpoint_every",
                               "keep_checkpoints", "eval_every", "out_dir", "update_chunk"})


class CompiledPolicy(torch.nn.Module):
    """``policy`` behind ``torch.compile`` (dynamic shapes: the update's state count changes every step), with the
    same parameters and attributes. If compiling fails on the first call (no C++ compiler for inductor, an
    unsupported op), it warns once and runs eagerly from then on, so a run never stops for it."""

    def __init__(self, policy: UnmaskingPolicy, backend: str):
        super().__init__()
        self.policy, self.backend = policy, backend
        # not a registered submodule: the parameters are listed (and saved) once, as the policy's
        object.__setattr__(self, "_compiled", torch.compile(policy, backend=backend, dynamic=True))

    def forward(self, *args, **kwargs):
        if self._compiled is not None:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - torch._dynamo / inductor raise many kinds
                if not _is_compile_failure(exc):
                    raise
                logger.warning("torch.compile(backend=%r) failed (%s): the policy runs eagerly", self.backend,
                               str(exc).splitlines()[0][:200])
                object.__setattr__(self, "_compiled", None)
        return self.policy(*args, **kwargs)

    def __getattr__(self, name):  # config, check_compatible, ...: the policy's own
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.policy, name)


def _is_compile_failure(exc: Exception) -> bool:
    module = type(exc).__module__
    return module.startswith(("torch._dynamo", "torch._inductor")) or isinstance(exc, (ImportError, OSError))


def compiled(policy: UnmaskingPolicy, backend: str | None):
    """``policy`` itself (``backend`` None) or a :class:`CompiledPolicy` around it."""
    return policy if backend is None else CompiledPolicy(policy, backend)


def rewards_for(task, filled: torch.Tensor, puzzles, solutions: np.ndarray, kind: str) -> np.ndarray:
    """[B] rewards of filled grids (rows = puzzles repeated G times, in order)."""
    pred = task.decode(filled.cpu())
    rows = np.repeat(np.arange(len(puzzles)), len(pred) // len(puzzles))
    puzzles, solutions = puzzles[rows], solutions[rows]
    solved = task.is_solved(pred, puzzles, solutions).astype(float)
    if kind == "solved":
        return solved
    cells = task.cell_accuracy(pred, puzzles, solutions)
    return cells if kind == "cells" else (solved + cells) / 2


class GridEnv:
    """A grid task for the trainer: puzzles from a seed, a recorded ``unmask`` rollout, solved / cell rewards."""

    select = SELECT_ON  # TrainConfig.select_on -> validation key

    def __init__(self, cfg: TrainConfig, device):
        self.cfg, self.task = cfg, get_task(cfg.task)
        self.mdm = load_task_model(cfg.model, self.task, device).eval().requires_grad_(False)

    def prompts(self, n: int, seed: int):
        return self.task.make_puzzles(n, self.cfg.blanks, seed=seed)

    def shard(self, prompts, rows: slice):
        return tuple(part[rows] for part in prompts)

    def rollout(self, prompts, policy, generator):
        cfg = self.cfg
        x = self.task.encode(prompts[0]).to(next(self.mdm.parameters()).device)
        return rollout(self.mdm, x.repeat_interleave(cfg.group_size, 0), policy=policy,
                       position_temperature=cfg.position_temperature, temperature=cfg.token_temperature,
                       generator=generator)

    def rewards(self, filled, prompts) -> np.ndarray:
        return rewards_for(self.task, filled, *prompts, self.cfg.reward)

    def validation_set(self):
        return self.task.make_puzzles(self.cfg.eval_puzzles, self.cfg.blanks, seed=VALIDATION_SEED)

    def validate(self, policy, val) -> dict:
        return validate(self.mdm, policy, self.task, *val)


def make_env(cfg: TrainConfig, device):
    """The environment of ``cfg.task``: a grid task, or the text task ``arith``."""
    from upo_fast.tasks import is_grid_task

    if is_grid_task(cfg.task):
        return GridEnv(cfg, device)
    from upo_fast.training.text_env import TextEnv

    return TextEnv(cfg, device)


class _MetricsLog:
    """JSONL on the main process (one line per step, flushed), plus TensorBoard scalars when it is installed."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool):
        self.path, self.enabled, self.writer = out_dir / "metrics.jsonl", enabled, None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                pass

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=json_default) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step" and math.isfinite(value):
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def train(cfg: TrainConfig, *, progress: bool = True) -> dict:
    """Run (or resume) UPO training as ``cfg`` says; returns a summary. See the module docstring."""
    run = _Run(cfg)
    cfg = run.cfg
    started, stopped_early, step = time.perf_counter(), False, run.start_step
    bar = tqdm(range(run.start_step + 1, cfg.steps + 1), desc="upo train",
               disable=not (progress and run.group.main))
    for step in bar:
        t_step = time.perf_counter()
        record = run.grpo_step(step)
        record["ms_step"] = 1e3 * (time.perf_counter() - t_step)  # puzzles, rollout, rewards, update (no validation)
        run.validate_and_log(step, record)
        bar.set_postfix(reward=f"{record['reward_mean']:.3f}", val=record.get(run.best_key, ""))
        # agreed: a process that stopped alone would leave the others waiting at the checkpoint barrier
        stop_early = run.group.any(should_stop(step, started, cfg.time_limit_s, cfg.stop_at_step))
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or stop_early:
            run.save(step)
        if stop_early:
            stopped_early = step < cfg.steps
            break
    run.log.close()
    return {"last_step": step, "resumed_from_step": run.start_step, "stopped_early": stopped_early,
            "best": run.best, "seconds": time.perf_counter() - started, "out_dir": str(run.out_dir)}


class _Run:
    """What one call of :func:`train` sets up once (processes, models, optimizer, resume, log, validation puzzles)
    and the pieces of a step that read it."""

    def __init__(self, cfg: TrainConfig):
        cfg.validate()
        self.cfg, self.group = cfg, ProcessGroup.from_env(cfg.device)
        group = self.group
        self.device = f"cuda:{group.local_rank}" if cfg.device == "cuda" and group.world > 1 else cfg.device
        if cfg.prompts_per_step % group.world:
            raise ValueError(f"prompts_per_step={cfg.prompts_per_step} must be a multiple of the number of "
                             f"processes ({group.world})")
        self.out_dir = out_dir = Path(cfg.out_dir)
        found = check_resume(out_dir, cfg.to_dict(), RESUME_MAY_CHANGE)  # first: refused before any model loads
        self.env = make_env(cfg, self.device)
        self.mdm = self.env.mdm
        torch.manual_seed(cfg.seed)  # the policy's initialization: the same on every process and every fresh start
        self.policy = make_policy(cfg, self.mdm)
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if group.main:
            out_dir.mkdir(parents=True, exist_ok=True)
        group.barrier()
        self._resume(found)
        self.log = _MetricsLog(out_dir, group.main, cfg.tensorboard)
        self.val = None
        if group.main and cfg.eval_every:
            self.val = self.env.validation_set()
            if self.start_step == 0:
                self.log.write({"step": 0, **self.env.validate(self.policy, self.val)})
        self.local_prompts = cfg.prompts_per_step // group.world
        self.update_options = cfg.update_options()
        self.runner = compiled(self.policy, cfg.compile_backend)  # shares the parameters; ``policy`` is saved

    def _resume(self, found) -> None:
        cfg, group = self.cfg, self.group
        if group.main and (found is None or found.changes):  # the settings in force from now on
            (self.out_dir / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        self.start_step = restore(found, self.policy, self.optimizer, self.device, self.out_dir / "metrics.jsonl",
                                  main=group.main)
        self.best_key = self.env.select[cfg.select_on]
        self.best = {self.best_key: -1.0, "step": 0}
        if found is not None:
            torch.set_rng_state(found.state["torch_rng"])
            self.best = {**self.best, **found.state.get("best", {})}
            if group.main:
                logger.info("resuming from %s (step %d)", found.checkpoint, self.start_step)

    def grpo_step(self, step: int) -> dict:
        """Puzzles, a recorded rollout, rewards and (when they are finite) the update: the step's metrics record."""
        cfg, group = self.cfg, self.group
        seed = step_seed(cfg.seed, step)
        shard = slice(group.rank * self.local_prompts, (group.rank + 1) * self.local_prompts)
        prompts = self.env.shard(self.env.prompts(cfg.prompts_per_step, seed), shard)
        gen = torch.Generator(device=self.device).manual_seed(seed + group.rank)
        t0 = time.perf_counter()
        filled, traj = self.env.rollout(prompts, self.runner, gen)
        t_rollout = time.perf_counter() - t0
        rewards = torch.as_tensor(self.env.rewards(filled, prompts),
                                  dtype=torch.float32).view(self.local_prompts, cfg.group_size)
        record = {"step": step, **self._reward_metrics(rewards), "ms_rollout": 1e3 * t_rollout}
        finite = bool(group.sum(torch.isfinite(rewards).all().double().view(1)) == group.world)
        if not finite:  # NaN guard: a broken reward must not reach the parameters
            record["skipped"] = "non-finite rewards"
            logger.warning("step %d: non-finite rewards, update skipped", step)
        else:
            self._update(step, seed, rewards, traj, record)
        record["policy_entropy"] = _mean_surprisal(traj)
        return record

    def _reward_metrics(self, rewards: torch.Tensor) -> dict:
        """Mean and std of the rewards and the fraction of equal-reward groups, over every process."""
        stats = self.group.sum(torch.stack([rewards.sum(), (rewards**2).sum(), torch.tensor(float(rewards.numel())),
                                            zero_std_ratio(rewards) * self.local_prompts]).double())
        return {"reward_mean": float(stats[0] / stats[2]),
                "reward_std": float(max(stats[1] / stats[2] - (stats[0] / stats[2]) ** 2, 0.0) ** 0.5),
                "zero_std_ratio": float(stats[3] / self.cfg.prompts_per_step)}

    def _update(self, step: int, seed: int, rewards: torch.Tensor, traj, record: dict) -> None:
        cfg, group = self.cfg, self.group
        advantages = group_advantages(rewards, cfg.scale_adv_by_std).flatten().to(self.device)
        learn = None
        if cfg.drop_zero_std:
            learn = (rewards.amax(1) > rewards.amin(1)).repeat_interleave(cfg.group_size).to(self.device)
        t1 = time.perf_counter()
        metrics = update_policy(self.runner, self.optimizer, traj, advantages, self.update_options,
                                seed=seed + group.rank, pg_rows=learn, group=group)
        record.update(metrics, ms_update=1e3 * (time.perf_counter() - t1))
        if metrics["skipped_nonfinite"]:
            record["skipped"] = "non-finite loss or gradients"
            logger.warning("step %d: non-finite loss or gradients, update skipped", step)
        if metrics["undone_nonfinite"]:
            record["skipped"] = "non-finite parameters after the optimizer step (undone)"
            logger.warning("step %d: the optimizer step left non-finite parameters, undone", step)

    def validate_and_log(self, step: int, record: dict) -> None:
        if self.val is not None and step % self.cfg.eval_every == 0:
            record.update(self.env.validate(self.policy, self.val))
            if record[self.best_key] > self.best[self.best_key]:
                self.best = {self.best_key: record[self.best_key], "step": step}
                self.policy.save_pretrained(self.out_dir / "best")  # the policy to ship: chosen on validation only
        self.log.write(record)

    def save(self, step: int) -> None:
        if self.group.main:
            save_checkpoint(self.out_dir, self.policy,
                            {"step": step, "optimizer": self.optimizer.state_dict(),
                             "torch_rng": torch.get_rng_state(), "best": self.best, "config": self.cfg.to_dict()},
                            keep=self.cfg.keep_checkpoints)
        self.group.barrier()


def _mean_surprisal(traj) -> float:
    """Mean -log g(a_n | x_n) of the sampled positions: an unbiased estimate of the policy's mean entropy (nats)
    over the visited states, from what the rollout recorded anyway."""
    steps = traj.active.sum().clamp_min(1)
    return float(-(traj.behavior_logp * traj.active).sum() / steps)
