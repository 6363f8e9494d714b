"""lm-evaluation-harness task folders shipped with upo_fast: pass ``TASKS_DIR`` as lm-eval's ``--include_path``.

``upo-fast lm-eval --tasks arith`` adds it by itself when no ``--include_path`` is given (``cmd_lm_eval``). Kept
apart from ``upo_fast.integrations.lm_eval`` so that the path is known without lm-evaluation-harness installed.

``arith`` (``arith/arith.yaml``) is ``upo-fast eval --task arith``: the same 500 generated test problems, prompts
and exact match. Its accuracy is eval's when the ``upo_fast`` model also samples and reads the answers as eval
does, with ``ARITH_MODEL_ARGS`` (see ``arith_model_args``).
"""

from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
TASKS = ("arith",)  # the task names the YAML files under TASKS_DIR define

# `upo-fast eval --task arith`'s defaults as upo_fast model_args (tests/test_lm_eval_arith.py checks they are):
# its length and block (arith.GEN_LENGTH, BLOCK_LENGTH), one token a step, its --batch-size, and its batching and
# decoding. Why the last three: a LLaDA attends to the left padding, so an answer depends on the longest prompt of
# its batch, and eval batches --batch-size problems in their order (the model sorts by length unless told not to);
# eval's answer is all the generated text, special tokens dropped, not only what precedes the first EOS.
ARITH_MODEL_ARGS = {"gen_length": 64, "block_length": 16, "steps": 64, "batch_size": 250, "sort_by_length": False,
                    "stop_at_eos": False}


def arith_model_args(pretrained: str, **more) -> str:
    """``--model_args`` for ``upo-fast lm-eval --tasks arith`` that give ``upo-fast eval --task arith --model
    pretrained``'s accuracy (``more``: other model_args, e.g. ``scorer="margin"``, as eval's ``--scorer``)."""
    values = {"pretrained": pretrained, **ARITH_MODEL_ARGS, **more}
    return ",".join(f"{key}={str(value).lower() if isinstance(value, bool) else value}"
                    for key, value in values.items())
