"""Inference engine: one per device; a thread that takes batches from its batcher and runs them on its runner.

``Engine`` joins the two halves of inference and owns the thread between them:

- ``batcher.Batcher`` (no torch): per clip stream pending slots, fairness across streams, discards and
  forgets, ``wait_idle`` and progress. Stream workers ``submit`` clips to it through the engine.
- ``runner.Runner`` (torch): the model on its device, precision, staging buffer, compile, attention kernel,
  out-of-memory splits. A remote inference backend replaces this half.

The engine thread loops: ``take`` a batch (up to the runner's current ``max_batch``), copy its frames into the
runner's host buffer *outside* the batcher's lock (other clip streams submit meanwhile; see "Frame ownership" in
``batcher``), run it, hand every clip's fp32 softmax probabilities to ``on_result`` (unless its segment was
reset or its subject left while it was in flight), and ``finish`` it. Nothing but ``stop`` ends the thread: a
failing batch (copy or forward) is logged and its clips counted as failed, and its in-flight marks are released.

``start`` warms the runner up first (on CUDA or with ``compile``; see ``runner``), so that the daemon says READY
only once every batch size has run and compiled.

``EnginePool`` puts one engine (one model copy) on each device and assigns streams round-robin (all clip
streams of a stream go to its engine).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from vstmon.inference.batcher import Batch, Batcher
from vstmon.inference.runner import (
    Runner,
    attention_context,
    auto_half_dtype,
    resolve_devices,
    resolve_dtype,
    sdpa_backend,
)
from vstmon.log import get_logger
from vstmon.types import Clip, ClipResult

__all__ = [
    "Engine",
    "EnginePool",
    "attention_context",
    "auto_half_dtype",
    "resolve_devices",
    "resolve_dtype",
    "sdpa_backend",
]

_log = get_logger("engine")


class Engine:
    """One model on one device; batches clips across streams (see the module docstring).

    ``on_result`` is called on the engine thread, once per clip, in batch order; an exception it raises is
    logged and counted, never fatal. ``result.extra`` carries ``submit_mono_s`` (when the clip was submitted)
    and ``done_mono_s`` (when its batch finished). ``on_batch(size, seconds)`` is called once per batch.
    ``normalize`` maps a uint8 (N, T, H, W, 3) tensor on the device to the model's float (N, 3, T, H, W) input
    (default: ``vstmon.model.normalize.normalize_clips``). The other arguments are the runner's and the batcher's;
    ``runner_options`` are further ``Runner`` keywords (``cast_weights``, ``fold_normalization``, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device,
        precision: str,
        max_batch: int,
        max_wait_ms: float,
        on_result: Callable[[ClipResult], None],
        gpu_memory_fraction: float | None = None,
        compile: bool | str = False,
        normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
        name: str | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        clip_shape: Sequence[int] | None = None,
        compile_backend: Any = "inductor",
        **runner_options: Any,
    ) -> None:
        runner = Runner(model, device, precision, max_batch, gpu_memory_fraction=gpu_memory_fraction,
                        compile=compile, normalize=normalize, name=name, clip_shape=clip_shape,
                        compile_backend=compile_backend, **runner_options)  # fmt: skip
        self._wire(runner, max_wait_ms, on_result, on_batch)

    @classmethod
    def with_runner(
        cls,
        runner: Any,
        max_wait_ms: float,
        on_result: Callable[[ClipResult], None],
        on_batch: Callable[[int, float], None] | None = None,
    ) -> Engine:
        """An engine around another runner (``triton_runner.TritonRunner``): anything with ``Runner``'s
        ``remote``, ``name``, ``device``, ``dtype``, ``max_batch``, ``clip_shape``, ``warm_up``, ``stage``, ``run`` and
        ``infer``."""
        engine = cls.__new__(cls)
        engine._wire(runner, max_wait_ms, on_result, on_batch)
        return engine

    def _wire(
        self,
        runner: Any,
        max_wait_ms: float,
        on_result: Callable[[ClipResult], None],
        on_batch: Callable[[int, float], None] | None,
    ) -> None:
        self.runner = runner
        self.batcher = Batcher(max_wait_ms, runner.clip_shape)
        self.name = self.runner.name
        self._on_result = on_result
        self._on_batch = on_batch
        self._thread: threading.Thread | None = None
        # counters (written by the engine thread; read without a lock for stats)
        self.batches = 0
        self.clips = 0
        self.errors = 0
        self.callback_errors = 0
        self.clips_failed = 0
        self.last_batch_s = 0.0
        self.last_batch_size = 0
        self.busy_s = 0.0
        self._batch_size_counts: dict[int, int] = {}

    # -- the runner's and the batcher's state, for callers and stats ---------------------------------------
    @property
    def device(self) -> torch.device:
        return self.runner.device

    @property
    def dtype(self) -> torch.dtype:
        return self.runner.dtype

    @property
    def model(self) -> nn.Module:
        return self.runner.model

    @property
    def max_batch(self) -> int:
        return self.runner.max_batch

    @property
    def compiled(self) -> bool:
        return self.runner.compiled

    @property
    def attention(self) -> str | None:
        return self.runner.attention

    @property
    def attention_figures(self) -> dict[str, dict[str, float]]:
        return self.runner.attention_figures

    @property
    def oom_splits(self) -> int:
        return self.runner.oom_splits

    @property
    def clips_discarded(self) -> int:
        return self.batcher.clips_discarded

    @property
    def _host(self) -> torch.Tensor | None:
        return self.runner.host

    @property
    def _keys(self) -> dict[str, Any]:
        return self.batcher._keys

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Warm the runner up (blocks until done), then start the engine thread (once)."""
        if self._thread is not None:
            return
        self.warm_up()
        self._thread = threading.Thread(target=self._run, name=f"engine-{self.name}", daemon=True)
        self._thread.start()

    def warm_up(self) -> None:
        """``Runner.warm_up``: compile (if asked) and run every batch size once (CUDA or compile only)."""
        self.runner.warm_up()

    def stop(self) -> None:
        """Ask the thread to finish its current batch and exit; pending clips are dropped."""
        self.batcher.stop()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the engine thread; True when it has exited."""
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- producers (see ``batcher.Batcher``) -------------------------------------------------------------------
    def submit(self, clip: Clip, block: bool = False, timeout_s: float | None = None) -> bool:
        """``Batcher.submit``: queue ``clip`` in its clip stream's slot; True when queued."""
        return self.batcher.submit(clip, block=block, timeout_s=timeout_s)

    def discard(self, key: str, before_segment: int) -> int:
        """``Batcher.discard``: drop ``key``'s pending clip of an older segment and refuse such clips."""
        return self.batcher.discard(key, before_segment)

    def forget(self, key: str) -> int:
        """``Batcher.forget``: clip stream ``key`` has ended for good."""
        return self.batcher.forget(key)

    def idle(self, key: str) -> bool:
        return self.batcher.idle(key)

    def wait_idle(self, key: str, timeout_s: float) -> bool:
        return self.batcher.wait_idle(key, timeout_s)

    def progress(self) -> tuple[bool, float]:
        """``Batcher.progress``: (work to do, seconds since the last progress), for the watchdog."""
        return self.batcher.progress()

    def stall_problem(self, since_s: float) -> str:
        return f"engine {self.name}: no batch finished for {since_s:.0f} s with clips waiting"

    def pending_count(self) -> int:
        return self.batcher.pending_count()

    def clips_dropped(self, key: str) -> int:
        return self.batcher.clips_dropped(key)

    def clips_dropped_for_stream(self, stream: str) -> int:
        return self.batcher.clips_dropped_for_stream(stream)

    def stats(self) -> dict[str, Any]:
        """Counters: batches, clips, mean batch size, per-stream drops, live clip streams, last batch latency."""
        batches = self.batches
        runner = self.runner
        return {
            "device": self.name,
            "dtype": str(runner.dtype).removeprefix("torch."),
            "max_batch": runner.max_batch,
            "batches": batches,
            "clips": self.clips,
            "mean_batch_size": (self.clips / batches) if batches else 0.0,
            "batch_sizes": dict(self._batch_size_counts),
            "clips_dropped": self.batcher.dropped_by_stream(),
            "clip_streams": self.batcher.live_clip_streams(),
            "clips_discarded": self.batcher.clips_discarded,
            "clips_failed": self.clips_failed,
            "errors": self.errors + runner.oom_dropped_batches,
            "callback_errors": self.callback_errors,
            "oom_splits": runner.oom_splits,
            "compiled": runner.compiled,
            "attention": runner.attention,
            "last_batch_s": self.last_batch_s,
            "last_batch_size": self.last_batch_size,
            "busy_s": self.busy_s,
            **({"remote": runner.stats()} if runner.remote else {}),
        }

    def infer(self, frames: np.ndarray) -> np.ndarray:
        """``Runner.infer``: run uint8 clips (N, T, H, W, 3) on the caller's thread -> probabilities (N, C)."""
        return self.runner.infer(frames)

    # -- the engine thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch: Batch = []
            try:  # nothing may end this thread but stop: a dead engine would leave its clips in flight
                taken = self.batcher.take(self.runner.max_batch)
                if taken is None:
                    return
                batch = taken
                self._process(batch, self._stage_batch(batch))
            except Exception as error:
                self.errors += 1
                self.clips_failed += len(batch)
                _log.exception("batch failed", device=self.name, size=len(batch), error=str(error))
            finally:
                if batch:
                    self.batcher.finish(batch)

    def _stage_batch(self, batch: Batch) -> torch.Tensor:
        try:
            return self._stage([p.clip for p, _ in batch])
        finally:  # on an error, _run counts the batch as failed and finishes it
            self.batcher.staged(batch)

    def _stage(self, clips: list[Clip]) -> torch.Tensor:
        return self.runner.stage(clips)

    def _process(self, batch: Batch, host: torch.Tensor) -> None:
        start_s = time.monotonic()
        probs = self.runner.run(host)
        elapsed_s = time.monotonic() - start_s
        if probs is None:
            self.clips_failed += len(batch)
            return
        n = len(batch)
        self.batches += 1
        self.clips += n
        self.last_batch_s = elapsed_s
        self.last_batch_size = n
        self.busy_s += elapsed_s
        self._batch_size_counts[n] = self._batch_size_counts.get(n, 0) + 1
        if self._on_batch is not None:
            try:
                self._on_batch(n, elapsed_s)
            except Exception as error:
                _log.warning("batch callback failed", device=self.name, error=str(error))
        done_s = time.monotonic()
        for i, (pending, state) in enumerate(batch):
            clip = pending.clip
            if np.isnan(probs[i, 0]):  # out of memory even alone: dropped (counted, logged)
                self.clips_failed += 1
                continue
            if not self.batcher.current(pending, state):
                self.batcher.count_discarded()  # its segment was reset, or its subject left, while in flight
                continue
            try:
                extra = {"submit_mono_s": pending.submit_mono_s, "done_mono_s": done_s}
                self._on_result(ClipResult(clip=clip, probs=probs[i], batch_size=n, extra=extra))
            except Exception as error:
                self.callback_errors += 1
                _log.exception("result callback failed", device=self.name, stream=clip.key, error=str(error))


