"""Integrations with the tools LLaDA and Dream users already run: lm-evaluation-harness (``lm_eval.py``, needs the
optional ``eval`` extra, and the task folders it ships, ``lm_eval_tasks/``) and a one-line patch for a model loaded
elsewhere (``upo_fast.patch``)."""
