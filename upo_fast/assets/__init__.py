"""Where the shipped small artifacts live, and how a task's model folder is found.

The folders beside this file hold trained TinyMDM checkpoints, one per task (``sudoku4``, ``sudoku9``, ``zebra``)
plus ``sudoku4_weak``, and the small LLaDA / Dream trained on ``arith`` (``arith_llada``, ``arith_dream``, in the
hub layout with their tokenizer); a folder's ``policy/`` subfolder is the unmasking policy that goes with it. A
model folder given by the user is a local path; a bare name that is no path here names a shipped folder.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def _shipped(*parts: str) -> Path:
    return Path(str(resources.files(__name__).joinpath(*parts)))


def shipped_model_path(task_name: str) -> Path:
    """Folder of the TinyMDM checkpoint shipped for a task (``upo_fast/assets/<task>``)."""
    path = _shipped(task_name)
    if not (path / "config.json").exists():
        raise ValueError(f"no shipped model for task {task_name!r} at {path}; train one with "
                         f"`upo-fast pretrain-mdm --task {task_name} --out DIR` and pass --model DIR")
    return path


def shipped_policy_path(task_name: str) -> Path:
    """Folder of the UPO policy shipped for a task (``upo_fast/assets/<task>/policy``)."""
    path = _shipped(task_name, "policy")
    if not (path / "config.json").exists():
        raise ValueError(f"no shipped policy for task {task_name!r} at {path}; train one with "
                         f"`upo-fast train --task {task_name} --out DIR` and pass --policy DIR/best")
    return path


def model_folder(path: str | Path | None, task_name: str) -> Path:
    """The TinyMDM folder ``path`` names: the task's shipped model when None; a shipped model by folder name (e.g.
    ``sudoku4_weak``) when no such path exists here; else ``path`` itself."""
    if not path:
        return shipped_model_path(task_name)
    if not Path(path).exists() and Path(path).name == str(path):
        shipped = _shipped(str(path))
        if (shipped / "config.json").is_file():
            return shipped
    return Path(path)


def policy_folder(path: str | Path | None, task_name: str | None, model_dir: str | Path | None = None) -> Path:
    """The policy folder to load: ``path``, else the ``policy/`` folder of the model folder ``model_dir`` (the same
    rule for every model folder), else the one shipped with ``task_name``'s default model."""
    if not path and model_dir:
        model_dir = model_folder(model_dir, task_name or "")
        path = model_dir / "policy"
        if not (path / "config.json").is_file():
            raise ValueError(f"--policy is not given and the model folder {model_dir} has no policy/ subfolder "
                             f"(with config.json); pass --policy DIR")
    if not path and not task_name:
        raise ValueError("no policy folder given: pass --policy DIR (a saved UnmaskingPolicy)")
    path = Path(path) if path else shipped_policy_path(task_name)
    if not (path / "config.json").is_file():
        raise ValueError(f"--policy {path}: not a saved policy folder (no config.json)")
    return path


def load_task_model(path: str | Path | None, task, device: str = "cpu"):
    """The TinyMDM of ``model_folder(path, task.name)``, checked to fit ``task`` (vocabulary and mask id)."""
    from upo_fast.models.tiny_mdm import load_tiny_mdm

    model = load_tiny_mdm(model_folder(path, task.name), device=device)
    if model.config.vocab_size != task.vocab_size or model.config.mask_token_id != task.mask_id:
        raise ValueError(f"the model at {path} does not fit {task.name}: vocab {model.config.vocab_size} / mask "
                         f"{model.config.mask_token_id}, expected {task.vocab_size} / {task.mask_id}")
    return model
