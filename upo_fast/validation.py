"""Input checks shared by the samplers: bad input gets a ValueError that names the argument, never a crash deep
inside a model or kernel."""

from __future__ import annotations

import math
import numbers

import torch


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (a CLI error is one line on stderr; library messages may hold several)."""
    return " ".join(str(exc).split())


def _number_kind(value) -> str | None:
    """"int", "float", or None for what is not a plain real number (bool, str, tensor, None, complex, ...)."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return None
    if isinstance(value, numbers.Integral):
        return "int"
    if isinstance(value, numbers.Real):
        return "float"
    return None


def check_finite(value, name: str, *, low=None, low_inclusive: bool = True, high=None, high_inclusive: bool = True,
                 allow_none: bool = False, integer: bool = False):
    """Refuse anything but a finite real number in the given range: a ValueError that names ``name``, says what
    is valid and shows the value. ``integer=True`` also refuses floats; bools, strings and tensors are never
    numbers here. Returns ``value`` unchanged (None when ``allow_none`` and ``value`` is None)."""
    if value is None and allow_none:
        return None
    kind = _number_kind(value)
    ok = kind == "int" if integer else kind is not None
    if ok and kind == "float":
        ok = math.isfinite(value)
    if ok and low is not None:
        ok = value >= low if low_inclusive else value > low
    if ok and high is not None:
        ok = value <= high if high_inclusive else value < high
    if not ok:
        raise ValueError(f"{name} must be {describe_range(low, low_inclusive, high, high_inclusive, integer)}"
                         f"{' or None' if allow_none else ''}, got {value!r}")
    return value


def field_check(config):
    """``check(ok, name, valid)`` for the fields of a settings object: when ``ok`` is false, a ValueError saying that
    field ``name`` must be ``valid`` and showing its value (the shared form of every config's own checks)."""

    def check(ok: bool, name: str, valid: str) -> None:
        if not ok:
            raise ValueError(f"{name} must be {valid}, got {getattr(config, name)!r}")

    return check


def describe_range(low=None, low_inclusive: bool = True, high=None, high_inclusive: bool = True,
                   integer: bool = False) -> str:
    """What ``check_finite`` accepts, in words: "a finite number in (0, 1]", "an integer >= 1", ..."""
    what = "an integer" if integer else "a finite number"
    if low is not None and high is not None:
        return f"{what} in {'[' if low_inclusive else '('}{low:g}, {high:g}{']' if high_inclusive else ')'}"
    if low is not None:
        return f"{what} {'>=' if low_inclusive else '>'} {low:g}"
    if high is not None:
        return f"{what} {'<=' if high_inclusive else '<'} {high:g}"
    return what


def first_non_finite(named: dict) -> str | None:
    """The name of the first floating tensor of ``named`` ({name: tensor}) holding NaN or inf, or None; one host
    read when all are finite (weights loaded from a file are checked with it before use)."""
    floats = {k: t for k, t in named.items() if t.is_floating_point()}
    if not floats or bool(torch.stack([torch.isfinite(t).all() for t in floats.values()]).all()):
        return None
    return next(k for k, t in floats.items() if not bool(torch.isfinite(t).all()))


def record_first_step(first_step: torch.Tensor, bad: torch.Tensor, step) -> None:
    """Set ``first_step`` (a 0-dim long device tensor, -1 = nothing yet) to ``step`` if ``bad`` holds and nothing was
    recorded: in place and without a host sync, so a sampling loop (or a captured CUDA graph) never waits; the
    loop reads it once at the end."""
    first_step.copy_(torch.where(bad & (first_step < 0), step, first_step))


def non_finite_logits_error(step: int, cfg_scale: float = 0.0) -> ValueError:
    """The error of a sampler whose model gave NaN, +inf or all -inf logits at a masked position at ``step``."""
    hint = f"; with cfg_scale={cfg_scale} the guided logits may have overflowed" if cfg_scale > 0 else ""
    return ValueError(f"the model returned non-finite logits (NaN, +inf, or every logit -inf) at a masked position "
                      f"at step {step} (counting from 0 over the whole call){hint}")


def check_vocab_id(value: int, name: str, vocab_size: int | None) -> None:
    if not isinstance(value, int) or value < 0 or (vocab_size is not None and value >= vocab_size):
        limit = f"[0, {vocab_size})" if vocab_size is not None else ">= 0"
        raise ValueError(f"{name}={value!r} is outside the vocabulary {limit}")


