"""``generate_until`` of the lm-eval model: prompts batched with left padding, answers cut at the first end token
and at the task's stop strings. Kept apart from ``lm_eval.py`` so that it imports without lm-evaluation-harness."""

from __future__ import annotations

import hashlib

import torch
from tqdm.auto import tqdm

END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|endoftext|>")  # LLaDA's and Dream's chat formats


def request_seed(seed: int, *texts: str) -> int:
    """A seed from the request's own text: the same on every process and in every shard or batch order."""
    digest = hashlib.sha256("\x1f".join((str(seed), *texts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") % 2**63


def until_strings(gen_kwargs) -> list[str]:
    """The stop strings of a request's ``gen_kwargs`` (``until``: a string or a list)."""
    if not isinstance(gen_kwargs, dict):
        return []
    until = gen_kwargs.get("until") or []
    return [until] if isinstance(until, str) else list(until)


def stop_token_ids(tokenizer, model) -> set[int]:
    """Token ids that end an answer: the tokenizer's EOS, the generation config's EOS ids and the end-of-turn
    tokens of LLaDA's and Dream's chat formats that the tokenizer has."""
    ids = {tokenizer.eos_token_id}
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in END_OF_TURN_TOKENS if token in vocab)
    return {int(i) for i in ids if i is not None}


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[B, L] ids padded on the left with ``pad_id`` and the [B, L] 0/1 attention mask (None when no row is
    padded: the model then attends everywhere, as it does for a single prompt)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], dtype=torch.long)
    if all(len(r) == width for r in rows):
        return ids, None
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return ids, mask


def finish_text(tokenizer, answer_ids: list[int], stop_ids: set[int], until: list[str]) -> str:
    """The answer as lm-eval scores it: up to the first end token, special tokens dropped, cut at the earliest
    stop string."""
    end = next((k for k, token in enumerate(answer_ids) if token in stop_ids), len(answer_ids))
    text = tokenizer.decode(answer_ids[:end], skip_special_tokens=True)
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


def generate_texts(lm, requests_args: list[tuple], *, progress: bool = True) -> list[str]:
    """Answers of ``lm`` (an ``UpoFastLM``) to ``(context, gen_kwargs)`` requests, in request order.

    Longest prompts first (an out-of-memory batch shows up at once), or in the requests' order with
    ``sort_by_length=False`` (how ``upo-fast eval`` batches: LLaDA attends to the left padding, so its answer to a
    prompt depends on the longest prompt of its batch); ``lm.options.batch_size`` per ``upo_fast.generate`` call;
    prompts longer than ``max_length - gen_length`` lose their left end. Each batch draws its noise from a seed
    made of its prompts' text, so a run is reproducible under any sharding. With ``stop_at_eos=False`` an answer is
    all of its generated text (special tokens dropped), as ``upo-fast eval`` decodes it.
    """
    from upo_fast.sampling.loop import generate

    o = lm.options
    room = lm.max_length - o.gen_length
    if room < 1:
        raise ValueError(f"gen_length={o.gen_length} leaves no room for a prompt within max_length={lm.max_length}")
    contexts = [args[0] for args in requests_args]
    encoded = [lm.encode(context)[-room:] for context in contexts]
    if any(not ids for ids in encoded):
        raise ValueError("an empty prompt: every generate_until request needs a context with at least one token")
    order = list(range(len(encoded)))
    if o.sort_by_length:
        order.sort(key=lambda i: -len(encoded[i]))
    stop_ids = lm.stop_ids if o.stop_at_eos else set()
    answers: list[str | None] = [None] * len(encoded)
    batches = range(0, len(order), o.batch_size)
    for start in tqdm(batches, desc="upo_fast generate_until", disable=not progress):
        batch = order[start:start + o.batch_size]
        ids, mask = left_pad([encoded[i] for i in batch], lm.tokenizer.pad_token_id)
        seed = request_seed(o.seed, *(contexts[i] for i in batch))
        generator = torch.Generator(device=lm.device).manual_seed(seed)
        tokens = generate(lm.adapter, ids.to(lm.device), None if mask is None else mask.to(lm.device),
                          generator=generator, **lm.sampler)
        for row, i in enumerate(batch):
            gen_kwargs = requests_args[i][1] if len(requests_args[i]) > 1 else {}
            answers[i] = finish_text(lm.tokenizer, tokens[row, ids.shape[1]:].tolist(), stop_ids,
                                     until_strings(gen_kwargs))
            lm.cache_hook.add_partial("generate_until", requests_args[i], answers[i])
    return answers
