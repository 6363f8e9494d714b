"""Plain re-statements of the two upstream samplers, used as the ground truth in the equivalence tests.

* ``llada_generate_reference`` follows LLaDA's ``generate()`` (ML-GSAI/LLaDA, generate.py).
* ``dream_generate_reference`` follows Dream's ``diffusion_generate()`` / ``_sample`` (the model's remote code,
  generation_utils.py).

They are written for clarity, step by step, and keep the upstream behaviour on purpose -- including the odd
parts, which are called out where they happen (look for "quirk").  Each call draws from the global torch RNG
exactly as upstream does, so seeding before both samplers makes stochastic choices line up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

LLADA_MASK_ID = 126336
LLADA_EOS_ID = 126081
LLADA_EOT_ID = 126348

NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------------------------
# LLaDA
# --------------------------------------------------------------------------------------------------------------


def llada_transfer_schedule(block_is_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """How many tokens each row commits at each of ``steps`` steps: an even split of the masked count, with the
    remainder spread one by one over the first steps.  Shape [B, steps], int64."""
    n_masked = block_is_masked.sum(dim=1, keepdim=True)
    per_step, extra = n_masked // steps, n_masked % steps
    schedule = per_step.repeat(1, steps).to(torch.int64)
    for row in range(schedule.shape[0]):
        schedule[row, : int(extra[row])] += 1
    return schedule


def _gumbel_perturb(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    # At temperature 0 the very same tensor is handed back (no copy): later in-place writes to one are
    # visible through the other, which upstream relies on unknowingly (see the eos/eot quirk below).
    if temperature == 0:
        return logits
    as64 = logits.to(torch.float64)
    u = torch.rand_like(as64, dtype=torch.float64)
    return as64.exp() / (-torch.log(u)) ** temperature


def _boundary_tie(row_conf: torch.Tensor, k: int) -> bool:
    """True when the k-th and (k+1)-th largest finite values are equal (topk's choice is then ambiguous)."""
    if k <= 0 or k >= row_conf.numel():
        return False
    top = torch.topk(row_conf, k + 1).values
    return bool(torch.isfinite(top[k]) and top[k - 1] == top[k])


@torch.no_grad()
def llada_generate_reference(
    model,
    prompt: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    steps: int = 128,
    gen_length: int = 128,
    block_length: int = 128,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    mask_id: int = LLADA_MASK_ID,
    logits_eos_inf: bool = False,
    confidence_eos_eot_inf: bool = False,
    *,
    eos_id: int = LLADA_EOS_ID,
    eot_id: int = LLADA_EOT_ID,
    trace: list | None = None,
) -> torch.Tensor:
    """LLaDA's block-wise low-confidence / random remasking sampler.

    ``trace``, when a list, receives one dict per step (``tie``: a topk boundary tie happened in some row,
    ``eos_argmax`` / ``eot_argmax``: how many still-masked positions had eos / eot as their argmax) so tests can
    check that a case is well posed and actually exercises what it claims to.
    """
    device = model.device
    batch, prompt_len = prompt.shape
    x = torch.full((batch, prompt_len + gen_length), mask_id, dtype=torch.long, device=device)
    x[:, :prompt_len] = prompt.to(device)

    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
        ones = torch.ones((batch, gen_length), dtype=attention_mask.dtype, device=device)
        attention_mask = torch.cat([attention_mask, ones], dim=-1)

    # Everything that is not [MASK] at the start counts as prompt -- left padding included.
    is_prompt = x != mask_id

    assert gen_length % block_length == 0
    n_blocks = gen_length // block_length
    assert steps % n_blocks == 0
    steps_per_block = steps // n_blocks

    for blk in range(n_blocks):
        blk_start = prompt_len + blk * block_length
        blk_end = blk_start + block_length
        schedule = llada_transfer_schedule(x[:, blk_start:blk_end] == mask_id, steps_per_block)

        for step in range(steps_per_block):
            masked = x == mask_id

            if cfg_scale > 0.0:
                uncond = x.clone()
                uncond[is_prompt] = mask_id
                stacked = torch.cat([x, uncond], dim=0)
                # Note: upstream only builds the doubled mask when a mask was given and would then hit an
                # undefined name without one; here the no-mask case simply runs unmasked (None).
                stacked_mask = None if attention_mask is None else torch.cat([attention_mask, attention_mask], 0)
                both = model(stacked, attention_mask=stacked_mask).logits
                cond_logits, uncond_logits = torch.chunk(both, 2, dim=0)
                logits = uncond_logits + (cfg_scale + 1) * (cond_logits - uncond_logits)
            else:
                logits = model(x, attention_mask=attention_mask).logits

            if logits_eos_inf:
                logits[:, :, eos_id] = NEG_INF

            perturbed = _gumbel_perturb(logits, temperature)
            x0 = torch.argmax(perturbed, dim=-1)

            if trace is not None:
                record = {
                    "eos_argmax": int(((x0 == eos_id) & masked).sum()) if eos_id < logits.shape[-1] else 0,
                    "eot_argmax": int(((x0 == eot_id) & masked).sum()) if eot_id < logits.shape[-1] else 0,
                }

            if confidence_eos_eot_inf:
                # quirk: upstream writes eos into the *perturbed* tensor and eot into the logits, after the
                # argmax.  At temperature 0 both names are the same tensor, so both ids get -inf in the softmax
                # below; at temperature > 0 only eot does.
                perturbed[:, :, eos_id] = NEG_INF
                logits[:, :, eot_id] = NEG_INF

            if remasking == "low_confidence":
                probs = F.softmax(logits, dim=-1)
                x0_score = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
            elif remasking == "random":
                x0_score = torch.rand((x0.shape[0], x0.shape[1]), device=x0.device)
            else:
                raise NotImplementedError(remasking)

            # Nothing beyond the current block may be committed yet.
            x0_score[:, blk_end:] = NEG_INF

            x0 = torch.where(masked, x0, x)
            confidence = torch.where(masked, x0_score, NEG_INF)

            commit = torch.zeros_like(x0, dtype=torch.bool)
            tie = False
            for row in range(confidence.shape[0]):
                k = int(schedule[row, step])
                tie = tie or _boundary_tie(confidence[row], k)
                _, picked = torch.topk(confidence[row], k=k)
                commit[row, picked] = True
            x[commit] = x0[commit]

            if trace is not None:
                record["tie"] = tie
                trace.append(record)

    return x


# --------------------------------------------------------------------------------------------------------------
# Dream
# --------------------------------------------------------------------------------------------------------------


@dataclass
class DreamReferenceOutput(ModelOutput):
    sequences: torch.LongTensor = None
    history: tuple | list | None = None


def _keep_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter: drop (to the dtype's lowest finite value) every token outside the smallest prefix of
    the sorted distribution whose mass exceeds ``top_p``; the most likely token always stays."""
    ordered, order = torch.sort(logits, descending=True)
    mass = torch.cumsum(F.softmax(ordered, dim=-1), dim=-1)
    drop_sorted = mass > top_p
    drop_sorted[..., 1:] = drop_sorted[..., :-1].clone()
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, torch.finfo(logits.dtype).min)


def _keep_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    top_k = min(top_k, logits.size(-1))
    kth_best = torch.topk(logits, top_k)[0][..., -1, None]
    return logits.masked_fill(logits < kth_best, torch.finfo(logits.dtype).min)


def dream_sample_tokens(logits, temperature=0.0, top_p=None, top_k=None, margin_confidence=False,
                        neg_entropy=False):
    """Token choice and confidence for each row of ``logits`` ([n, V]), as Dream's ``sample_tokens``."""
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = _keep_top_p(logits, top_p)
    if top_k is not None:
        logits = _keep_top_k(logits, top_k)
    probs = torch.softmax(logits, dim=-1)

    if temperature > 0:
        try:
            x0 = torch.distributions.Categorical(probs=probs).sample()
            confidence = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
        except Exception:  # upstream falls back to greedy on any sampling error
            confidence, x0 = probs.max(dim=-1)
    else:
        confidence, x0 = probs.max(dim=-1)

    if margin_confidence:
        ranked, _ = torch.sort(probs, dim=-1, descending=True)
        confidence = ranked[:, 0] - ranked[:, 1]
    if neg_entropy:
        confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return confidence, x0


_DREAM_DEFAULTS = {
    "temperature": 0.0,
    "top_p": None,
    "top_k": None,
    "max_length": 20,
    "max_new_tokens": None,
    "eps": 1e-3,
    "steps": 512,
    "alg": "origin",
    "alg_temp": None,
    "num_return_sequences": 1,
    "return_dict_in_generate": False,
    "output_history": False,
    "mask_token_id": None,
}


def _resolve_dream_settings(model, generation_config, kwargs) -> dict:
    settings = dict(_DREAM_DEFAULTS)
    if generation_config is None:
        # upstream builds the config from ``model.config``; only the special tokens come from there
        settings["mask_token_id"] = getattr(model.config, "mask_token_id", None)
    else:
        for key in settings:
            if hasattr(generation_config, key):
                settings[key] = getattr(generation_config, key)
    for key, value in kwargs.items():  # like GenerationConfig.update: only known fields are taken
        if key in settings:
            settings[key] = value
    if settings["mask_token_id"] is None:
        settings["mask_token_id"] = getattr(model.generation_config, "mask_token_id", None)
    if settings["mask_token_id"] is None:
        settings["mask_token_id"] = getattr(model.config, "mask_token_id", None)
    return settings


@torch.no_grad()
def dream_generate_reference(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                             generation_config=None, **kwargs):
    """Dream's ``diffusion_generate`` followed by ``_sample``."""
    tokens_hook = kwargs.pop("generation_tokens_hook_func", lambda step, x, logits: x)
    logits_hook = kwargs.pop("generation_logits_hook_func", lambda step, x, logits: logits)
    trace = kwargs.pop("trace", None)
    cfg = _resolve_dream_settings(model, generation_config, kwargs)

    # ---- length handling
    prompt_len = input_ids.shape[-1]
    length_is_default = kwargs.get("max_length") is None and cfg["max_length"] is not None
    if cfg["max_new_tokens"] is not None:
        cfg["max_length"] = cfg["max_new_tokens"] + prompt_len
    elif length_is_default and cfg["max_length"] == _DREAM_DEFAULTS["max_length"]:
        cfg["max_length"] = cfg["max_length"] + prompt_len
        cap = getattr(model.config, "max_position_embeddings", None)
        if cap is not None:
            cfg["max_length"] = min(cfg["max_length"], cap)
    if prompt_len >= cfg["max_length"]:
        raise ValueError(f"prompt length {prompt_len} >= max_length {cfg['max_length']}")

    # ---- num_return_sequences: each row repeated in place
    if cfg["num_return_sequences"] != 1:
        input_ids = input_ids.repeat_interleave(cfg["num_return_sequences"], dim=0)
        if attention_mask is not None:
            attention_mask = attention_mask.repeat_interleave(cfg["num_return_sequences"], dim=0)

    return _dream_sample(model, input_ids, attention_mask, cfg, tokens_hook, logits_hook, trace)


def _dream_sample(model, input_ids, attention_mask, cfg, tokens_hook, logits_hook, trace=None):
    """``trace``, when a list, receives per step ``{"tie": bool}``: whether a greedy top-k choice hit an exact
    tie at its boundary in some row (then the choice is up to topk's tie-breaking)."""
    mask_id = cfg["mask_token_id"]
    steps, eps, alg, alg_temp = cfg["steps"], cfg["eps"], cfg["alg"], cfg["alg_temp"]
    temperature, top_p, top_k = cfg["temperature"], cfg["top_p"], cfg["top_k"]
    max_length = cfg["max_length"]
    history = [] if (cfg["return_dict_in_generate"] and cfg["output_history"]) else None
    device = model.device

    x = F.pad(input_ids, (0, max_length - input_ids.shape[1]), value=mask_id)

    if attention_mask is not None and torch.any(attention_mask == 0.0):
        # generated positions are attended (mask value 1); positions count only real tokens, pads get 1
        attention_mask = F.pad(attention_mask, (0, max_length - attention_mask.shape[1]), value=1.0)
        position_ids = attention_mask.long().cumsum(-1) - 1
        position_ids.masked_fill_(attention_mask == 0, 1)
        # [B, N] -> [B, 1, N, N]: query i may see key j iff both are real
        attention_mask = torch.logical_and(
            attention_mask.unsqueeze(1).unsqueeze(-2),
            attention_mask.unsqueeze(1).unsqueeze(-1),
        )
    else:
        position_ids = None
        attention_mask = "full"

    timesteps = torch.linspace(1, eps, steps + 1, device=x.device)

    x = tokens_hook(None, x, None)
    for i in range(steps):
        masked = x == mask_id
        # positional call, as upstream: (input_ids, attention_mask, position_ids)
        logits = model(x, attention_mask, position_ids).logits
        # the output at i scores token i + 1: move everything one place right (position 0 keeps its own)
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        logits = logits_hook(i, x, logits)

        masked_logits = logits[masked]
        t, s = timesteps[i], timesteps[i + 1]
        tie = False

        if alg == "origin":
            # every masked position (over the whole batch, flattened) flips a coin with p = 1 - s/t
            p_transfer = 1 - s / t if i < steps - 1 else 1
            proposal = torch.zeros_like(x[masked], dtype=torch.long) + mask_id
            chosen = torch.rand(*proposal.shape, device=device) < p_transfer
            _, proposal[chosen] = dream_sample_tokens(
                masked_logits[chosen], temperature=temperature, top_p=top_p, top_k=top_k
            )
            x[masked] = proposal.clone()
        else:
            if alg == "maskgit_plus":
                confidence, x0 = dream_sample_tokens(masked_logits, temperature, top_p=top_p, top_k=top_k)
            elif alg == "topk_margin":
                confidence, x0 = dream_sample_tokens(
                    masked_logits, temperature, top_p=top_p, top_k=top_k, margin_confidence=True
                )
            elif alg == "entropy":
                confidence, x0 = dream_sample_tokens(
                    masked_logits, temperature, top_p=top_p, top_k=top_k, neg_entropy=True
                )
            else:
                raise RuntimeError(f"Unknown alg: {alg}")

            # quirk: one count for the whole batch (the mean over rows), computed in float32 and truncated
            mean_masked = masked.sum() / masked.shape[0]
            n_commit = int(mean_masked * (1 - s / t)) if i < steps - 1 else int(mean_masked)

            scores = torch.full_like(x, NEG_INF, dtype=logits.dtype)
            scores[masked] = confidence
            if n_commit > 0:
                if alg_temp is None or alg_temp == 0:
                    if trace is not None:
                        tie = any(_boundary_tie(row, n_commit) for row in scores)
                    _, picked = torch.topk(scores, n_commit)
                else:
                    picked = torch.multinomial(F.softmax(scores / alg_temp, dim=-1), num_samples=n_commit)
                candidate = torch.zeros_like(x, dtype=torch.long) + mask_id
                candidate[masked] = x0.clone()
                rows = torch.arange(x.size(0), device=device).unsqueeze(1).expand_as(picked)
                x[rows, picked] = candidate[rows, picked]

        if trace is not None:
            trace.append({"tie": tie})
        x = tokens_hook(i, x, logits)
        if history is not None:
            history.append(x.clone())

    if cfg["return_dict_in_generate"]:
        return DreamReferenceOutput(sequences=x, history=history)
    return x