class EnginePool:
    """One ``Engine`` per device (one model copy each), streams assigned round-robin."""

    def __init__(
        self,
        model: nn.Module,
        devices: Sequence[str | torch.device] | str,
        precision: str,
        max_batch: int,
        max_wait_ms: float,
        on_result: Callable[[ClipResult], None],
        gpu_memory_fraction: float | None = None,
        compile: bool | str = False,
        normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
        on_batch: Callable[[str, int, float], None] | None = None,
        clip_shape: Sequence[int] | None = None,
        compile_backend: str = "inductor",
        **runner_options: Any,
    ) -> None:
        # one list, duplicates dropped (cuda and cuda:0 are one device: one engine)
        resolved = resolve_devices(devices if isinstance(devices, str) else [str(d) for d in devices])
        # every replica is copied from the model as given (on the CPU), before the first engine moves its own
        # copy: a copy of a model already on cuda:0 would pass through cuda:0's memory (and its cap)
        replicas = [model] + [copy.deepcopy(model) for _ in resolved[1:]]
        self.engines: list[Engine] = []
        for device, replica in zip(resolved, replicas, strict=True):
            self.engines.append(
                Engine(
                    replica,
                    device,
                    precision,
                    max_batch,
                    max_wait_ms,
                    on_result,
                    gpu_memory_fraction=gpu_memory_fraction,
                    compile=compile,
                    normalize=normalize,
                    on_batch=(lambda n, s, name=str(device): on_batch(name, n, s)) if on_batch else None,
                    clip_shape=clip_shape,
                    compile_backend=compile_backend,
                    **runner_options,
                )
            )
        self._assigned: dict[str, Engine] = {}

    @classmethod
    def triton(
        cls,
        config: Any,
        max_batch: int,
        max_wait_ms: float,
        on_result: Callable[[ClipResult], None],
        clip_shape: Sequence[int],
        on_batch: Callable[[str, int, float], None] | None = None,
    ) -> EnginePool:
        """One engine whose runner sends its batches to a Triton server (``config``: ``TritonServerConfig``)."""
        from vstmon.inference.triton import TritonRunner

        runner = TritonRunner(config, max_batch, clip_shape)
        pool = cls.__new__(cls)
        pool.engines = [
            Engine.with_runner(
                runner,
                max_wait_ms,
                on_result,
                (lambda n, s, name=runner.name: on_batch(name, n, s)) if on_batch else None,
            )
        ]
        pool._assigned = {}
        return pool

    @classmethod
    def from_config(
        cls,
        config: Any,
        model: nn.Module | None,
        on_result: Callable[[ClipResult], None],
        on_batch: Callable[[str, int, float], None] | None = None,
    ) -> EnginePool:
        """The pool a daemon ``config`` (``config.Config``) asks for: local engines on ``model.device``, or one
        engine sending its batches to ``inference.triton`` (``inference.backend: triton``; ``model`` unused)."""
        inference = config.inference
        clip_shape = (config.clip.frames, config.clip.size_px, config.clip.size_px, 3)
        if inference.backend == "triton":
            return cls.triton(inference.triton, inference.max_batch, inference.max_wait_ms, on_result,
                              clip_shape, on_batch=on_batch)  # fmt: skip
        assert model is not None
        options: dict[str, Any] = {}
        if (
            inference.compile == "tensorrt"
        ):  # keyed by the checkpoint's hash, cached beside it (before .to(device))
            from vstmon.inference.tensorrt import tensorrt_options

            options["engine"] = tensorrt_options(config.model.checkpoint, model)
        return cls(model, config.model.device, config.model.precision, inference.max_batch,
                   inference.max_wait_ms, on_result, gpu_memory_fraction=inference.gpu_memory_fraction,
                   compile=inference.compile, on_batch=on_batch, clip_shape=clip_shape, **options)  # fmt: skip

    @property
    def remote_model_id(self) -> str | None:
        """The model id a remote server reported (None for local engines, or before it answered)."""
        return next((e.runner.model_id for e in self.engines if e.runner.remote), None)

    @property
    def devices(self) -> list[str]:
        return [engine.name for engine in self.engines]

    def assign(self, stream: str) -> Engine:
        """The engine for ``stream`` (round-robin over devices on first call; fixed afterwards)."""
        engine = self._assigned.get(stream)
        if engine is None:
            engine = self.engines[len(self._assigned) % len(self.engines)]
            self._assigned[stream] = engine
        return engine

    def start(self) -> None:
        for engine in self.engines:
            engine.start()

    def stop(self) -> None:
        for engine in self.engines:
            engine.stop()

    def join(self, timeout_s: float | None = None) -> bool:
        return all([engine.join(timeout_s) for engine in self.engines])

    def stats(self) -> list[dict[str, Any]]:
        return [engine.stats() for engine in self.engines]
