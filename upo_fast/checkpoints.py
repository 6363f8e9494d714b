"""Crash-safe, verifiable training checkpoints shared by the trainers (MDM pretraining, UPO policy training).

Layout under ``out_dir``::

    checkpoint-last -> ckpt-00000400-<id>/   symlink to the newest checkpoint, swapped atomically (os.replace)
    ckpt-00000400-<id>/
        config.json, model.safetensors      model.save_pretrained files
        trainer_state.json                  the trainer state's structure: step, counters, floats, strings, the
                                            run's config, and {"$tensor": key} references into ...
        trainer_state.safetensors           ... every tensor of the trainer state (optimizer moments, RNG states)
        checksums.json                      SHA-256 of every other file of the checkpoint, written last
    ckpt-00000200-<id>/                      older complete checkpoints, the newest ``keep`` are kept
    .tmp-ckpt-*                              a save in progress (or the leftover of an interrupted one)

Nothing in a checkpoint is unpickled: the trainer state is plain JSON plus safetensors (their format and the
checksums are in :mod:`upo_fast.checkpoint_files`), so a crafted file in a run folder cannot run code when a
trainer resumes from it. Checkpoints written before this format hold a pickled ``trainer_state.pt`` instead;
those are read with ``torch.load(weights_only=True)`` only (torch's restricted loader: tensors, containers,
numbers, strings) and are "unreadable" when it refuses them.

A checkpoint directory only gets its ``ckpt-`` name once every file in it is written and fsynced, so a crash
leaves either the previous state or the new one. Files can still go bad later (a full disk, a partial copy
between machines, flipped bytes), so :func:`find_resumable` verifies each candidate against its checksums and
falls back to an older good one.

Both trainers resume the same way: :func:`check_resume` (the checkpoint and its settings, before any model loads),
then :func:`restore` (weights, optimizer state, log); and stop early by :func:`should_stop`.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from upo_fast.checkpoint_files import (
    CHECKSUMS,
    MODEL_WEIGHTS,
    TRAINER_STATE,
    TRAINER_TENSORS,
    quiet_transformers_progress,
    read_state,
    verify_checksums,
    write_checksums,
    write_state,
)
from upo_fast.validation import first_non_finite

logger = logging.getLogger(__name__)
CHECKPOINT_LINK = "checkpoint-last"
LEGACY_TRAINER_STATE = "trainer_state.pt"  # older checkpoints (torch.save); read with weights_only=True only
_TMP_PREFIX = ".tmp-ckpt-"
_CKPT_NAME = re.compile(r"^ckpt-(\d+)-\w+$")


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (renames, new files) to disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    """Flush every file under ``directory`` and the directory entry itself, so a crash cannot leave a renamed
    but half-written checkpoint behind."""
    for path in Path(directory).rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(directory)


def _checkpoint_dirs(out_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoint directories ``ckpt-<step>-<id>`` as (step, path), newest step first."""
    found = []
    for entry in out_dir.iterdir():
        match = _CKPT_NAME.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink():
            found.append((int(match.group(1)), entry))
    return sorted(found, key=lambda item: (item[0], item[1].name), reverse=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def save_checkpoint(out_dir: Path, model, trainer_state: dict, *, keep: int = 2) -> Path:
    """Write ``model.save_pretrained`` files and ``trainer_state`` (a dict with an int ``'step'``; the values
    :func:`encode_state` supports) as a new checkpoint with its checksums, atomically point
    ``out_dir/checkpoint-last`` at it and return that link.

    Afterwards the newest ``keep`` checkpoints survive: the new one plus the ``keep - 1`` newest with a smaller
    step. Checkpoints at a step >= the new one are removed: they belong to a run that was resumed from an
    earlier checkpoint (typically because they were unreadable). Leftovers of interrupted saves are swept.
    """
    step = trainer_state.get("step") if isinstance(trainer_state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"trainer_state must be a dict with an int 'step' >= 0, got step={step!r}")
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise ValueError(f"keep must be an int >= 1, got {keep!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=out_dir))
    try:
        with quiet_transformers_progress():
            model.save_pretrained(tmp)
        write_state(tmp, trainer_state)
        write_checksums(tmp)  # last: it covers every other file
        fsync_tree(tmp)
        final = out_dir / f"ckpt-{step:08d}-{tmp.name.rsplit('-', 1)[-1]}"
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    link = out_dir / CHECKPOINT_LINK
    if link.exists() and not link.is_symlink():
        # A plain directory (e.g. copied in by hand) cannot be replaced atomically: move it aside (swept below).
        os.replace(link, out_dir / f"{_TMP_PREFIX}moved-{final.name}")
    tmp_link = out_dir / f".{CHECKPOINT_LINK}.{final.name}.tmp"
    os.symlink(final.name, tmp_link)  # relative target: out_dir stays relocatable
    os.replace(tmp_link, link)
    fsync_dir(out_dir)

    # Only now are the older checkpoints unreferenced. Rename before deleting, so an interrupted delete leaves
    # a swept ".tmp-ckpt-" name rather than a half-deleted "ckpt-" directory.
    existing = _checkpoint_dirs(out_dir)
    older = [path for s, path in existing if s < step]
    doomed = [path for s, path in existing if s >= step and path != final] + older[keep - 1 :]
    for path in doomed:
        trash = out_dir / f"{_TMP_PREFIX}del-{path.name}"
        os.replace(path, trash)
    for entry in out_dir.iterdir():
        if entry.name.startswith((_TMP_PREFIX, f".{CHECKPOINT_LINK}.")):
            _remove(entry)
    return link


def load_trainer_state(checkpoint: Path) -> dict:
    """The trainer state of one checkpoint directory, after verifying it; raises ValueError when it is unreadable.

    A checkpoint in the current format must have ``checksums.json``, and every file it lists must match; then
    ``trainer_state.json`` + ``trainer_state.safetensors`` are decoded. A legacy checkpoint (only
    ``trainer_state.pt``) has its weights' header checked and its state loaded with ``weights_only=True``.
    """
    from safetensors import safe_open

    checkpoint = Path(checkpoint)
    legacy = not any((checkpoint / name).exists() for name in (TRAINER_STATE, TRAINER_TENSORS, CHECKSUMS))
    if not legacy:
        verify_checksums(checkpoint)
    weights = checkpoint / MODEL_WEIGHTS
    try:
        with safe_open(str(weights), framework="pt") as f:  # parses the header; detects truncation
            list(f.keys())
    except Exception as exc:
        raise ValueError(f"unreadable {MODEL_WEIGHTS} ({type(exc).__name__}: {exc})") from exc
    name = LEGACY_TRAINER_STATE if legacy else TRAINER_STATE
    if legacy and not (checkpoint / LEGACY_TRAINER_STATE).exists():
        raise ValueError(f"no {TRAINER_STATE} (nor a legacy {LEGACY_TRAINER_STATE})")
    try:
        if legacy:  # never weights_only=False: unpickling a crafted file runs its code
            state = torch.load(checkpoint / LEGACY_TRAINER_STATE, map_location="cpu", weights_only=True)
        else:
            state = read_state(checkpoint)
    except pickle.UnpicklingError as exc:  # torch's advice to retry with weights_only=False is not ours to give
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[-1] if lines else "")
        raise ValueError(f"unreadable {name} (torch.load(weights_only=True) refused it: {detail} It is never "
                         "unpickled unsafely: only resume such a checkpoint after converting it yourself)") from exc
    except Exception as exc:
        raise ValueError(f"unreadable {name} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError(f"{name} holds no 'step' (got {type(state).__name__})")
    return state


def find_resumable(out_dir: Path, load_state=True) -> tuple[Path, dict] | None:
    """Return ``(checkpoint_dir, trainer_state)`` of the newest good checkpoint in ``out_dir``.

    The target of ``checkpoint-last`` is tried first, then the other ``ckpt-*`` directories by descending step.
    A checkpoint is good when :func:`load_trainer_state` accepts it: every file matches ``checksums.json``,
    ``model.safetensors`` parses and the trainer state decodes into a dict with a ``'step'`` (nothing is
    unpickled; a legacy ``trainer_state.pt`` is read with ``weights_only=True``). Each skipped candidate
    (including a dangling link) emits a warning naming it and the reason (e.g. the file whose checksum does not
    match). With ``load_state=False`` the state is still loaded to validate it, but only ``{"step": ...}`` is
    returned.

    Returns None when ``out_dir`` holds no checkpoint at all; raises ValueError listing every candidate and
    its problem when checkpoints (or a dangling link) exist but none is readable.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return None
    candidates: list[tuple[Path, str | None]] = []  # (path, problem known up front)
    link = out_dir / CHECKPOINT_LINK
    first = None
    if link.is_symlink():
        target = Path(os.readlink(link))
        first = target if target.is_absolute() else out_dir / target
        if first.is_dir():
            candidates.append((first, None))
        else:
            candidates.append((link, f"dangling checkpoint link (its target {first} is gone)"))
            first = None
    elif link.is_dir():
        first = link
        candidates.append((link, None))
    for _, path in _checkpoint_dirs(out_dir):
        if first is None or path.resolve() != first.resolve():
            candidates.append((path, None))

    failures = []
    for i, (path, problem) in enumerate(candidates):
        if problem is None:
            try:
                state = load_trainer_state(path)
                return path, (state if load_state else {"step": state["step"]})
            except ValueError as exc:
                problem = str(exc)
        failures.append(f"{path}: {problem}")
        if i + 1 < len(candidates):
            warnings.warn(f"{path}: {problem}; falling back to {candidates[i + 1][0]}", stacklevel=2)
    if failures:
        raise ValueError(f"{out_dir}: no readable checkpoint; tried:\n  " + "\n  ".join(failures))
    return None


def load_model_weights(model, checkpoint: Path, device) -> None:
    """Load ``checkpoint/model.safetensors`` into ``model`` in place, on ``device``.

    Raises ValueError when keys are missing or unexpected (tied weights that ``save_pretrained`` dropped, such
    as an lm_head tied to the embeddings, are fine), or when a tensor holds NaN or inf (naming the first one);
    the model is left untouched then.
    """
    from safetensors.torch import load_file

    state = load_file(str(Path(checkpoint) / MODEL_WEIGHTS), device=str(device))
    bad = first_non_finite(state)
    if bad is not None:
        raise ValueError(f"{checkpoint}: {MODEL_WEIGHTS} holds a non-finite value (NaN or inf) in {bad}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = [params[k] for k in state if k in params]
    missing = [k for k in missing if not any(params.get(k) is p for p in loaded)]
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint}: checkpoint does not match the model (missing={missing}, unexpected={unexpected})"
        )


def changed_settings(saved: dict, given: dict, may_change: frozenset[str], *, where: str = "the checkpoint"
                     ) -> dict[str, tuple]:
    """Compare a run's saved settings with the ones given on resume.

    Returns ``{name: (saved, given)}`` for the differences in ``may_change`` (the caller applies and logs them).
    Any other difference raises ValueError listing every one as ``name: saved -> given``: resuming would mix two
    runs (or silently keep the saved value of a setting the new config claims, as the optimizer state does with
    the learning rate). Settings only one side knows (added or removed in another version) are not compared.
    """
    if not isinstance(saved, dict):
        raise ValueError(f"{where}: its saved config is not a mapping (got {type(saved).__name__})")
    changed = {name: (saved[name], given[name]) for name in sorted(set(saved) & set(given))
               if saved[name] != given[name]}
    refused = [f"  {name}: {old!r} -> {new!r}" for name, (old, new) in changed.items() if name not in may_change]
    if refused:
        raise ValueError(
            f"{where} was made with other settings; these cannot change when resuming:\n" + "\n".join(refused)
            + "\nResume with the saved values, or use a new --out folder for a new run (settings that may change "
            f"on resume: {', '.join(sorted(may_change))})"
        )
    return {name: change for name, change in changed.items() if name in may_change}


def truncate_log(log_path: Path, last_step: int) -> None:
    """Keep the JSONL records of ``log_path`` with ``step <= last_step`` (the others will be produced again
    after resuming) and drop a torn last line; atomic. A missing log is left missing."""
    log_path = Path(log_path)
    if not log_path.exists():
        return
    kept = []
    for line in log_path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except (ValueError, AttributeError):
            continue  # a torn last line from a crash, or not a record
    tmp = log_path.with_suffix(log_path.suffix + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, log_path)


@dataclass(frozen=True)
class ResumeState:
    """A checkpoint a run goes on from: its folder, its trainer state, and the settings that changed (only ones the
    trainer allows, ``{name: (saved, given)}``)."""

    checkpoint: Path
    state: dict
    changes: dict

    @property
    def step(self) -> int:
        return int(self.state["step"])


def check_resume(out_dir: Path, config: dict, may_change: frozenset[str]) -> ResumeState | None:
    """The newest readable checkpoint of ``out_dir`` (:func:`find_resumable`; None when there is none), its saved
    config compared with ``config`` by :func:`changed_settings` (a ValueError for a change outside ``may_change``).
    Loads nothing into a model: call it before building one, so a refused resume costs nothing."""
    found = find_resumable(out_dir)  # the newest readable checkpoint; warns about each one it skips
    if found is None:
        return None
    checkpoint, state = found
    changes = {}
    if "config" in state:  # a legacy checkpoint without its config resumes as before
        changes = changed_settings(state["config"], config, may_change,
                                   where=f"the run in {out_dir} (checkpoint {checkpoint.name})")
    return ResumeState(checkpoint, state, changes)


def restore(resume: ResumeState | None, model, optimizer, device, log_file: Path, *, main: bool = True) -> int:
    """Put a run where :func:`check_resume` found it and return the step it goes on from (0 for a fresh start).

    Resume: log each changed setting (``resume: name saved -> given``), load the checkpoint's weights into
    ``model`` on ``device`` and its optimizer state into ``optimizer``, and drop the records of ``log_file`` (JSONL)
    after the step, which will be produced again. Fresh start: remove a stale ``log_file``. Only the ``main``
    process of several logs and touches the log; the rest (the trainer state's other parts) is the caller's.
    """
    if resume is None:
        if main:
            Path(log_file).unlink(missing_ok=True)
        return 0
    if main:
        for name, (old, new) in resume.changes.items():
            logger.warning("resume: %s %r -> %r", name, old, new)
    load_model_weights(model, resume.checkpoint, device)
    optimizer.load_state_dict(resume.state["optimizer"])
    if main:
        truncate_log(log_file, resume.step)
    return resume.step


def should_stop(step: int, started: float, time_limit_s: float | None, stop_at_step: int | None) -> bool:
    """Whether a run stops early after ``step`` (and checkpoints): ``time_limit_s`` seconds have passed since
    ``started`` (a ``time.perf_counter()`` reading of this session: resumed sessions each get the full limit), or
    ``stop_at_step`` is reached. The caller still tells an early stop from the last step."""
    out_of_time = time_limit_s is not None and time.perf_counter() - started >= time_limit_s
    return out_of_time or (stop_at_step is not None and step >= stop_at_step)


def json_default(value):
    """``json.dumps(default=...)`` hook for log records: tensors and numpy values as lists/numbers, else str."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
