"""GSM8K / MATH500 support: answer extraction and equivalence, rewards, local loaders, Pass@k, and the evaluation
loop end to end on CPU with tiny random LLaDA/Dream stand-ins and a character-level tokenizer."""

import itertools
import json
import string
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_models import make_dream_like, make_llada_like
from torch import nn
from transformers.modeling_outputs import MaskedLMOutput

from upo_fast.evaluation.text import evaluate_math
from upo_fast.tasks.math_answers import answers_equal, extract_answer, normalize_answer, parse_number
from upo_fast.tasks.math_tasks import (
    MathProblem,
    build_prompts,
    correctness_reward,
    format_reward,
    load_problems,
    math_rewards,
)
from upo_fast.tasks.metrics import pass_at_k

FIXTURES = Path(__file__).resolve().parent / "fixtures"
GSM8K = FIXTURES / "gsm8k_sample.jsonl"
MATH500 = FIXTURES / "math500_sample.json"

# ---- extraction ----------------------------------------

EXTRACTION = [
    ("<reasoning>r</reasoning>\n<answer>\n42\n</answer>", "answer_tag", "42"),
    ("<answer>7</answer> then <answer> 9 </answer>", "answer_tag", "9"),  # the last tag wins
    ("<reasoning>cut off</reasoning><answer>17", "answer_tag", "17"),  # unclosed final tag (truncated)
    ("no tags here", "answer_tag", None),
    ("<answer>  </answer>", "answer_tag", None),  # empty is nothing
    ("so $\\boxed{\\frac{1}{2}}$.", "boxed", "\\frac{1}{2}"),
    ("\\boxed{\\frac{\\sqrt{2}}{\\{3\\}}}", "boxed", "\\frac{\\sqrt{2}}{\\{3\\}}"),  # nested braces
    ("first \\boxed{1}, then \\boxed{2}", "boxed", "2"),  # the last box wins
    ("\\fbox{(1, 2)}", "boxed", "(1, 2)"),
    ("$\\boxed 5$", "boxed", "5"),
    ("\\boxed{3} and a cut-off \\boxed{4", "boxed", "3"),  # an unbalanced box is skipped
    ("nothing boxed", "boxed", None),
    ("48 / 6 = 8\n#### 8", "hash", "8"),
    ("#### 1,000\nextra text", "hash", "1,000"),
    ("no hash", "hash", None),
    ("it costs $1,200.50 and 3 more.", "last_number", "3"),
    ("totals 1,200.50", "last_number", "1,200.50"),
    ("no digits", "last_number", None),
    ("<answer>The total is \\boxed{12}</answer>", "auto", "12"),  # a box inside the tag wins
    ("<answer>12 dollars</answer> \\boxed{13}", "auto", "12 dollars"),  # the tag comes before boxes elsewhere
    ("so the answer is \\boxed{13}. #### 14", "auto", "13"),
    ("work\n#### 14", "auto", "14"),
    ("it ends with 15", "auto", None),  # no last-number fallback in auto
    ("", "auto", None),
]


@pytest.mark.parametrize("text, style, expected", EXTRACTION)
def test_extract_answer(text, style, expected):
    assert extract_answer(text, style) == expected


def test_extract_answer_bad_style_and_non_text():
    with pytest.raises(ValueError, match="style must be one of"):
        extract_answer("\\boxed{1}", "latex")
    assert extract_answer(None) is None and extract_answer(12) is None


# ---- normalization and equivalence ----------------------------------------

