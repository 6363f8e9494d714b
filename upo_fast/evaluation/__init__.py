"""Evaluation: how well orders, commit rules and policies do on held-out tasks.

- ``grids``: solving held-out grid puzzles (Sudoku, Zebra) with any scorer, ``pass_at``, ``HELD_OUT_SEED``.
- ``text``: GSM8K / MATH500 / arith through the sampler, exact match of the final answer.
  The trainers validate with these two, so they sit below training (tests/test_layering.py); everything else here
  sits above.
- ``intervals``: confidence intervals and paired differences for solved rates.
- ``plots``, ``order_pictures``: training curves and the order in which a scorer fills a grid.
- ``demo``: the two-minute CPU demo (``upo-fast demo``).
- ``flops``: the policy's cost per step, counted by torch.

This ``__init__`` imports nothing.
"""
