"""Inference engine: one per device; a thread that takes batches from its batcher and runs them on its backend.

``Engine(backend, ...)`` joins the two halves of inference and owns the thread between them:

- ``batcher.Batcher`` (no torch): per clip stream pending slots, fairness across streams, discards and
  forgets, ``wait_idle`` and progress. Stream pipelines ``submit`` clips to it through the engine (the engine is
  their ``ClipSink``).
- a ``backend.Backend``: the model on a device (``runner.Runner``), or a Triton server (``triton.TritonRunner``).

The engine thread loops: ``take`` a batch (up to the backend's current ``max_batch``), copy its frames into the
backend's host buffer *outside* the batcher's lock (other clip streams submit meanwhile; see "Frame ownership" in
``batcher``), run it, hand every clip's fp32 softmax probabilities to ``on_result`` (unless its segment was
reset or its subject left while it was in flight), and ``finish`` it. Nothing but ``stop`` ends the thread: a
failing batch (copy or forward) is logged and its clips counted as failed, and its in-flight marks are released.

``start`` warms the backend up first (on CUDA or with ``compile``; see ``runner``), so that the daemon says READY
only once every batch size has run and compiled.

``EnginePool`` puts one engine (one model copy) on each device and assigns streams round-robin (all clip
streams of a stream go to its engine); ``EnginePool.from_config`` builds the backends a config asks for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from vstmon.inference.backend import Backend, build_backends
from vstmon.inference.batcher import Batch, Batcher
from vstmon.log import get_logger
from vstmon.stage import Stage
from vstmon.types import Clip, ClipResult

__all__ = ["Engine", "EnginePool"]

_log = get_logger("engine")


class Engine(Stage):
    """One backend, one batcher, one thread (see the module docstring); a ``ClipSink``.

    ``on_result`` is called on the engine thread, once per clip, in batch order; an exception it raises is
    logged and counted, never fatal. ``result.extra`` carries ``submit_mono_s`` (when the clip was submitted)
    and ``done_mono_s`` (when its batch finished). ``on_batch(size, seconds)`` is called once per batch.
    ``on_release(clip)``: the engine will never read the clip's frames again (see ``Batcher``).
    """

    def __init__(
        self,
        backend: Backend,
        max_wait_ms: float,
        on_result: Callable[[ClipResult], None],
        *,
        on_batch: Callable[[int, float], None] | None = None,
        on_release: Callable[[Clip], None] | None = None,
    ) -> None:
        super().__init__(backend.name)
        self.backend = backend
        self.batcher = Batcher(max_wait_ms, backend.clip_shape, on_release=on_release)
        self._on_result = on_result
        self._on_batch = on_batch
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

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Warm the backend up (blocks until done), then start the engine thread (once)."""
        if self.started:
            return
        self.backend.warm_up()
        super().start()

    def _wake(self) -> None:
        """``stop``: the thread finishes its current batch and exits; pending clips are dropped."""
        self.batcher.stop()

    def _thread_name(self) -> str:
        return f"engine-{self.name}"

    # -- producers: the ClipSink (see ``batcher.Batcher``) ---------------------------------------------------
    def submit(self, clip: Clip, block: bool = False, timeout_s: float | None = None) -> bool:
        """``Batcher.submit``: queue ``clip`` in its clip stream's slot; True when queued."""
        return self.batcher.submit(clip, block=block, timeout_s=timeout_s)

    def discard(self, key: str, before_segment: int) -> int:
        """``Batcher.discard``: drop ``key``'s pending clip of an older segment and refuse such clips."""
        return self.batcher.discard(key, before_segment)

    def forget(self, key: str) -> int:
        """``Batcher.forget``: clip stream ``key`` has ended for good."""
        return self.batcher.forget(key)

    def forget_stream(self, stream: str) -> int:
        """Every clip stream of ``stream`` has ended (the stream stopped, or the process hosting it died)."""
        return sum(self.batcher.forget(key) for key in self.batcher.keys_of(stream))

    def wait_idle(self, key: str, timeout_s: float) -> bool:
        return self.batcher.wait_idle(key, timeout_s)

    # -- for the supervisor ------------------------------------------------------------------------------------
    def progress(self) -> tuple[bool, float]:
        """``Batcher.progress``: (work to do, seconds since the last progress), for the watchdog."""
        return self.batcher.progress()

    def stall_problem(self, since_s: float) -> str:
        return f"engine {self.name}: no batch finished for {since_s:.0f} s with clips waiting"

    def stats(self) -> dict[str, Any]:
        """Counters: batches, clips, batch sizes, per-stream drops, live clip streams, time busy; the backend's
        own figures under ``backend`` (precision, compile, attention kernel, out-of-memory splits; a server's)."""
        batches = self.batches
        return {
            "device": self.name,
            "batches": batches,
            "clips": self.clips,
            "mean_batch_size": (self.clips / batches) if batches else 0.0,
            "batch_sizes": dict(self._batch_size_counts),
            "pending": self.batcher.pending_count(),
            "clips_dropped": self.batcher.dropped_by_stream(),
            "clip_streams": self.batcher.live_clip_streams(),
            "clips_discarded": self.batcher.clips_discarded,
            "clips_failed": self.clips_failed,
            "errors": self.errors,
            "callback_errors": self.callback_errors,
            "last_batch_s": self.last_batch_s,
            "last_batch_size": self.last_batch_size,
            "busy_s": self.busy_s,
            "backend": self.backend.stats(),
        }

    # -- the engine thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch: Batch = []
            try:  # nothing may end this thread but stop: a dead engine would leave its clips in flight
                taken = self.batcher.take(self.backend.max_batch)
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

    def _stage_batch(self, batch: Batch) -> Any:
        try:
            return self.backend.stage([p.clip for p, _ in batch])
        finally:  # on an error, _run counts the batch as failed and finishes it
            self.batcher.staged(batch)

    def _process(self, batch: Batch, host: Any) -> None:
        start_s = time.monotonic()
        probs = self.backend.run(host)
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
    """One ``Engine`` per backend (one model copy per device, or one server), streams assigned round-robin."""

    def __init__(self, engines: list[Engine]) -> None:
        if not engines:
            raise ValueError("an engine pool needs at least one engine")
        self.engines = engines
        self._assigned: dict[str, Engine] = {}

    @classmethod
    def from_config(
        cls,
        config: Any,
        model: Any,
        on_result: Callable[[ClipResult], None],
        *,
        on_batch: Callable[[str, int, float], None] | None = None,
        on_release: Callable[[Clip], None] | None = None,
    ) -> EnginePool:
        """The engines a daemon ``config`` asks for (``backend.build_backends``)."""
        engines = []
        for backend in build_backends(config, model):
            engines.append(
                Engine(
                    backend,
                    config.inference.max_wait_ms,
                    on_result,
                    on_batch=(lambda n, s, name=backend.name: on_batch(name, n, s)) if on_batch else None,
                    on_release=on_release,
                )
            )
        return cls(engines)

    @property
    def remote_model_id(self) -> str | None:
        """The model id a remote server reported (None for local engines, or before it answered)."""
        return next((e.backend.stats().get("model_id") for e in self.engines if e.backend.remote), None)

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

    def engine_of(self, stream: str) -> Engine | None:
        """The engine ``stream`` was assigned to (None: not yet)."""
        return self._assigned.get(stream)

    def start(self) -> None:
        for engine in self.engines:
            engine.start()

    def stop(self) -> None:
        for engine in self.engines:
            engine.stop()

    def join(self, timeout_s: float | None = None) -> bool:
        return all([engine.join(timeout_s) for engine in self.engines])

    def close(self) -> None:
        for engine in self.engines:
            engine.backend.close()

    def stats(self) -> list[dict[str, Any]]:
        return [engine.stats() for engine in self.engines]
