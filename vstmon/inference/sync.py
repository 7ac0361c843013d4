"""``SyncEngine``: the offline ``ClipSink``: clips batched and run on the caller's thread, by the same ``Runner``
as the daemon's engine (precision, staging, attention kernel, out-of-memory split).

``submit`` copies the clip's frames into the runner's staging buffer at once (the clip stream's array is free
again when it returns) and runs the batch when it is full; ``wait_idle`` (a reset or the end of a file waits for
the clips cut before it) and ``flush`` run what is queued. Results go to ``on_result`` in submission order.
Memory: the runner's staging buffer, ``max_batch`` clips; nothing per clip is kept after its result.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from vstmon.inference.runner import Runner
from vstmon.types import Clip, ClipResult

__all__ = ["SyncEngine"]


class SyncEngine:
    """A ``ClipSink`` that runs its batches synchronously (module docstring)."""

    def __init__(self, runner: Runner, batch: int, on_result: Callable[[ClipResult], None]) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.runner = runner
        self.batch = min(batch, runner.max_batch)
        self._on_result = on_result
        self._queued: list[Clip | None] = []  # None: discarded or forgotten while queued
        self.batches = 0
        self.clips = 0
        self.clips_failed = 0  # out of memory even alone
        self.busy_s = 0.0

    # -- ClipSink -----------------------------------------------------------------------------------------------
    def submit(self, clip: Clip, block: bool = False, timeout_s: float | None = None) -> bool:
        if len(self._queued) >= min(self.batch, self.runner.max_batch):
            self.flush()
        row = len(self._queued)
        self.runner.stage_row(row, clip)  # copied: the clip stream reuses its array
        self._queued.append(clip)
        if len(self._queued) >= min(self.batch, self.runner.max_batch):
            self.flush()
        return True

    def discard(self, key: str, before_segment: int) -> int:
        return self._drop(lambda clip: clip.key == key and clip.segment < before_segment)

    def forget(self, key: str) -> int:
        return self._drop(lambda clip: clip.key == key)

    def wait_idle(self, key: str, timeout_s: float) -> bool:
        if any(clip is not None and clip.key == key for clip in self._queued):
            self.flush()
        return True

    # -- running ------------------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Run the queued clips (their rows of the staging buffer) and deliver their results."""
        queued, self._queued = self._queued, []
        if not any(clip is not None for clip in queued):
            return
        host = self.runner.staged(len(queued))
        start_s = time.monotonic()
        probs = self.runner.run(host)
        self.busy_s += time.monotonic() - start_s
        self.batches += 1
        n = len(queued)
        for i, clip in enumerate(queued):
            if clip is None:
                continue
            if probs is None or np.isnan(probs[i, 0]):
                self.clips_failed += 1
                continue
            self.clips += 1
            self._on_result(ClipResult(clip=clip, probs=probs[i], batch_size=n))

    def _drop(self, match: Callable[[Clip], bool]) -> int:
        dropped = 0
        for i, clip in enumerate(self._queued):
            if clip is not None and match(clip):
                self._queued[i] = None
                dropped += 1
        return dropped