EQUAL = [
    ("0.5", "\\frac{1}{2}"), ("1/2", "\\frac12"), (".5", "1/2"), ("0.75", "\\tfrac{3}{4}"),
    ("1,000", "1000"), ("1{,}000", "1000"), ("\\$1,000.00", "1000"),
    ("$18", "18"), ("18 dollars", "18"), ("18.0", "18"), ("12 apples", "12"), ("5\\text{ cm}^2", "5"),
    ("\\dfrac{3}{4}", "\\frac{3}{4}"), ("\\frac34", "\\frac{3}{4}"), ("\\frac{3}4", "3/4"),
    ("\\text{Monday}", "Monday"), ("\\mbox{(C)}", "(C)"),
    ("10^\\circ", "10"), ("10^{\\circ}", "10 degrees"), ("10°", "10^\\circ"),
    ("50\\%", "50"), ("25 percent", "25%"),
    ("x = 5", "5"), ("y=\\frac12", "0.5"),
    ("-3", "-3.0"), ("\u22123", "-3"), ("-\\frac{1}{2}", "\\frac{-1}{2}"),
    ("2\\frac{1}{2}", "5/2"), ("\\sqrt2", "\\sqrt{2}"), ("\\left( 1, 2 \\right)", "(1,2)"),
    ("(1, 2)", "(1,2)"), ("(\\frac12, 2)", "(0.5, 2.0)"), ("[1, 2)", "[1,2)"), ("(-\\infty, 3]", "(-\\infty,3]"),
    ("2, 1", "1, 2"), ("\\boxed{7}", "7"), ("5.", "5"),
]
NOT_EQUAL = [
    ("2", "3"), ("1/2", "2"), ("0.333", "\\frac{1}{3}"), ("\\sqrt{2}", "\\sqrt{3}"), ("[1, 2)", "(1, 2)"),
    ("(1, 2)", "(2, 1)"), ("(1, 2)", "(1, 2, 3)"), ("-3", "3"), ("x+1", "1"), ("10", "100"), ("", ""),
    (None, "1"), ("1,2", "12"),
]


@pytest.mark.parametrize("a, b", EQUAL)
def test_equivalent_answers(a, b):
    assert answers_equal(a, b) and answers_equal(b, a)


@pytest.mark.parametrize("a, b", NOT_EQUAL)
def test_different_answers(a, b):
    assert not answers_equal(a, b)
    if a is not None:
        assert not answers_equal(b, a)


def test_normalize_answer_examples_and_idempotence():
    assert normalize_answer("\\left( \\dfrac12 ,\\; 3.50 \\right)") == "(\\frac{1}{2},3.5)"
    assert normalize_answer("$1,000$.") == "1000"
    assert normalize_answer("\\text{ 18 dollars}") == "18"
    assert normalize_answer(None) == ""
    for a, b in EQUAL + NOT_EQUAL:
        for s in (a, b):
            once = normalize_answer(s)
            assert normalize_answer(once) == once


@pytest.mark.parametrize("text, value", [
    ("42", 42), ("-7", -7), ("+3", 3), ("3.25", Fraction(13, 4)), (".5", Fraction(1, 2)), ("1,234,567", 1234567),
    ("3/4", Fraction(3, 4)), ("\\frac{3}{4}", Fraction(3, 4)), ("\\dfrac{-3}{4}", Fraction(-3, 4)),
    ("-\\frac12", Fraction(-1, 2)), ("2\\frac{1}{2}", Fraction(5, 2)), ("-2\\frac{1}{2}", Fraction(-5, 2)),
    ("50%", 50), ("$18", 18), ("x = 5", 5), ("1/0", None), ("\\frac{1}{0}", None), ("\\sqrt{2}", None),
    ("1e5", None), ("abc", None), ("", None), ("9" * 5000, None),
])
def test_parse_number(text, value):
    assert parse_number(text) == value


WEIRD = [None, "", "{", "}}}{{{", "\\boxed{", "\\frac{", "\\frac{1}{", "$$$", "\\text{", "((((", "]]][[",
         "1/0", "0/0", "-", ".", ",", "9" * 5000, "a " * 3000, "\\boxed{" * 500, "<answer>" * 100, "\x00\uffff",
         "\u00e9\u4e2d\U0001f600", "x = = 5", "\\left(\\right)", 12, 3.5, ["1"], object()]


def test_nothing_raises_on_weird_input():
    for a in WEIRD:
        for b in WEIRD[:6] + ["1", "(1,2)"]:
            assert isinstance(answers_equal(a, b), bool)
        assert extract_answer(a) is None or isinstance(extract_answer(a), str)
        assert parse_number(a) is None or isinstance(parse_number(a), Fraction)
        assert isinstance(normalize_answer(a), str)


