"""``python -m upo_fast.cli``: the ``upo-fast`` command (torchrun starts the trainer this way)."""

import sys

from upo_fast.cli.commands import main

sys.exit(main())
