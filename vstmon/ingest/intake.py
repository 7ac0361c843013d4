"""``FrameIntake``: where one decoded frame goes, for every reader of a stream (the daemon's ``Source`` thread and
the offline reader of ``vstmon classify``), so that both store exactly the same things:

1. ``slot()`` / ``fit()``: the frame fitted to the model's crop straight into the ring's next slot (a lossless
   ring makes the reader wait there for the pipeline);
2. ``commit()``: a few times per second of stream time the whole frame, squeezed to the person detector's input,
   into ``DetectionFrames`` (before the ring commit: the pipeline may take the frame at once), then the ring
   commit, which gives the frame its seq;
3. ``crop()``: per subject, the crop around each person who holds a slot, cut from the frame at its own
   resolution into that person's crop ring.

The boxes the crops follow are decided by the pipeline when it steps a detection frame. For a file read
losslessly in per-subject mode (``lockstep``) the reader therefore waits, before cropping a frame, until the
pipeline has stepped it: the crops of frame n are cut with the boxes of every detection up to frame n, whatever
the threads' timing, as in the offline loop (which steps between ``commit`` and ``crop``). Live readers never
wait: a crop then follows the newest boxes the pipeline decided.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vstmon.ingest.detection_frames import DetectionFrames
from vstmon.ingest.fit import FrameFitter
from vstmon.ingest.ring import RingBuffer
from vstmon.ingest.subject_crops import SubjectCrops
from vstmon.types import FrameMeta

__all__ = ["FrameIntake"]

_WAIT_S = 0.1  # how often a waiting reader checks whether it should stop


class FrameIntake:
    """One stream's ring, detection frames and crop rings, as its reader fills them (module docstring)."""

    def __init__(
        self,
        ring: RingBuffer,
        size_px: int,
        detection_frames: DetectionFrames | None = None,
        subject_crops: SubjectCrops | None = None,
        lockstep: bool = False,
    ) -> None:
        self.ring = ring
        self.detection_frames = detection_frames
        self.subject_crops = subject_crops
        self.lockstep = lockstep and subject_crops is not None
        self._fitter = FrameFitter(size_px)

    def slot(self, stopped: Callable[[], bool]) -> np.ndarray | None:
        """The ring's next slot; waits while a lossless ring is full. None once ``stopped()`` or closed."""
        slot = self.ring.write_slot(timeout_s=_WAIT_S)
        while slot is None:
            if stopped() or self.ring.closed:
                return None
            slot = self.ring.write_slot(timeout_s=_WAIT_S)
        return slot

    def fit(self, frame_bgr: np.ndarray, slot: np.ndarray) -> None:
        """The frame fitted into ``slot`` (RGB, short side resized, centre crop); ``ValueError`` if undecodable."""
        self._fitter.fit(frame_bgr, slot)

    def commit(self, frame_bgr: np.ndarray, meta: FrameMeta, stopped: Callable[[], bool]) -> int | None:
        """The detection frame (when one is due), then the ring commit; the frame's seq, or None if stopped."""
        frames = self.detection_frames
        if frames is not None:
            seq = self.ring.head_seq
            while (
                frames.offer(frame_bgr, seq, meta.stream_ts_s, _WAIT_S) is None
            ):  # lossless: the reader waits
                if stopped() or self.ring.closed:
                    return None
        return self.ring.commit(meta)

    def crop(self, frame_bgr: np.ndarray, meta: FrameMeta, seq: int, stopped: Callable[[], bool]) -> bool:
        """Per subject: the crops of frame ``seq`` (lockstep: once the pipeline stepped it). False if stopped."""
        crops = self.subject_crops
        if crops is None:
            return True
        if self.lockstep:
            while not self.ring.wait_stepped(seq, _WAIT_S):
                if stopped() or self.ring.closed:
                    return False
        crops.write(frame_bgr, meta)
        return True