# ---- rewards ----------------------------------------

STRICT_RIGHT = "<reasoning>\n3 * 4 + 2 = 14\n</reasoning>\n<answer>\n14\n</answer>\n"
LOOSE_RIGHT = "<reasoning>3 * 4 + 2 = 14</reasoning> <answer>$14 dollars</answer> trailing words"
STRICT_WRONG = "<reasoning>\n3 * 4 = 12\n</reasoning>\n<answer>\n12\n</answer>"
NOT_A_NUMBER = "<reasoning>\nhmm\n</reasoning>\n<answer>\nfourteen\n</answer>"
EMPTY_ANSWER = "<reasoning>\nhmm\n</reasoning>\n<answer>\n\n</answer>"
BOX_ONLY = "The total is \\boxed{14}."


def test_gsm8k_rewards_on_hand_written_completions():
    completions = [STRICT_RIGHT, LOOSE_RIGHT, STRICT_WRONG, NOT_A_NUMBER, EMPTY_ANSWER, BOX_ONLY, "", None]
    answers = ["14"] * len(completions)
    out = math_rewards(completions, answers, "gsm8k")
    # correctness 2.0 + structure 0.5 + layout 0.5 + a single number 0.5
    np.testing.assert_allclose(out["reward"], [3.5, 3.0, 1.5, 1.0, 0.0, 2.0, 0.0, 0.0])
    assert out["correct"].tolist() == [True, True, False, False, False, True, False, False]
    assert out["format_ok"].tolist() == [True, True, True, True, False, False, False, False]
    assert out["extracted"][:3] == ["14", "$14 dollars", "12"] and out["extracted"][4] is None
    np.testing.assert_allclose(correctness_reward(completions, answers), 2.0 * out["correct"])
    np.testing.assert_allclose(format_reward(completions, "gsm8k"), out["reward"] - 2.0 * out["correct"])
    assert out["reward"].dtype == np.float64 and out["reward"].shape == (8,)


def test_math500_rewards_ask_for_a_box_inside_the_answer():
    boxed = "<reasoning>\nadd\n</reasoning>\n<answer>\n\\boxed{\\dfrac{3}{4}}\n</answer>"
    bare = "<reasoning>\nadd\n</reasoning>\n<answer>\n0.75\n</answer>"
    out = math_rewards([boxed, bare, "\\boxed{(1,2)}"], ["\\frac{3}{4}", "\\frac{3}{4}", "(1, 2)"], "math500")
    np.testing.assert_allclose(out["reward"], [3.5, 3.0, 2.0])
    assert out["correct"].all()


def test_rewards_never_raise_and_check_lengths():
    completions = [w if isinstance(w, str) else None for w in WEIRD]
    out = math_rewards(completions, ["1"] * len(completions), "math500")
    assert np.isfinite(out["reward"]).all() and not out["correct"].any()
    with pytest.raises(ValueError, match="same length"):
        correctness_reward(["a", "b"], ["1"])
    with pytest.raises(ValueError, match="task must be one of"):
        math_rewards(["a"], ["1"], "gsm9k")


# ---- loading ----------------------------------------


def test_load_gsm8k_jsonl_extracts_the_final_number():
    problems = load_problems(GSM8K, "gsm8k")
    assert [p.answer for p in problems] == ["14", "6", "70", "1,000", "29"]
    assert all(isinstance(p, MathProblem) and p.question.endswith("?") for p in problems)
    assert answers_equal("1000", problems[3].answer)
    assert len(load_problems(str(GSM8K), "gsm8k", limit=2)) == 2


def test_load_math500_json_with_answer_or_boxed_solution(tmp_path):
    problems = load_problems(MATH500, "math500")
    assert [p.answer for p in problems] == ["\\frac{3}{4}", "\\sqrt{2}", "(1, 2)", "10^\\circ", "\\frac{3}{2}"]
    assert problems[0].id == "test/prealgebra/0001.json"
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": json.loads(MATH500.read_text())}))
    assert load_problems(wrapped, "math500") == problems


