"""Small LLaDA / Dream models trained from scratch on the ``arith`` task, in the official architectures, with
LLaDA's recipe: MDM pretraining (every token but BOS and padding may be masked, at a random ratio), then SFT (the
prompt is always given, only the response region of ``GEN_LENGTH`` tokens, its EOS fill included, is masked).

Both phases are :func:`upo_fast.training.pretrain_mdm.pretrain_mdm` runs with their own checkpoint folder
(``OUT/pretrain``, ``OUT/sft``), so an interrupted run resumes where it stopped: a finished pretraining phase
restores its last weights and the SFT phase goes on from its own newest checkpoint. ``OUT`` then holds the model in
the hub layout (``config.json``, ``model.safetensors``, ``generation_config.json``, the tokenizer files).

Batches: every row of a batch has the same operand digit counts, so prompts have equal length without padding.
LLaDA's official forward attends to padding, so its batches get 0-5 pad tokens on the left (the same count for the
batch): a left-padded prompt at sampling time is then something it has seen. Dream's sampler hides padding with its
attention mask and position ids, so its batches get none. Dream's output i scores token i + 1 (``shift_logits``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from upo_fast.tasks import arith
from upo_fast.training.pretrain_mdm import PretrainConfig, pretrain_mdm

TEXT_ARCHS = ("llada", "dream")
MAX_LEFT_PAD = 5


@dataclass(frozen=True)
class TextModelSize:
    """The network's size; the rest of the config is the official architecture's."""

    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2  # grouped-query attention, as Dream-7B (LLaDA-8B has n_kv_heads = n_heads; both load)
    mlp_ratio: int = 3
    # LLaDA's include_qkv_bias (Dream always has q/k/v biases). A bias gives attention a content-free term that
    # depends on the relative position alone (RoPE), what copying the digit k places back needs: without it a
    # small LLaDA learned arith's alignment far slower than the same-size Dream (0.03 against 0.42 validation
    # exact match after the same 4,500 steps)
    qkv_bias: bool = True

    def __post_init__(self):
        for name in ("hidden_size", "layers", "heads", "kv_heads", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TextModelSize.{name} must be an int >= 1, got {value!r}")
        if self.hidden_size % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must divide by heads ({self.heads}) and heads by "
                             f"kv_heads ({self.kv_heads})")


def _check_arch(arch: str) -> None:
    if arch not in TEXT_ARCHS:
        raise ValueError(f"arch must be one of {', '.join(TEXT_ARCHS)}, got {arch!r}")


def build_model(arch: str, tokenizer, size: TextModelSize = TextModelSize(), seed: int = 0):
    """A freshly initialized native LLaDA or Dream over ``tokenizer``'s vocabulary."""
    _check_arch(arch)
    vocab = len(tokenizer)
    mask_id = tokenizer.mask_token_id
    max_len = tokenizer.model_max_length
    torch.manual_seed(seed)
    if arch == "llada":
        from upo_fast.models.llada import LLaDAConfig, LLaDAModelLM

        config = LLaDAConfig(d_model=size.hidden_size, n_heads=size.heads, n_kv_heads=size.kv_heads,
                             include_qkv_bias=size.qkv_bias,
                             n_layers=size.layers, mlp_hidden_size=size.mlp_ratio * size.hidden_size,
                             vocab_size=vocab, embedding_size=vocab, max_sequence_length=max_len, rope_theta=10000.0,
                             mask_token_id=mask_id, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
        return LLaDAModelLM(config)
    from upo_fast.models.dream import DreamConfig, DreamModel

    config = DreamConfig(vocab_size=vocab, hidden_size=size.hidden_size,
                         intermediate_size=size.mlp_ratio * size.hidden_size, num_hidden_layers=size.layers,
                         num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
                         max_position_embeddings=max_len, rope_theta=10000.0, mask_token_id=mask_id,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    return DreamModel(config)


class ArithBatches:
    """``sample_batch(B, generator) -> (tokens [B, L], maskable [B, L])`` for :func:`pretrain_mdm`.

    ``sft``: only the response region may be masked; else every token but BOS and padding. ``block_rows``: the share
    of SFT rows masked as the block schedule leaves them (``block_masks``); the batch is then (tokens, maskable,
    always)."""

    def __init__(self, tokenizer, arch: str, sft: bool, block_rows: float = 0.0):
        _check_arch(arch)
        if not 0.0 <= block_rows <= 1.0 or (block_rows and not sft):
            raise ValueError(f"block_rows must be in [0, 1], and 0 outside SFT; got {block_rows!r}")
        self.tokenizer, self.arch, self.sft, self.block_rows = tokenizer, arch, sft, block_rows
        self.pad, self.eos = tokenizer.pad_token_id, tokenizer.eos_token_id

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def __call__(self, batch_size: int, generator: torch.Generator):
        seed = int(torch.randint(2**62, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        pairs = arith.operands(rng, batch_size, shared_digits=True)  # one prompt length: no padding between rows
        left = int(rng.integers(0, MAX_LEFT_PAD + 1)) if self.arch == "llada" else 0
        rows = []
        for a, b in pairs:
            prompt = [self.tokenizer.bos_token_id, *self._encode(arith.question(a, b))]
            response = self._encode(arith.worked_answer(a, b))
            response = response + [self.eos] * (arith.GEN_LENGTH - len(response))
            rows.append([self.pad] * left + prompt + response)
        tokens = torch.tensor(rows, dtype=torch.long)
        maskable = torch.zeros_like(tokens, dtype=torch.bool)
        start = tokens.shape[1] - arith.GEN_LENGTH if self.sft else left + 1
        maskable[:, start:] = True
        if not self.block_rows:
            return tokens, maskable
        return (tokens, *block_masks(maskable, rng, self.block_rows))


def block_masks(maskable: torch.Tensor, rng: np.random.Generator, share: float):
    """(maskable, always) with a ``share`` of the rows as the semi-autoregressive schedule leaves them: the blocks
    before a random active block given, the blocks after it masked, the active block masked at the drawn ratio.

    Why: with independent masks a row almost never has a clean prefix and a fully masked rest, and a small LLaDA
    trained on those alone completes the first block and then fails at every later block (0.0 exact match in blocks
    of 16, 0.86 in one block of 64; Dream, whose output i reads position i - 1, does not need it)."""
    rows, length = maskable.shape
    offset = torch.arange(length) - (length - arith.GEN_LENGTH)  # position within the response region
    chosen = torch.from_numpy(rng.random(rows) < share)[:, None]
    first = torch.from_numpy(rng.integers(arith.GEN_LENGTH // arith.BLOCK_LENGTH, size=rows))[:, None]
    first = first * arith.BLOCK_LENGTH
    before = chosen & (offset >= 0) & (offset < first)
    always = chosen & (offset >= first + arith.BLOCK_LENGTH)
    maskable = maskable & ~before & ~always
    return maskable, always


@dataclass(frozen=True)
class TextPretrainPlan:
    """The two phases: ``pretrain`` (every token maskable) then ``sft`` (response only)."""

    arch: str
    out_dir: str
    pretrain: PretrainConfig
    sft: PretrainConfig
    size: TextModelSize = TextModelSize()
    init_from: str | None = None  # go on from this trained folder: SFT only (the pretraining phase is skipped)
    block_rows: float = 0.0  # SFT rows masked as the block schedule leaves them (ArithBatches)


def _phase(model, tokenizer, plan: TextPretrainPlan, name: str, eval_fn) -> dict:
    cfg = replace(getattr(plan, name), out_dir=str(Path(plan.out_dir) / name))
    batches = ArithBatches(tokenizer, plan.arch, sft=name == "sft", block_rows=plan.block_rows if name == "sft" else 0)
    mask_id = tokenizer.mask_token_id
    return pretrain_mdm(model, batches, cfg, mask_id=mask_id, eval_fn=eval_fn, progress=False,
                        shift_logits=plan.arch == "dream")


def pretrain_text_mdm(plan: TextPretrainPlan, eval_fn=None) -> dict:
    """Both phases, resumable; writes the hub-layout folder to ``plan.out_dir`` and returns the summaries."""
    _check_arch(plan.arch)
    tokenizer = arith.build_tokenizer()
    if plan.init_from is not None:
        from upo_fast.models.loading import load_model

        model = load_model(plan.init_from, dtype=torch.float32).requires_grad_(True)
    else:
        model = build_model(plan.arch, tokenizer, plan.size, seed=plan.pretrain.seed)
    started = time.perf_counter()
    phases = ("sft",) if plan.init_from is not None else ("pretrain", "sft")
    summaries = {name: _phase(model, tokenizer, plan, name, eval_fn) for name in phases}
    save_folder(model, tokenizer, plan.out_dir)
    summary = {"arch": plan.arch, "size": asdict(plan.size), "init_from": plan.init_from, "phases": summaries,
               "training_seconds": sum(s["total_seconds"] for s in summaries.values()),
               "this_call_seconds": round(time.perf_counter() - started, 1)}
    Path(plan.out_dir, "train_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _portable_tokenizer_config(path: Path) -> None:
    """transformers 5 names the class ``TokenizersBackend``, which 4.x (what LLaDA / Dream users pin) does not know;
    ``PreTrainedTokenizerFast`` is the same tokenizer to both."""
    config = json.loads(path.read_text())
    config.pop("backend", None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2) + "\n")


def save_folder(model, tokenizer, out_dir) -> None:
    """The hub layout: config.json, model.safetensors, generation_config.json, tokenizer.json,
    tokenizer_config.json (``upo_fast.load_model`` / ``load_tokenizer`` read it)."""
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _portable_tokenizer_config(out / "tokenizer_config.json")
    mask_id = tokenizer.mask_token_id
    generation = {"mask_token_id": mask_id, "pad_token_id": tokenizer.pad_token_id,
                  "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                  "max_new_tokens": arith.GEN_LENGTH, "steps": arith.GEN_LENGTH, "alg": "maskgit_plus"}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


VALIDATION_PROBLEMS = 64


def validation_fn(n: int = VALIDATION_PROBLEMS):
    """``eval_fn`` for :func:`pretrain_mdm`: exact match with max-confidence, one token a step, on the first ``n``
    validation problems (the test split is never looked at while training)."""
    from upo_fast.evaluation.text import evaluate_math

    tokenizer, problems = arith.build_tokenizer(), arith.make_problems(n, "validation")

    def evaluate(model) -> dict:
        result = evaluate_math(model, tokenizer, problems, task=arith.NAME, gen_length=arith.GEN_LENGTH,
                               block_length=arith.BLOCK_LENGTH, batch_size=n, progress=False)
        return {"val_accuracy": result["accuracy"], "val_format_rate": result["format_rate"]}

    return evaluate
