"""Strict loading of the package's own saved models (TinyMDM, UnmaskingPolicy): a ``save_pretrained`` folder with
``config.json`` and ``model.safetensors``, checked before and after ``from_pretrained``; never a pickle."""

from __future__ import annotations

import json
import os

from upo_fast.checkpoint_files import quiet_transformers_progress
from upo_fast.validation import first_non_finite, one_line


def load_saved(model_cls, path, device="cpu"):
    """Load a ``model_cls`` (a ``PreTrainedModel`` of this package: TinyMDM, UnmaskingPolicy) saved with
    ``save_pretrained`` in a local folder, in eval mode on ``device``.

    Raises ValueError naming the path for a missing directory, a missing/corrupt config or weights file, a
    config of another model type, weights that do not match the config (``from_pretrained`` alone would
    silently re-initialize missing ones) and non-finite weights. Only safetensors are read: no pickle.
    """
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    expected_type = model_cls.config_class.model_type
    if not os.path.isdir(path):
        raise ValueError(f"{path}: not a directory (expected a {expected_type} save_pretrained directory)")
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise ValueError(f"{path}: missing config.json")
    try:
        with open(config_file) as f:
            model_type = json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: unreadable config.json ({one_line(exc)})") from exc
    if model_type != expected_type:
        raise ValueError(f"{path}: config.json has model_type={model_type!r}, expected {expected_type!r}")

    weight_file = os.path.join(path, "model.safetensors")
    if not os.path.isfile(weight_file):
        raise ValueError(f"{path}: missing model.safetensors")
    # Opening parses the header and checks it against the file size, which catches truncated/garbage files
    # with a clear message instead of an error from deep inside from_pretrained.
    try:
        with safe_open(weight_file, framework="pt") as f:
            f.keys()
    except (OSError, SafetensorError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{weight_file}: corrupt or truncated safetensors file ({one_line(exc)})") from exc

    try:
        with quiet_transformers_progress():
            model, info = model_cls.from_pretrained(path, output_loading_info=True, local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as exc:
        raise ValueError(f"{path}: could not load {expected_type} ({type(exc).__name__}: {one_line(exc)})") from exc
    problems = {k: info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)}
    if problems:
        raise ValueError(f"{path}: weights do not match the config: {problems}")
    bad = first_non_finite(model.state_dict())
    if bad is not None:
        raise ValueError(f"{path}: model.safetensors holds non-finite values (NaN or inf) in {bad}")
    return model.to(device).eval()