def test_load_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()]
    path = tmp_path / "gsm8k.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert load_problems(path, "gsm8k") == load_problems(GSM8K, "gsm8k")


@pytest.mark.parametrize("module, name", [("pyarrow.parquet", "gsm8k.parquet"), ("datasets", "saved_dataset")])
def test_parquet_and_dataset_folders_name_the_math_extra_when_it_is_missing(tmp_path, monkeypatch, module, name):
    """``datasets`` (and pyarrow) are the optional ``math`` extra: without them the loader says how to get them."""
    import sys

    for missing in (module, module.split(".")[0]):
        monkeypatch.setitem(sys.modules, missing, None)  # importing it raises ImportError, as when not installed
    path = tmp_path / name
    if module == "datasets":
        path.mkdir()  # a folder is read as a `datasets` save_to_disk folder
    else:
        path.write_bytes(b"PAR1")
    with pytest.raises(ValueError) as err:
        load_problems(path, "gsm8k")
    message = str(err.value)
    assert "pip install 'upo_fast[math]'" in message and module.split(".")[0] in message and str(path) in message
    assert load_problems(GSM8K, "gsm8k")  # JSON Lines need no extra


def test_load_errors(tmp_path):
    missing = tmp_path / "nowhere" / "gsm8k_test.jsonl"
    with pytest.raises(ValueError, match="nowhere/gsm8k_test.jsonl does not exist.*--data"):
        load_problems(missing, "gsm8k")
    bad_row = tmp_path / "bad.jsonl"
    bad_row.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q2"}\n')
    with pytest.raises(ValueError, match="bad.jsonl: line 2 lacks 'answer'"):
        load_problems(bad_row, "gsm8k")
    no_problem = tmp_path / "math.json"
    no_problem.write_text(json.dumps([{"answer": "1"}]))
    with pytest.raises(ValueError, match="math.json: row 1 lacks problem"):
        load_problems(no_problem, "math500")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q", "answer": "1"}\n{not json\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        load_problems(broken, "gsm8k")
    with pytest.raises(ValueError, match="task must be one of"):
        load_problems(GSM8K, "aime")
    with pytest.raises(ValueError, match="limit must be"):
        load_problems(GSM8K, "gsm8k", limit=0)
    csv = tmp_path / "data.csv"
    csv.write_text("question,answer\n")
    with pytest.raises(ValueError, match="unknown data format"):
        load_problems(csv, "gsm8k")


