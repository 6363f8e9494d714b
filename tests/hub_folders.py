"""Tiny LLaDA and Dream folders in the hub's layout, built the way a user's download looks: ``config.json`` (with
``mask_token_id``) and ``model.safetensors`` saved by ``save_pretrained`` from the project's native models, Dream's
``generation_config.json``, and a character-level tokenizer (``tokenizer.json`` + ``tokenizer_config.json``, fast
tokenizer, left padding) with the family's special tokens. Random weights, a vocabulary of 128: every sampler call
on them takes well under a second on the CPU.

``make_llada_folder(path)`` / ``make_dream_folder(path)`` write a folder and return its path; ``upo_fast.load_model``
and ``upo_fast.load_tokenizer`` load it like the real checkpoints (tests/test_readme_snippets.py runs the README's
snippets on them)."""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 128
CHARS = [chr(c) for c in range(32, 127)] + ["\n"]  # ids 0..95: printable ASCII and the newline
# the family's special tokens, after the characters (ids 96..99); the rest of the vocabulary is unused
SPECIALS = {
    "llada": {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>",
              "unk_token": "<|unk|>"},
    "dream": {"bos_token": "<|beginoftext|>", "eos_token": "<|endoftext|>", "mask_token": "<|mask|>",
              "unk_token": "<|unk|>"},
}


def token_ids(family: str) -> dict[str, int]:
    """{"bos_token": id, "eos_token": id, "mask_token": id, "unk_token": id} of the family's tiny tokenizer."""
    return {name: len(CHARS) + i for i, name in enumerate(SPECIALS[family])}


def save_tokenizer(folder: Path, family: str) -> None:
    """A character-level WordLevel tokenizer, saved as tokenizer.json + tokenizer_config.json; the pad token is the
    EOS token, as in LLaDA's and Dream's folders."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIALS[family]
    vocab = {ch: i for i, ch in enumerate(CHARS)}
    vocab.update({specials[name]: i for name, i in token_ids(family).items()})
    vocab.update({f"<t{i}>": i for i in range(len(vocab), VOCAB)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=specials["eos_token"], padding_side="left",
                                   **specials)
    fast.save_pretrained(folder)


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded weights with some spread, so that confidences differ between positions."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) / param.shape[-1] ** 0.5)
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
            else:  # a norm's weight
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
    return model


def make_llada_folder(folder, seed: int = 0) -> Path:
    """A LLaDA folder (model_type "llada", untied head) with a vocabulary of ``VOCAB`` and its tokenizer."""
    from upo_fast.models.llada import LLaDAConfig, LLaDAModelLM

    folder = Path(folder)
    ids = token_ids("llada")
    config = LLaDAConfig(d_model=32, n_heads=4, n_layers=2, mlp_hidden_size=64, vocab_size=VOCAB,
                         embedding_size=VOCAB, max_sequence_length=4096, rope_theta=500000.0,
                         mask_token_id=ids["mask_token"], eos_token_id=ids["eos_token"],
                         pad_token_id=ids["eos_token"], bos_token_id=ids["bos_token"])
    _randomize(LLaDAModelLM(config), seed).save_pretrained(folder, safe_serialization=True)
    save_tokenizer(folder, "llada")
    return folder


def make_dream_folder(folder, seed: int = 0) -> Path:
    """A Dream folder (model_type "Dream") with generation_config.json, a vocabulary of ``VOCAB`` and its
    tokenizer."""
    from transformers import GenerationConfig

    from upo_fast.models.dream import DreamConfig, DreamModel

    folder = Path(folder)
    ids = token_ids("dream")
    special = dict(mask_token_id=ids["mask_token"], pad_token_id=ids["eos_token"], bos_token_id=ids["bos_token"],
                   eos_token_id=ids["eos_token"])
    config = DreamConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, **special)
    model = _randomize(DreamModel(config), seed)
    model.generation_config = GenerationConfig(**special)
    model.save_pretrained(folder, safe_serialization=True)
    save_tokenizer(folder, "dream")
    return folder
