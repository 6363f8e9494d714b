import os
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels run through triton's interpreter, which must be switched on before triton is
# first imported (loading a transformers model imports it), so here, before any test module.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# tests import their fixtures (tiny_models, reference_samplers) as plain modules
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
