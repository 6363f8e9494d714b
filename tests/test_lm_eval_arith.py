"""The shipped lm-eval task ``arith`` (``upo_fast/integrations/lm_eval_tasks``) against ``upo-fast eval --task arith``:
the same documents and prompts, and, with ``ARITH_MODEL_ARGS``, the same answers, per-problem correctness and
accuracy, on tiny random-weight LLaDA / Dream folders made with the arith tokenizer.

Random weights never answer right, so the scoring is also checked with an oracle sampler (``oracle_generate``)
that replaces ``upo_fast.generate`` in both paths: right answers, wrong ones, and right ones followed by a digit
after the EOS (wrong as ``upo-fast eval`` reads an answer, right if the answer stopped at the EOS).
lm-eval runs in a folder of its own, not the repository root: the task must not depend on the working folder.
"""

import json

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason='lm-evaluation-harness is the optional extra: pip install -e ".[eval]"')

import upo_fast.integrations.lm_eval  # noqa: E402,F401 - registers the upo_fast model
from upo_fast.cli.commands import main, with_shipped_tasks  # noqa: E402
from upo_fast.integrations.lm_eval_tasks import ARITH_MODEL_ARGS, TASKS_DIR, arith_model_args  # noqa: E402
from upo_fast.tasks import arith  # noqa: E402

LIMIT, BATCH = 8, 4  # two batches of prompts of different lengths: the padding differs from row to row


@pytest.fixture
def elsewhere(monkeypatch, tmp_path):
    """Offline, in an empty folder, with a datasets cache of its own."""
    monkeypatch.chdir(tmp_path)
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    """{"llada", "dream"}: tiny random-weight folders over the arith tokenizer (what the shipped models are)."""
    from upo_fast.training.pretrain_text import TextModelSize, build_model, save_folder

    tokenizer, made = arith.build_tokenizer(), {}
    for arch in ("llada", "dream"):
        made[arch] = str(tmp_path_factory.mktemp(f"arith_{arch}"))
        save_folder(build_model(arch, tokenizer, TextModelSize(hidden_size=32, layers=1, heads=2, kv_heads=1)),
                    tokenizer, made[arch])
    return made


def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


def run_lm_eval(folder, limit=LIMIT, **model_args) -> tuple[float, list[str], list[bool]]:
    """(accuracy, answers, per-problem correctness) of lm-eval's ``arith`` on the first ``limit`` problems."""
    args = {"pretrained": folder, **ARITH_MODEL_ARGS, "batch_size": BATCH, **model_args}
    results = lm_eval.simple_evaluate(model="upo_fast", model_args=args, tasks=["arith"], device="cpu",
                                      limit=limit, log_samples=True, task_manager=task_manager())
    samples = sorted(results["samples"]["arith"], key=lambda s: s["doc_id"])
    assert [s["doc"]["question"] for s in samples] == [p.question for p in arith.make_problems(limit, "test")]
    return (results["results"]["arith"]["exact_match,none"], [s["filtered_resps"][0] for s in samples],
            [bool(s["exact_match"]) for s in samples])


def run_upo_fast_eval(folder, monkeypatch, limit=LIMIT) -> tuple[float, list[str], list[bool]]:
    """The same of ``evaluate_math`` as ``upo-fast eval --task arith`` calls it (``_eval_text``'s defaults),
    with every completion kept (``_complete`` spied on)."""
    from upo_fast.evaluation import text
    from upo_fast.models.loading import load_text_model

    completions, complete = [], text._complete

    def spy(*args, **kwargs):
        done = complete(*args, **kwargs)
        completions.extend(done[0])
        return done

    monkeypatch.setattr(text, "_complete", spy)
    model, tokenizer = load_text_model(folder, "cpu")
    result = text.evaluate_math(model, tokenizer, arith.make_problems(limit, "test"), task="arith",
                                gen_length=arith.GEN_LENGTH, block_length=arith.BLOCK_LENGTH, batch_size=BATCH,
                                position_temperature=1.0, progress=False)
    return result["accuracy"], completions, result["correct"]


def oracle_generate(model, input_ids, attention_mask=None, *, gen_length, return_steps=False, **_options):
    """A stand-in for ``upo_fast.generate`` that writes, after each prompt ``a+b=``, by ``(a + b) % 3``: 0 the
    worked answer, 1 the worked answer then EOS and a stray ``7``, 2 the worked answer of a wrong sum; EOS fill."""
    tokenizer = arith.build_tokenizer()
    eos, rows = tokenizer.eos_token_id, []
    for prompt in input_ids.tolist():
        a, b = (int(x) for x in tokenizer.decode(prompt, skip_special_tokens=True).rstrip("=").split("+"))
        kind = (a + b) % 3
        answer = tokenizer(arith.worked_answer(a, b + (kind == 2)), add_special_tokens=False)["input_ids"] + [eos]
        if kind == 1:
            answer += tokenizer("7", add_special_tokens=False)["input_ids"]
        rows.append(prompt + answer + [eos] * (gen_length - len(answer)))
    out = torch.tensor(rows, dtype=torch.long)
    return (out, torch.full((len(rows),), gen_length)) if return_steps else out


