"""The kernel files import without triton (the CPU path runs the PyTorch references) and decorate their kernels on
the first launch through ``triton_support.deferred_kernels``."""

import subprocess
import sys
import types

import pytest

from upo_fast.kernels.triton_support import deferred_kernels, device_helpers

NO_TRITON = """
import sys
sys.modules["triton"] = None  # as if triton were not installed: any import of it fails
import torch
import upo_fast
from upo_fast import ops
from upo_fast.kernels import fused_head, policy_divergence, position_select, vocab_stats
assert vocab_stats.tl is None and fused_head.merge_topk is None and position_select.gumbel_scores is None
stats = ops.vocab_stats(torch.randn(3, 10))
assert stats.token.shape == (3,)
"""


def test_kernel_files_import_and_run_on_the_cpu_without_triton():
    done = subprocess.run([sys.executable, "-c", NO_TRITON], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_deferred_kernels_binds_tl_and_the_shared_helpers_once_per_mode():
    triton = pytest.importorskip("triton")
    module = types.ModuleType("fake_kernel_file")
    exec("tl = gumbel_scores = None\ncalls = []\ndef define(triton):\n    calls.append(triton)\n    return 'kernels'\n",
         module.__dict__)
    jitted = deferred_kernels("gumbel_scores")(module.define)
    assert module.tl is None  # nothing happens before the first launch
    assert jitted() == jitted() == "kernels"
    assert module.calls == [triton]  # defined once (per TRITON_INTERPRET value)
    assert module.tl is triton.language and module.gumbel_scores is device_helpers().gumbel_scores


def test_deferred_kernels_rejects_an_unknown_helper():
    with pytest.raises(ValueError, match="no shared triton helper named nope"):
        deferred_kernels("nope")
