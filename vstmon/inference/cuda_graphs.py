"""CUDA graphs of the runner's whole step (copy in, normalise, forward, softmax), one per batch size.

At small batches a Swin forward is bound by kernel launches (~1,000 Python-level torch calls, each taking the
GIL); a CUDA graph replays all of the step's kernels with one launch. A graph works on fixed memory: each batch
size gets a static uint8 input buffer (N, T, H, W, 3) on the device and a static fp32 output (N, C), captured at
warm-up before READY; a batch copies its clips into the input, replays, and reads the output. All graphs share
one memory pool and are captured largest first, so that the smaller ones reuse the larger one's blocks.

Guarded to CUDA (the runner captures only on a CUDA device). UNTESTED on a GPU at the time of writing: the tests
are marked ``gpu`` (tests/test_cuda_graphs.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["CudaGraphs"]

_WARMUP_ITERS = 2  # eager runs on a side stream before capture (cuDNN/cuBLAS plans, allocator, autotuning)


class CudaGraphs:
    """Captured steps per batch size on one CUDA device (see the module docstring)."""

    def __init__(self, device: torch.device, clip_shape: tuple[int, ...]) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; got {device}")
        self.device = device
        self.clip_shape = tuple(clip_shape)  # (T, H, W, 3)
        self._pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def sizes(self) -> list[int]:
        return list(self._graphs)

    def capture(self, size: int, step: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Capture ``step`` (uint8 (N, T, H, W, 3) on the device -> (N, C)) for batches of ``size`` clips."""
        static_in = torch.zeros((size, *self.clip_shape), dtype=torch.uint8, device=self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(_WARMUP_ITERS):
                step(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=self._pool):
            static_out = step(static_in)  # (N, C)
        self._graphs[size] = (graph, static_in, static_out)

    def replay(self, host: torch.Tensor) -> torch.Tensor | None:
        """Run the graph of ``host``'s batch size on ``host`` (uint8 (N, T, H, W, 3), pinned): the probabilities
        (N, C) on the device, the graph's own output buffer, valid until the next replay (copy it out at once);
        None when no graph of that size was captured."""
        entry = self._graphs.get(int(host.shape[0]))
        if entry is None:
            return None
        graph, static_in, static_out = entry
        static_in.copy_(host, non_blocking=True)
        graph.replay()
        return static_out