def test_task_reads_the_test_split_from_any_folder(elsewhere):
    manager = task_manager()
    if hasattr(manager, "load"):  # lm-eval 0.4.10+; load_task_or_group before
        task = manager.load(["arith"])["tasks"]["arith"]
    else:  # pragma: no cover
        task = manager.load_task_or_group(["arith"])["arith"]
    problems = arith.make_problems(500, "test")
    assert [dict(doc) for doc in task.eval_docs] == [{"question": p.question, "answer": p.answer, "id": p.id}
                                                     for p in problems]
    assert task.OUTPUT_TYPE == "generate_until" and task.config.num_fewshot == 0
    assert task.config.generation_kwargs["until"] == []  # "\n" or "," would cut an answer short
    task.build_all_requests(limit=3, rank=0, world_size=1)
    assert [i.arguments[0] for i in task.instances] == [p.question for p in problems[:3]]  # the bare question
    assert [task.doc_to_target(doc) for doc in list(task.eval_docs)[:3]] == [p.answer for p in problems[:3]]


def test_process_results_is_arith_correct():
    from upo_fast.integrations.lm_eval_tasks.arith.utils import process_results

    doc = {"question": "48213+39577=", "answer": "87790"}
    answers = [arith.worked_answer(48213, 39577), "####1####87790", "####87791", "87790", ""]
    assert [process_results(doc, [a])["exact_match"] for a in answers] == \
        arith.correct(answers, ["87790"] * len(answers)).astype(int).tolist() == [1, 1, 0, 0, 0]


def test_model_args_are_upo_fast_evals_defaults():
    from upo_fast.cli.commands import build_parser
    from upo_fast.cli.evaluate import TEXT_DEFAULTS

    args = build_parser().parse_args(["eval", "--task", "arith", "--model", "x"])
    assert (ARITH_MODEL_ARGS["gen_length"], ARITH_MODEL_ARGS["block_length"]) == TEXT_DEFAULTS["arith"] == \
        (arith.GEN_LENGTH, arith.BLOCK_LENGTH)
    assert args.steps is None and ARITH_MODEL_ARGS["steps"] == arith.GEN_LENGTH  # eval: steps = gen_length
    assert ARITH_MODEL_ARGS["batch_size"] == args.batch_size and args.device == "cpu" and args.temperature == 0
    assert arith_model_args("/m", scorer="margin") == ("pretrained=/m,gen_length=64,block_length=16,steps=64,"
                                                       "batch_size=250,sort_by_length=false,stop_at_eos=false,"
                                                       "scorer=margin")


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_answers_equal_upo_fast_evals(family, folders, elsewhere, monkeypatch):
    accuracy, answers, correct = run_lm_eval(folders[family])
    want_accuracy, want_answers, want_correct = run_upo_fast_eval(folders[family], monkeypatch)
    assert answers == want_answers and correct == want_correct and accuracy == want_accuracy
    if family == "llada":  # the check can fail: LLaDA attends to the padding, which lm-eval's own order changes
        assert run_lm_eval(folders[family], sort_by_length=True)[1] != want_answers


def test_scores_equal_upo_fast_evals_with_an_oracle_sampler(folders, elsewhere, monkeypatch):
    from upo_fast.evaluation import text
    from upo_fast.sampling import loop

    monkeypatch.setattr(text, "generate", oracle_generate)  # upo-fast eval's
    monkeypatch.setattr(loop, "generate", oracle_generate)  # the lm-eval model's (imported when it generates)
    accuracy, answers, correct = run_lm_eval(folders["llada"], limit=12)
    want_accuracy, want_answers, want_correct = run_upo_fast_eval(folders["llada"], monkeypatch, limit=12)
    assert answers == want_answers and correct == want_correct and accuracy == want_accuracy
    assert 0 < accuracy < 1
    # the check can fail: an answer cut at its EOS drops the stray digit after it
    assert run_lm_eval(folders["llada"], limit=12, stop_at_eos=True)[0] > accuracy


def test_command_line_finds_the_task_and_gives_evals_accuracy(folders, elsewhere, monkeypatch, tmp_path, capsys):
    """``upo-fast lm-eval --tasks arith`` without ``--include_path``, and ``upo-fast eval --task arith``: the
    same accuracy (with the oracle sampler, so that it is not 0)."""
    from upo_fast.evaluation import text
    from upo_fast.sampling import loop

    monkeypatch.setattr(text, "generate", oracle_generate)
    monkeypatch.setattr(loop, "generate", oracle_generate)
    folder = folders["dream"]
    assert main(["eval", "--task", "arith", "--model", folder, "--limit", "12",
                 "--json", str(tmp_path / "eval.json")]) == 0
    code = main(["lm-eval", "--model", "upo_fast", "--model_args", arith_model_args(folder), "--tasks", "arith",
                 "--device", "cpu", "--limit", "12", "--output_path", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err[-2000:]
    report = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    want = json.loads((tmp_path / "eval.json").read_text())["results"]["max_confidence"]["accuracy"]
    assert report["results"]["arith"]["exact_match,none"] == want and 0 < want < 1


def test_include_path_is_added_for_shipped_tasks_only():
    path = ["--include_path", str(TASKS_DIR)]
    assert with_shipped_tasks(["--model", "upo_fast", "--tasks", "arith"]) == ["--model", "upo_fast", "--tasks",
                                                                               "arith", *path]
    assert with_shipped_tasks(["--tasks=gsm8k,arith", "--limit", "2"]) == ["--tasks=gsm8k,arith", "--limit", "2",
                                                                          *path]
    assert with_shipped_tasks(["-t", "gsm8k", "arith"])[-2:] == path
    for kept in (["--tasks", "gsm8k"], ["--tasks", "arithmetic"], ["--tasks", "arith", "--include_path", "mine"],
                 ["--tasks", "arith", "--include", "mine"], ["--tasks", "arith", "--config", "c.yaml"]):
        assert with_shipped_tasks(kept) == kept
