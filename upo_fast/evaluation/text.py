"""Evaluate unmasking orders on text tasks (GSM8K, MATH500, arith) with LLaDA / Dream: the task's prompts
(:mod:`upo_fast.tasks.math_tasks`, :mod:`upo_fast.tasks.arith`) completed by :func:`upo_fast.sampling.loop.generate`,
then scored by the task's rewards.

The task module holds the data, prompts and rewards and never runs a model; this module runs the sampler, so it
sits above the loop (and the policy, which ``scorer="policy"`` passes through)."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from upo_fast.sampling.loop import generate
from upo_fast.tasks import TEXT_TASKS, arith
from upo_fast.tasks.math_tasks import build_prompts, flexible_match, math_rewards
from upo_fast.tasks.metrics import pass_at_k


def _complete(model, tokenizer, prompts, *, add_special_tokens: bool, device, generator, batch_size: int,
              progress: bool, desc: str, **sampler_options) -> tuple[list[str], list[int]]:
    """Generated text (prompt excluded, special tokens skipped) for each prompt, in order, and the MDM forwards
    each used."""
    completions, forwards = [], []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, leave=False):
        batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=add_special_tokens)
        input_ids = batch["input_ids"].to(device)
        attention_mask = batch["attention_mask"].to(device)
        out, steps = generate(model, input_ids, attention_mask, generator=generator, return_steps=True,
                              **sampler_options)
        generated = out[:, input_ids.shape[1]:].cpu()
        completions.extend(tokenizer.batch_decode(generated, skip_special_tokens=True))
        forwards.extend(steps.tolist())
    return completions, forwards


def check_text_task(task) -> None:
    if task not in TEXT_TASKS:
        raise ValueError(f"task must be one of {', '.join(TEXT_TASKS)}, got {task!r}")


def task_prompts(problems, tokenizer, task: str, chat: bool) -> list[str]:
    """The prompt strings: GSM8K / MATH500 with their instructions (``math_tasks.build_prompts``); arith's bare
    question (its models were trained on it, with no chat template)."""
    if task == arith.NAME:
        return [p.question for p in problems]
    return build_prompts(problems, tokenizer, task, chat=chat)


def task_rewards(completions, answers, task: str) -> dict:
    """{"reward", "correct", "format_ok", "extracted"} of a batch of completions (see ``math_tasks.math_rewards``)."""
    return arith.rewards(completions, answers) if task == arith.NAME else math_rewards(completions, answers, task)


def _checked(model, problems, task: str, pass_at, batch_size, device) -> tuple[list, torch.device]:
    """The problems as a list and the device to sample on, after checking the options (ValueError naming them)."""
    check_text_task(task)
    if not isinstance(pass_at, int) or isinstance(pass_at, bool) or pass_at < 1:
        raise ValueError(f"pass_at must be an int >= 1 (samples per problem), got {pass_at!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    problems = list(problems)
    if not problems:
        raise ValueError("problems is empty: nothing to evaluate")
    model_device = next(model.parameters()).device
    device = torch.device(device) if device is not None else model_device
    if device.type != model_device.type or device.index not in (None, model_device.index):
        # the sampler runs where the model is; a generator on another device cannot drive it
        raise ValueError(f"device={device} but the model is on {model_device}; move the model first "
                         f"(model.to({str(device)!r})) or leave device=None")
    return problems, device


@contextlib.contextmanager
def _left_padded(tokenizer):
    """The tokenizer pads on the left (``generate`` appends the masks after the prompts: pads must come first),
    with its EOS token when it has no pad token; both settings are restored afterwards."""
    if tokenizer.pad_token is None and tokenizer.eos_token is None:
        raise ValueError("the tokenizer has neither a pad token nor an EOS token to pad the prompts with")
    saved_side, saved_pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = saved_side
        if saved_pad is None:
            tokenizer.pad_token = None


def _summary(samples: list[list[str]], forwards: list[list[int]], problems, answers, task: str, pass_at: int,
             start_time: float) -> dict:
    """The result dict of :func:`evaluate_math` from the completions and forwards ([N samples][P problems])."""
    scored = [task_rewards(completions, answers, task) for completions in samples]
    correct = np.stack([s["correct"] for s in scored])  # [N samples, P problems]
    flexible = np.array([[flexible_match(c, a) for c, a in zip(completions, answers)] for completions in samples])
    result = {
        "accuracy": float(correct.mean()),
        "flexible_accuracy": float(flexible.mean()),
        "format_rate": float(np.stack([s["format_ok"] for s in scored]).mean()),
        "forwards": float(np.mean(forwards)),
        "mean_reward": float(np.stack([s["reward"] for s in scored]).mean()),
        "n": len(problems),
        "seconds": round(time.perf_counter() - start_time, 3),
        "examples": [{"question": p.question, "completion": c, "extracted": x, "reference": p.answer,
                      "correct": bool(ok)}
                     for p, c, x, ok in zip(problems[:3], samples[0], scored[0]["extracted"], correct[0])],
        "correct": [bool(ok) for ok in correct[0]],  # the first sample's, per problem: paired comparisons
    }
    if pass_at > 1:
        counts = correct.sum(0)
        result["pass_at"] = {str(k): pass_at_k(pass_at, counts, k) for k in range(1, pass_at + 1)}
    return result


def evaluate_math(model, tokenizer, problems, *, task: str, scorer="max_confidence", gen_length: int = 256,
                  block_length: int = 32, steps: int | None = None, batch_size: int = 8, temperature: float = 0.0,
                  position_temperature: float = 1.0, pass_at: int = 1, seed: int = 0, chat: bool = True,
                  policy=None, device=None, progress: bool = True, threshold: float | None = None,
                  factor: float | None = None, cache: str | None = None, commit=None, topk: int = 5) -> dict:
    """Accuracy of ``model`` (LLaDA / Dream, or any model ``upo_fast.sampling.loop.generate`` takes) on ``problems``.

    Prompts (``build_prompts``) are tokenized with left padding (the tokenizer's ``padding_side`` is restored
    afterwards; a tokenizer without a pad token pads with its EOS token) and completed by ``generate`` with
    ``scorer`` (steps default: ``gen_length``, one token per step); ``threshold`` / ``factor`` (Fast-dLLM's parallel
    rules, at most one) and ``cache`` (None, "prefix" or "dual": Fast-dLLM's KV caches, native LLaDA / Dream only)
    are ``generate``'s. With ``pass_at`` = N > 1 every problem gets N samples from different seeds (they differ
    only where sampling is random: temperature > 0 or a stochastic scorer) and "pass_at" holds the unbiased Pass@k
    for k = 1..N.

    Returns {"accuracy", "format_rate", "mean_reward", "forwards" (means over all samples; forwards: MDM forwards
    per problem), "correct" (the first sample's, per problem), "flexible_accuracy" (also
    crediting the last number of the answer, see ``math_tasks.flexible_match``), "pass_at" (N > 1 only), "n",
    "seconds", "examples": the first 3 problems' first samples}.
    """
    problems, device = _checked(model, problems, task, pass_at, batch_size, device)
    use_chat = chat and bool(getattr(tokenizer, "chat_template", None))
    prompts = task_prompts(problems, tokenizer, task, chat=use_chat)
    answers = [p.answer for p in problems]
    # a chat template that writes the BOS token itself (LLaDA's Llama-3-style one) must not get a second one;
    # otherwise (plain prompts, Qwen-style templates) the tokenizer adds its usual special tokens
    bos = getattr(tokenizer, "bos_token", None)
    add_special_tokens = not (use_chat and bos and all(p.startswith(bos) for p in prompts))
    options = dict(gen_length=gen_length, block_length=block_length, steps=gen_length if steps is None else steps,
                   scorer=scorer, temperature=temperature, position_temperature=position_temperature, policy=policy,
                   threshold=threshold, factor=factor, cache=cache, commit=commit, topk=topk)
    start_time = time.perf_counter()
    samples, forwards = [], []
    with _left_padded(tokenizer):
        for i in range(pass_at):
            generator = torch.Generator(device).manual_seed(seed + 1000 * i)
            completions, used = _complete(model, tokenizer, prompts, add_special_tokens=add_special_tokens,
                                          device=device, generator=generator, batch_size=batch_size,
                                          progress=progress, desc=f"{task} sample {i + 1}", **options)
            samples.append(completions)
            forwards.append(used)
    return _summary(samples, forwards, problems, answers, task, pass_at, start_time)
