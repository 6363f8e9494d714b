"""GSM8K and MATH500 for LLaDA-8B-Instruct / Dream-7B-Instruct: local data, prompts, rewards and metrics (the
evaluation loop, which runs the sampler, is :func:`upo_fast.evaluation.text.evaluate_math`).

Data is read from a local copy only (JSON, JSONL, parquet, or a folder written by ``datasets``' save_to_disk);
nothing is downloaded at run time. JSON and JSONL need only the core dependencies; parquet files and ``datasets``
folders need the ``math`` extra (``pip install 'upo_fast[math]'``: ``datasets``, which brings pyarrow).
Completions are asked to reason inside ``<reasoning>`` tags and give the final answer inside ``<answer>`` tags
(for MATH500 as ``\\boxed{...}`` inside the answer), the format the GRPO-on-LLaDA recipes (d1) train with;
answers are compared by ``math_answers.answers_equal``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from upo_fast.tasks.math_answers import answers_equal, extract_answer, parse_number

TASK_NAMES = ("gsm8k", "math500")


@dataclass
class MathProblem:
    question: str
    answer: str  # the final answer only (GSM8K's "#### 42" already extracted), compared with answers_equal
    id: str | None = None


def check_task(task) -> None:
    """ValueError unless ``task`` is one of ``TASK_NAMES``."""
    if task not in TASK_NAMES:
        raise ValueError(f"task must be one of {', '.join(TASK_NAMES)}, got {task!r}")


# ------------------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------------------


MATH_EXTRA = "pip install 'upo_fast[math]'"  # the optional dependencies of parquet files and `datasets` folders


def _import_math_extra(module: str, what: str, instead: str):
    """``module`` (``datasets`` or ``pyarrow.parquet``), or a ValueError that names the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"{what} needs {module.split('.')[0]}, which is not installed: {MATH_EXTRA}, or "
                         f"{instead}") from None


def _read_rows(path: Path) -> list[tuple[str, dict]]:
    """[(where, row)] from a local file or saved dataset folder; ``where`` names the row for error messages."""
    suffix = path.suffix.lower()
    if path.is_dir():
        datasets = _import_math_extra("datasets", f"{path} is a folder: reading it as a `datasets` save_to_disk "
                                      "folder", "pass a .json/.jsonl file")
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            if "test" not in data:
                raise ValueError(f"{path} holds splits {sorted(data)}; pass the folder of the test split")
            data = data["test"]
        return [(f"row {i + 1}", dict(row)) for i, row in enumerate(data)]
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((f"line {number}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
        return rows
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); JSON Lines files must "
                             "end in .jsonl") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise ValueError(f"{path} must hold a list of objects or {{\"data\": [...]}}, got {type(data).__name__}")
        return [(f"row {i + 1}", row) for i, row in enumerate(data)]
    if suffix == ".parquet":
        # pyarrow is what `datasets` reads parquet with; reading it directly avoids datasets' on-disk cache
        pq = _import_math_extra("pyarrow.parquet", f"reading {path}", "convert the file to .jsonl")
        return [(f"row {i + 1}", row) for i, row in enumerate(pq.read_table(path).to_pylist())]
    raise ValueError(f"{path}: unknown data format {suffix or '(no suffix)'!r}; use .json, .jsonl or .parquet")


def _text(row: dict, key: str) -> str | None:
    value = row.get(key)
    if value is None or isinstance(value, (dict, list)):
        return None
    value = str(value).strip()
    return value or None


