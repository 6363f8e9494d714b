"""Tiny random stand-ins for LLaDA-8B and Dream-7B, for exactness tests on CPU.

They are not trained; they only reproduce the *interfaces* the samplers rely on:

* ``TinyLLaDAModelLM``: ``config.model_type == "llada"``, modules at ``model.model.transformer``
  (``wte``, ``blocks``, ``ln_f``, ``ff_out`` unless ``weight_tying``), ``forward(input_ids,
  attention_mask=None)`` with a 2-D key-padding mask and absolute positions (positions do not depend on
  the mask, as in LLaDA).
* ``TinyDreamModel``: ``config.model_type == "Dream"``, ``model.model.embed_tokens / layers / norm``,
  ``model.lm_head``, ``forward(input_ids, attention_mask=None, position_ids=None, ...)`` where the mask is
  ``None``, ``"full"``, a 2-D padding mask or a 4-D boolean ``[B, 1, L, L]`` mask; RoPE from ``position_ids``;
  ``model.generation_config.mask_token_id``. Logits at ``i`` are meant to predict token ``i + 1``.

Both are fp32, bidirectional (SDPA), and initialised deterministically from a seed.  On top of RoPE they add a
learned absolute position embedding (``learned_positions=True`` by default): RoPE alone only sees position
differences, so without it a sampler passing shifted or wrong positions (e.g. ignoring Dream's mask-derived
``position_ids``) would go unnoticed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tiny_layers import Block, RMSNorm, reinit, to_sdpa_mask
from torch import nn
from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

LLADA_MASK_ID = 126336
LLADA_EOS_ID = 126081
LLADA_EOT_ID = 126348
LLADA_VOCAB = 126464

DREAM_MASK_ID = 151666
DREAM_PAD_ID = 151643
DREAM_VOCAB = 152064


# --------------------------------------------------------------------------------------------------------------
# LLaDA-like
# --------------------------------------------------------------------------------------------------------------


class TinyLLaDAConfig(PretrainedConfig):
    model_type = "llada"
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_hidden_layers": "n_layers",
    }

    def __init__(
        self,
        vocab_size: int = LLADA_VOCAB,
        d_model: int = 32,
        n_heads: int = 4,
        n_layers: int = 2,
        mlp_hidden_size: int = 64,
        max_sequence_length: int = 4096,
        rope_theta: float = 10000.0,
        weight_tying: bool = False,
        learned_positions: bool = True,
        mask_token_id: int = LLADA_MASK_ID,
        eos_token_id: int | None = LLADA_EOS_ID,
        pad_token_id: int | None = LLADA_EOS_ID,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.embedding_size = vocab_size
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.mlp_hidden_size = mlp_hidden_size
        self.max_sequence_length = max_sequence_length
        self.rope_theta = rope_theta
        self.weight_tying = weight_tying
        self.learned_positions = learned_positions
        self.mask_token_id = mask_token_id
        self.eos_token_id = eos_token_id if eos_token_id is not None and eos_token_id < vocab_size else None
        self.pad_token_id = pad_token_id if pad_token_id is not None and pad_token_id < vocab_size else None
        # transformers 4.x defaults ``tie_word_embeddings`` to True and then ties ``ff_out`` to ``wte`` in
        # ``post_init``; 5.x ties only ``_tied_weights_keys``.  Say it explicitly so both behave the same.
        kwargs["tie_word_embeddings"] = weight_tying
        super().__init__(**kwargs)


class _LLaDAModel(nn.Module):
    def __init__(self, config: TinyLLaDAConfig):
        super().__init__()
        self.config = config
        parts = {
            "wte": nn.Embedding(config.vocab_size, config.d_model),
            "blocks": nn.ModuleList(
                Block(config.d_model, config.n_heads, config.mlp_hidden_size, config.rope_theta)
                for _ in range(config.n_layers)
            ),
            "ln_f": RMSNorm(config.d_model),
        }
        if config.learned_positions:
            parts["wpe"] = nn.Embedding(config.max_sequence_length, config.d_model)
        if not config.weight_tying:
            parts["ff_out"] = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.transformer = nn.ModuleDict(parts)

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, output_hidden_states=False):
        h = self.transformer["wte"](input_ids) if inputs_embeds is None else inputs_embeds
        b, length = h.shape[:2]
        positions = torch.arange(length, device=h.device)  # absolute, independent of the padding mask
        if self.config.learned_positions:
            h = h + self.transformer["wpe"](positions)
        attn_mask = to_sdpa_mask(attention_mask, b, length, h.device)
        hidden_states = [h] if output_hidden_states else None
        for block in self.transformer["blocks"]:
            h = block(h, positions, attn_mask)
            if output_hidden_states:
                hidden_states.append(h)
        h = self.transformer["ln_f"](h)
        if self.config.weight_tying:
            logits = F.linear(h, self.transformer["wte"].weight)
        else:
            logits = self.transformer["ff_out"](h)
        return logits, (tuple(hidden_states) if output_hidden_states else None)


class TinyLLaDAModelLM(PreTrainedModel):
    config_class = TinyLLaDAConfig
    base_model_prefix = "model"
    _supports_sdpa = True

    def __init__(self, config: TinyLLaDAConfig):
        super().__init__(config)
        self.model = _LLaDAModel(config)
        self.post_init()

    def _init_weights(self, module):  # weights are set by ``reinit`` in the factory
        pass

    def get_input_embeddings(self):
        return self.model.transformer["wte"]

    def get_output_embeddings(self):
        return None if self.config.weight_tying else self.model.transformer["ff_out"]

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        inputs_embeds=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        logits, hidden_states = self.model(
            input_ids, attention_mask, inputs_embeds=inputs_embeds, output_hidden_states=bool(output_hidden_states)
        )
        return CausalLMOutputWithPast(logits=logits, hidden_states=hidden_states)


def make_llada_like(
    vocab_size: int = LLADA_VOCAB,
    mask_id: int = LLADA_MASK_ID,
    seed: int = 0,
    hidden: int = 32,
    n_layers: int = 2,
    n_heads: int = 4,
    weight_tying: bool = False,
    learned_positions: bool = True,
) -> TinyLLaDAModelLM:
    if not 0 <= mask_id < vocab_size:
        raise ValueError("mask_id must be inside the vocabulary")
    config = TinyLLaDAConfig(
        vocab_size=vocab_size,
        d_model=hidden,
        n_heads=n_heads,
        n_layers=n_layers,
        mlp_hidden_size=2 * hidden,
        weight_tying=weight_tying,
        learned_positions=learned_positions,
        mask_token_id=mask_id,
    )
    model = TinyLLaDAModelLM(config)
    reinit(model, seed, head_names=("model.transformer.ff_out",))
    if weight_tying:
        # With a tied head a masked position's own embedding tends to win the argmax, so an untrained model
        # would "predict" [MASK]; shrink that row so predictions are real tokens, as with a trained model.
        with torch.no_grad():
            model.model.transformer["wte"].weight[mask_id] *= 0.05
    return model.float().eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------------------------
# Dream-like
# --------------------------------------------------------------------------------------------------------------


class TinyDreamConfig(PretrainedConfig):
    model_type = "Dream"

    def __init__(
        self,
        vocab_size: int = DREAM_VOCAB,
        hidden_size: int = 32,
        intermediate_size: int = 64,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        num_key_value_heads: int = 4,
        max_position_embeddings: int = 4096,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-6,
        tie_word_embeddings: bool = False,
        learned_positions: bool = True,
        mask_token_id: int = DREAM_MASK_ID,
        pad_token_id: int | None = DREAM_PAD_ID,
        bos_token_id: int | None = DREAM_PAD_ID,
        eos_token_id: int | None = DREAM_PAD_ID,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.tie_word_embeddings = tie_word_embeddings
        self.learned_positions = learned_positions
        self.mask_token_id = mask_token_id

        def inside(tok):
            return tok if tok is not None and tok < vocab_size else None

        self.pad_token_id = inside(pad_token_id)
        self.bos_token_id = inside(bos_token_id)
        self.eos_token_id = inside(eos_token_id)
        # passed on, not only set above: transformers 4.x's ``PretrainedConfig.__init__`` would reset it to True
        # and ``post_init`` would then tie ``lm_head`` to ``embed_tokens``
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


class _DreamBase(nn.Module):
    def __init__(self, config: TinyDreamConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.learned_positions:
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layers = nn.ModuleList(
            Block(config.hidden_size, config.num_attention_heads, config.intermediate_size, config.rope_theta)
            for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                output_hidden_states=False):
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        b, length = h.shape[:2]
        positions = torch.arange(length, device=h.device) if position_ids is None else position_ids
        if self.config.learned_positions:
            h = h + self.embed_positions(positions.to(h.device))
        attn_mask = to_sdpa_mask(attention_mask, b, length, h.device)
        hidden_states = [h] if output_hidden_states else None
        for layer in self.layers:
            h = layer(h, positions, attn_mask)
            if output_hidden_states:
                hidden_states.append(h)
        return self.norm(h), (tuple(hidden_states) if output_hidden_states else None)


class TinyDreamModel(PreTrainedModel):
    config_class = TinyDreamConfig
    base_model_prefix = "model"
    _supports_sdpa = True

    def __init__(self, config: TinyDreamConfig):
        super().__init__(config)
        self.model = _DreamBase(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
        self.generation_config = GenerationConfig(
            mask_token_id=config.mask_token_id,
            pad_token_id=config.pad_token_id,
            bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id,
        )

    def _init_weights(self, module):  # weights are set by ``reinit`` in the factory
        pass

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        cache_position=None,
        num_logits_to_keep: int = 0,
        **kwargs,
    ):
        h, hidden_states = self.model(
            input_ids, attention_mask, position_ids, inputs_embeds, output_hidden_states=bool(output_hidden_states)
        )
        if num_logits_to_keep:
            h = h[:, -num_logits_to_keep:]
        logits = self.lm_head(h)
        return CausalLMOutputWithPast(logits=logits, hidden_states=hidden_states)


def make_dream_like(
    vocab_size: int = DREAM_VOCAB,
    mask_id: int = DREAM_MASK_ID,
    seed: int = 0,
    hidden: int = 32,
    n_layers: int = 2,
    n_heads: int = 4,
    pad_id: int | None = DREAM_PAD_ID,
    learned_positions: bool = True,
) -> TinyDreamModel:
    if not 0 <= mask_id < vocab_size:
        raise ValueError("mask_id must be inside the vocabulary")
    config = TinyDreamConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        learned_positions=learned_positions,
        mask_token_id=mask_id,
        pad_token_id=pad_id,
        bos_token_id=pad_id,
        eos_token_id=pad_id,
    )
    model = TinyDreamModel(config)
    reinit(model, seed, head_names=("lm_head",))
    return model.float().eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------------------


def left_padded_batch(lengths, vocab_low: int, vocab_high: int, pad_id: int, seed: int = 0):
    """Random prompts of the given lengths, right-aligned; returns (input_ids, attention_mask), both long."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        if n:
            input_ids[row, width - n:] = torch.randint(vocab_low, vocab_high, (n,), generator=gen)
            attention_mask[row, width - n:] = 1
    return input_ids, attention_mask
