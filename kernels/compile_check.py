"""Compile every kernel for a GPU without a GPU: the launch configurations the package uses on CUDA, through the
public launchers, for sm_90 (Hopper) and sm_80 (Ampere), with registers, spills and shared memory per compile.

How: a stand-in triton driver reports a CUDA target and turns loading and launching into no-ops, and
``force_launch_target`` makes the launchers take their CUDA branch (tile sizes, dot dtypes, V splits for the
target's multiprocessor count) on CPU tensors. Each launcher then runs as in production: its ``kernel[grid](...)``
compiles through triton's real pipeline (TTIR -> TTGIR -> LLVM -> PTX -> ptxas cubin), checks shared memory
against the target's per-block limit (triton's own check at load time) and "launches" nothing; the torch code
around the launch runs on uninitialized CPU outputs. Registers and spill bytes come from ptxas's own report
(``-v``), which triton prints when TRITON_DUMP_PTXAS_LOG is on; a fresh cache directory makes every kernel compile.

Run it in its own process with TRITON_INTERPRET unset (the interpreter and compiling cannot share one process:
triton decides at import time), e.g. ``python -m upo_fast.kernels.compile_check --arch 90 --matrix ci``; it prints
one JSON record per compile. ``tests/test_kernels_compile.py`` and ``benchmarks/compile_table.py`` call it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from typing import NamedTuple

# Multiprocessor count (the fused head's V splits depend on it) and the opt-in shared memory per block, bytes
ARCHES = {90: dict(name="sm_90 (H100/H200)", sm_count=132, max_shared=232448),
          80: dict(name="sm_80 (A100)", sm_count=108, max_shared=166912)}
VOCABS = (32, 32000, 126464, 152064)
HIDDEN = (256, 4096)


def backend_missing() -> str | None:
    """Why this machine cannot compile for CUDA (None if it can): triton, its NVIDIA backend, or ptxas absent."""
    try:
        import importlib.util

        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        if importlib.util.find_spec("triton.backends.nvidia") is None:
            return "triton's NVIDIA backend (triton.backends.nvidia) is not installed"
        from triton import knobs

        path = knobs.nvidia.ptxas.path
    except Exception as err:  # a broken install reads as "cannot compile here", with the reason
        return f"triton's NVIDIA backend cannot load: {err!r}"
    if not path or not os.path.exists(path):
        return f"ptxas not found (triton looked for {path!r})"
    return None


class Case(NamedTuple):
    """One launcher call: ``run()`` launches it under the stand-in; ``ci`` marks the representative subset."""
    label: str
    run: Callable[[], object]
    ci: bool = False


def _fused_head_cases():
    import torch

    from upo_fast.kernels.fused_head import fused_head_stats_triton

    def case(dtype, vocab, dim, n, temperature, need_ref, bias=False, rows=False):
        def run():
            hidden = torch.empty(n, dim, dtype=dtype)
            # [V, d] in nn.Linear layout without allocating it: rows 16 elements apart (strides specialize like the
            # real d: divisible by 16; the inner stride is 1)
            weight = torch.empty(vocab * 16 + dim, dtype=dtype).as_strided((vocab, dim), (16, 1))
            b = torch.zeros(vocab, dtype=dtype) if bias else None
            idx = torch.arange(n, dtype=torch.int64) if rows else None
            return fused_head_stats_triton(hidden, weight, b, rows=idx, topk=8, temperature=temperature, seed=1,
                                           need_ref=need_ref, check_rows=False)
        return run

    out = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for n in (16, 32, 256):  # BLOCK_R 16 / 32 / 64
            for temperature in (0.0, 1.0):
                for vocab, dim in ((152064, 4096), (32000, 256)):
                    ci = n in (32, 256) and temperature == 1.0 and vocab == 152064 and dtype != torch.float16
                    label = f"fused_head {str(dtype)[6:]} V={vocab} d={dim} rows={n} T={temperature} ref"
                    out.append(Case(label, case(dtype, vocab, dim, n, temperature, True), ci))
    for bias, rows in ((True, False), (False, True)):
        for temperature in (0.0, 1.0):
            label = f"fused_head bfloat16 V=126464 d=4096 rows=256 T={temperature} ref bias={bias} rows_idx={rows}"
            out.append(Case(label, case(torch.bfloat16, 126464, 4096, 256, temperature, True, bias, rows)))
    out.append(Case("fused_head float16 V=32 d=256 rows=8 T=0.0 no-ref",
                    case(torch.float16, 32, 256, 8, 0.0, False), ci=True))
    return out


def _vocab_stats_cases():
    import torch

    from upo_fast.kernels.vocab_stats import vocab_stats_triton

    def case(dtype, vocab, temperature, need_ref, rows):
        def run():
            logits = torch.empty(rows or 4, vocab, dtype=dtype)
            idx = torch.arange(rows, dtype=torch.int64) if rows else None
            return vocab_stats_triton(logits, idx, topk=8, temperature=temperature, seed=1, need_ref=need_ref,
                                      check_rows=False)
        return run

    out = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for vocab in VOCABS:
            for temperature in (0.0, 1.0):
                for need_ref in (False, True):
                    ci = (vocab == 152064 and temperature == 1.0 and need_ref and dtype == torch.bfloat16) or (
                        vocab == 32 and dtype == torch.float32 and temperature == 0.0 and not need_ref)
                    label = f"vocab_stats {str(dtype)[6:]} V={vocab} T={temperature} need_ref={need_ref}"
                    out.append(Case(label, case(dtype, vocab, temperature, need_ref, 0), ci))
    out.append(Case("vocab_stats bfloat16 V=152064 T=1.0 need_ref=True rows_idx",
                    case(torch.bfloat16, 152064, 1.0, True, 4), ci=True))
    return out


def _position_cases():
    import torch

    from upo_fast.kernels.policy_divergence import policy_divergence, reference_distribution
    from upo_fast.kernels.position_select import position_log_softmax, select_positions

    def inputs(dtype, length):
        scores = torch.zeros(2, length, dtype=dtype)
        return scores, torch.ones(2, length, dtype=torch.bool)

    def select(dtype, length, mode):
        def run():
            scores, cand = inputs(dtype, length)
            k = torch.ones(2, dtype=torch.int64)
            opts = [dict(k=k, temperature=0.0), dict(k=k, temperature=1.0, seed=1), dict(threshold=0.5)][mode]
            return select_positions(scores, cand, check=False, backend="triton", **opts)
        return run

    def log_softmax(dtype, length):
        return lambda: position_log_softmax(*inputs(dtype, length), check=False, backend="triton")

    def refdist(kind, length):
        def run():
            values, cand = inputs(torch.float32, length)
            return reference_distribution(kind, cand, confidence=values, ref_logsumexp=values, K=2, backend="triton")
        return run

    def divergence(kind, length):
        def run():
            scores, cand = inputs(torch.float32, length)
            scores.requires_grad_(True)
            policy_divergence(scores, cand, torch.ones_like(scores) / length, kind, backend="triton").sum().backward()
        return run

    out = []
    for length in (32, 256, 1024):  # BLOCK_L 32 takes the pairwise-rank path, larger ones the bisection
        for dtype in (torch.float32, torch.bfloat16):
            out.append(Case(f"position_log_softmax {str(dtype)[6:]} L={length}", log_softmax(dtype, length),
                            ci=length == 256 and dtype == torch.float32))
            for mode in (0, 1, 2):
                ci = dtype == torch.float32 and (length, mode) in ((32, 0), (1024, 1), (256, 2))
                out.append(Case(f"select_positions MODE={mode} {str(dtype)[6:]} L={length}",
                                select(dtype, length, mode), ci))
        for kind in ("max_confidence", "softmax_confidence", "topk"):
            out.append(Case(f"reference_distribution {kind} L={length}", refdist(kind, length),
                            ci=length == 256 and kind != "topk"))
        for kind in ("kl", "ce"):
            out.append(Case(f"policy_divergence {kind} forward+backward L={length}", divergence(kind, length),
                            ci=length == 256 and kind == "kl"))
    return out


def cases(matrix: str) -> list[Case]:
    """The launcher calls of the "full" matrix or its "ci" subset (one of each kernel variant that matters most:
    the largest fused-head tile with sampling and the reference pass, fp32 hidden states, every position MODE)."""
    every = _fused_head_cases() + _vocab_stats_cases() + _position_cases()
    return every if matrix == "full" else [c for c in every if c.ci]


# ----------------------------------------------------------------------------------------------------------------
# The stand-in driver and the per-compile records
# ----------------------------------------------------------------------------------------------------------------
_PTXAS = dict(registers=r"Used (\d+) registers", spill_stores=r"(\d+) bytes spill stores",
              spill_loads=r"(\d+) bytes spill loads", stack=r"(\d+) bytes stack frame")


def _ptxas_figures(log: str) -> dict:
    """Registers, spill bytes and stack frame from ptxas -v output (one kernel's compile)."""
    found = {name: re.findall(pattern, log) for name, pattern in _PTXAS.items()}
    if not found["registers"]:
        raise RuntimeError(f"no ptxas report in the compile log (is TRITON_DUMP_PTXAS_LOG honoured?):\n{log[-2000:]}")
    return {name: max(map(int, values), default=0) for name, values in found.items()}


def _mma(ptx: str) -> str:
    """Which instruction family the tile products compiled to (only the fused head has dots)."""
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if re.search(r"\bmma\.sync", ptx):
        return "mma.sync"
    return "-"


def _stand_in_driver(arch: int):
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.driver import CudaDriver

    spec = ARCHES[arch]

    class Utils:
        def load_binary(self, name, kernel, shared, device):  # (module, function, n_regs, n_spills, max threads)
            return 0, 0, 0, 0, 1024

        def unload_module(self, module):
            pass

        def get_device_properties(self, device):
            return dict(max_shared_mem=spec["max_shared"], multiprocessor_count=spec["sm_count"])

    class StandIn(CudaDriver):
        """A CUDA target without a device: compiles for sm_<arch>, loads and launches nothing."""

        def __init__(self):  # CudaDriver.__init__ would load libcuda
            self.utils = Utils()
            self.launcher_cls = lambda src, metadata: (lambda *args, **kwargs: None)

        def get_current_target(self):
            return GPUTarget("cuda", arch, 32)

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_device_capability(self, device=0):
            return divmod(arch, 10)

    return StandIn()


def _config(compile_info: dict) -> tuple[str, str]:
    """(kernel's dtype, "NAME=value ...") of one compile: the constexprs and num_warps the launcher chose."""
    signature = compile_info["signature"]
    dtype = next((ty[1:] for ty in signature.values() if isinstance(ty, str) and ty.startswith("*")), "-")
    names = list(signature)
    constants = {names[path[0]]: value for path, value in compile_info["constants"].items() if len(path) == 1}
    flags = " ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in constants.items()
                     if k.isupper() or k.startswith("BLOCK"))
    return dtype, f"{flags} num_warps={compile_info['num_warps']}".strip()


