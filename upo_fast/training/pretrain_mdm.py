"""Masked-diffusion (MDM) pretraining for TinyMDM: the loss, and a resumable training loop.

Checkpoint layout under ``out_dir``::

    checkpoint-last -> ckpt-00000200-<id>/   symlink, swapped atomically with os.replace
        config.json, model.safetensors      model.save_pretrained (loadable with load_tiny_mdm)
        trainer_state.json                  step, seconds, scheduler, optimizer hyper-parameters, the config
        trainer_state.safetensors           optimizer moments, RNG states (data, noise, torch, cuda)
        checksums.json                      SHA-256 of the other files, verified on resume
    train_log.jsonl                         one JSON object per log/checkpoint step

A directory cannot be os.replace'd onto a non-empty directory, so ``checkpoint-last`` is a symlink to the
newest complete checkpoint directory: replacing a symlink is atomic. Saving, pruning and finding the newest
readable checkpoint are done by :mod:`upo_fast.checkpoints`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from upo_fast.checkpoints import check_resume, json_default, restore, save_checkpoint, should_stop
from upo_fast.training.finite_steps import step_if_finite

logger = logging.getLogger(__name__)
LOSS_WEIGHTINGS = ("inverse_t", "none")
LOG_FILE = "train_log.jsonl"
KEEP_CHECKPOINTS = 1  # complete checkpoints kept in out_dir; > 1 gives find_resumable older ones to fall back to
# Settings a resume may change (applied from the resumed step on). Not ``steps``: it shapes the lr schedule.
RESUME_MAY_CHANGE = frozenset({"out_dir", "checkpoint_every", "log_every", "time_limit_s", "stop_at_step"})


@dataclass
class PretrainConfig:
    """Hyper-parameters of :func:`pretrain_mdm`; validated on construction and again when training starts."""

    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_mask_ratio: float = 0.05  # t ~ U(min_mask_ratio, 1); > 0 keeps the 1/t weight bounded
    loss_weighting: str = "inverse_t"  # "inverse_t" (ELBO weight 1/t) or "none" (plain CE on masked tokens)
    grad_clip: float | None = 1.0  # None disables clipping
    seed: int = 0
    out_dir: str | None = None
    checkpoint_every: int = 200
    log_every: int = 20
    time_limit_s: float | None = None  # stop early (and checkpoint) after this wall time
    stop_at_step: int | None = None  # stop early (and checkpoint) after this step; the lr schedule still spans `steps`

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def positive_int(name, minimum=1):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"PretrainConfig.{name} must be an int >= {minimum}, got {value!r}")

        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            positive_int(name)
        positive_int("warmup_steps", minimum=0)
        positive_int("seed", minimum=0)
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < math.inf):
            raise ValueError(f"PretrainConfig.lr must be a finite number > 0, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < math.inf):
            raise ValueError(f"PretrainConfig.weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.min_mask_ratio, (int, float)) and 0 < self.min_mask_ratio <= 1):
            raise ValueError(f"PretrainConfig.min_mask_ratio must be in (0, 1], got {self.min_mask_ratio!r}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(
                f"PretrainConfig.loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}"
            )
        if self.grad_clip is not None and not (
            isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0
        ):
            raise ValueError(f"PretrainConfig.grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if self.time_limit_s is not None and not (
            isinstance(self.time_limit_s, (int, float)) and self.time_limit_s > 0
        ):
            raise ValueError(f"PretrainConfig.time_limit_s must be > 0 or None, got {self.time_limit_s!r}")
        if self.stop_at_step is not None and not (
            isinstance(self.stop_at_step, int) and 1 <= self.stop_at_step <= self.steps
        ):
            raise ValueError(f"PretrainConfig.stop_at_step must be in [1, steps] or None, got {self.stop_at_step!r}")
        if self.out_dir is not None and not isinstance(self.out_dir, (str, os.PathLike)):
            raise ValueError(f"PretrainConfig.out_dir must be a path or None, got {self.out_dir!r}")


def mdm_loss(model, x0, mask_id: int, *, t, weighting: str = "inverse_t", mask=None, generator=None,
             maskable=None, shift_logits: bool = False, always=None):
    """x0 [B, L] clean tokens, t [B] masking ratios in (0, 1] -> scalar loss.

    Each token is masked independently with probability t (rows that end up with no masked token get one at a
    random position), the model sees x0 with masked positions set to ``mask_id``, and the cross-entropy counts
    at masked positions only. Normalization:

    * ``"inverse_t"``: sum over masked tokens of CE / t_row, divided by B * L. This is the standard MDM
      estimator of the negative ELBO per token (nats/token); dividing by B * L rather than by the number of
      masked tokens is what makes it unbiased: the 1/t weight already compensates for the masked share.
    * ``"none"``: plain mean CE over the masked tokens (easier to read as a per-token prediction loss).

    ``mask`` (bool [B, L], True = masked) replaces the random draw; ``generator`` drives the draw otherwise
    (it may live on the CPU while the model is on an accelerator). ``maskable`` (bool [B, L]) limits the draw to
    some positions, e.g. a Zebra grid after its clues (the clues are always given, as at inference); "per token"
    then means per maskable token. ``shift_logits``: the model's output i scores token i + 1 (Dream), so position i
    is scored by output i - 1 (position 0 by its own), as Dream's samplers read it. ``always`` (bool [B, L]): positions
    masked whatever the draw, e.g. the blocks after the active one of a semi-autoregressive schedule.
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {LOSS_WEIGHTINGS}, got {weighting!r}")
    if not isinstance(x0, torch.Tensor) or x0.dim() != 2 or x0.dtype.is_floating_point:
        raise ValueError(f"x0 must be an integer [B, L] tensor, got {getattr(x0, 'shape', type(x0))}")
    bsz, seq_len = x0.shape
    t = torch.as_tensor(t, dtype=torch.float32)
    if t.shape != (bsz,):
        raise ValueError(f"t must have shape [B] = ({bsz},), got {tuple(t.shape)}")
    if bool(((t <= 0) | (t > 1)).any()):
        raise ValueError("t must lie in (0, 1]")
    t = t.to(x0.device)
    if maskable is not None:
        if maskable.shape != x0.shape or maskable.dtype != torch.bool or not bool(maskable.any(1).all()):
            raise ValueError(f"maskable must be a bool tensor of shape {tuple(x0.shape)} with a True in every row")
        maskable = maskable.to(x0.device)
    if mask is None:
        rand_device = generator.device if generator is not None else x0.device
        mask = torch.rand(bsz, seq_len, generator=generator, device=rand_device).to(x0.device) < t[:, None]
        # Guarantee a masked token per row so every row contributes a training signal.
        forced = torch.randint(seq_len, (bsz, 1), generator=generator, device=rand_device).to(x0.device)
        if maskable is not None:  # the same draw, moved to a maskable position: the highest-noise one
            mask &= maskable
            noise = torch.rand(bsz, seq_len, generator=generator, device=rand_device).to(x0.device)
            forced = (noise + maskable.float()).argmax(1, keepdim=True)
        empty_row = ~mask.any(dim=1, keepdim=True)
        mask = mask.scatter(1, forced, mask.gather(1, forced) | empty_row)
        if always is not None:
            mask |= always.to(x0.device)
    else:
        if mask.shape != x0.shape:
            raise ValueError(f"mask must have the shape of x0 {tuple(x0.shape)}, got {tuple(mask.shape)}")
        mask = mask.to(device=x0.device, dtype=torch.bool)

    noisy = torch.where(mask, torch.full_like(x0, mask_id), x0)
    out = model(noisy)
    logits = out.logits if hasattr(out, "logits") else out[0]
    if shift_logits:
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    token_ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x0.reshape(-1), reduction="none")
    masked_ce = token_ce.view(bsz, seq_len) * mask
    if weighting == "inverse_t":
        return (masked_ce / t[:, None]).sum() / (bsz * seq_len if maskable is None else maskable.sum())
    return masked_ce.sum() / mask.sum().clamp_min(1)


