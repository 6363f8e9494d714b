"""The shipped small text models (``upo_fast/assets/arith_llada``, ``arith_dream``): hub layout, loadable by our loader
and by transformers' own ``AutoTokenizer`` (4.49 and 5.x: this file is in the Makefile's COMPAT_TESTS), and the
unmasking order matters on held-out arith problems."""

from __future__ import annotations

import json

import pytest

from upo_fast.assets import model_folder
from upo_fast.evaluation.text import evaluate_math
from upo_fast.models.loading import load_text_model
from upo_fast.tasks import arith

MODELS = {"arith_llada": "llada", "arith_dream": "Dream"}


@pytest.fixture(scope="module", params=sorted(MODELS))
def shipped(request):
    folder = model_folder(request.param, None)
    model, tokenizer = load_text_model(folder, "cpu")
    return request.param, folder, model, tokenizer


def test_hub_layout_and_size(shipped):
    name, folder, model, tokenizer = shipped
    for file in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "README.md"):
        assert (folder / file).is_file(), file
    assert (folder / "model.safetensors").stat().st_size <= 10 * 2**20
    assert json.loads((folder / "config.json").read_text())["model_type"] == MODELS[name]
    assert model.config.mask_token_id == tokenizer.mask_token_id == arith.build_tokenizer().mask_token_id
    assert json.loads((folder / "generation_config.json").read_text())["mask_token_id"] == tokenizer.mask_token_id


def test_transformers_autotokenizer_reads_it(shipped):
    from transformers import AutoTokenizer

    _, folder, _, tokenizer = shipped
    auto = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    text = arith.question(48213, 39577) + arith.worked_answer(48213, 39577)
    assert auto(text)["input_ids"] == tokenizer(text)["input_ids"] == arith.build_tokenizer()(text)["input_ids"]


def test_order_matters(shipped):
    """40 test problems, greedy: loose bounds around the 500-problem figures in the card."""
    _, _, model, tokenizer = shipped
    problems = arith.make_problems(40, "test")
    accuracy = {scorer: evaluate_math(model, tokenizer, problems, task=arith.NAME, scorer=scorer, gen_length=64,
                                      block_length=16, batch_size=40, progress=False)["accuracy"]
                for scorer in ("max_confidence", "random")}
    assert accuracy["max_confidence"] >= 0.5
    assert accuracy["max_confidence"] >= accuracy["random"] + 0.15


def test_shipped_dream_policy_fits_its_model():
    from upo_fast.policy import load_policy

    folder = model_folder("arith_dream", None)
    model, _ = load_text_model(folder, "cpu")
    policy = load_policy(None, None, model, folder)  # the model folder's policy/, checked against the model
    assert (folder / "policy" / "README.md").is_file() and policy.config.mdm_family == "dream"
