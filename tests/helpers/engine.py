"""Shared test helpers (moved from tests/inference/test_engine.py so that no test imports another test module)."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from vstmon.inference.engine import Engine
from vstmon.inference.runner import Runner
from vstmon.types import Clip, ClipResult

T, S, C = 4, 32, 7  # frames, size_px, classes


def normalize(frames: torch.Tensor) -> torch.Tensor:
    try:
        from vstmon.model.normalize import normalize_clips
    except ImportError:  # preprocess not there yet: the same contract, uint8 (N,T,H,W,3) -> float (N,3,T,H,W)
        return frames.permute(0, 4, 1, 2, 3).float().div(255.0).sub(0.45).div(0.225)
    return normalize_clips(frames)


def tiny_model() -> nn.Module:
    try:
        from vstmon.model import build_model
        from vstmon.model.presets import SwinConfig

        config = SwinConfig(
            embed_dim=8,
            depths=(1, 1, 1, 1),
            num_heads=(1, 1, 1, 1),
            window_size=(2, 2, 2),
            patch_size=(2, 4, 4),
        )
        return build_model(config, num_classes=C).eval()
    except ImportError:  # model package not importable: any (N,3,T,H,W) -> (N,C) module does
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv3d(3, 8, kernel_size=(2, 4, 4), stride=(2, 4, 4)),
            nn.GELU(),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
            nn.Linear(8, C),
        ).eval()


def make_clip(stream: str, seed: int, segment: int = 1, key: str = "") -> Clip:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(T, S, S, 3), dtype=np.uint8)
    return Clip(
        stream=stream,
        generation=0,
        frames=frames,
        first_frame=seed,
        last_frame=seed + T - 1,
        start_ts=0.0,
        end_ts=1.0,
        start_stream_s=0.0,
        end_stream_s=1.0,
        ready_mono_s=time.monotonic(),
        segment=segment,
        key=key,
    )


def reference_probs(model: nn.Module, clips: list[Clip]) -> np.ndarray:
    with torch.inference_mode():
        x = normalize(torch.from_numpy(np.stack([c.frames for c in clips])))
        return torch.softmax(model(x).float(), dim=-1).numpy()


class Collector:
    """A result callback that records results; optionally blocks the engine thread until released."""

    def __init__(self, hold: bool = False) -> None:
        self.results: list[ClipResult] = []
        self.cond = threading.Condition()
        self.release = threading.Event()
        self.entered = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, result: ClipResult) -> None:
        self.entered.set()
        self.release.wait(10)
        with self.cond:
            self.results.append(result)
            self.cond.notify_all()

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[ClipResult]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.results) >= count, timeout_s), (
                f"{len(self.results)} of {count} results"
            )
            return list(self.results)


class OomAbove(nn.Module):
    """Wraps a model; raises the out-of-memory error torch raises on CUDA for batches above ``limit``."""

    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner = inner
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def make_engine(
    model: torch.nn.Module,
    device: str,
    precision: str,
    max_batch: int,
    max_wait_ms: float,
    on_result: Any,
    *,
    on_batch: Any = None,
    on_release: Any = None,
    **runner_options: Any,
) -> Engine:
    """An engine with a local ``Runner`` backend: ``Engine(Runner(model, device, ...), max_wait_ms, ...)``."""
    runner = Runner(model, device, precision, max_batch, **runner_options)
    return Engine(runner, max_wait_ms, on_result, on_batch=on_batch, on_release=on_release)


def hold(engine: Any, collector: Collector) -> None:
    """Submit a clip of stream ``busy`` and wait until the engine thread is held inside ``collector``'s callback
    (a ``Collector(hold=True)``): what is submitted next queues until ``collector.release`` is set."""
    engine.submit(make_clip("busy", seed=100))
    assert collector.entered.wait(10), "the engine never delivered the busy clip"
