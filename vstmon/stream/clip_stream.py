"""``ClipStream``: cutting one clip stream's clips and handing them to the engine.

A clip stream is a ring read by a ``ClipSampler``, a ``SegmentState`` that stamps each clip with its segment, and a
key in the engine (``Clip.key``): the stream itself in whole-frame mode, one per tracked person in per-subject
mode. Both kinds cut and submit the same way, here:

- two preallocated clip arrays (``stream/buffers.py``: who may cut into which, with the engine in this process or
  in another);
- live: ``submit`` never waits (a newer clip replaces a pending one, counted by the engine);
- lossless (files read as fast as the model allows): ``submit`` waits for the clip stream's slot, giving up when
  ``interrupted()`` says so (the worker is stopping, or a reset of the stream is waiting).
"""

from __future__ import annotations

from collections.abc import Callable

from vstmon.ingest.sampler import ClipSampler
from vstmon.stream.buffers import ClipBuffers
from vstmon.stream.sink import ClipSink
from vstmon.stream.state import SegmentState
from vstmon.types import Box, Clip

__all__ = ["ClipStream"]

_SUBMIT_WAIT_S = 0.1  # lossless: how often a waiting submit checks whether it should give up


class ClipStream:
    """Sampler + two clip arrays + state + sink key of one clip stream (see the module docstring)."""

    def __init__(
        self,
        key: str,
        sampler: ClipSampler,
        state: SegmentState,
        sink: ClipSink,
        lossless: bool,
        interrupted: Callable[[], bool],
        buffers: ClipBuffers,
    ) -> None:
        self.key = key
        self.sampler = sampler
        self.state = state
        self.sink = sink
        self.lossless = lossless
        self._interrupted = interrupted
        self.buffers = buffers  # reused by every clip (and, per subject, by every person of the slot)
        self.clips_cut = 0
        self.clips_refused = 0

    @property
    def nbytes(self) -> int:
        return int(self.buffers.arrays.nbytes)

    def cut_and_submit(self, box: Box | None = None) -> bool:
        """Cut the due clip (``sampler.cut``; raises ``FrameGone`` as it does) and submit it; True if queued."""
        index = self.buffers.acquire(self._interrupted)
        if index is None:  # stopping, or a reset is waiting: the clip belongs to the closing segment
            return False
        clip: Clip = self.sampler.cut(self.buffers.arrays[index])
        clip.box = box
        clip.key = self.key
        self.clips_cut += 1
        if not self.state.accept_clip(clip):
            self.clips_refused += 1
            return False
        if self.lossless:
            while not self._interrupted():
                if self.sink.submit(clip, block=True, timeout_s=_SUBMIT_WAIT_S):
                    self.buffers.submitted(index)
                    return True
            return False
        if self.sink.submit(clip):
            self.buffers.submitted(index)
            return True
        return False
