"""The demo's text line: the shipped small Dream (``upo_fast/assets/arith_dream``) completes one held-out ``arith``
prompt under max-confidence, under its learned policy (when one ships) and under max-confidence with Fast-dLLM's
threshold rule, with the answer each gives and the MDM forwards each used."""

from __future__ import annotations

from upo_fast.evaluation.text import evaluate_math
from upo_fast.tasks import arith

TEXT_MODEL = "arith_dream"  # the text model that ships with a policy
THRESHOLD = 0.9


def _runs(has_policy: bool) -> dict[str, dict]:
    runs = {"max-confidence": {"scorer": "max_confidence"}}
    if has_policy:
        runs["policy"] = {"scorer": "policy", "position_temperature": 0.0}
    runs[f"max-confidence, threshold {THRESHOLD}"] = {"scorer": "max_confidence", "threshold": THRESHOLD}
    return runs


def text_model_shipped() -> bool:
    from upo_fast.assets import model_folder

    return (model_folder(TEXT_MODEL, None) / "config.json").is_file()


def text_line(problem_index: int = 0) -> dict:
    """{"prompt", "reference", "runs": {name: {"answer", "correct", "forwards"}}} of the ``problem_index``-th test
    problem, printed as one line."""
    from upo_fast.assets import model_folder
    from upo_fast.models.loading import load_text_model
    from upo_fast.policy import load_policy

    folder = model_folder(TEXT_MODEL, None)
    model, tokenizer = load_text_model(folder, "cpu")
    policy = load_policy(folder / "policy", None, model) if (folder / "policy" / "config.json").is_file() else None
    problem = arith.make_problems(problem_index + 1, "test")[problem_index]
    line = {"prompt": problem.question, "reference": problem.answer, "runs": {}}
    for name, options in _runs(policy is not None).items():
        result = evaluate_math(model, tokenizer, [problem], task=arith.NAME, gen_length=arith.GEN_LENGTH,
                               block_length=arith.BLOCK_LENGTH, progress=False, policy=policy, **options)
        example = result["examples"][0]
        line["runs"][name] = {"answer": example["extracted"], "correct": example["correct"],
                              "forwards": result["forwards"]}
    print(format_text_line(line))
    return line


def format_text_line(line: dict) -> str:
    parts = [f"{name}: {run['answer']} {'right' if run['correct'] else 'wrong'}, {run['forwards']:.0f} forwards"
             for name, run in line["runs"].items()]
    return f"arith ({TEXT_MODEL}): {line['prompt']} (answer {line['reference']}) -> " + "; ".join(parts)
