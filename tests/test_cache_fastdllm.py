"""upo_fast's Fast-dLLM options (threshold, prefix / dual KV cache) against Fast-dLLM's OWN samplers.

``tests/fixtures/fastdllm/cases.json`` holds what NVlabs/Fast-dLLM 24cc59e produced (``llada/generate.py``'s
three functions and Dream's block ``diffusion_generate``, under transformers 4.49) on the tiny checkpoints in
``tests/fixtures/official/``; see its PROVENANCE.md and ``fixtures/make_fastdllm_fixtures.py``.  No Fast-dLLM
code is needed here: ``upo_fast.load_model`` reads those folders and every case must give the same tokens.
A KV cache changes tokens (its keys and values are stale), so equal tokens pin down which ones it reuses.
"""

import json
from functools import cache
from pathlib import Path

import pytest
import torch

import upo_fast

FIXTURES = Path(__file__).parent / "fixtures"
CASES = json.loads((FIXTURES / "fastdllm" / "cases.json").read_text())
CACHE = {"generate": None, "generate_with_prefix_cache": "prefix", "generate_with_dual_cache": "dual"}
MASK_ID = {"llada_untied": 297, "llada_tied": 297, "dream": 317}


@cache
def native(name: str):
    return upo_fast.load_model(FIXTURES / "official" / name, dtype=torch.float32)


def generated(case) -> int:
    kw = case["kwargs"]
    return kw["gen_length"] if "gen_length" in kw else kw["max_new_tokens"]


def run(case) -> list[int]:
    """The case's call, with upo_fast's names for Fast-dLLM's arguments."""
    kw, model, prompt = case["kwargs"], native(case["model"]), torch.tensor([case["prompt"]])
    if case["model"].startswith("llada"):
        # cache=None with threshold=None is LLaDA's exact sampler, which Fast-dLLM's `generate` equals
        out = upo_fast.llada_generate(model, prompt, steps=kw["steps"], gen_length=kw["gen_length"],
                                      block_length=kw["block_length"], temperature=kw["temperature"],
                                      remasking=kw["remasking"], threshold=kw["threshold"],
                                      cache=CACHE[case["function"]])
    else:
        # Dream reads `threshold` only under confidence_threshold; the fixtures pass it only there. top_k=50: called
        # without a generation config, Fast-dLLM's diffusion_generate (under transformers 4.x) takes transformers'
        # GenerationConfig defaults, top_k=50 among them; the argmax is the same, the confidences are not
        rule = {"threshold": kw["threshold"]} if kw["alg"] == "confidence_threshold" else {}
        out = upo_fast.dream_generate(model, prompt, max_new_tokens=kw["max_new_tokens"], steps=kw["steps"],
                                      block_length=kw["block_length"], temperature=kw["temperature"],
                                      alg=kw["alg"], dual_cache=kw["dual_cache"], top_k=50, **rule)
    return out[0].tolist()


def counted_run(case) -> tuple[list[int], int]:
    """The case's output and how many MDM forwards it took (a pre-hook on the model's first layer)."""
    model = native(case["model"])
    first = model.model.transformer["blocks"][0] if case["model"].startswith("llada") else model.model.layers[0]
    calls = []
    handle = first.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        out = run(case)
    finally:
        handle.remove()
    return out, len(calls)


# llada_tied predicts its own [MASK] at most masked positions: Fast-dLLM "commits" it (the position stays masked and
# the forward commits fewer), upo_fast never proposes the mask token, so it may finish a block in fewer forwards
PROPOSES_MASK = {"llada_tied"}


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_tokens_and_forwards_equal_fastdllm(case):
    """The same tokens; and Fast-dLLM's forwards less the ones it runs on an already full block (its cached loops
    check after the forward whether the block is full, we before), except where the model proposes its own mask."""
    got, count = counted_run(case)
    want = case["output"]
    assert len(got) == len(want), (len(got), len(want))
    wrong = [i - len(case["prompt"]) for i, (a, b) in enumerate(zip(got, want)) if a != b]
    assert not wrong, (f"{len(wrong)} of {generated(case)} generated tokens differ, first at generated position "
                       f"{wrong[0]}; Fast-dLLM's nfe was {case['nfe']}, commits {case['commits_per_forward']}\n"
                       f"got  {got[len(case['prompt']):]}\nwant {want[len(case['prompt']):]}")
    if case["model"] not in PROPOSES_MASK:
        assert count == case["nfe"] - case["idle_forwards"]


def test_fixture_file_can_catch_a_wrong_sampler():
    """The cases themselves: complete, and varied enough that a cache or a threshold that does nothing fails."""
    assert len({c["id"] for c in CASES}) == len(CASES)
    assert {c["model"] for c in CASES} == set(MASK_ID)
    assert {c["function"] for c in CASES} == {*CACHE, "diffusion_generate"}
    assert {c["kwargs"].get("dual_cache") for c in CASES if c["model"] == "dream"} == {False, True}
    for c in CASES:
        p, out = len(c["prompt"]), c["output"]
        assert out[:p] == c["prompt"] and len(out) == p + generated(c), c["id"]
        assert MASK_ID[c["model"]] not in out[p:], c["id"]  # upstream filled every position
        # the per-forward record adds up: one entry per forward, the commits fill the generated region
        assert len(c["commits_per_forward"]) == c["nfe"] and sum(c["commits_per_forward"]) == generated(c), c["id"]
    llada = [c for c in CASES if c["model"].startswith("llada")]
    assert all(c["uncached_output"] == c["output"] for c in llada if c["function"] == "generate")
    cached = [c for c in llada if c["function"] != "generate" and c["uncached_output"] is not None]
    changed = [c for c in cached if c["output"] != c["uncached_output"]]
    assert changed, "no cached case differs from its uncached run: a cache that does nothing would pass"
    assert all(c["changed_vs_uncached"] == sum(a != b for a, b in zip(c["output"], c["uncached_output"]))
               for c in cached)
    for family in ("llada", "dream"):
        with_th = [c for c in CASES if c["model"].startswith(family) and c["kwargs"].get("threshold") is not None]
        assert any(c["nfe"] < generated(c) for c in with_th), f"{family}: no threshold case commits in parallel"
        assert any(1 in c["commits_per_forward"] for c in with_th), f"{family}: no threshold case has a 1-token step"
