"""Shared helpers of the benchmarks: run metadata, timing, peak memory, result files (JSON + CSV), and the common
end of a benchmark's ``main()`` (``finish``).

Every result file carries the metadata that the README rule asks for: device, torch/triton versions, commit, date
and the command line.
"""

from __future__ import annotations

import csv
import ctypes
import datetime
import importlib.metadata
import json
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from upo_fast.kernels.triton_support import interpreter_ready, triton_interpreting

REPO = Path(__file__).resolve().parent.parent


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(repo: Path = REPO) -> str | None:
    """The checked-out commit, read from .git without running git (None outside a checkout)."""
    git = repo / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = Path(git.read_text().split(":", 1)[1].strip())
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(":", 1)[1].strip()
        bases = [git]
        if (git / "commondir").exists():  # a linked worktree keeps its refs in the main .git
            bases.append((git / (git / "commondir").read_text().strip()).resolve())
        for base in bases:
            if (base / ref).exists():
                return (base / ref).read_text().strip()
            packed = base / "packed-refs"
            if packed.exists():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
    except OSError:
        return None
    return None


def metadata(device: torch.device | str) -> dict:
    return dict(device=device_name(device), torch=torch.__version__, triton=package_version("triton"),
                cuda=torch.version.cuda, python=platform.python_version(), commit=git_commit(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                command=" ".join([Path(sys.executable).name, *sys.argv]))


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def time_ms(fn: Callable[[], object], warmup: int = 3, repeats: int = 20,
            device: torch.device | str | None = None) -> dict:
    """Median, 20th and 80th percentile of ``fn``'s time in milliseconds: CUDA events around each call on a GPU
    (no host sync between start and end), ``time.perf_counter`` on the CPU."""
    cuda = device is not None and torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    times = []
    if cuda:
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        times = [start.elapsed_time(end) for start, end in events]
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return dict(median_ms=statistics.median(times), p20_ms=_quantile(times, 0.2), p80_ms=_quantile(times, 0.8),
                repeats=repeats)


def peak_memory_bytes(fn: Callable[[], object], device: torch.device | str) -> int | None:
    """Peak CUDA memory allocated during one call of ``fn``, above what was allocated before (None on the CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def write_results(out_dir: str | Path, name: str, rows: list[dict], meta: dict, extra: dict | None = None) -> dict:
    """Write ``<name>.json`` ({"meta", "results", **extra}) and ``<name>.csv`` (one row per result, the metadata
    repeated as columns) under ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out / f"{name}.json", out / f"{name}.csv"
    json_path.write_text(json.dumps(dict(meta=meta, results=rows, **(extra or {})), indent=2, default=str) + "\n")
    columns = list(dict.fromkeys(key for row in rows for key in row)) + [f"meta_{k}" for k in meta]
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, **{f"meta_{k}": v for k, v in meta.items()}})
    return dict(json=str(json_path), csv=str(csv_path))


def finish(args, name: str, rows: list[dict], device: torch.device | str, extra: dict | None = None, *,
           meta: dict | None = None, plot: Callable[[list[dict], Path], None] | None = None) -> int:
    """The end of a benchmark's ``main()``: writes ``<args.out>/<name>.{json,csv}`` with the run's metadata
    (``metadata(device)``, then ``"quick": args.quick``, then the fields of ``meta``) and ``extra``, draws
    ``<name>.png`` by ``plot(rows, path)`` when given (a note instead where matplotlib is missing), prints the files
    written and returns 0, the script's exit status."""
    paths = write_results(args.out, name, rows, {**metadata(device), "quick": args.quick, **(meta or {})}, extra)
    if plot is not None:
        png = Path(args.out) / f"{name}.png"
        try:
            plot(rows, png)
            paths["png"] = str(png)
        except ImportError:
            print("matplotlib is not installed: no PNG")
    print("wrote", ", ".join(paths.values()))
    return 0


def triton_usable(device: torch.device) -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return device.type == "cuda" or (triton_interpreting() and interpreter_ready())


def measure(results: list, fn, *, op: str, impl: str, device, warmup: int, repeats: int, bytes_read: int | None = None,
            flops: int | None = None, **fields) -> dict:
    """Time ``fn`` (median and 20th/80th percentiles), take its peak memory, and append one result row holding
    ``fields`` (model, sizes, ...). Failures are recorded, not raised: one bad entry keeps the rest of the run."""
    row = dict(op=op, impl=impl, **fields)
    try:
        row.update(time_ms(fn, warmup, repeats, device))
        row["peak_mem_mb"] = None if (peak := peak_memory_bytes(fn, device)) is None else peak / 2**20
        seconds = row["median_ms"] / 1e3
        if bytes_read is not None:
            row["gb_per_s"] = bytes_read / seconds / 1e9
        if flops is not None:
            row["tflop_per_s"] = flops / seconds / 1e12
    except Exception as exc:  # noqa: BLE001 - e.g. torch.compile unavailable, out of memory
        row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    results.append(row)
    shown = f"{row['median_ms']:.3f} ms" if "median_ms" in row else row["error"]
    sizes = " ".join(f"{k}={v}" for k, v in fields.items() if k != "note")
    print(f"{op:22s} {impl:16s} {sizes:40s} {shown}", flush=True)
    return row


# ---- CPU peak memory and round-robin timing (bench_cache.py) ------------------------------------------------

class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_reader():
    """A function returning the bytes malloc has handed out and not taken back (glibc's ``mallinfo2``: in-use heap
    chunks plus mmapped chunks, every arena; torch's CPU tensors are allocated there), or None off glibc >= 2.33."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None

    def in_use() -> int:
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd

    return in_use


HEAP_IN_USE = _heap_reader()


class PeakHeap:
    """Peak of malloc's in-use bytes above the value at entry (``mb``), polled every millisecond by a thread (about
    half a microsecond a poll); None where ``mallinfo2`` is missing. Resident memory would miss what malloc reuses
    from pages it already holds."""

    def __enter__(self):
        self.mb = None
        if HEAP_IN_USE is not None:
            self.start = self.peak = HEAP_IN_USE()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, HEAP_IN_USE())

    def __exit__(self, *exc):
        if HEAP_IN_USE is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, HEAP_IN_USE())
            self.mb = (self.peak - self.start) / 2**20


def summary(times: list[float]) -> dict:
    return dict(median_ms=statistics.median(times), p20_ms=_quantile(times, 0.2), p80_ms=_quantile(times, 0.8),
                repeats=len(times))


def round_robin(calls: dict, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Each call once per round, in turn, after ``warmup`` calls of each: load from other jobs falls on all alike."""
    times = {key: [] for key in calls}
    with torch.no_grad():
        for fn in calls.values():
            for _ in range(warmup):
                fn()
        for _ in range(repeats):
            for key, fn in calls.items():
                t0 = time.perf_counter()
                fn()
                times[key].append((time.perf_counter() - t0) * 1e3)
    return times
