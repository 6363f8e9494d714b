"""The files of a checkpoint besides the model's own: the trainer state as JSON + safetensors (nothing is ever
unpickled) and the SHA-256 list that lets a resume tell a good checkpoint from a damaged one; and the quiet
transformers context that model files are written and read in. The checkpoint life cycle (atomic save, fallback
on resume) is in :mod:`upo_fast.checkpoints`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import numbers
from pathlib import Path

import torch

TRAINER_STATE = "trainer_state.json"  # the structure; its tensors live in TRAINER_TENSORS
TRAINER_TENSORS = "trainer_state.safetensors"
CHECKSUMS = "checksums.json"
MODEL_WEIGHTS = "model.safetensors"
_STATE_FORMAT = "upo_fast.trainer_state"
_STATE_VERSION = 1


@contextlib.contextmanager
def quiet_transformers_progress():
    """Silence transformers' per-call "Loading weights"/"Writing model shards" bars, then restore the
    setting (frequent checkpointing would otherwise print a bar per save)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------------------------------
# The trainer state as JSON + tensors
# --------------------------------------------------------------------------------------------------


def encode_state(state) -> tuple[object, dict[str, torch.Tensor]]:
    """Split a nested trainer state into a JSON-able tree and a flat ``{key: tensor}`` dict (for safetensors).

    Supported values: None, bool, int, float, str, tensors, and lists, tuples and dicts of them (numpy-like
    numbers are stored as int / float). In the tree, a dict whose keys are all strings not starting with ``$`` is
    a JSON object; everything JSON cannot say directly is a one-key object with a ``$`` tag:

    * ``{"$tensor": "optimizer/state/0/exp_avg"}``: a tensor, by its key in the tensor file (the key is its path)
    * ``{"$tuple": [...]}``: a tuple (e.g. AdamW's ``betas``)
    * ``{"$dict": [[key, value], ...]}``: a dict with other keys (e.g. the optimizer's ``state`` {int: ...})
    * ``{"$float": "nan" | "inf" | "-inf"}``: a non-finite float

    Tensors are copied to the CPU, contiguous and unshared (safetensors refuses views of one storage).
    :func:`decode_state` is the inverse.
    """
    tensors: dict[str, torch.Tensor] = {}

    def tensor_key(path: str) -> str:
        key, n = path or "tensor", 1
        while key in tensors:
            key, n = f"{path or 'tensor'}~{n}", n + 1
        return key

    def enc(value, path: str):
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, torch.Tensor):
            key = tensor_key(path)
            tensors[key] = value.detach().cpu().clone(memory_format=torch.contiguous_format)
            return {"$tensor": key}
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real):
            value = float(value)
            return value if math.isfinite(value) else {"$float": repr(value)}
        if isinstance(value, tuple):
            return {"$tuple": [enc(v, f"{path}/{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [enc(v, f"{path}/{i}") for i, v in enumerate(value)]
        if isinstance(value, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in value):
                return {k: enc(v, f"{path}/{k}") for k, v in value.items()}
            return {"$dict": [[enc(k, f"{path}/key"), enc(v, f"{path}/{k}")] for k, v in value.items()]}
        raise TypeError(f"trainer state: cannot store a {type(value).__name__} (at {path or 'the top'})")

    return enc(state, ""), tensors


def decode_state(tree, tensors: dict[str, torch.Tensor]):
    """The inverse of :func:`encode_state`; raises ValueError on anything it did not write."""

    def dec(node):
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [dec(v) for v in node]
        if not isinstance(node, dict):
            raise ValueError(f"unexpected {type(node).__name__} in the trainer state")
        tags = [k for k in node if k.startswith("$")]
        if not tags:
            return {k: dec(v) for k, v in node.items()}
        if len(node) != 1:
            raise ValueError(f"malformed tagged value {sorted(node)} in the trainer state")
        tag, arg = tags[0], node[tags[0]]
        if tag == "$tensor" and isinstance(arg, str):
            if arg not in tensors:
                raise ValueError(f"the trainer state refers to a tensor {arg!r} that {TRAINER_TENSORS} lacks")
            return tensors[arg]
        if tag == "$tuple" and isinstance(arg, list):
            return tuple(dec(v) for v in arg)
        if tag == "$dict" and isinstance(arg, list) and all(isinstance(kv, list) and len(kv) == 2 for kv in arg):
            out = {}
            for k, v in arg:
                key = dec(k)
                try:
                    out[key] = dec(v)
                except TypeError as exc:  # an unhashable key
                    raise ValueError(f"bad dict key {k!r} in the trainer state") from exc
            return out
        if tag == "$float" and arg in ("nan", "inf", "-inf"):
            return float(arg)
        raise ValueError(f"unknown or malformed tag {tag!r} in the trainer state")

    return dec(tree)


def write_state(directory: Path, state: dict) -> None:
    from safetensors.torch import save_file

    tree, tensors = encode_state(state)
    save_file(tensors, str(directory / TRAINER_TENSORS))
    doc = {"format": _STATE_FORMAT, "version": _STATE_VERSION, "tensors": TRAINER_TENSORS, "state": tree}
    (directory / TRAINER_STATE).write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")


def read_state(directory: Path) -> dict:
    from safetensors.torch import load_file

    doc = json.loads((directory / TRAINER_STATE).read_text())
    if not (isinstance(doc, dict) and doc.get("format") == _STATE_FORMAT and doc.get("version") == _STATE_VERSION
            and "state" in doc):
        raise ValueError(f"not a {_STATE_FORMAT} version {_STATE_VERSION} file")
    return decode_state(doc["state"], load_file(str(directory / TRAINER_TENSORS), device="cpu"))


# --------------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(directory: Path) -> None:
    files = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    sums = {name: sha256(directory / name) for name in files if name != CHECKSUMS}
    (directory / CHECKSUMS).write_text(json.dumps({"algorithm": "sha256", "files": sums}, indent=1) + "\n")


def verify_checksums(directory: Path) -> None:
    """Raise ValueError unless every file ``checksums.json`` lists (which must include the files a resume reads)
    has its recorded SHA-256."""
    if not (directory / CHECKSUMS).is_file():
        raise ValueError(f"no {CHECKSUMS} (every checkpoint with a {TRAINER_STATE} has one)")
    try:
        doc = json.loads((directory / CHECKSUMS).read_text())
        files = doc["files"]
        if doc.get("algorithm") != "sha256" or not isinstance(files, dict):
            raise ValueError("not a sha256 file list")
    except Exception as exc:
        raise ValueError(f"unreadable {CHECKSUMS} ({type(exc).__name__}: {exc})") from exc
    missing = [name for name in (MODEL_WEIGHTS, TRAINER_STATE, TRAINER_TENSORS) if name not in files]
    if missing:
        raise ValueError(f"{CHECKSUMS} lists no checksum for {', '.join(missing)}")
    for name, expected in files.items():
        path = directory / name
        if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"{CHECKSUMS} lists a path outside the checkpoint: {name!r}")
        if path.is_symlink() or not path.is_file():
            raise ValueError(f"{name} is missing or not a plain file (listed in {CHECKSUMS})")
        actual = sha256(path)
        if actual != expected:
            raise ValueError(f"checksum mismatch in {name} (sha256 {actual[:16]}..., recorded {str(expected)[:16]}...)")
