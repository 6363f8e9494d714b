"""Hooks of ``arith.yaml``: the documents and the metric of ``upo-fast eval --task arith``, from the task module
itself, so that lm-eval and ``upo-fast eval`` read the same problems and score them the same way.

lm-eval imports this file by its path (the YAML's ``!function utils.NAME``), so it works from any working folder.
It imports only the standard library, ``upo_fast.tasks.arith`` and ``datasets`` (lm-eval's own dependency: a
``custom_dataset`` must return ``datasets.Dataset`` splits, whose ``features`` lm-eval reads).
"""

from __future__ import annotations

from upo_fast.tasks import arith

TEST_PROBLEMS = 500  # what `upo-fast eval --task arith` scores by default: the first 500 of the test split


def docs(num_problems: int = TEST_PROBLEMS) -> list[dict]:
    """The test split's first ``num_problems`` problems as lm-eval documents: {question, answer, id}, the rows
    ``arith.write_problems`` writes."""
    return [{"question": p.question, "answer": p.answer, "id": p.id}
            for p in arith.make_problems(num_problems, "test")]


def load_dataset(num_problems: int = TEST_PROBLEMS, **_lm_eval_metadata) -> dict:
    """``custom_dataset``: {"test": the generated test problems}. Generated rather than read from a file, so
    there is no path that depends on where lm-eval runs, and no copy that could drift from ``make_problems``.
    lm-eval also passes the task's metadata (``version``, ``--metadata``) as keywords: they are not ours."""
    from datasets import Dataset

    return {"test": Dataset.from_list(docs(int(num_problems)))}


def process_results(doc: dict, results: list[str]) -> dict:
    """``exact_match``: ``arith.correct``, the number after the last ``####`` equals the answer (what
    ``upo-fast eval`` counts as correct)."""
    return {"exact_match": int(arith.correct([results[0]], [doc["answer"]])[0])}
