"""The native twin of a LLaDA or Dream loaded elsewhere (its authors' remote code, Fast-dLLM's modeling code, a
fine-tune): this project's implementation of the same architecture, built from the model's config, whose parameters
ARE the model's (``load_state_dict(assign=True)`` on a meta-device skeleton: no copy, no extra memory; an in-place
update of the model's weights is seen by the twin). What it adds is what the remote code lacks: the static KV cache
of cached generation (``upo_fast.models.kv_cache``) and the final hidden states of the fused head path.

A twin is made once per model and kept beside it (weakly: it never keeps the model alive), and made again when the
model's parameters were replaced (``.to(...)``, a reload)."""

from __future__ import annotations

import weakref

import torch

_TWINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _first_parameter(model) -> torch.Tensor:
    return next(model.parameters())


def native_twin(model):
    """The native LLaDA / Dream sharing ``model``'s parameters (see the module docstring); ValueError when the
    model's ``config.model_type`` names no native family or its parameters do not fit the native layout."""
    from upo_fast.models.loading import NATIVE, _build_native

    twin = _TWINS.get(model)
    if twin is not None and _first_parameter(twin) is _first_parameter(model):
        return twin
    config = getattr(model, "config", None)
    family = NATIVE.get(str(getattr(config, "model_type", "")).lower())
    if family is None or family.classes is None:
        raise ValueError(f"no native implementation of model_type={getattr(config, 'model_type', None)!r} to run "
                         "cached generation with; load a LLaDA or Dream folder with upo_fast.load_model")
    twin = _build_native(family, config.to_dict())
    state = model.state_dict(keep_vars=True)  # the Parameters themselves: the twin shares them
    tied = family.tied_head is not None and bool(twin.config.tie_word_embeddings)
    missing, unexpected = twin.load_state_dict(state, strict=False, assign=True)
    missing = [name for name in missing if not (tied and name == family.tied_head)]
    if missing or unexpected:
        raise ValueError(f"{type(model).__name__}'s parameters do not fit the native {family.name} layout "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if tied:
        twin.tie_weights()
    if hasattr(model, "generation_config"):
        twin.generation_config = model.generation_config
    twin.set_attention_backend("sdpa")
    twin.eval().requires_grad_(False)
    _TWINS[model] = twin
    return twin
