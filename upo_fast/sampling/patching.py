"""``upo_fast.patch(model)``: one line for a LLaDA or Dream model loaded elsewhere (remote code, ``load_model``,
a fine-tune), in the spirit of Liger-Kernel's ``apply_liger_kernel_to_*``.

* LLaDA: ``model.generate(input_ids, attention_mask=None, **kwargs)`` runs ``upo_fast.llada_generate`` with
  LLaDA's keyword arguments (steps, gen_length, block_length, temperature, cfg_scale, remasking, mask_id, ...) and
  Fast-dLLM's (``threshold``, ``factor``, ``cache="prefix"|"dual"``), or ``upo_fast.generate`` when ``scorer=`` is
  given (any unmasking order, a learned policy included; the same ``threshold``, ``factor`` and ``cache``). Without
  ``mask_id`` both take the model's ``config.mask_token_id`` (else 126336).
* Dream: ``model.diffusion_generate(inputs, generation_config=None, **kwargs)`` runs ``upo_fast.dream_generate``
  with the model's own generation config as the defaults, as Dream's method does (its ``mask_token_id`` included,
  then the config's), and Fast-dLLM's keywords (``block_length``, ``dual_cache``, ``threshold``,
  ``alg="confidence_threshold"``).

Every keyword reaches the sampler as given: the patch adds none and checks none (the sampler's own errors).

``upo_fast.unpatch(model)`` puts back what was there. Only the instance is changed, never its class.
"""

from __future__ import annotations

import types

from upo_fast.sampling.adapters import check_loaded_model, detect_family

_PATCHED = "_upo_fast_patched"  # instance attribute: {method name: the instance's own attribute before, or _ABSENT}
_ABSENT = object()
PATCHABLE = {"llada": "generate", "dream": "diffusion_generate"}


def _llada_generate(self, input_ids, attention_mask=None, **kwargs):
    """LLaDA's ``generate(model, prompt, attention_mask, ...)`` as a method, from ``upo_fast.patch``."""
    if "scorer" in kwargs:
        from upo_fast.sampling.loop import generate

        return generate(self, input_ids, attention_mask, family="llada", **kwargs)
    from upo_fast.sampling.llada_dropin import llada_generate

    return llada_generate(self, input_ids, attention_mask, **kwargs)


def _dream_diffusion_generate(self, inputs=None, generation_config=None, **kwargs):
    """Dream's ``diffusion_generate`` (same signature, defaults and return types), from ``upo_fast.patch``."""
    from upo_fast.sampling.dream_dropin import dream_generate

    if inputs is None:
        inputs = kwargs.pop("input_ids", None)
    if inputs is None:
        raise ValueError("diffusion_generate needs the prompt ids (inputs=... or input_ids=...)")
    attention_mask = kwargs.pop("attention_mask", None)
    config = generation_config if generation_config is not None else getattr(self, "generation_config", None)
    return dream_generate(self, inputs, attention_mask, generation_config=config, **kwargs)


_METHODS = {"llada": _llada_generate, "dream": _dream_diffusion_generate}


def patch(model):
    """Give a LLaDA or Dream ``model`` upo_fast's sampler as its ``generate`` / ``diffusion_generate`` (see the
    module docstring); returns ``model``. Patching twice changes nothing; anything else is a ValueError."""
    check_loaded_model(model)
    family = detect_family(model)
    if family not in PATCHABLE:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        raise ValueError(f"upo_fast.patch supports LLaDA and Dream models (config.model_type 'llada' or 'Dream'), "
                         f"got {type(model).__name__} with model_type={model_type!r}; for other masked diffusion "
                         "models call upo_fast.generate(model, input_ids, mask_id=...) directly")
    if getattr(model, _PATCHED, None) is not None:
        return model
    name = PATCHABLE[family]
    saved = {name: model.__dict__.get(name, _ABSENT)}
    object.__setattr__(model, name, types.MethodType(_METHODS[family], model))
    object.__setattr__(model, _PATCHED, saved)
    return model


def unpatch(model):
    """Undo ``upo_fast.patch(model)``; a model that is not patched is returned unchanged."""
    saved = getattr(model, _PATCHED, None)
    if saved is None:
        return model
    for name, before in saved.items():
        if before is _ABSENT:
            del model.__dict__[name]
        else:
            object.__setattr__(model, name, before)
    del model.__dict__[_PATCHED]
    return model


def is_patched(model) -> bool:
    return getattr(model, _PATCHED, None) is not None
