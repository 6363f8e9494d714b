"""Model adapters: one small object that knows how to call a masked diffusion model and read what we need from it.

Families:

    llada     LLaDAModelLM (remote code): mask id 126336, no logit shift, blocks at model.model.transformer.blocks,
              head model.model.transformer.ff_out (or the tied embedding wte)
    dream     DreamModel (remote code): mask id 151666, logits shifted by one (output i predicts token i+1),
              layers at model.model.layers, head lm_head; left padding becomes a 4-D mask plus position ids
    tiny_mdm  this project's TinyMDM: mask id from its config, layers at model.model.layers, head lm_head
    generic   anything whose output has ``.logits``; ``mask_id`` must be given

The project's native LLaDA and Dream (``upo_fast.load_model``) have the same layout and also expose
``final_hidden_states`` and ``output_head``: the fused head path calls them directly (a tied LLaDA head included)
instead of swapping the head module out.

The adapter also captures the hidden state entering the last block with a forward pre-hook (a reference, no
copy): the unmasking policy reads it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

LLADA_MASK_ID = 126336
DREAM_MASK_ID = 151666
FAMILIES = ("llada", "dream", "tiny_mdm", "generic")


@dataclass(frozen=True)
class PreparedAttention:
    """Model keyword arguments for one padded batch, built once per sampling call (not per step)."""

    kwargs: dict
    valid: torch.Tensor | None  # [B, L] bool, True at real (non-pad) positions; None = no padding


def detect_family(model: nn.Module) -> str:
    model_type = str(getattr(getattr(model, "config", None), "model_type", "") or "").lower()
    if model_type.startswith("llada"):
        return "llada"
    if model_type.startswith("dream"):
        return "dream"
    if model_type == "tiny_mdm":
        return "tiny_mdm"
    return "generic"


def _get_path(obj, path: str):
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


class MDMAdapter:
    """Wraps a masked diffusion model for the samplers.

    Args:
        model: the MDM (an ``nn.Module`` returning an object with ``.logits`` of shape [B, L, V]).
        family: one of FAMILIES, or None to detect it from ``model.config.model_type``.
        mask_id: the [MASK] token id; defaults per family (LLaDA 126336, Dream from its generation config or
            151666, TinyMDM from its config); required for generic models.
    """

    def __init__(self, model: nn.Module, family: str | None = None, mask_id: int | None = None):
        if family is None:
            family = detect_family(model)
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
        self.model = model
        self.family = family
        self.config = getattr(model, "config", None)
        self.mask_id = int(mask_id) if mask_id is not None else self._default_mask_id()
        self.vocab_size = self._vocab_size()
        if self.vocab_size is not None and not 0 <= self.mask_id < self.vocab_size:
            raise ValueError(f"mask_id={self.mask_id} is outside the vocabulary [0, {self.vocab_size})")
        self.shift_logits = family == "dream"
        self.last_hidden: torch.Tensor | None = None
        self._hook = None

    # ---- static facts -------------------------------------------------------------------------------------
    def _default_mask_id(self) -> int:
        if self.family == "llada":
            return int(getattr(self.config, "mask_token_id", None) or LLADA_MASK_ID)
        if self.family == "dream":
            gen = getattr(self.model, "generation_config", None)
            return int(getattr(gen, "mask_token_id", None) or getattr(self.config, "mask_token_id", None)
                       or DREAM_MASK_ID)
        mask_id = getattr(self.config, "mask_token_id", None)
        if mask_id is None:
            raise ValueError(f"mask_id is required for a {self.family} model whose config has no mask_token_id")
        return int(mask_id)

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
        paths = {"llada": "model.transformer.blocks", "dream": "model.layers", "tiny_mdm": "model.layers"}
        for path in ([paths[self.family]] if self.family in paths else paths.values()):
            found = _get_path(self.model, path)
            if isinstance(found, nn.ModuleList) and len(found) > 0:
                return found
        return None

    def head_weight(self) -> torch.Tensor | None:
        """The LM-head weight [V, d] (nn.Linear layout), tied or untied; None if it cannot be found."""
        if self.family == "llada":
            head = _get_path(self.model, "model.transformer.ff_out")
            if head is None:  # weight tying: logits = h @ wte.weight.T
                head = _get_path(self.model, "model.transformer.wte")
            return getattr(head, "weight", None)
        out = getattr(self.model, "get_output_embeddings", lambda: None)()
        if out is None:
            out = getattr(self.model, "lm_head", None)
        return getattr(out, "weight", None)

    def head_module(self) -> tuple[nn.Module, str] | None:
        """(parent, attribute) of the LM head when it is a separate ``nn.Linear`` that the forward calls as a
        module (untied LLaDA ``ff_out``, Dream / TinyMDM ``lm_head``); None otherwise (tied LLaDA calls
        F.linear on the embedding, generic models are unknown)."""
        if self.family == "llada":
            parent, name = _get_path(self.model, "model.transformer"), "ff_out"
        elif self.family in ("dream", "tiny_mdm"):
            parent, name = self.model, "lm_head"
        else:
            return None
        head = getattr(parent, name, None) if parent is not None else None
        return (parent, name) if isinstance(head, nn.Linear) else None

    def logit_scale(self) -> float:
        """Factor the forward applies to the head's output (LLaDA's ``scale_logits`` option)."""
        if self.family == "llada" and getattr(self.config, "scale_logits", False):
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

    def final_hidden(self, x: torch.Tensor, prepared: PreparedAttention) -> torch.Tensor:
        """[B, L] token ids -> [B, L, d] final hidden states (after the last norm), aligned like ``logits``: row i is
        the state whose head output scores position i."""
        if self.native:
            return self._shift(self._call(self.model.final_hidden_states, x, prepared))
        with self.headless():
            return self.logits(x, prepared)

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
        if hidden is None or not self.shift_logits:
            return hidden
        return torch.cat([hidden[:, :1], hidden[:, :-1]], dim=1)

    # ---- calling the model --------------------------------------------------------------------------------
    def prepare_attention(self, attention_mask: torch.Tensor | None, batch: int, length: int) -> PreparedAttention:
        """Turn a [B, L] 0/1 padding mask into what this family's forward expects (once per call)."""
        if attention_mask is None:
            return PreparedAttention({"attention_mask": "full"} if self.family == "dream" else {}, None)
        if attention_mask.shape != (batch, length):
            raise ValueError(f"attention_mask must have shape {(batch, length)} (the sequence being sampled), "
                             f"got {tuple(attention_mask.shape)}")
        valid = attention_mask.bool()
        if self.family != "dream":
            return PreparedAttention({"attention_mask": attention_mask}, valid)
        if bool(valid.all()):  # Dream's own sampler uses full attention when nothing is padded
            return PreparedAttention({"attention_mask": "full"}, valid)
        position_ids = valid.long().cumsum(-1) - 1
        position_ids.masked_fill_(~valid, 1)
        mask4d = valid[:, None, None, :] & valid[:, None, :, None]
        return PreparedAttention({"attention_mask": mask4d, "position_ids": position_ids}, valid)

    def _call(self, forward, x: torch.Tensor, prepared: PreparedAttention):
        if self.family == "dream":
            # Dream's forward takes (input_ids, attention_mask, position_ids) positionally
            return forward(x, prepared.kwargs["attention_mask"], prepared.kwargs.get("position_ids"))
        return forward(x, **prepared.kwargs)

    def _shift(self, rows: torch.Tensor) -> torch.Tensor:
        """Dream's output i scores token i + 1: move it to row i + 1 (row 0 keeps its own)."""
        return torch.cat([rows[:, :1], rows[:, :-1]], dim=1) if self.shift_logits else rows

    def logits(self, x: torch.Tensor, prepared: PreparedAttention) -> torch.Tensor:
        """[B, L] token ids -> [B, L, V] logits where row i scores the token at position i (Dream's shift applied)."""
        out = self._call(self.model, x, prepared)
        return self._shift(out.logits if hasattr(out, "logits") else out[0])


def wrap_model(model, family: str | None = None, mask_id: int | None = None) -> MDMAdapter:
    """Return ``model`` if it already is an adapter, else wrap it."""
    if isinstance(model, MDMAdapter):
        if mask_id is not None and int(mask_id) != model.mask_id:
            return MDMAdapter(model.model, family or model.family, mask_id)
        return model
    return MDMAdapter(model, family=family, mask_id=mask_id)
