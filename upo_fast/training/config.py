"""Configuration of UPO training (``upo-fast train``): one dataclass, checked once, loadable from YAML / JSON and
overridable from the command line.

Its parts that other code takes as a whole are built by one method each and checked there: the policy's
initialization (:meth:`TrainConfig.policy_init`, a ``policy_init.PolicyInit``) and the update's options
(:meth:`TrainConfig.update_options`, an ``update.UpdateOptions``). They are imported when built, so reading the
fields (``plot-runs``, the command line) loads no model code.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from upo_fast.validation import field_check, options_from_dict

REWARDS = ("solved", "cells", "solved+cells")
COMPILE_BACKENDS = ("inductor", "aot_eager")  # aot_eager: traced and differentiated, not code-generated
# the validation metric that picks ``best/`` -> its key in metrics.jsonl (also what ``plot-runs --metric`` draws)
SELECT_ON = {"solved": "val_solved", "cells": "val_cell_accuracy"}


@dataclass
class TrainConfig:
    # what to train
    task: str = "sudoku9"  # a grid task, or "arith" (LLaDA / Dream text: upo_fast.training.text_env)
    reference: str = "max_confidence"  # the reference policy g_ref and its regularizer (CE or KL)
    model: str | None = None  # the frozen MDM (a TinyMDM folder; arith: LLaDA/Dream); None = the task's shipped one
    gen_length: int | None = None  # arith: tokens a rollout generates (None: the task's 64)
    block_length: int | None = None  # arith: the semi-autoregressive block (None: the task's 16)
    init: str = "anchor"  # anchor: score = confidence / anchor_tau + a zero-initialized correction; or a path
    anchor_tau: float = 0.1
    block_init: str = "copy"  # the policy's transformer block: a copy of the MDM's last block, or "fresh"
    policy_dim: int | None = None  # a narrower block: hidden states projected d -> policy_dim (block_init fresh)
    # "block": one transformer block (+ extra_blocks) before the MLP head; "features": no block, the per-position
    # MLP reads the hidden state and the features only (cheaper; see evaluation.flops and UnmaskingPolicyConfig)
    policy_body: str = "block"
    mlp_hidden: int = 128
    extra_blocks: int = 0  # fresh transformer blocks after the first (they compare positions' predictions)
    topk: int = 5  # K of the Top-K reference (its policy chooses among the K most confident masked positions)
    # GRPO
    steps: int = 200
    prompts_per_step: int = 16
    group_size: int = 8
    inner_iters: int = 2  # mu: updates per rollout batch, old log-probs recorded once at rollout
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    beta: float = 0.01  # weight of the reference regularizer; 0 = the ablation without it
    kl_mode: str = "exact"  # exact per-step divergence, or the paper's sequence-level surrogate
    scale_adv_by_std: bool = False
    # the policy gradient averages over the groups whose rewards differ only (DAPO's dynamic sampling); the
    # regularizer still averages over every group
    drop_zero_std: bool = True
    position_temperature: float = 1.0  # the temperature positions are sampled at AND scored at
    token_temperature: float = 0.0
    reward: str = "solved"
    blanks: int | None = None  # blanks per training puzzle (default: the task's)
    # recorded states per policy forward + backward in the update: the update's peak memory grows with it; on the
    # CPU 256 is as fast as 2048 at 1/4 of the memory (benchmarks/results/trainer_cpu_20261130)
    update_chunk: int = 256
    compile_backend: str | None = None  # torch.compile the policy (rollout and update): "inductor" or "aot_eager"
    certain_threshold: float = 0.999  # a step is a forced move when some candidate's confidence reaches this
    certain_keep: float = 0.1  # ... and forced moves are subsampled at this rate (reweighted: unbiased); 1 = all
    # bookkeeping
    out_dir: str = "runs/upo"
    seed: int = 0
    eval_every: int = 20  # validation (never the held-out test set) every N steps; 0 = off
    eval_puzzles: int = 200
    select_on: str = "solved"  # best/ = the validated policy with the highest val solved rate or cell accuracy
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    time_limit_s: float | None = None  # checkpoint and stop cleanly after this long
    stop_at_step: int | None = None  # stop after this step as if interrupted (resume tests)
    device: str = "cpu"
    tensorboard: bool = True  # also log to TensorBoard when it is installed

    def validate(self) -> TrainConfig:
        from upo_fast.tasks import TASKS, is_grid_task  # lazily: reading the fields needs no task
        from upo_fast.validation import check_device

        check = field_check(self)

        check(is_grid_task(self.task) or self.task == "arith", "task",
              f"a grid task ({', '.join(TASKS)}, zebraHxA) or arith (text)")
        text = self.task == "arith"
        check(not text or self.reward == "solved", "reward", "'solved' on arith (exact match of the final number)")
        check(not text or self.select_on == "solved", "select_on", "'solved' on arith (validation exact match)")
        for name in ("gen_length", "block_length"):
            check(getattr(self, name) is None or (isinstance(getattr(self, name), int) and getattr(self, name) >= 1),
                  name, "None (the task's) or an int >= 1")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float):
                check(math.isfinite(value), f.name, "a finite number")
        check(self.compile_backend in (None, *COMPILE_BACKENDS), "compile_backend",
              f"None (eager) or one of {', '.join(COMPILE_BACKENDS)}")
        check(self.reward in REWARDS, "reward", f"one of {', '.join(REWARDS)}")
        check(self.select_on in SELECT_ON, "select_on", f"one of {', '.join(SELECT_ON)}")
        check(self.blanks is None or (isinstance(self.blanks, int) and self.blanks >= 1), "blanks",
              "None (the task's default) or an int >= 1")
        # update_chunk here, not only as UpdateOptions.chunk_states: the error names the option the user wrote
        for name in ("steps", "prompts_per_step", "update_chunk", "eval_puzzles", "checkpoint_every",
                     "keep_checkpoints"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "an int >= 1")
        check(isinstance(self.group_size, int) and self.group_size >= 2, "group_size",
              "an int >= 2 (GRPO's advantage is r - group mean: one sample has no signal)")
        check(isinstance(self.eval_every, int) and self.eval_every >= 0, "eval_every", "an int >= 0")
        check(self.lr > 0, "lr", "> 0")
        for name in ("weight_decay", "token_temperature"):
            check(getattr(self, name) >= 0, name, ">= 0")
        check(self.stop_at_step is None or self.stop_at_step >= 1, "stop_at_step", "None or >= 1")
        check(self.time_limit_s is None or self.time_limit_s > 0, "time_limit_s", "None or > 0")
        check_device(self.device, "device")
        self.update_options()  # reference, beta, clip_eps, kl_mode, ...: checked where they are used
        self.policy_init()  # init, block_init, policy_body, ...
        return self

    def update_options(self):
        """The update's settings as one ``upo_fast.training.update.UpdateOptions`` (checked when built)."""
        from upo_fast.training.update import UpdateOptions

        return UpdateOptions(reference=self.reference, beta=self.beta, position_temperature=self.position_temperature,
                             clip_eps=self.clip_eps, clip_eps_high=self.clip_eps_high, inner_iters=self.inner_iters,
                             grad_clip=self.grad_clip, kl_mode=self.kl_mode, topk=self.topk,
                             chunk_states=self.update_chunk, certain_threshold=self.certain_threshold,
                             certain_keep=self.certain_keep)

    def policy_init(self):
        """The initial policy's settings as one ``upo_fast.training.policy_init.PolicyInit`` (checked when built);
        a Top-K reference restricts the policy to its K most confident candidates."""
        from upo_fast.training.policy_init import PolicyInit
        from upo_fast.training.references import get_reference

        return PolicyInit(init=self.init, anchor_tau=self.anchor_tau, block_init=self.block_init,
                          policy_body=self.policy_body, mlp_hidden=self.mlp_hidden, policy_dim=self.policy_dim,
                          extra_blocks=self.extra_blocks,
                          candidate_topk=self.topk if get_reference(self.reference).top_k else None)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from option -> value; values are converted to the field's type (a YAML ``lr: 1e-4`` is a
        string to PyYAML, ``tensorboard: "no"`` a string) or refused with a ValueError naming the option."""
        return options_from_dict(cls, values, "training option(s)")

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> TrainConfig:
        """A config from a YAML (.yaml/.yml) or JSON file, or a preset shipped with the package by name (see
        :func:`presets`, e.g. ``paper_sudoku``); ``overrides`` (not None) replace its values."""
        path = config_path(path)
        try:
            text = path.read_text()
            if path.suffix in (".yaml", ".yml"):
                import yaml

                try:
                    values = yaml.safe_load(text) or {}
                except yaml.YAMLError as exc:
                    raise ValueError(" ".join(str(exc).split())) from exc
            else:
                values = json.loads(text)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"config file {path}: unreadable ({exc})") from exc
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of option -> value")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)


def presets() -> dict[str, Path]:
    """The training presets shipped in ``upo_fast/training/presets``: name -> YAML file."""
    from importlib import resources

    folder = Path(str(resources.files("upo_fast.training").joinpath("presets")))
    return {f.stem: f for f in sorted(folder.glob("*.yaml"))}


def config_path(name_or_path: str | Path) -> Path:
    """An existing config file, else the preset of that name; a ValueError names both kinds of valid value."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = presets()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise ValueError(f"config file {name_or_path} does not exist and is not a preset name; presets: "
                     f"{', '.join(shipped)}")
