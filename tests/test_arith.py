"""The ``arith`` text task, the native LLaDA / Dream pretraining on it (``pretrain-mdm --arch``), its evaluation
(``eval --task arith``) and the trainer's text environment (``train --task arith``), on tiny random models."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from upo_fast.tasks import arith
from upo_fast.training.pretrain_mdm import PretrainConfig, mdm_loss
from upo_fast.training.pretrain_text import (
    ArithBatches,
    TextModelSize,
    TextPretrainPlan,
    build_model,
    pretrain_text_mdm,
    save_folder,
)

TINY = TextModelSize(hidden_size=32, layers=1, heads=2, kv_heads=1, mlp_ratio=2)


@pytest.fixture(scope="module")
def tokenizer():
    return arith.build_tokenizer()


def _columns_check(a: int, b: int, text: str) -> None:
    """Every column ``x+y+c=s`` adds up, its digits are the operands', its carry the previous column's."""
    body, answer = text.split(arith.ANSWER_MARK)
    assert int(answer) == a + b
    carry = 0
    da, db = str(a)[::-1], str(b)[::-1]
    for i, column in enumerate(body.split(",")):
        x, y, c, s = map(int, re.fullmatch(r"(\d)\+(\d)\+(\d)=(\d\d)", column).groups())
        assert (x, y, c) == (int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0, carry)
        assert s == x + y + c
        carry = s // 10


@pytest.mark.parametrize("a,b", [(48213, 39577), (999, 99999), (100, 100), (99999, 99999), (0, 7)])
def test_worked_answer_adds_up(a, b):
    _columns_check(a, b, arith.worked_answer(a, b))


def test_splits_are_fixed_and_distinct():
    test = arith.make_problems(300, "test")
    assert [p.question for p in test] == [p.question for p in arith.make_problems(300, "test")]
    val = {p.question for p in arith.make_problems(300, "validation")}
    assert len(val & {p.question for p in test}) < 3  # different seeds; a chance repeat is possible, not a copy
    for p in test[:50]:
        a, b = map(int, p.question.rstrip("=").split("+"))
        assert 100 <= a < 100_000 and 100 <= b < 100_000 and int(p.answer) == a + b
    with pytest.raises(ValueError, match="split"):
        arith.make_problems(3, "train2")


def test_longest_answer_fits_the_generation(tokenizer):
    longest = tokenizer(arith.worked_answer(99999, 99999), add_special_tokens=False)["input_ids"]
    assert len(longest) < arith.GEN_LENGTH
    assert arith.GEN_LENGTH % arith.BLOCK_LENGTH == 0


def test_tokenizer_round_trip(tokenizer):
    text = arith.question(48213, 39577) + arith.worked_answer(48213, 39577)
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.convert_ids_to_tokens(tokenizer(arith.ANSWER_MARK, add_special_tokens=False)["input_ids"]) == [
        arith.ANSWER_MARK]
    assert len({tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.mask_token_id, tokenizer.bos_token_id}) == 4


def test_correct_reads_the_final_number():
    answers = ["87790", "87790", "87790", "87790"]
    completions = ["3+7+0=10####87790", "####87791", "87790", None]
    assert arith.correct(completions, answers).tolist() == [True, False, False, False]
    r = arith.rewards(completions, answers)
    assert r["reward"].tolist() == [1.0, 0.0, 0.0, 0.0] and r["format_ok"].tolist() == [True, True, False, False]


def test_problem_file_round_trip(tmp_path):
    problems = arith.make_problems(5, "test")
    arith.write_problems(problems, tmp_path / "p.jsonl")
    assert arith.load_problems(tmp_path / "p.jsonl") == problems
    (tmp_path / "bad.jsonl").write_text('{"question": 3}\n')
    with pytest.raises(ValueError, match="line 1"):
        arith.load_problems(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="does not exist"):
        arith.load_problems(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("arch", ["llada", "dream"])
@pytest.mark.parametrize("sft", [False, True])
def test_batches(tokenizer, arch, sft):
    batches = ArithBatches(tokenizer, arch, sft=sft)
    tokens, maskable = batches(16, torch.Generator().manual_seed(3))
    assert tokens.shape == maskable.shape and tokens.shape[0] == 16
    pads = (tokens == tokenizer.pad_token_id).sum(1)
    assert bool((pads == pads[0]).all()) and (arch == "llada" or int(pads[0]) == 0)
    bos = int(pads[0])
    assert bool((tokens[:, bos] == tokenizer.bos_token_id).all())
    assert not bool(maskable[:, : bos + 1].any())  # BOS and padding are never masked
    answer_start = tokens.shape[1] - arith.GEN_LENGTH
    assert bool(maskable[:, answer_start:].all())
    assert bool(maskable[:, bos + 1: answer_start].any()) != sft  # the prompt: maskable in pretraining only
    text = tokenizer.decode(tokens[0, answer_start:], skip_special_tokens=True)
    question = tokenizer.decode(tokens[0, bos + 1: answer_start], skip_special_tokens=True)
    a, b = map(int, question.rstrip("=").split("+"))
    assert text == arith.worked_answer(a, b)


def test_shifted_loss_reads_the_previous_output(tokenizer):
    """Dream's loss at position i reads output i - 1: a model whose output i is the one-hot of token i + 1 has
    (almost) zero shifted loss and a large unshifted one."""
    x0 = torch.tensor([[1, 5, 6, 7, 8, 9]])

    class NextToken(torch.nn.Module):
        def forward(self, ids):
            logits = torch.full((*x0.shape, 30), -30.0)
            logits[0, torch.arange(5), x0[0, 1:]] = 30.0
            return (logits,)

    mask = torch.tensor([[False, True, True, True, True, True]])
    shifted = mdm_loss(NextToken(), x0, 3, t=torch.ones(1), mask=mask, shift_logits=True, weighting="none")
    plain = mdm_loss(NextToken(), x0, 3, t=torch.ones(1), mask=mask, weighting="none")
    assert float(shifted) < 1e-6 < 1.0 < float(plain)


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_pretrain_text_writes_a_loadable_folder_and_resumes(tmp_path, arch):
    from upo_fast.models.loading import load_model, load_tokenizer

    def plan(out, steps, stop=None):
        cfg = dict(batch_size=4, checkpoint_every=2, log_every=1, warmup_steps=1)
        return TextPretrainPlan(arch=arch, out_dir=str(out), size=TINY,
                                pretrain=PretrainConfig(steps=steps, **cfg), sft=PretrainConfig(steps=3, **cfg,
                                                                                             stop_at_step=stop))

    interrupted = pretrain_text_mdm(plan(tmp_path / "a", 2, stop=2))
    assert interrupted["phases"]["sft"]["stopped_early"]
    resumed = pretrain_text_mdm(plan(tmp_path / "a", 2))
    assert resumed["phases"]["sft"]["resumed_from_step"] == 2 and resumed["phases"]["pretrain"]["steps"] == 2
    straight = pretrain_text_mdm(plan(tmp_path / "b", 2))
    model, other = load_model(tmp_path / "a", dtype="float32"), load_model(tmp_path / "b", dtype="float32")
    for (name, p), q in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(p, q), name  # an interrupted run ends where an uninterrupted one does
    assert straight["phases"]["sft"]["resumed_from_step"] == 0
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["model_type"] == {"llada": "llada", "dream": "Dream"}[arch]
    tokenizer = load_tokenizer(tmp_path / "a")
    assert model.config.mask_token_id == tokenizer.mask_token_id
    assert (tmp_path / "a" / "generation_config.json").is_file()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("arith_llada")
    save_folder(build_model("llada", tokenizer, TINY, seed=1), tokenizer, folder)
    return folder


def test_eval_arith_reports_accuracy_and_forwards(tiny_folder, tmp_path):
    from upo_fast.cli.commands import main

    report_file = tmp_path / "r.json"
    assert main(["eval", "--task", "arith", "--model", str(tiny_folder), "--num-puzzles", "6", "--scorer",
                 "max_confidence", "--scorer", "random", "--threshold", "0.5", "--json", str(report_file)]) == 0
    report = json.loads(report_file.read_text())
    assert report["n"] == 6 and (report["gen_length"], report["block_length"]) == (64, 16)
    for result in report["results"].values():
        assert 0 <= result["accuracy"] <= 1 and len(result["correct"]) == 6
        assert 4 <= result["forwards"] <= 64  # the threshold rule commits at least one token a step


def test_eval_arith_data_file(tiny_folder, tmp_path):
    from upo_fast.cli.commands import main

    arith.write_problems(arith.make_problems(3, "validation"), tmp_path / "p.jsonl")
    assert main(["eval", "--task", "arith", "--model", str(tiny_folder), "--data", str(tmp_path / "p.jsonl"),
                 "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["n"] == 3


def test_train_on_arith_runs_the_text_environment(tiny_folder, tmp_path):
    from upo_fast.training.config import TrainConfig
    from upo_fast.training.trainer import train

    cfg = TrainConfig(task="arith", model=str(tiny_folder), reference="topk", topk=3, init="fresh",
                      block_init="fresh", steps=2, prompts_per_step=2, group_size=2, eval_every=2, eval_puzzles=3,
                      out_dir=str(tmp_path / "run"), tensorboard=False, gen_length=16, block_length=8)
    summary = train(cfg.validate(), progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["last_step"] == 2 and "val_accuracy" in records[0] and "val_accuracy" in records[-1]
    assert np.isfinite(records[1]["loss"]) and records[1]["update_steps"] > 0
    with pytest.raises(ValueError, match="reward"):
        TrainConfig(task="arith", reward="cells", block_init="fresh").validate()


def test_init_from_goes_on_with_sft_only(tmp_path, tokenizer):
    from upo_fast.models.loading import load_model

    start = tmp_path / "start"
    save_folder(build_model("dream", tokenizer, TINY, seed=2), tokenizer, start)
    cfg = PretrainConfig(steps=2, batch_size=4, checkpoint_every=2, warmup_steps=1)
    summary = pretrain_text_mdm(TextPretrainPlan(arch="dream", out_dir=str(tmp_path / "more"), pretrain=cfg, sft=cfg,
                                                 init_from=str(start)))
    assert list(summary["phases"]) == ["sft"] and summary["init_from"] == str(start)
    before, after = load_model(start, dtype="float32"), load_model(tmp_path / "more", dtype="float32")
    assert before.config.hidden_size == after.config.hidden_size
    assert not torch.equal(before.model.embed_tokens.weight, after.model.embed_tokens.weight)  # it trained


def test_llada_qkv_bias_is_the_official_field(tokenizer):
    model = build_model("llada", tokenizer, TINY)
    assert model.config.include_qkv_bias and model.model.transformer["blocks"][0].q_proj.bias is not None
    plain = build_model("llada", tokenizer, TextModelSize(**{**TINY.__dict__, "qkv_bias": False}))
    assert plain.model.transformer["blocks"][0].q_proj.bias is None


def test_block_rows_mask_as_the_block_schedule_leaves_them(tokenizer):
    tokens, maskable, always = ArithBatches(tokenizer, "llada", sft=True, block_rows=1.0)(32, torch.Generator())
    response = slice(tokens.shape[1] - arith.GEN_LENGTH, None)
    for row_maskable, row_always in zip(maskable[:, response], always[:, response]):
        blocks = row_maskable.view(-1, arith.BLOCK_LENGTH).all(1)
        assert int(blocks.sum()) == 1  # one active block
        active = int(blocks.int().argmax())
        later = row_always.view(-1, arith.BLOCK_LENGTH)
        assert bool(later[active + 1:].all()) and not bool(later[: active + 1].any())
    x0 = torch.tensor([[1, 5, 6, 7]])
    forced = mdm_loss(lambda ids: (torch.zeros(1, 4, 30),), x0, 3, t=torch.full((1,), 0.05), weighting="none",
                      maskable=torch.tensor([[False, True, False, False]]),
                      always=torch.tensor([[False, False, True, True]]))
    assert float(forced) == pytest.approx(float(torch.log(torch.tensor(30.0))))  # every masked row scores ln V
    with pytest.raises(ValueError, match="block_rows"):
        ArithBatches(tokenizer, "llada", sft=False, block_rows=0.5)
