"""Where the kernel tests run: on the GPU when there is one, else on the CPU through triton's interpreter, which
tests/conftest.py switched on before anything imported triton. Importing this skips the importing module when
neither can run."""

import pytest
import torch

pytest.importorskip("triton")

from upo_fast.kernels.triton_support import triton_interpreting  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not triton_interpreting():
    pytest.skip("no GPU and TRITON_INTERPRET is off", allow_module_level=True)
