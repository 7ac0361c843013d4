"""``SubjectCrops``: one stream's per-subject frame stores (per-subject mode): a ring of crops per slot.

The stream worker decides who has a slot and where they are (``start(slot, box)``, ``move(slot, box)`` at every
detection, ``stop(slot)``); the source, for every frame it reads, cuts a square crop around each active slot's
box out of the source frame at its own resolution (``vstmon.ingest.crops``) and writes it, resized to the
model's input, into that slot's ring with the frame's metadata (the same frame index and stream time as in the
stream's own ring). Between detections the box is held. A new subject in a slot starts a new ring epoch there, so
the slot's clip sampler never mixes two people.

The rings are live (the source never waits for them; the stream's own ring paces a lossless reader) and sized
like the stream's ring, so a worker that keeps up with the stream keeps up with its subjects. Memory is fixed:
``max_subjects`` x ``capacity_frames`` x ``size_px`` x ``size_px`` x 3 bytes plus ring metadata (``nbytes``).
"""

from __future__ import annotations

import threading

import numpy as np

from vstmon.ingest.crops import CropFitter, square_crop_px
from vstmon.ingest.ring import RingBuffer
from vstmon.types import Box, FrameMeta

__all__ = ["SubjectCrops"]


class SubjectCrops:
    """Crop rings of one stream's subject slots (see the module docstring). One writer, one reader."""

    def __init__(self, max_subjects: int, capacity_frames: int, size_px: int, margin: float) -> None:
        if max_subjects < 1:
            raise ValueError(f"max_subjects must be >= 1, got {max_subjects}")
        self.size_px = int(size_px)
        self.margin = float(margin)
        self.rings = [RingBuffer(capacity_frames, size_px, size_px) for _ in range(max_subjects)]
        self._lock = threading.Lock()
        self._boxes: list[Box | None] = [None] * max_subjects  # the plan: where to crop (None: slot idle)
        self._epochs = [0] * max_subjects  # bumped for every new subject in a slot
        # the writer's own state
        self._fitter = CropFitter(size_px)
        self._plan: list[Box | None] = [None] * max_subjects  # a copy of the plan for one frame
        self._plan_epochs = [0] * max_subjects
        self._written_epochs = [0] * max_subjects  # the epoch each ring was last written for
        self._rects: list[tuple[Box, int, int, tuple[int, int, int]] | None] = [None] * max_subjects
        self.crops_written = 0

    @property
    def cropped(self) -> list[Box | None]:
        """The boxes the last ``write`` cut around, per slot (None: the slot was idle). The writer's thread."""
        return self._plan

    @property
    def nbytes(self) -> int:
        """Fixed memory of every slot's ring."""
        return sum(ring.nbytes for ring in self.rings)

    # -- the worker ---------------------------------------------------------------------------------------------
    def start(self, slot: int, box: Box) -> None:
        """A new subject in ``slot``: crop around ``box`` from the next frame on, in a new ring epoch."""
        with self._lock:
            self._epochs[slot] += 1
            self._boxes[slot] = box

    def move(self, slot: int, box: Box) -> None:
        """The subject of ``slot`` is now at ``box`` (a detection step)."""
        with self._lock:
            if self._boxes[slot] is not None:
                self._boxes[slot] = box

    def stop(self, slot: int) -> None:
        """``slot``'s subject is gone: no more crops for it."""
        with self._lock:
            self._boxes[slot] = None

    # -- the source ---------------------------------------------------------------------------------------------
    def write(self, frame_bgr: np.ndarray, meta: FrameMeta) -> None:
        """Crop every active slot's subject out of ``frame_bgr`` into its ring, with ``meta``."""
        with self._lock:
            for slot, box in enumerate(self._boxes):
                self._plan[slot] = box
                self._plan_epochs[slot] = self._epochs[slot]
        height_px, width_px = frame_bgr.shape[:2]
        for slot, box in enumerate(self._plan):
            if box is None:
                continue
            ring = self.rings[slot]
            if self._plan_epochs[slot] != self._written_epochs[slot]:
                ring.begin_epoch()  # another person from here on
                self._written_epochs[slot] = self._plan_epochs[slot]
            cached = self._rects[slot]
            if cached is None or cached[0] is not box or cached[1] != width_px or cached[2] != height_px:
                cached = (box, width_px, height_px, square_crop_px(box, width_px, height_px, self.margin))
                self._rects[slot] = cached
            out = ring.write_slot(timeout_s=0)
            if out is None:  # closed
                return
            self._fitter.fit(frame_bgr, cached[3], out)
            ring.commit(meta)
            self.crops_written += 1

    def close(self) -> None:
        for ring in self.rings:
            ring.close()
