"""Tiny random instances of the project's native LLaDA and Dream (``upo_fast.models``), built like the stand-ins
of ``tiny_models`` (same factory signatures, same seeded ``reinit``), so that every drop-in equivalence test runs
on both. The native models have no learned absolute positions (the official architectures have none)."""

from __future__ import annotations

import torch
from tiny_layers import reinit
from tiny_models import DREAM_MASK_ID, DREAM_PAD_ID, DREAM_VOCAB, LLADA_EOS_ID, LLADA_MASK_ID, LLADA_VOCAB

from upo_fast.models.dream import DreamConfig, DreamModel
from upo_fast.models.llada import LLaDAConfig, LLaDAModelLM


def make_native_llada(vocab_size: int = LLADA_VOCAB, mask_id: int = LLADA_MASK_ID, seed: int = 0, hidden: int = 32,
                      n_layers: int = 2, n_heads: int = 4, weight_tying: bool = False, n_kv_heads: int | None = None,
                      **_ignored) -> LLaDAModelLM:
    config = LLaDAConfig(d_model=hidden, n_heads=n_heads, n_kv_heads=n_kv_heads, n_layers=n_layers,
                         mlp_hidden_size=2 * hidden, vocab_size=vocab_size, embedding_size=vocab_size,
                         max_sequence_length=4096, rope_theta=10000.0, weight_tying=weight_tying, mask_token_id=mask_id,
                         eos_token_id=LLADA_EOS_ID if LLADA_EOS_ID < vocab_size else None,
                         pad_token_id=LLADA_EOS_ID if LLADA_EOS_ID < vocab_size else None)
    model = LLaDAModelLM(config)
    reinit(model, seed, head_names=("model.transformer.ff_out",))
    if weight_tying:  # as in make_llada_like: an untrained tied head would predict each position's own token
        with torch.no_grad():
            model.model.transformer["wte"].weight[mask_id] *= 0.05
    return model.float().eval().requires_grad_(False)


def make_native_dream(vocab_size: int = DREAM_VOCAB, mask_id: int = DREAM_MASK_ID, seed: int = 0, hidden: int = 32,
                      n_layers: int = 2, n_heads: int = 4, pad_id: int | None = DREAM_PAD_ID,
                      n_kv_heads: int | None = None, **_ignored) -> DreamModel:
    from transformers import GenerationConfig

    config = DreamConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=n_layers, num_attention_heads=n_heads,
                         num_key_value_heads=n_kv_heads or n_heads, rope_theta=10000.0, mask_token_id=mask_id,
                         pad_token_id=pad_id, bos_token_id=pad_id, eos_token_id=pad_id)
    model = DreamModel(config)
    reinit(model, seed, head_names=("lm_head",))
    model.generation_config = GenerationConfig(mask_token_id=mask_id, pad_token_id=pad_id, bos_token_id=pad_id,
                                               eos_token_id=pad_id)
    return model.float().eval().requires_grad_(False)
