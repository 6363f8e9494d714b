"""The ``upo-fast`` command line: ``commands`` (the parsers and the command functions; ``main`` is the console
script), ``args`` (argument types and the one-line error parser), ``evaluate`` (``eval``, ``viz`` and
``parallel-curve``). Parsing imports neither torch nor numpy, so ``upo-fast --help`` answers at once
(tests/test_cli_startup.py). ``python -m upo_fast.cli`` runs the same ``main``."""