def _problem(row, where: str, path: Path, task: str, index: int) -> MathProblem:
    if not isinstance(row, dict):
        raise ValueError(f"{path}: {where} is a {type(row).__name__}, expected an object with fields")
    if task == "gsm8k":
        question, solution = _text(row, "question"), _text(row, "answer")
        if question is None or solution is None:
            raise ValueError(f"{path}: {where} lacks {'question' if question is None else 'answer'!r}; GSM8K rows "
                             "need 'question' and 'answer' (the solution ending in '#### <number>')")
        # the original solutions end in "#### 42"; already-extracted copies hold just the number
        answer = extract_answer(solution, "hash") if "####" in solution else solution
        if answer is None:
            raise ValueError(f"{path}: {where} has nothing after '####' in its answer")
    else:
        question, answer = _text(row, "problem"), _text(row, "answer")
        if answer is None and _text(row, "solution") is not None:
            answer = extract_answer(row["solution"], "boxed")
        if question is None or answer is None:
            missing = "problem" if question is None else "answer (or a solution with \\boxed{})"
            raise ValueError(f"{path}: {where} lacks {missing}; MATH500 rows need 'problem' and 'answer'")
    ident = _text(row, "unique_id") or _text(row, "id") or f"{task}-{index}"
    return MathProblem(question=question, answer=answer, id=ident)


def load_problems(path, task: str, limit: int | None = None) -> list[MathProblem]:
    """Problems of ``task`` ("gsm8k" or "math500") from a local JSON / JSONL / parquet file (or a ``datasets``
    save_to_disk folder), the first ``limit`` of them if given.

    GSM8K rows: ``question`` and ``answer`` (the worked solution ending in ``#### 42``; the final number is kept).
    MATH500 rows: ``problem`` and ``answer``, or ``solution`` whose last ``\\boxed{}`` is the answer. An id is
    taken from ``unique_id`` or ``id`` when present.
    """
    check_task(task)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be None or an int >= 1, got {limit!r}")
    path = Path(path).expanduser()
    if not path.exists():
        example = "gsm8k_test.jsonl" if task == "gsm8k" else "math500_test.jsonl"
        raise ValueError(f"data file {path} does not exist; point at a local copy of the {task} test set, e.g. "
                         f"--data /path/to/{example} (nothing is downloaded at run time)")
    rows = _read_rows(path)
    if limit is not None:
        rows = rows[:limit]
    problems = [_problem(row, where, path, task, i) for i, (where, row) in enumerate(rows)]
    if not problems:
        raise ValueError(f"{path} holds no problems")
    return problems


# ------------------------------------------------------------------------------------------------------------
# prompts
# ------------------------------------------------------------------------------------------------------------

_FORMAT = ("Respond in exactly this format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>")
SYSTEM_PROMPT = ("You are a careful math tutor. Work through the problem step by step inside <reasoning> tags, "
                 "then give only the final numerical answer, with no units, inside <answer> tags. " + _FORMAT)
MATH_SYSTEM_PROMPT = ("You are a careful math tutor. Work through the problem step by step inside <reasoning> "
                      "tags, then give the final answer in simplest form as \\boxed{...} inside <answer> tags. "
                      + _FORMAT)
SYSTEM_PROMPTS = {"gsm8k": SYSTEM_PROMPT, "math500": MATH_SYSTEM_PROMPT}


def build_prompts(problems, tokenizer, task: str, chat: bool = True) -> list[str]:
    """One prompt string per problem (a MathProblem or a question string).

    With ``chat`` and a tokenizer that has a chat template, the instructions and the question form one user turn
    rendered by ``apply_chat_template(..., add_generation_prompt=True)``: a single user turn (rather than a system
    turn) is what every chat template accepts, and is how d1 prompts LLaDA. Otherwise a plain
    "<instructions>\\n\\nQuestion: ...\\nAnswer:" string.
    """
    check_task(task)
    instructions = SYSTEM_PROMPTS[task]
    use_chat = chat and tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    prompts = []
    for problem in problems:
        question = problem.question if isinstance(problem, MathProblem) else str(problem)
        if use_chat:
            messages = [{"role": "user", "content": f"{instructions}\n\n{question}"}]
            prompts.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        else:
            prompts.append(f"{instructions}\n\nQuestion: {question}\nAnswer:")
    return prompts


# ------------------------------------------------------------------------------------------------------------
# rewards
# ------------------------------------------------------------------------------------------------------------

