"""upo_fast: fast sampling and unmasking-policy training for masked diffusion language models.

Public API (see the README):

    upo_fast.generate(model, input_ids, ...)        # LLaDA-style block generation with any scorer
    upo_fast.unmask(model, x, ...)                  # infilling: masks anywhere in x
    upo_fast.llada_generate(model, prompt, ...)     # drop-in for LLaDA's generate()
    upo_fast.dream_generate(model, input_ids, ...)  # drop-in for Dream's diffusion_generate()
    upo_fast.load_model(path, dtype=..., attn=...)  # a local LLaDA / Dream / TinyMDM folder, no remote code
    upo_fast.load_tokenizer(path)                   # its tokenizer, left padding
    upo_fast.patch(model) / upo_fast.unpatch(model)  # model.generate / diffusion_generate run upo_fast's sampler
    upo_fast.mc_loglikelihood(model, prefix, target) # LLaDA's Monte-Carlo likelihood estimate

Imports are lazy so that ``import upo_fast`` stays cheap and submodules (tasks, models) can be used alone.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "generate": "upo_fast.sampling.loop",
    "unmask": "upo_fast.sampling.loop",
    "llada_generate": "upo_fast.sampling.llada_dropin",
    "dream_generate": "upo_fast.sampling.dream_dropin",
    "load_model": "upo_fast.models.loading",
    "load_tokenizer": "upo_fast.models.loading",
    "patch": "upo_fast.sampling.patching",
    "unpatch": "upo_fast.sampling.patching",
    "mc_loglikelihood": "upo_fast.sampling.likelihood",
    "MDMAdapter": "upo_fast.sampling.adapters",
    "wrap_model": "upo_fast.sampling.adapters",
    "SCORERS": "upo_fast.sampling.scorers",
    "TinyMDM": "upo_fast.models",
    "TinyMDMConfig": "upo_fast.models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'upo_fast' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
