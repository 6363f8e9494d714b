"""Model families: what differs between kinds of masked diffusion model, one frozen :class:`ModelFamily` per family,
registered by name in ``FAMILIES`` (the adapter, ``upo_fast.sampling.adapters``, asks these objects and never tests a
family's name). The table of families is in ``upo_fast.sampling.adapters``' docstring; adding one: write its entry
here (tests/test_families.py checks every entry)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

LLADA_MASK_ID = 126336
DREAM_MASK_ID = 151666



def _get_path(obj, path: str):
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def padding_mask_kwargs(attention_mask: torch.Tensor | None, valid: torch.Tensor | None) -> dict:
    """The forward takes the [B, L] 0/1 padding mask as it is, and nothing when there is no padding."""
    return {} if attention_mask is None else {"attention_mask": attention_mask}


def dream_attention_kwargs(attention_mask: torch.Tensor | None, valid: torch.Tensor | None) -> dict:
    """Dream's forward wants "full" when nothing is padded (as its own sampler passes), else a [B, 1, L, L] bool
    mask with position ids that start at 0 on the first real token (left padding must not shift the rotary
    positions)."""
    if valid is None or bool(valid.all()):
        return {"attention_mask": "full"}
    position_ids = valid.long().cumsum(-1) - 1
    position_ids.masked_fill_(~valid, 1)
    mask4d = valid[:, None, None, :] & valid[:, None, :, None]
    return {"attention_mask": mask4d, "position_ids": position_ids}


@dataclass(frozen=True)
class ModelFamily:
    """The facts the adapter needs about one kind of MDM: where its parts live and how its forward is called.

    ``name``: the family's name (``MDMAdapter.family``, an unmasking policy's ``mdm_family``).
    ``title``: how messages name the family (its authors' spelling).
    ``dropin``: the function of ``upo_fast`` that reproduces this family's own sampler (the one to use for it);
    None: no drop-in of its own (a drop-in runs such a model as the family it reproduces).
    ``model_type``: the lower-cased ``config.model_type`` that names the family, matched as a prefix when
    ``model_type_prefix`` (remote-code variants append to it), else exactly; None: never detected (the fallback).
    ``mask_id_from``: attribute paths on the model that record its [MASK] id, read in order.
    ``mask_id``: the official checkpoints' id, used when none is recorded (a recorded 0 then counts as none);
    None: the id must be recorded or given.
    ``shift_logits``: output i scores token i + 1 (Dream), so rows move down by one.
    ``block_paths``: where the transformer blocks may live (the first non-empty ``nn.ModuleList`` found).
    ``head_paths``: where the LM head (or the tied embedding it reads) may live, tried after
    ``get_output_embeddings()`` when ``head_from_output_embeddings``.
    ``head_module``: dotted path of the head when the forward calls it as a separate module (so the fused head path
    can swap it out); None: not known to be one.
    ``scales_logits``: the forward honours ``config.scale_logits`` (LLaDA divides by sqrt(d_model)).
    ``attention``: ``(attention_mask or None, valid or None) -> forward keyword arguments`` for a padded batch.
    ``positional``: those keyword arguments that the forward takes positionally after the ids, in order (Dream's
    forward is called as ``(input_ids, attention_mask, position_ids)``); (): all by keyword.
    """

    name: str
    title: str
    dropin: str | None
    model_type: str | None
    model_type_prefix: bool
    mask_id_from: tuple[str, ...]
    mask_id: int | None
    shift_logits: bool
    block_paths: tuple[str, ...]
    head_paths: tuple[str, ...]
    head_from_output_embeddings: bool
    head_module: str | None
    scales_logits: bool
    attention: Callable[[torch.Tensor | None, torch.Tensor | None], dict]
    positional: tuple[str, ...]

    def matches(self, model_type: str) -> bool:
        """Whether a (lower-cased) ``config.model_type`` names this family."""
        if self.model_type is None:
            return False
        return model_type.startswith(self.model_type) if self.model_type_prefix else model_type == self.model_type

    def recorded_mask_id(self, model: nn.Module) -> tuple[str, int] | None:
        """(attribute path, value) of the first [MASK] id the model records; None when it records none."""
        for path in self.mask_id_from:
            value = _get_path(model, path)
            # the same rule as ``config.mask_token_id or LLADA_MASK_ID``: with a fallback, 0 reads as unset
            if value is not None and (value or self.mask_id is None):
                return path, int(value)
        return None

    def default_mask_id(self, model: nn.Module) -> int | None:
        """The [MASK] id the model records, else the official one; None when neither exists."""
        recorded = self.recorded_mask_id(model)
        return recorded[1] if recorded is not None else self.mask_id


def _entries(*families: ModelFamily) -> dict[str, ModelFamily]:
    return {family.name: family for family in families}


_CONFIG_MASK = ("config.mask_token_id",)
FAMILIES: dict[str, ModelFamily] = _entries(
    ModelFamily("llada", title="LLaDA", dropin="llada_generate", model_type="llada", model_type_prefix=True,
                mask_id_from=_CONFIG_MASK, mask_id=LLADA_MASK_ID, shift_logits=False,
                block_paths=("model.transformer.blocks",),
                head_paths=("model.transformer.ff_out", "model.transformer.wte"),  # wte: a tied head
                head_from_output_embeddings=False, head_module="model.transformer.ff_out", scales_logits=True,
                attention=padding_mask_kwargs, positional=()),
    ModelFamily("dream", title="Dream", dropin="dream_generate", model_type="dream", model_type_prefix=True,
                mask_id_from=("generation_config.mask_token_id", *_CONFIG_MASK), mask_id=DREAM_MASK_ID,
                shift_logits=True, block_paths=("model.layers",), head_paths=("lm_head",),
                head_from_output_embeddings=True, head_module="lm_head", scales_logits=False,
                attention=dream_attention_kwargs, positional=("attention_mask", "position_ids")),
    ModelFamily("tiny_mdm", title="TinyMDM", dropin=None, model_type="tiny_mdm", model_type_prefix=False,
                mask_id_from=_CONFIG_MASK, mask_id=None, shift_logits=False, block_paths=("model.layers",),
                head_paths=("lm_head",), head_from_output_embeddings=True, head_module="lm_head",
                scales_logits=False, attention=padding_mask_kwargs, positional=()),
    # unknown layout: look for blocks wherever a known family keeps them; the head cannot be swapped safely
    ModelFamily("generic", title="generic", dropin=None, model_type=None, model_type_prefix=False,
                mask_id_from=_CONFIG_MASK, mask_id=None, shift_logits=False,
                block_paths=("model.transformer.blocks", "model.layers"), head_paths=("lm_head",),
                head_from_output_embeddings=True, head_module=None, scales_logits=False,
                attention=padding_mask_kwargs, positional=()),
)
# the family of a model whose config.model_type names none: the one that no model_type names
FALLBACK = next(name for name, family in FAMILIES.items() if family.model_type is None)


def get_family(name: str) -> ModelFamily:
    """The :class:`ModelFamily` registered as ``name``, or a ValueError listing the valid names."""
    if not isinstance(name, str) or name not in FAMILIES:
        raise ValueError(f"family must be one of {tuple(FAMILIES)}, got {name!r}")
    return FAMILIES[name]


def detect_family(model: nn.Module) -> str:
    """The name of the family that ``model.config.model_type`` names (the fallback when none does)."""
    model_type = str(getattr(getattr(model, "config", None), "model_type", "") or "").lower()
    return next((name for name, family in FAMILIES.items() if family.matches(model_type)), FALLBACK)