# ---- Pass@k ----------------------------------------


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    subsets = list(itertools.combinations([True] * c + [False] * (n - c), k))
    return sum(any(s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_brute_force():
    for n in range(1, 7):
        for k in range(1, n + 1):
            for c in range(n + 1):
                assert abs(pass_at_k(n, np.array([c]), k) - _brute_pass_at_k(n, c, k)) < 1e-12
    counts = np.array([0, 2, 5])  # the mean over problems
    expected = np.mean([_brute_pass_at_k(5, c, 2) for c in counts])
    assert abs(pass_at_k(5, counts, 2) - expected) < 1e-12
    big = pass_at_k(5000, np.array([3, 0, 4999]), 200)  # binomials this size overflow floats
    assert 0 < big < 1 and np.isfinite(big)
    assert pass_at_k(3, np.array([], dtype=int), 1) == 0.0


def test_pass_at_k_bad_arguments():
    with pytest.raises(ValueError, match="k must be"):
        pass_at_k(3, np.array([1]), 4)
    with pytest.raises(ValueError, match="num_samples"):
        pass_at_k(0, np.array([0]), 1)
    with pytest.raises(ValueError, match="num_correct"):
        pass_at_k(3, np.array([4]), 1)


# ---- prompts and evaluation ----------------------------------------

SPECIALS = ["<pad>", "<eos>", "<bos>", "<mask>", "<unk>"]
PAD, EOS, BOS, MASK = 0, 1, 2, 3


def make_char_tokenizer(chat_template: bool = True):
    """A character-level tokenizer: ids 0-4 are special (pad, eos, bos, mask, unk), then printable characters; it
    adds <bos> to what it encodes, and its chat template writes <bos> too (as LLaDA's does)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {token: i for i, token in enumerate(SPECIALS + chars)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",
                                        bos_token="<bos>", mask_token="<mask>", unk_token="<unk>")
    if chat_template:
        tokenizer.chat_template = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n"
                                   "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return make_char_tokenizer()


@pytest.fixture(scope="module")
def gsm8k():
    return load_problems(GSM8K, "gsm8k")


def test_build_prompts(tokenizer, gsm8k):
    chat = build_prompts(gsm8k[:2], tokenizer, "gsm8k")
    assert chat[0].startswith("<bos><user>") and chat[0].endswith("<assistant>") and gsm8k[0].question in chat[0]
    assert "<answer>" in chat[0]
    plain = build_prompts(gsm8k[:1], tokenizer, "math500", chat=False)[0]
    assert plain.endswith(f"Question: {gsm8k[0].question}\nAnswer:") and "\\boxed" in plain
    no_template = build_prompts(["What is 1 + 1?"], make_char_tokenizer(chat_template=False), "gsm8k")[0]
    assert no_template.endswith("Question: What is 1 + 1?\nAnswer:")


EVAL = dict(task="gsm8k", gen_length=8, block_length=4, steps=8, batch_size=2, progress=False)


def test_evaluate_math_on_tiny_llada_left_pads(tokenizer, gsm8k):
    model = make_llada_like(vocab_size=len(tokenizer), mask_id=MASK, seed=0)
    masks, ids = [], []

    def spy(module, args, kwargs):
        ids.append(args[0] if args else kwargs["input_ids"])
        masks.append(kwargs.get("attention_mask"))

    handle = model.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        out = evaluate_math(model, tokenizer, gsm8k[:3], **EVAL)
    finally:
        handle.remove()
    assert set(out) >= {"accuracy", "format_rate", "mean_reward", "n", "seconds", "examples", "flexible_accuracy"}
    assert "pass_at" not in out and out["n"] == 3 and isinstance(out["seconds"], float)
    assert all(isinstance(out[key], float) for key in ("accuracy", "format_rate", "mean_reward"))
    assert [e["reference"] for e in out["examples"]] == ["14", "6", "70"]
    assert all(isinstance(e["completion"], str) and isinstance(e["correct"], bool) for e in out["examples"])
    assert tokenizer.padding_side == "right"  # restored
    padded = False
    for x, mask in zip(ids, masks):  # every row: pads first (with the pad id), then prompt and generation
        assert mask is not None and (mask[:, 1:] >= mask[:, :-1]).all()
        assert (x[mask == 0] == PAD).all()
        first = (mask == 0).sum(1)  # one <bos> per prompt: the template's, not a second from the tokenizer
        rows = torch.arange(x.shape[0])
        assert (x[rows, first] == BOS).all() and (x[rows, first + 1] != BOS).all()
        padded |= bool((mask == 0).any())
    assert padded  # the prompts have different lengths, so padding was exercised
    with pytest.raises(ValueError, match="pass_at"):
        evaluate_math(model, tokenizer, gsm8k[:1], **{**EVAL, "pass_at": 0})


def test_evaluate_math_pads_with_eos_when_there_is_no_pad_token(gsm8k):
    """Padded keys are masked, so which id pads must not change a completion; the tokenizer is left as found."""
    with_pad, without_pad = make_char_tokenizer(), make_char_tokenizer()
    without_pad.pad_token = None
    model = make_llada_like(vocab_size=len(with_pad), mask_id=MASK, seed=0)
    expected = evaluate_math(model, with_pad, gsm8k[:3], **EVAL)["examples"]
    assert evaluate_math(model, without_pad, gsm8k[:3], **EVAL)["examples"] == expected
    assert without_pad.pad_token is None
    with pytest.raises(ValueError, match="device=meta"):
        evaluate_math(model, with_pad, gsm8k[:1], **EVAL, device="meta")


def test_evaluate_math_does_not_depend_on_batch_composition(tokenizer, gsm8k):
    """Dream reads positions from the padding mask, so a prompt's completion must not change with the batch it is
    padded into (LLaDA's absolute positions do shift with padding, as in the real model)."""
    model = make_dream_like(vocab_size=len(tokenizer), mask_id=MASK, pad_id=PAD, seed=0)
    alone = evaluate_math(model, tokenizer, gsm8k[:3], **{**EVAL, "batch_size": 1})
    together = evaluate_math(model, tokenizer, gsm8k[:3], **{**EVAL, "batch_size": 3})
    completions = [e["completion"] for e in alone["examples"]]
    assert completions == [e["completion"] for e in together["examples"]]
    assert len(set(completions)) > 1  # the prompts matter: not trivially equal
    assert alone["accuracy"] == together["accuracy"]


class AnswerWriter(nn.Module):
    """A 'model' that writes ``target`` (a list of token-id choices per generated position) into the last
    positions of the sequence whatever the prompt; a position with two choices is a coin flip at temperature 1."""

    def __init__(self, target: list[tuple[int, ...]], vocab_size: int):
        super().__init__()
        self.config = SimpleNamespace(model_type="answer_writer", mask_token_id=MASK, vocab_size=vocab_size)
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the adapter a device
        logits = torch.zeros(len(target), vocab_size)
        for row, choices in enumerate(target):
            logits[row, list(choices)] = 30.0
        self.register_buffer("table", logits)

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.table.shape[1])
        logits[:, -self.table.shape[0]:] = self.table
        return MaskedLMOutput(logits=logits)


def _writer(tokenizer, text: str, length: int, alternatives: dict[int, str] | None = None) -> AnswerWriter:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    target = [(i,) for i in ids] + [(EOS,)] * (length - len(ids))
    for position, char in (alternatives or {}).items():
        target[position] += tuple(tokenizer(char, add_special_tokens=False)["input_ids"])
    return AnswerWriter(target, len(tokenizer))


def test_evaluate_math_scores_what_the_model_writes(tokenizer, gsm8k):
    text = "<reasoning>\n3*4+2\n</reasoning>\n<answer>\n14\n</answer>"
    long = {"gen_length": 64, "block_length": 16, "steps": 64}
    writer = _writer(tokenizer, text, 64)
    out = evaluate_math(writer, tokenizer, gsm8k[:2], **{**EVAL, **long})
    assert out["examples"][0]["completion"] == text and out["examples"][0]["extracted"] == "14"
    assert out["accuracy"] == 0.5 and out["format_rate"] == 1.0  # right for "14", wrong for "6"
    np.testing.assert_allclose(out["mean_reward"], (3.5 + 1.5) / 2)
    chatty = _writer(tokenizer, "<answer>Total: 14</answer>", 64)  # only the lenient metric credits it
    lenient = evaluate_math(chatty, tokenizer, gsm8k[:2], **{**EVAL, **long})
    assert lenient["accuracy"] == 0 and lenient["flexible_accuracy"] == 0.5 and lenient["format_rate"] == 0

    # the answer's last digit is a coin flip between "4" (right) and "7": Pass@k must rise with k
    coin = _writer(tokenizer, text, 64, alternatives={text.index("14") + 1: "7"})
    sampled = evaluate_math(coin, tokenizer, gsm8k[:1] * 4, **{**EVAL, **long, "temperature": 1.0, "pass_at": 4})
    curve = [sampled["pass_at"][str(k)] for k in range(1, 5)]
    assert list(sampled["pass_at"]) == ["1", "2", "3", "4"] and curve == sorted(curve)
    assert abs(curve[0] - sampled["accuracy"]) < 1e-12  # Pass@1 is the mean correctness over all samples
    assert 0 < curve[0] < curve[-1] <= 1
