"""Every kernel compiles for Hopper (sm_90) and Ampere (sm_80) without a GPU, through the real launchers, with no
register spills and shared memory within a block's limit (``upo_fast.kernels.compile_check``). The CI subset runs
here on every ``make test`` (both arches in parallel processes, under 2 minutes on 2 cores); the full matrix is
``benchmarks/compile_table.py`` (the committed table) or this file with UPO_COMPILE_FULL=1."""

import os

import pytest

from upo_fast.kernels.compile_check import _config, _mma, _ptxas_figures, backend_missing, problems, run_processes

KERNELS = {"_fused_head_kernel", "_vocab_stats_kernel", "_select_kernel", "_log_softmax_kernel", "_refdist_kernel",
           "_divergence_kernel"}
PTXAS_LOG = """ptxas info    : Compiling entry function '_fused_head_kernel' for 'sm_90a'
ptxas info    : Function properties for _fused_head_kernel
    8 bytes stack frame, 16 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 8 bytes cumulative stack size
"""


def _record(**kw):
    return dict(dict(kernel="_k", case="c", arch="sm_90", config="", shared=0, registers=40, spill_stores=0,
                     spill_loads=0), **kw)


def test_ptxas_report_and_problem_rules():
    assert _ptxas_figures(PTXAS_LOG) == dict(registers=255, spill_stores=16, spill_loads=8, stack=8)
    with pytest.raises(RuntimeError, match="no ptxas report"):
        _ptxas_figures("")
    assert _mma("wgmma.mma_async.sync.aligned") == "wgmma" and _mma("mma.sync.aligned.m16n8k16") == "mma.sync"
    assert _mma("fma.rn.f32") == "-"
    assert problems([_record()]) == []
    assert "spill" in problems([_record(spill_stores=16, spill_loads=8)])[0]
    assert "shared memory" in problems([_record(arch="sm_80", shared=200000)])[0]
    assert problems([_record(arch="sm_90", shared=200000)]) == []  # Hopper allows 227 KB per block
    assert "OutOfResources" in problems([dict(kernel="?", case="c", arch="sm_80", error="OutOfResources: x")])[0]
    info = dict(signature={"h_ptr": "*bf16", "n": "i32", "BLOCK": "constexpr", "FLAG": "constexpr"},
                constants={(2,): 64, (3,): True}, num_warps=8)
    assert _config(info) == ("bf16", "BLOCK=64 FLAG=1 num_warps=8")


def _compile(matrix, timeout):
    missing = backend_missing()
    if missing:
        pytest.skip(f"cannot compile for CUDA here: {missing}")
    return run_processes([90, 80], matrix, timeout)


def test_ci_subset_compiles_for_sm90_and_sm80_without_spills():
    records = _compile("ci", timeout=300)
    assert problems(records) == []
    for arch in ("sm_90", "sm_80"):
        assert {r["kernel"] for r in records if r["arch"] == arch} == KERNELS
    head = [r for r in records if r["kernel"] == "_fused_head_kernel"]
    # the launcher took its CUDA branch: bf16 operands straight into MMA (no interpreter fp32 copies), its tiles
    assert head and all("DOT_F32=0" in r["config"] for r in head)
    big = [r for r in head if r["dtype"] == "bf16" and "BLOCK_R=64 BLOCK_V=64 BLOCK_D=64" in r["config"]]
    assert {r["arch"]: r["mma"] for r in big} == {"sm_90": "wgmma", "sm_80": "mma.sync"}
    assert any(r["dtype"] == "fp32" and "IEEE=1" in r["config"] and r["mma"] == "-" for r in head)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("UPO_COMPILE_FULL"), reason="the full matrix takes ~7 min on 2 cores: "
                    "set UPO_COMPILE_FULL=1 (or run benchmarks/compile_table.py)")
def test_full_matrix_compiles_without_spills():
    assert problems(_compile("full", timeout=3600)) == []
