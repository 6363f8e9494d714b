"""The compile table: every kernel at every launch configuration the package uses on CUDA, compiled for sm_90 and
sm_80 without a GPU (``upo_fast.kernels.compile_check``), with registers, spill bytes, shared memory and the MMA
instruction family per compile. Writes ``<out>/compile_table.json`` and ``<out>/compile_table.md``; exits 1 if any
compile fails, spills or needs more shared memory than a block may have.

    python benchmarks/compile_table.py     # full matrix, both arches -> benchmarks/results/compile_table
    python benchmarks/compile_table.py --arch 90 --matrix ci --out $OUT   # what gpu_check.sh runs first
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

from common import REPO, git_commit, package_version

from upo_fast.kernels.compile_check import ARCHES, backend_missing, problems, run_processes

COLUMNS = ("arch", "kernel", "dtype", "config", "registers", "spill_stores", "spill_loads", "shared", "mma",
           "compile_s", "case")


def _markdown(records: list[dict], meta: dict, issues: list[str]) -> str:
    lines = [f"# Kernel compile table ({meta['matrix']} matrix)", "",
             f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ", f"Date: {meta['date']}  ",
             f"Commit: {meta['commit']}  ", f"triton {meta['triton']}, torch {meta['torch']}, "
             f"{meta['compiles']} compiles in {meta['seconds']} s", "",
             "registers / spill bytes from ptxas -v; shared = bytes of shared memory per block (limits: "
             + ", ".join(f"{a['name']} {a['max_shared']}" for a in ARCHES.values()) + "); mma = the instruction "
             "family of the tile products (wgmma on Hopper with 64-row tiles, mma.sync otherwise, - without "
             "tl.dot). case = the launcher call that first needed this compile.", ""]
    lines += ["Problems: " + ("none" if not issues else f"{len(issues)}"), ""]
    lines += [f"- {p}" for p in issues]
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['arch']} | {r['kernel']} | | ERROR: {r['error'].splitlines()[0][:200]} |"
                         + " |" * (len(COLUMNS) - 5) + f" {r['case']} |")
        else:
            lines.append("| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Compile every kernel for sm_90 / sm_80 and tabulate registers, "
                                                 "spills and shared memory")
    parser.add_argument("--arch", type=int, choices=sorted(ARCHES), action="append")
    parser.add_argument("--matrix", choices=("ci", "full"), default="full")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "compile_table"))
    parser.add_argument("--timeout", type=float, default=3000.0)
    args = parser.parse_args(argv)
    missing = backend_missing()
    if missing:
        print(f"compile table skipped: {missing}")
        return 2
    arches = args.arch or sorted(ARCHES, reverse=True)
    start = time.time()
    records = run_processes(arches, args.matrix, args.timeout)
    records.sort(key=lambda r: (r["arch"], r["kernel"], r.get("dtype", ""), r.get("config", "")))
    issues = problems(records)
    script = Path(sys.argv[0]).resolve().relative_to(REPO)
    meta = dict(matrix=args.matrix, command=" ".join(["python", str(script), *sys.argv[1:]]),
                machine=f"{platform.machine()}, {os.cpu_count()} CPU cores (compiling only: no GPU is used)",
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), commit=git_commit(),
                triton=package_version("triton"), torch=package_version("torch"), compiles=len(records),
                seconds=round(time.time() - start, 1), problems=issues)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compile_table.json").write_text(json.dumps(dict(meta=meta, records=records), indent=1) + "\n")
    (out / "compile_table.md").write_text(_markdown(records, meta, issues))
    print(f"{len(records)} compiles, {len(issues)} problems -> {out}/compile_table.md")
    for p in issues:
        print("  " + p)
    return 1 if issues else 0


if __name__ == "__main__":
    sys.exit(main())
