"""``RingBuffer``: one stream's preallocated frames (already fitted to the model) and their metadata.

One writer thread (the source) and one reader thread (the stream worker, or ``vstmon classify``):

- the writer asks for ``write_slot()`` (a view of the next slot), fills it in place (``FrameFitter.fit``) and
  ``commit(meta)``s it, which gives the frame its sequence number ``seq`` (0, 1, 2, ... never reused);
- the reader ``wait_for(seq)``, reads metadata and ``read(seqs, out)`` copies frames into its own array, and
  ``release(before_seq)`` tells the writer which frames it will never read again.

Live mode (``lossless=False``): the writer never waits; it overwrites the oldest slot, and a frame overwritten
before the reader released it counts in ``frames_dropped``. Lossless mode (files read faster than real time):
``write_slot`` blocks while every slot holds an unreleased frame, so no frame is ever lost.

Memory is fixed at construction (``nbytes``): ``capacity_frames`` x ``height_px`` x ``width_px`` x 3 bytes plus
~40 bytes of metadata per slot, whatever the stream's length or resolution. Push is O(1) and allocates nothing.

A frame becomes invalid (``FrameGone``) as soon as the writer takes its slot back (``write_slot``), not only at
``commit``: the reader's copy is validated after it is made, so it can never return a torn frame.
``clear()`` drops frames and bumps ``generation`` so that clips cut before it can be recognised downstream.
``begin_epoch()`` marks a source discontinuity (reconnect, file loop, clock jump) without dropping anything:
every frame carries the epoch it was committed in (``epoch_of(seq)``), so the reader can use every frame before
the discontinuity (lossless files lose none) and restart its timing exactly at the first frame after it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np

from vstmon.types import FrameMeta

__all__ = ["FrameGone", "RingBuffer"]


class FrameGone(LookupError):
    """The requested frame is no longer in the ring: it was overwritten (live mode) or cleared."""


class RingBuffer:
    """Preallocated ring of ``(height_px, width_px, 3)`` uint8 frames with per-slot ``FrameMeta``.

    Thread-safe for one writer and one reader (a ``threading.Condition`` guards the counters; pixels are copied
    outside the lock and validated afterwards). See the module docstring for the protocol.
    """

    def __init__(self, capacity_frames: int, height_px: int, width_px: int, lossless: bool = False) -> None:
        if capacity_frames < 2:
            raise ValueError(f"capacity_frames must be >= 2, got {capacity_frames}")
        if height_px < 1 or width_px < 1:
            raise ValueError(f"frame size must be positive, got {height_px}x{width_px}")
        self.capacity_frames = int(capacity_frames)
        self.height_px = int(height_px)
        self.width_px = int(width_px)
        self.lossless = bool(lossless)
        cap = self.capacity_frames
        self._frames = np.zeros((cap, self.height_px, self.width_px, 3), np.uint8)  # (S, H, W, 3) RGB
        self._views = [self._frames[i] for i in range(cap)]  # per-slot views, made once
        self._index = np.full(cap, -1, np.int64)  # FrameMeta.index per slot
        self._times = np.zeros((cap, 3), np.float64)  # capture_mono_s, capture_wall_s, stream_ts_s per slot
        self._epochs = np.zeros(cap, np.int64)  # the epoch each slot's frame was committed in
        self._cond = threading.Condition(threading.Lock())
        self._head = 0  # next seq to be written
        self._oldest = 0  # oldest seq still valid
        self._released = 0  # the reader needs no seq below this
        self._pending = False  # write_slot handed out the head slot, not committed yet
        self._generation = 0
        self._epoch = 0  # bumped by begin_epoch (source discontinuities)
        self._frames_dropped = 0
        self._closed = False

    # -- properties -------------------------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Fixed memory of frames and metadata, in bytes."""
        return int(self._frames.nbytes + self._index.nbytes + self._times.nbytes)

    @property
    def head_seq(self) -> int:
        """The next seq to be written (= number of frames committed since creation)."""
        return self._head

    @property
    def oldest_seq(self) -> int:
        """The oldest seq still held (== ``head_seq`` when the ring is empty)."""
        return self._oldest

    @property
    def generation(self) -> int:
        """Bumped by every ``clear()``."""
        return self._generation

    @property
    def epoch(self) -> int:
        """The epoch the next committed frame gets (bumped by ``begin_epoch``)."""
        return self._epoch

    @property
    def frames_dropped(self) -> int:
        """Frames overwritten before the reader released them (live mode)."""
        return self._frames_dropped

    @property
    def closed(self) -> bool:
        return self._closed

    # -- writer -----------------------------------------------------------------------------------------------

    def write_slot(self, timeout_s: float | None = None) -> np.ndarray | None:
        """A view of the next slot to fill in place; ``None`` on timeout or close.

        Lossless mode blocks while every slot holds an unreleased frame (``timeout_s=None`` waits for ever,
        until ``release``, ``clear`` or ``close``). Calling it again before ``commit`` returns the same slot.
        """
        cap = self.capacity_frames
        deadline = None if timeout_s is None else time.monotonic() + max(0.0, timeout_s)
        with self._cond:
            while True:
                if self._closed:
                    return None
                if self._pending:
                    return self._views[self._head % cap]
                victim = self._head - cap  # the seq whose slot is taken back
                held = victim >= self._oldest
                if self.lossless and held and victim >= self._released:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return None
                    self._cond.wait(remaining)
                    continue
                if held:
                    if victim >= self._released:
                        self._frames_dropped += 1
                    self._oldest = victim + 1
                self._pending = True
                return self._views[self._head % cap]

    def commit(self, meta: FrameMeta) -> int:
        """Publish the slot from ``write_slot`` with its metadata (copied: ``meta`` may be reused); returns its seq."""
        with self._cond:
            if not self._pending:
                raise RuntimeError("commit() without a write_slot() first")
            seq = self._head
            slot = seq % self.capacity_frames
            self._index[slot] = meta.index
            self._epochs[slot] = self._epoch
            times = self._times[slot]
            times[0], times[1], times[2] = meta.capture_mono_s, meta.capture_wall_s, meta.stream_ts_s
            self._head = seq + 1
            self._pending = False
            self._cond.notify_all()
            return seq

    def push(self, frame: np.ndarray, meta: FrameMeta, timeout_s: float | None = None) -> int | None:
        """Copy ``frame`` into the next slot and commit it (convenience; sources fill ``write_slot`` in place)."""
        slot = self.write_slot(timeout_s)
        if slot is None:
            return None
        slot[...] = frame
        return self.commit(meta)

    # -- reader -----------------------------------------------------------------------------------------------

    def wait_for(self, seq: int, timeout_s: float | None) -> bool:
        """True once ``seq`` has been committed; False on timeout, or on close before it was."""
        with self._cond:
            return (
                self._cond.wait_for(lambda: self._head > seq or self._closed, timeout_s) and self._head > seq
            )

    def _check(self, seq: int) -> int:
        """Slot of a valid ``seq`` (call with the lock held)."""
        if seq >= self._head:
            raise ValueError(f"frame {seq} has not been committed yet (head is {self._head})")
        if seq < self._oldest:
            raise FrameGone(
                f"frame {seq} is gone (oldest held is {self._oldest}, generation {self._generation})"
            )
        return seq % self.capacity_frames

    def _meta(self, slot: int) -> FrameMeta:
        mono, wall, stream = self._times[slot].tolist()
        return FrameMeta(int(self._index[slot]), mono, wall, stream)

    def meta(self, seq: int) -> FrameMeta:
        """A copy of frame ``seq``'s metadata; ``FrameGone`` if it was overwritten or cleared."""
        with self._cond:
            return self._meta(self._check(seq))

    def stream_ts_s(self, seq: int) -> float:
        """``meta(seq).stream_ts_s`` without building a ``FrameMeta``."""
        with self._cond:
            return float(self._times[self._check(seq), 2])

    def epoch_of(self, seq: int) -> int:
        """The epoch frame ``seq`` was committed in; ``FrameGone`` if it was overwritten or cleared."""
        with self._cond:
            return int(self._epochs[self._check(seq)])

    def frame(self, seq: int) -> np.ndarray:
        """A view of frame ``seq`` (valid until the writer takes its slot back; copy it or use ``read``)."""
        with self._cond:
            return self._views[self._check(seq)]

    def read(self, seqs: Sequence[int] | np.ndarray, out: np.ndarray) -> list[FrameMeta]:
        """Copy frames ``seqs`` into ``out[0..len(seqs)-1]``; returns their metadata.

        Raises ``FrameGone`` if any of them was lost before or while copying (``out`` is then partly written).
        """
        n = len(seqs)
        if out.shape[0] < n or out.shape[1:] != self._frames.shape[1:] or out.dtype != np.uint8:
            raise ValueError(
                f"out must be ({n}, {self.height_px}, {self.width_px}, 3) uint8, got {out.shape} {out.dtype}"
            )
        if n == 0:
            return []
        low, high = int(min(seqs)), int(max(seqs))
        with self._cond:
            self._check(high)
            self._check(low)
        cap = self.capacity_frames
        for i, seq in enumerate(seqs):  # outside the lock: the writer keeps going meanwhile
            out[i] = self._views[int(seq) % cap]
        with self._cond:
            self._check(low)  # still valid after the copy, so nothing was overwritten under it
            return [self._meta(int(seq) % cap) for seq in seqs]

    def release(self, before_seq: int) -> None:
        """The reader will never read a frame below ``before_seq`` again (lets a lossless writer go on)."""
        with self._cond:
            if before_seq > self._released:
                self._released = min(before_seq, self._head)  # unwritten frames cannot be released
                self._cond.notify_all()

    def wait_stepped(self, seq: int, timeout_s: float | None) -> bool:
        """Writer: True once the reader is done with frame ``seq`` (released or cleared past it); False on
        timeout or close. For a reader that releases every frame as it steps it (per-subject mode)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._released > seq or self._oldest > seq or self._closed, timeout_s
            ) and (self._released > seq or self._oldest > seq)

    # -- both -------------------------------------------------------------------------------------------------

    def begin_epoch(self) -> int:
        """Writer: the frames committed from now on follow a discontinuity; returns the first seq they get."""
        with self._cond:
            self._epoch += 1
            return self._head

    def clear(self, keep_from_seq: int | None = None) -> int:
        """Drop every frame (or those below ``keep_from_seq``); bumps and returns ``generation``."""
        with self._cond:
            keep = self._head if keep_from_seq is None else min(max(keep_from_seq, self._oldest), self._head)
            self._oldest = max(self._oldest, keep)
            self._generation += 1
            self._cond.notify_all()
            return self._generation

    def close(self) -> None:
        """Wake every waiter; ``write_slot`` returns None from now on, ``wait_for`` returns False for new frames."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __repr__(self) -> str:
        mode = "lossless" if self.lossless else "live"
        return (
            f"RingBuffer({self.capacity_frames} x {self.height_px}x{self.width_px}, {mode}, "
            f"head={self._head}, oldest={self._oldest}, generation={self._generation})"
        )