# Weights as in d1's diffu-GRPO: a right answer dominates (2.0), each format check adds 0.5 so a well-formed
# wrong answer (1.5) still beats a malformed one. d1's partial "XML count" term is left out: it mostly
# duplicates the two structure checks and its per-character penalty depends on the decoded length.
CORRECT_REWARD = 2.0
STRUCTURE_REWARD = 0.5  # <reasoning>...</reasoning> then <answer>...</answer> (non-empty), at the start
LAYOUT_REWARD = 0.5  # exactly the requested layout: every tag on its own line, nothing after </answer>
SHAPE_REWARD = 0.5  # gsm8k: the answer is one number (d1: digits only); math500: the answer holds a \boxed{}
_STRUCTURE = re.compile(r"\s*<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.S)
_LAYOUT = re.compile(r"\s*<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\s*", re.S)


def _as_text(completion) -> str:
    return completion if isinstance(completion, str) else ""


def correctness_reward(completions, answers) -> np.ndarray:
    """[N] float: ``CORRECT_REWARD`` where the answer extracted from a completion (``extract_answer`` "auto")
    equals the reference answer, else 0 (also when nothing can be extracted)."""
    completions, answers = list(completions), list(answers)
    if len(completions) != len(answers):
        raise ValueError(f"completions ({len(completions)}) and answers ({len(answers)}) must have the same length")
    return np.array([CORRECT_REWARD * answers_equal(extract_answer(_as_text(c)), str(a))
                     for c, a in zip(completions, answers)], dtype=np.float64)


def _format_parts(completion: str, task: str) -> tuple[bool, bool, bool]:
    """(structure, layout, shape) checks; all False when the answer tags hold nothing parseable."""
    tagged = extract_answer(completion, "answer_tag")
    if tagged is None or "</answer>" not in completion:
        return False, False, False
    structure = _STRUCTURE.match(completion) is not None
    layout = _LAYOUT.fullmatch(completion) is not None
    if task == "gsm8k":
        shape = parse_number(tagged) is not None
    else:
        shape = extract_answer(tagged, "boxed") is not None
    return structure, layout, shape


def _format_table(completions, task: str) -> np.ndarray:
    """[N, 3] bool: the structure, layout and shape checks of each completion."""
    return np.array([_format_parts(_as_text(c), task) for c in completions], dtype=bool).reshape(-1, 3)


_FORMAT_WEIGHTS = np.array([STRUCTURE_REWARD, LAYOUT_REWARD, SHAPE_REWARD])


def format_reward(completions, task: str = "gsm8k") -> np.ndarray:
    """[N] float in [0, 1.5]: ``STRUCTURE_REWARD`` + ``LAYOUT_REWARD`` + ``SHAPE_REWARD`` for the checks a
    completion passes. A completion without a closed, non-empty ``<answer>`` scores 0."""
    check_task(task)
    return _format_table(completions, task).astype(np.float64) @ _FORMAT_WEIGHTS


def math_rewards(completions, answers, task: str) -> dict:
    """All rewards of a batch: {"reward": [N] float (correctness + format), "correct": [N] bool, "format_ok": [N]
    bool (the answer is where the format puts it: structure check passed), "extracted": N answers or None}."""
    check_task(task)
    completions = [_as_text(c) for c in completions]
    correct = correctness_reward(completions, answers)
    parts = _format_table(completions, task)
    return {"reward": correct + parts.astype(np.float64) @ _FORMAT_WEIGHTS, "correct": correct > 0,
            "format_ok": parts[:, 0],
            "extracted": [extract_answer(c) for c in completions]}


def flexible_match(completion: str, answer: str) -> bool:
    """Right by the strict rule, or the last number of the extracted answer (of the whole completion when nothing
    was extracted) is right: credits "<answer>The total is 14</answer>" and untagged completions ending in 14."""
    extracted = extract_answer(completion)
    return answers_equal(extracted, answer) or answers_equal(extract_answer(extracted or completion, "last_number"),
                                                             answer)