def check(arch: int, matrix: str = "ci", emit: Callable[[dict], None] = print) -> list[dict]:
    """Run the ``matrix`` launcher calls against a stand-in sm_<arch> GPU; one record per compile (a call whose
    kernels were already compiled adds none). A failing compile or launch check gives a record with ``error``."""
    import torch  # noqa: F401  (before triton: the launchers' torch.library registrations)
    import triton
    from triton import knobs

    from upo_fast.kernels.triton_support import LaunchTarget, force_launch_target, triton_interpreting

    if triton_interpreting():
        raise RuntimeError("unset TRITON_INTERPRET: the compile check compiles, the interpreter does not")
    records, log, current = [], io.StringIO(), {}

    def post_compile(*, key, fn, compile, **_):
        kernel = fn.jit_function.device_caches[compile["device"]][0][key]
        dtype, config = _config(compile)
        record = dict(kernel=fn.name, case=current["label"], arch=f"sm_{arch}", dtype=dtype, config=config,
                      shared=kernel.metadata.shared, mma=_mma(kernel.asm.get("ptx", "")),
                      **_ptxas_figures(log.getvalue()), compile_s=round(time.perf_counter() - current["t0"], 2))
        log.seek(0)
        log.truncate()
        current["t0"] = time.perf_counter()
        records.append(record)

    previous_driver = triton.runtime.driver._active
    previous = (knobs.runtime.jit_post_compile_hook, knobs.nvidia.dump_ptxas_log, knobs.cache.dir)
    knobs.runtime.jit_post_compile_hook = post_compile
    knobs.nvidia.dump_ptxas_log = True
    target = LaunchTarget(gpu=True, sm_count=ARCHES[arch]["sm_count"], interpreter=False)
    try:
        with tempfile.TemporaryDirectory() as cache:
            knobs.cache.dir = cache  # nothing from an earlier run: every kernel compiles and ptxas reports it
            triton.runtime.driver.set_active(_stand_in_driver(arch))
            for case in cases(matrix):
                current.update(label=case.label, t0=time.perf_counter())
                done = len(records)
                try:
                    with force_launch_target(target), contextlib.redirect_stdout(log):
                        case.run()
                except Exception as err:  # compile errors and triton's out-of-resources checks alike
                    records.append(dict(kernel="?", case=case.label, arch=f"sm_{arch}",
                                        error=f"{type(err).__name__}: {str(err)[:2000]}"))
                for record in records[done:]:
                    emit(json.dumps(record))
    finally:
        triton.runtime.driver._active = previous_driver  # reset_active() would look for a real GPU
        knobs.runtime.jit_post_compile_hook, knobs.nvidia.dump_ptxas_log, knobs.cache.dir = previous
    return records


