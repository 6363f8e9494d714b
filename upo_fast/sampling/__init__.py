"""Sampling: everything that runs between the MDM's forward passes.

- ``adapters``: any Hugging Face MDM (LLaDA, Dream, TinyMDM) behind one interface: mask id, logit shift, where
  the blocks and the head live, the last-block hook.
- ``scorers``: the unmasking orders as objects (max-confidence, margin, entropy, Top-K, softmax-confidence,
  random, Dream's origin, the learned policy), registered by name.
- ``schedules``: how many positions a step commits.
- ``loop``: ``generate`` and ``unmask``, the preallocated step loop (no host sync inside a step, the recorder hook).
- ``cuda_graphs``: CUDA-graph capture and replay of one step.
- ``llada_dropin`` / ``dream_dropin``: LLaDA's ``generate()`` and Dream's ``diffusion_generate()``, same tokens.
- ``patching``: ``patch(model)`` / ``unpatch(model)`` route a loaded model's own generate through the above.
- ``likelihood``: LLaDA's Monte-Carlo log-likelihood estimate (lm-eval's loglikelihood requests).

This ``__init__`` imports nothing: the adapter sits below the ops layer's users, the loop above the scorers
(tests/test_layering.py).
"""
