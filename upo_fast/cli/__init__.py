"""The ``upo-fast`` command line: ``commands`` (the table of subcommands and ``main``, the console script),
``args`` (argument types and the one-line error parser), ``evaluate`` (``eval``, ``viz``, ``parallel-curve``) and
``sample``. Parsing imports neither torch nor numpy, so ``upo-fast --help`` answers at once
(tests/test_cli_startup.py). ``python -m upo_fast.cli`` runs the same ``main``."""