def check_token_ids(x, name: str, vocab_size: int | None) -> None:
    """x must be a [B, L] integer tensor with ids inside the vocabulary (one host check, before the loop)."""
    if not torch.is_tensor(x):
        raise ValueError(f"{name} must be a [batch, length] integer tensor, got {type(x).__name__}")
    if x.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be integer token ids (torch.int64 or torch.int32), got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be a [batch, length] integer tensor, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if vocab_size is not None:
        low, high = int(x.min()), int(x.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(f"{name} holds token ids outside the vocabulary [0, {vocab_size}): "
                             f"min {low}, max {high}")


def check_attention_mask(attention_mask, shape, name: str = "attention_mask") -> None:
    if attention_mask is None:
        return
    if not torch.is_tensor(attention_mask) or tuple(attention_mask.shape) != tuple(shape):
        got = tuple(attention_mask.shape) if torch.is_tensor(attention_mask) else type(attention_mask).__name__
        raise ValueError(f"{name} must be a 0/1 tensor of shape {tuple(shape)}, got {got}")
    dtype = attention_mask.dtype
    if dtype != torch.bool and (dtype.is_floating_point or dtype.is_complex):
        raise ValueError(f"{name} must be a bool or integer 0/1 tensor, got dtype {dtype}")
    if dtype != torch.bool:
        outside = attention_mask[(attention_mask != 0) & (attention_mask != 1)]
        if outside.numel():  # one host read, before the loop
            found = outside.unique()
            shown = ", ".join(str(v) for v in found[:8].tolist()) + (", ..." if found.numel() > 8 else "")
            raise ValueError(f"{name} must hold only 0 (padding) and 1 (token), found {shown}")


def check_pad_not_mask(x, attention_mask, mask_id: int) -> None:
    """Padding that uses the mask id would be unmasked like any other mask: refuse it (pad id must differ)."""
    if attention_mask is None:
        return
    padded_masks = (x.to(attention_mask.device) == mask_id) & (attention_mask == 0)
    if bool(padded_masks.any()):
        raise ValueError(f"padding positions (attention_mask == 0) hold the mask id {mask_id}: the pad id must "
                         "differ from mask_id (set tokenizer.pad_token_id to another token)")


def check_device(device, name: str = "device") -> None:
    """``device`` must name a device this machine has: cpu, cuda / cuda:N (a CUDA device present), mps."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name}={device!r} is not a device name; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = ("a CPU-only build" if torch.version.cuda is None
                   else "torch.cuda.is_available() is False: no GPU visible, or no driver")
            raise ValueError(f"{name}={device!r} but this torch has no CUDA device ({why}); use {name}='cpu'")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"{name}={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{name}={device!r}: MPS is not available on this machine; use {name}='cpu'")
    elif parsed.type != "cpu":
        raise ValueError(f"{name}={device!r}: upo_fast runs on cpu, cuda, cuda:N or mps")


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def convert_option(name: str, value, annotation: str):
    """``value`` (from YAML, JSON or a ``key=value`` string) as the type a dataclass field's annotation names
    (``"float"``, ``"int | None"``, ``"bool"``, ``"str"``), or a ValueError naming the option: strings that
    spell a number or a boolean are converted, nothing else is guessed."""
    kinds = [kind.strip() for kind in annotation.split("|")]
    if value is None and "None" in kinds:
        return None
    kind = kinds[0]
    text = value.strip() if isinstance(value, str) else None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text is not None and text.lstrip("+-").isdigit():
            return int(text)
    elif kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if text is not None:
            try:
                return float(text)
            except ValueError:
                pass
    elif kind == "str" and isinstance(value, str):
        return value
    words = {"float": "a number", "int": "an integer", "bool": "true or false", "str": "a string", "None": "null"}
    raise ValueError(f"{name} must be {' or '.join(words.get(k, k) for k in kinds)}, got {value!r}")


def options_from_dict(cls, values: dict, what: str):
    """A ``cls`` (a dataclass of options) from ``values``: unknown names are a ValueError listing the valid ones
    ("unknown {what} ..."), and each value is converted to its field's type by :func:`convert_option`."""
    import dataclasses

    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    return cls(**{name: convert_option(name, value, fields[name]) for name, value in values.items()})
