"""Crash-safe training checkpoints shared by the trainers (MDM pretraining, UPO policy training).

Layout under ``out_dir``::

    checkpoint-last -> ckpt-00000400-<id>/   symlink to the newest checkpoint, swapped atomically (os.replace)
    ckpt-00000400-<id>/                      model.save_pretrained files + trainer_state.pt (torch.save)
    ckpt-00000200-<id>/                      older complete checkpoints, the newest ``keep`` are kept
    .tmp-ckpt-*                              a save in progress (or the leftover of an interrupted one)

A checkpoint directory only gets its ``ckpt-`` name once every file in it is written and fsynced, so a crash
leaves either the previous state or the new one. Files can still go bad later (a full disk, a partial copy
between machines), so :func:`find_resumable` checks each candidate and falls back to an older good one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

CHECKPOINT_LINK = "checkpoint-last"
TRAINER_STATE = "trainer_state.pt"
MODEL_WEIGHTS = "model.safetensors"
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
    """Write ``model.save_pretrained`` files and ``trainer_state`` (a dict with an int ``'step'``) as a new
    checkpoint, atomically point ``out_dir/checkpoint-last`` at it and return that link.

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
        from upo_fast.models.tiny_mdm import quiet_transformers_progress  # lazy: upo_fast.models imports us

        with quiet_transformers_progress():
            model.save_pretrained(tmp)
        torch.save(trainer_state, tmp / TRAINER_STATE)
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


def _check(checkpoint: Path) -> dict:
    """Load ``trainer_state.pt`` of a checkpoint after checking that its weights file is complete."""
    from safetensors import safe_open

    weights = checkpoint / MODEL_WEIGHTS
    try:
        with safe_open(str(weights), framework="pt") as f:  # parses the header; detects truncation
            list(f.keys())
    except Exception as exc:
        raise ValueError(f"unreadable {MODEL_WEIGHTS} ({type(exc).__name__}: {exc})") from exc
    try:
        state = torch.load(checkpoint / TRAINER_STATE, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"unreadable {TRAINER_STATE} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError(f"{TRAINER_STATE} holds no 'step' (got {type(state).__name__})")
    return state


def find_resumable(out_dir: Path, load_state=True) -> tuple[Path, dict] | None:
    """Return ``(checkpoint_dir, trainer_state)`` of the newest good checkpoint in ``out_dir``.

    The target of ``checkpoint-last`` is tried first, then the other ``ckpt-*`` directories by descending step.
    A checkpoint is good when ``model.safetensors`` parses and ``trainer_state.pt`` loads (``torch.load`` with
    ``weights_only=False``: only resume from directories you trust) into a dict with a ``'step'``. Each skipped
    candidate (including a dangling link) emits a warning naming it and the reason. With ``load_state=False``
    the state is still loaded to validate it, but only ``{"step": ...}`` is returned.

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
                state = _check(path)
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
    as an lm_head tied to the embeddings, are fine).
    """
    from safetensors.torch import load_file

    state = load_file(str(Path(checkpoint) / MODEL_WEIGHTS), device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = [params[k] for k in state if k in params]
    missing = [k for k in missing if not any(params.get(k) is p for p in loaded)]
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint}: checkpoint does not match the model (missing={missing}, unexpected={unexpected})"
        )


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


def json_default(value):
    """``json.dumps(default=...)`` hook for log records: tensors and numpy values as lists/numbers, else str."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
