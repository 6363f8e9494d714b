"""CUDA-graph replay of the sampler's step (opt-in: ``unmask(..., cuda_graph=True)``).

A step of ``loop._Loop`` (MDM forward, statistics, scoring, selection, commit) has fixed shapes and reads no
device value, so it can be captured once per region and replayed: on small models (TinyMDM, the policy network)
a step is launch-bound and replay removes the launch overhead. What changes between steps lives in device memory
that the graph reads: the loop's ``StepState`` (tokens, counters, Philox seeds, all updated in place by the step
itself) and the per-step counts (copied into a static buffer before each replay). Capture runs the step twice
(warm-up, recording), so it saves the whole ``StepState`` first and writes it back after: every tensor field, as
the dataclass lists them, so a buffer added to the state is restored too.

Capture is not possible for a scorer that says why not (``Scorer.no_capture``: the origin rule draws from a torch
generator), for recording (a host-side step counter) or off the Triton path; those raise a ValueError up front.
When capture fails for any other reason (a model whose forward syncs), the loop warns once and runs eagerly.

Status: written against the CUDA-graph API but, like every GPU path of this project so far, not yet run on a
GPU (tests/test_sampler_kernels.py holds the GPU test); it is therefore off by default.
"""

from __future__ import annotations

import warnings

import torch


def unsupported(loop) -> str | None:
    """Why ``loop``'s step cannot be captured, or None."""
    if loop.x.device.type != "cuda":
        return "CUDA graphs need CUDA tensors"
    if not loop.kernels:
        return "CUDA graphs need the Triton path (backend 'auto' or 'triton'): the references draw from generators"
    if loop.scorer.no_capture is not None:  # e.g. origin's own selection draws from a torch generator
        return loop.scorer.no_capture
    if loop.recorder is not None:
        return "recording keeps a host-side step counter"
    return None


class GraphedSteps:
    """Captured steps of one sampling call, one graph per region [start, end) and kind of step (with a KV cache, a
    block's first step runs every row and refills the cache, its other steps run the cached slice). A cached step
    writes the keys and values of its rows before it reads them, so the warm-up and capture runs leave nothing in
    the cache that the replay does not write again."""

    def __init__(self, loop):
        reason = unsupported(loop)
        if reason is not None:
            raise ValueError(f"cuda_graph=True: {reason}")
        self.loop, self.graphs, self.failed = loop, {}, None
        # the graph's input: the step's counts are copied here before each replay (not loop state, so not restored)
        self.k = torch.zeros(loop.state.x.shape[0], dtype=torch.long, device=loop.state.x.device)

    def step(self, start: int, end: int, k: torch.Tensor, transfer_prob: float | None = None,
             refresh: bool = True) -> None:
        key = (start, end, refresh)
        if self.failed is None and key not in self.graphs:
            try:
                self.graphs[key] = self._capture(start, end, refresh)
            except Exception as err:  # noqa: BLE001 - model code may refuse capture in many ways
                self.failed = f"{type(err).__name__}: {err}"
                warnings.warn(f"CUDA-graph capture failed, sampling eagerly: {self.failed}", stacklevel=3)
        if self.failed is not None:
            self.loop.step(start, end, k, transfer_prob, refresh)
            return
        self.k.copy_(k)
        self.graphs[key].replay()

    def _capture(self, start: int, end: int, refresh: bool = True) -> torch.cuda.CUDAGraph:
        loop = self.loop
        saved = loop.state.snapshot()  # the warm-up and capture runs must leave no trace
        self.k.zero_()
        side = torch.cuda.Stream(device=loop.state.x.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: Triton compiles, cuBLAS picks kernels, allocations settle
            loop.step(start, end, self.k, refresh=refresh)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loop.step(start, end, self.k, refresh=refresh)
        loop.state.restore(saved)  # in place: the graph keeps the addresses it recorded
        return graph