# --------------------------------------------------------------------------------------------------
# Checkpointing (the shared helpers live in upo_fast.checkpoints)
# --------------------------------------------------------------------------------------------------


def _rng_state(data_gen, noise_gen) -> dict:
    state = {"data": data_gen.get_state(), "noise": noise_gen.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, data_gen, noise_gen) -> None:
    data_gen.set_state(state["data"])
    noise_gen.set_state(state["noise"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------------------


def _make_optimizer(model, cfg: PretrainConfig) -> torch.optim.AdamW:
    # Decay matrices only: decaying norm gains pulls them towards 0, which only hurts.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.95))


def _make_scheduler(optimizer, cfg: PretrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    warmup, total = cfg.warmup_steps, cfg.steps

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup  # the first step already moves: a zero-lr step would waste a batch
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


def _split_batch(batch):
    """``sample_batch`` returns [B, L] tokens, or (tokens, maskable [B, L] bool) when only part may be masked, or
    (tokens, maskable, always [B, L] bool) when some positions are masked in any case."""
    if not isinstance(batch, tuple):
        return batch, None, None
    return batch if len(batch) == 3 else (*batch, None)


class _PretrainRun:
    """One pretraining call's state: the optimizer and lr schedule, the CPU random streams for data and masking noise
    (runs replay identically on any device), the step, and the log window (the loss is summed on the device: one
    host read per log step)."""

    def __init__(self, model, cfg: PretrainConfig, mask_id: int, shift_logits: bool = False):
        self.model, self.cfg, self.mask_id, self.shift_logits = model, cfg, mask_id, shift_logits
        self.vocab_size = model.config.vocab_size
        self.device = next(model.parameters()).device
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir is not None else None
        self.optimizer = _make_optimizer(model, cfg)
        self.scheduler = _make_scheduler(self.optimizer, cfg)
        self.data_gen = torch.Generator().manual_seed(cfg.seed)
        self.noise_gen = torch.Generator().manual_seed(cfg.seed + 2**32)
        self.step, self.seconds_before = 0, 0.0
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.window_loss, self.window_steps = torch.zeros((), device=self.device), 0
        self.window_skipped, self.skipped_total = 0, 0  # optimizer steps undone for non-finite parameters
        self.final_loss = None

    def resume(self) -> None:
        """Go on from ``out_dir``'s newest readable checkpoint, if any (see :func:`upo_fast.checkpoints.restore`)."""
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        found = check_resume(self.out_dir, asdict(self.cfg), RESUME_MAY_CHANGE)
        # A fresh start clears a stale log; a resume drops the records of steps that will be replayed.
        self.step = restore(found, self.model, self.optimizer, self.device, self.out_dir / LOG_FILE)
        if found is not None:
            self.scheduler.load_state_dict(found.state["scheduler"])
            _set_rng_state(found.state["rng"], self.data_gen, self.noise_gen)
            self.seconds_before = float(found.state.get("seconds", 0.0))

    def train_step(self, sample_batch, check_ids: bool) -> float:
        """One optimizer step on a fresh batch; returns the learning rate it trained with."""
        cfg = self.cfg
        x0, maskable, always = _split_batch(sample_batch(cfg.batch_size, self.data_gen))
        if not isinstance(x0, torch.Tensor) or x0.dim() != 2 or x0.shape[0] != cfg.batch_size:
            raise ValueError(
                f"sample_batch must return a [{cfg.batch_size}, L] tensor, got {getattr(x0, 'shape', x0)}"
            )
        if check_ids and (int(x0.min()) < 0 or int(x0.max()) >= self.vocab_size):
            raise ValueError(f"sample_batch returned token ids outside [0, {self.vocab_size})")
        x0 = x0.to(device=self.device, dtype=torch.long, non_blocking=True)
        t_min = cfg.min_mask_ratio
        t = t_min + (1.0 - t_min) * torch.rand(cfg.batch_size, generator=self.noise_gen)  # t ~ U(t_min, 1)
        lr = self.scheduler.get_last_lr()[0]  # the rate this step trains with
        loss = mdm_loss(self.model, x0, self.mask_id, t=t, weighting=cfg.loss_weighting, generator=self.noise_gen,
                        maskable=maskable, shift_logits=self.shift_logits, always=always)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        kept = step_if_finite(self.optimizer)  # a step leaving NaN / inf in a parameter is undone (one host read)
        self.scheduler.step()  # the schedule follows the step count, kept or not
        self.step += 1
        if kept:
            self.window_loss += loss.detach()
            self.window_steps += 1
        else:
            self.window_skipped += 1
            self.skipped_total += 1
            logger.warning("step %d: the optimizer step left non-finite parameters; undone", self.step)
        return lr

    def record(self, lr: float, t_start: float, bar) -> dict:
        """The log record of this step; closes the log window (mean loss, steps undone since the last record)."""
        seconds = round(self.seconds_before + time.perf_counter() - t_start, 3)
        record = {"step": self.step, "lr": lr, "seconds": seconds}
        if self.window_steps:
            self.final_loss = (self.window_loss / self.window_steps).item()
            record["loss"] = self.final_loss
            self.window_loss.zero_()
            self.window_steps = 0
            bar.set_postfix(loss=f"{self.final_loss:.4f}", lr=f"{lr:.2e}")
        if self.window_skipped:
            record["skipped_nonfinite"] = self.window_skipped  # steps undone since the previous record
            self.window_skipped = 0
        return record

    def save(self, t_start: float) -> Path:
        trainer_state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(self.data_gen, self.noise_gen),
            "seconds": self.seconds_before + time.perf_counter() - t_start,
            "config": asdict(self.cfg),
        }
        return save_checkpoint(self.out_dir, self.model, trainer_state, keep=KEEP_CHECKPOINTS)


def _evaluate(model, eval_fn) -> dict:
    """``eval_fn(model)`` in eval mode without gradients; the model goes back to training mode."""
    model.eval()
    with torch.no_grad():
        result = dict(eval_fn(model))
    model.train()
    return result


def pretrain_mdm(
    model, sample_batch, cfg: PretrainConfig, *, mask_id: int, eval_fn=None, progress=True, shift_logits=False
) -> dict:
    """Pretrain ``model`` with the MDM objective on batches from ``sample_batch(B, generator) -> [B, L]`` (or ->
    ([B, L], maskable [B, L] bool): only maskable positions are ever masked).

    AdamW with linear warmup and cosine decay to 0, gradient clipping, a tqdm bar showing the loss, and
    (when ``cfg.out_dir`` is set) a JSONL log plus atomic checkpoints every ``checkpoint_every`` steps, at the
    end and when ``time_limit_s`` runs out. If ``out_dir`` holds a checkpoint, training resumes from the newest
    readable one (``checkpoint-last`` first; see :func:`upo_fast.checkpoints.check_resume`) and ends with the
    same parameters as an uninterrupted run. A resume may change only the settings in ``RESUME_MAY_CHANGE``
    (logged); any other difference from the checkpoint's config is a ValueError listing them. An optimizer step
    that leaves a non-finite parameter is undone (parameters and optimizer state restored), logged as a warning and
    counted in the log record (``skipped_nonfinite``) and the summary. ``eval_fn(model) -> dict`` runs (eval
    mode, no grad) at every checkpoint step and its result goes to the log. ``shift_logits``: see :func:`mdm_loss`
    (Dream). Returns a summary dict; leaves the model in eval mode.
    """
    if not isinstance(cfg, PretrainConfig):
        raise ValueError(f"cfg must be a PretrainConfig, got {type(cfg).__name__}")
    cfg.validate()
    vocab_size = model.config.vocab_size
    if not (isinstance(mask_id, int) and 0 <= mask_id < vocab_size):
        raise ValueError(f"mask_id must be an int in [0, vocab_size={vocab_size}), got {mask_id!r}")
    run = _PretrainRun(model, cfg, mask_id, shift_logits)
    run.resume()
    start_step, out_dir = run.step, run.out_dir
    last_eval, checkpoint, stopped_early = None, None, False
    t_start = time.perf_counter()
    model.train()
    bar = tqdm(total=cfg.steps, initial=run.step, disable=not progress, desc="mdm pretrain", dynamic_ncols=True)
    try:
        while run.step < cfg.steps:
            lr = run.train_step(sample_batch, check_ids=run.step == start_step)
            bar.update(1)
            out_of_time = should_stop(run.step, t_start, cfg.time_limit_s, cfg.stop_at_step)
            last = run.step == cfg.steps or out_of_time
            do_ckpt = run.step % cfg.checkpoint_every == 0 or last
            record = run.record(lr, t_start, bar) if do_ckpt or run.step % cfg.log_every == 0 or last else None
            if do_ckpt and eval_fn is not None:
                last_eval = record["eval"] = _evaluate(model, eval_fn)
            if out_dir is not None and record is not None:
                with open(out_dir / LOG_FILE, "a") as f:
                    f.write(json.dumps(record, default=json_default) + "\n")
            if do_ckpt and out_dir is not None:
                checkpoint = run.save(t_start)
            if out_of_time and run.step < cfg.steps:
                stopped_early = True
                break
    finally:
        bar.close()
        model.eval()

    wall = time.perf_counter() - t_start
    return {
        "steps": run.step,
        "resumed_from_step": start_step,
        "final_loss": run.final_loss,  # mean over the last log window
        "wall_seconds": wall,
        "total_seconds": run.seconds_before + wall,
        "stopped_early": stopped_early,
        "skipped_nonfinite": run.skipped_total,  # optimizer steps undone (non-finite parameters) in this call
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "last_eval": last_eval,
    }
