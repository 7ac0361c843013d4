"""``ClipStream``: cutting one clip stream's clips and handing them to the engine.

A clip stream is a ring read by a ``ClipSampler``, a ``SegmentState`` that stamps each clip with its segment, and a
key in the engine (``Clip.key``): the stream itself in whole-frame mode, one per tracked person in per-subject
mode. Both kinds cut and submit the same way, here:

- two preallocated clip arrays: the engine reads a clip's frames only while it is pending, and a clip stream has at
  most one pending clip, so the array not holding the last submitted clip is always free to cut into;
- live: ``submit`` never waits (a newer clip replaces a pending one, counted by the engine);
- lossless (files read as fast as the model allows): ``submit`` waits for the clip stream's slot, giving up when
  ``interrupted()`` says so (the worker is stopping, or a reset of the stream is waiting).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vstmon.ingest.sampler import ClipSampler
from vstmon.stream.sink import ClipSink
from vstmon.stream.state import SegmentState
from vstmon.types import Box, Clip

__all__ = ["ClipStream"]

_SUBMIT_WAIT_S = 0.1  # lossless: how often a waiting submit checks whether it should give up


class ClipStream:
    """Sampler + two clip arrays + state + engine key of one clip stream (see the module docstring)."""

    def __init__(
        self,
        key: str,
        sampler: ClipSampler,
        state: SegmentState,
        sink: ClipSink,
        size_px: int,
        lossless: bool,
        interrupted: Callable[[], bool],
        pool: np.ndarray | None = None,
    ) -> None:
        self.key = key
        self.sampler = sampler
        self.state = state
        self.sink = sink
        self.lossless = lossless
        self._interrupted = interrupted
        shape = (2, sampler.frames, size_px, size_px, 3)  # (2, T, H, W, 3)
        if pool is not None and (pool.shape != shape or pool.dtype != np.uint8):
            raise ValueError(f"clip pool must be {shape} uint8, got {pool.shape} {pool.dtype}")
        self._pool = (
            np.zeros(shape, dtype=np.uint8) if pool is None else pool
        )  # reused (a slot's, per subject)
        self._last_buf = 1
        self.clips_cut = 0
        self.clips_refused = 0

    @property
    def nbytes(self) -> int:
        return int(self._pool.nbytes)

    def cut_and_submit(self, box: Box | None = None) -> bool:
        """Cut the due clip (``sampler.cut``; raises ``FrameGone`` as it does) and submit it; True if queued."""
        buf = 1 - self._last_buf
        clip: Clip = self.sampler.cut(self._pool[buf])
        clip.box = box
        clip.key = self.key
        self.clips_cut += 1
        if not self.state.accept_clip(clip):
            self.clips_refused += 1
            return False
        if self.lossless:
            while not self._interrupted():
                if self.sink.submit(clip, block=True, timeout_s=_SUBMIT_WAIT_S):
                    self._last_buf = buf
                    return True
            return False
        if self.sink.submit(clip):
            self._last_buf = buf
            return True
        return False
