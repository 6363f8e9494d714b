"""The ``arith`` task for lm-evaluation-harness: ``arith.yaml`` and the hooks it names in ``utils.py``."""
