"""Model adapters: one small object that knows how to call a masked diffusion model and read what we need from it.

What differs between kinds of MDM lives on one frozen :class:`ModelFamily` per family, registered by name in
``FAMILIES`` (``upo_fast.sampling.families``); the adapter asks that object and never tests a family's name:

    llada     LLaDAModelLM (remote code): mask id from its config (else 126336), no logit shift, blocks at
              model.model.transformer.blocks, head model.model.transformer.ff_out (or the tied embedding wte)
    dream     DreamModel (remote code): mask id from its generation config or config (else 151666), logits shifted
              by one (output i predicts token i+1), layers at model.model.layers, head lm_head; left padding becomes
              a 4-D mask plus position ids
    tiny_mdm  this project's TinyMDM: mask id from its config, layers at model.model.layers, head lm_head
    generic   anything whose output has ``.logits``; ``mask_id`` from its config, else it must be given

Adding a family: write its ``ModelFamily`` entry in ``families.FAMILIES`` (tests/test_families.py checks every entry).
Every entry point makes its adapter here, so the model argument is checked here: a path where a loaded model
belongs, a mask id outside the vocabulary, and (:func:`dropin_adapter`) a model the other drop-in is for.

The project's native LLaDA and Dream (``upo_fast.load_model``) have the same layout and also expose
``final_hidden_states`` and ``output_head``: the fused head path calls them directly (a tied LLaDA head included)
instead of swapping the head module out.

The adapter also captures the hidden state entering the last block with a forward pre-hook (a reference, no
copy): the unmasking policy reads it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
from torch import nn

from upo_fast.sampling.families import FAMILIES, _get_path, detect_family, get_family


@dataclass(frozen=True)
class PreparedAttention:
    """Model keyword arguments for one padded batch, built once per sampling call (not per step)."""

    kwargs: dict
    valid: torch.Tensor | None  # [B, L] bool, True at real (non-pad) positions; None = no padding


class MDMAdapter:
    """Wraps a masked diffusion model for the samplers.

    Args:
        model: the MDM (an ``nn.Module`` returning an object with ``.logits`` of shape [B, L, V]).
        family: a name in FAMILIES, or None to detect it from ``model.config.model_type``.
        mask_id: the [MASK] token id; None: the one the model records (``ModelFamily.mask_id_from``), else the
            family's official id (LLaDA 126336, Dream 151666); a TinyMDM or generic model without one needs it.
        mask_arg: the caller's name for ``mask_id``, as its errors say it (``dream_generate``: ``mask_token_id``).

    ``family`` stays the family's name (callers compare and pass it on); ``model_family`` is its
    :class:`ModelFamily`, which every family-specific step below asks.
    """

    def __init__(self, model: nn.Module, family: str | None = None, mask_id: int | None = None, *,
                 mask_arg: str = "mask_id"):
        check_loaded_model(model)
        self.model_family = get_family(detect_family(model) if family is None else family)
        self.model = model
        self.family = self.model_family.name
        self.config = getattr(model, "config", None)
        self.mask_id = int(mask_id) if mask_id is not None else self._default_mask_id()
        self.vocab_size = self._vocab_size()
        if self.vocab_size is not None and not 0 <= self.mask_id < self.vocab_size:
            raise ValueError(self._outside_vocabulary(mask_arg, given=mask_id is not None))
        self.shift_logits = self.model_family.shift_logits
        self.last_hidden: torch.Tensor | None = None
        self._hook = None

    # ---- static facts -------------------------------------------------------------------------------------
    def _default_mask_id(self) -> int:
        mask_id = self.model_family.default_mask_id(self.model)
        if mask_id is None:
            raise ValueError(f"mask_id is required for a {self.family} model whose config has no mask_token_id")
        return mask_id

    def _outside_vocabulary(self, mask_arg: str, given: bool) -> str:
        """Why the mask id does not fit, and the id to pass instead (the one the model records, if it fits)."""
        message = f"{mask_arg}={self.mask_id} is outside the vocabulary [0, {self.vocab_size})"
        recorded = self.model_family.recorded_mask_id(self.model)
        instead = f"pass the model's [MASK] token id as {mask_arg}="
        if recorded is None:
            default = f" (the {self.model_family.title} default: this model records no mask_token_id); {instead}"
            return message if given else message + default
        path, value = recorded
        says = f"this model's {path.rpartition('.')[0]} says mask_token_id={value}"
        if 0 <= value < self.vocab_size:
            return f"{message}; {says}: pass {mask_arg}={value} or leave it unset"
        return f"{message} ({says}); {instead}"

    def _vocab_size(self) -> int | None:
        head = self.head_weight()
        if head is not None:
            return int(head.shape[0])
        size = getattr(self.config, "vocab_size", None)
        return int(size) if size is not None else None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def blocks(self) -> nn.ModuleList | None:
        for path in self.model_family.block_paths:
            found = _get_path(self.model, path)
            if isinstance(found, nn.ModuleList) and len(found) > 0:
                return found
        return None

    def head_weight(self) -> torch.Tensor | None:
        """The LM-head weight [V, d] (nn.Linear layout), tied or untied; None if it cannot be found."""
        head = next((found for found in self._head_candidates() if found is not None), None)
        return getattr(head, "weight", None)

    def _head_candidates(self):
        """Where the head may be, in the family's order (lazily: the first one found ends the search)."""
        if self.model_family.head_from_output_embeddings:
            yield getattr(self.model, "get_output_embeddings", lambda: None)()
        for path in self.model_family.head_paths:
            yield _get_path(self.model, path)

    def head_module(self) -> tuple[nn.Module, str] | None:
        """(parent, attribute) of the LM head when it is a separate ``nn.Linear`` that the forward calls as a
        module (untied LLaDA ``ff_out``, Dream / TinyMDM ``lm_head``); None otherwise (tied LLaDA calls
        F.linear on the embedding, generic models are unknown)."""
        path = self.model_family.head_module
        if path is None:
            return None
        parent_path, _, name = path.rpartition(".")
        parent = _get_path(self.model, parent_path) if parent_path else self.model
        head = getattr(parent, name, None) if parent is not None else None
        return (parent, name) if isinstance(head, nn.Linear) else None

    def logit_scale(self) -> float:
        """Factor the forward applies to the head's output (LLaDA's ``scale_logits`` option)."""
        if self.model_family.scales_logits and getattr(self.config, "scale_logits", False):
            return 1.0 / float(self.config.d_model) ** 0.5
        return 1.0

    @property
    def native(self) -> bool:
        """A model of this project (``upo_fast.models.llada`` / ``dream``) that exposes its final hidden states."""
        return bool(getattr(self.model, "upo_native", False))

    def fused_head(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """(weight [V, d], bias) of the LM head when the forward can stop before it (a native model, or a head
        that is a separate ``nn.Linear``); None otherwise."""
        if self.native:
            weight, bias, _ = self.model.output_head()
            return weight, bias
        found = self.head_module()
        if found is None:
            return None
        head = getattr(*found)
        return head.weight, head.bias

    @contextlib.contextmanager
    def headless(self):
        """Within this context the model's forward returns the final hidden states [B, L, d] in place of the
        logits: the head is swapped for an identity, so no [B, L, V] tensor is computed."""
        found = self.head_module()
        if found is None:
            raise ValueError(f"this {self.family} model's LM head is not a separate nn.Linear module (a tied "
                             "head?): the fused head path needs one; use fused_head=False")
        parent, name = found
        head = getattr(parent, name)
        setattr(parent, name, nn.Identity())
        try:
            yield head
        finally:
            setattr(parent, name, head)

    def final_hidden(self, x: torch.Tensor, prepared: PreparedAttention, **cached) -> torch.Tensor:
        """[B, L] token ids -> [B, L, d] final hidden states (after the last norm), aligned like ``logits``: row i is
        the state whose head output scores position i. ``cached``: ``cache=``, ``start=`` of a cached forward
        (native models; x then holds the rows [start, start + n))."""
        if self.native:
            return self._shift(self._call(self.model.final_hidden_states, x, prepared, **cached))
        with self.headless():
            return self.logits(x, prepared, **cached)

    def allocate_cache(self, batch: int, length: int):
        """A static KV cache for sampling ``batch`` sequences of ``length`` (``upo_fast.models.kv_cache``)."""
        if not self.native:
            raise ValueError(f"cache='prefix'/'dual' needs the KV cache of upo_fast's native LLaDA or Dream; this "
                             f"{self.family} model ({type(self.model).__name__}) has none: load it with "
                             "upo_fast.load_model(folder)")
        from upo_fast.models.kv_cache import allocate_cache

        return allocate_cache(self.model, batch, length)

    def with_cache(self) -> MDMAdapter:
        """This adapter, or for a LLaDA / Dream loaded from remote code an adapter over its native twin (the same
        parameters, this project's forward with the KV cache: ``upo_fast.models.native_twin``)."""
        if self.native or self.model_family.dropin is None:
            return self  # allocate_cache then says what is missing
        from upo_fast.models.native_twin import native_twin

        return MDMAdapter(native_twin(self.model), self.family, self.mask_id)

    # ---- hidden-state capture -----------------------------------------------------------------------------
    def capture_last_block_input(self, enable: bool = True) -> None:
        """Keep a reference to the input of the last block on every forward (for the unmasking policy)."""
        if not enable:
            if self._hook is not None:
                self._hook.remove()
            self._hook = None
            return
        if self._hook is not None:
            return
        blocks = self.blocks()
        if blocks is None:
            raise ValueError(f"cannot find the transformer blocks of this {self.family} model to hook")

        def hook(_module, args, kwargs):
            self.last_hidden = args[0] if args else next(iter(kwargs.values()))

        self._hook = blocks[-1].register_forward_pre_hook(hook, with_kwargs=True)

    def position_hidden(self) -> torch.Tensor | None:
        """The captured last-block input [B, L, d] aligned like ``logits``: row i is the hidden state that predicts
        position i (for Dream the state at i - 1, a copy; otherwise the captured tensor itself)."""
        hidden = self.last_hidden
        return None if hidden is None else self._shift(hidden)

    # ---- calling the model --------------------------------------------------------------------------------
    def prepare_attention(self, attention_mask: torch.Tensor | None, batch: int, length: int) -> PreparedAttention:
        """Turn a [B, L] 0/1 padding mask into what this family's forward expects (once per call)."""
        if attention_mask is None:
            return PreparedAttention(self.model_family.attention(None, None), None)
        if attention_mask.shape != (batch, length):
            raise ValueError(f"attention_mask must have shape {(batch, length)} (the sequence being sampled), "
                             f"got {tuple(attention_mask.shape)}")
        valid = attention_mask.bool()
        return PreparedAttention(self.model_family.attention(attention_mask, valid), valid)

    def _call(self, forward, x: torch.Tensor, prepared: PreparedAttention, **cached):
        positional = self.model_family.positional
        if positional:  # e.g. Dream's forward, called as (input_ids, attention_mask, position_ids)
            return forward(x, *(prepared.kwargs.get(name) for name in positional), **cached)
        return forward(x, **prepared.kwargs, **cached)

    def _shift(self, rows: torch.Tensor) -> torch.Tensor:
        """Dream's output i scores token i + 1: move it to row i + 1 (row 0 keeps its own)."""
        return torch.cat([rows[:, :1], rows[:, :-1]], dim=1) if self.shift_logits else rows

    def logits(self, x: torch.Tensor, prepared: PreparedAttention, **cached) -> torch.Tensor:
        """[B, L] token ids -> [B, L, V] logits where row i scores the token at position i (Dream's shift applied)."""
        out = self._call(self.model, x, prepared, **cached)
        return self._shift(out.logits if hasattr(out, "logits") else out[0])


def check_loaded_model(model) -> None:
    """A path where a loaded model belongs: a ValueError saying how to load it (not "mask_id is required")."""
    if isinstance(model, (str, os.PathLike)):
        raise ValueError(f"model must be a loaded model, got the path {os.fspath(model)!r}: load it with "
                         "upo_fast.load_model(path)")


def wrap_model(model, family: str | None = None, mask_id: int | None = None) -> MDMAdapter:
    """Return ``model`` if it already is an adapter, else wrap it."""
    if isinstance(model, MDMAdapter):
        if mask_id is not None and int(mask_id) != model.mask_id:
            return MDMAdapter(model.model, family or model.family, mask_id)
        return model
    return MDMAdapter(model, family=family, mask_id=mask_id)


def dropin_adapter(model, dropin: str, mask_id: int | None, *, mask_arg: str = "mask_id") -> MDMAdapter:
    """The adapter of the drop-in sampler ``upo_fast.<dropin>``: ``model`` wrapped as the family whose sampler it
    reproduces (a TinyMDM or generic model too). A model of a family with another drop-in is refused: its logit
    shift differs, so the run would be silently wrong."""
    found = get_family(detect_family(model))  # a path is found generic here, then refused by MDMAdapter
    if found.dropin is not None and found.dropin != dropin:
        shift = "logits shifted by one" if found.shift_logits else "logits not shifted"
        raise ValueError(f"{dropin} got a {found.title} model ({shift}); use upo_fast.{found.dropin}")
    own = next(family for family in FAMILIES.values() if family.dropin == dropin)
    return MDMAdapter(model, family=own.name, mask_id=mask_id, mask_arg=mask_arg)