def problems(records: list[dict]) -> list[str]:
    """What the records break: a failed compile or launch check, shared memory over the per-block limit, or spill
    bytes (none anywhere: the bf16/fp16 paths are the fast ones, and fp32's tiles were chosen not to spill)."""
    out = []
    for r in records:
        where = f"{r['arch']} {r['case']}: {r['kernel']} [{r.get('config', '')}]"
        if "error" in r:
            out.append(f"{where}: {r['error'].splitlines()[0] if r['error'] else 'error'}")
            continue
        limit = ARCHES[int(r["arch"][3:])]["max_shared"]
        if r["shared"] > limit:
            out.append(f"{where}: {r['shared']} bytes of shared memory > {limit}")
        if r["spill_stores"] or r["spill_loads"]:
            out.append(f"{where}: {r['registers']} registers, {r['spill_stores']} bytes spill stores, "
                       f"{r['spill_loads']} bytes spill loads")
    return out


def run_processes(arches, matrix: str, timeout: float) -> list[dict]:
    """``check`` for each arch in its own process, all at once (one core each), TRITON_INTERPRET removed from their
    environment. Raises RuntimeError with the output of a process that crashed or printed no record."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("OMP_NUM_THREADS", "1")
    procs = [subprocess.Popen([sys.executable, "-m", "upo_fast.kernels.compile_check", "--arch", str(arch),
                               "--matrix", matrix], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for arch in arches]
    records = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise RuntimeError(f"the compile check took more than {timeout} s") from None
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        if proc.returncode not in (0, 1) or not lines:
            raise RuntimeError(f"compile check exited {proc.returncode}:\n{out[-3000:]}\n{err[-3000:]}")
        records += lines
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, choices=sorted(ARCHES), action="append", required=True)
    parser.add_argument("--matrix", choices=("ci", "full"), default="ci")
    args = parser.parse_args(argv)
    missing = backend_missing()
    if missing:
        print(json.dumps(dict(skipped=missing)))
        return 0
    failed = 0
    for arch in args.arch:
        failed += sum("error" in r for r in check(arch, args.matrix, emit=lambda line: print(line, flush=True)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
