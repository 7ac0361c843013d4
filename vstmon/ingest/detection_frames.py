"""``DetectionFrames``: whole source frames, squeezed to the person detector's square input, for a few ring seqs.

The ring holds what the action model sees (a centre crop at ``clip.size_px``), which cuts off the sides of the
picture; the person detector needs the whole frame. The source therefore also writes, a few times per second of
stream time (``interval_s``, on a fixed grid of the stream clock), the whole frame resized to ``size_px`` x
``size_px`` (aspect ratio not kept, as the detector's own resizer does) into one of a few preallocated slots,
tagged with the ring seq the frame gets. The stream worker takes it when it reaches that seq.

One writer (the source), one reader (the worker), slots reused round robin. Live (``lossless=False``): the writer
never waits; a reader more than ``slots`` detection frames behind finds its frame overwritten and skips that
detection. Lossless (files read as fast as the model allows): the writer waits while the next slot holds a frame
the reader has not reached yet, so every detection frame is used (the ring already paces that writer).

Memory is fixed: ``slots`` x ``size_px`` x ``size_px`` x 3 bytes (8 x 300 x 300 x 3 = 2.2 MB).
"""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np

__all__ = ["DetectionFrames"]


class DetectionFrames:
    """Preallocated whole-frame copies at the detector's input size, keyed by ring seq (see the module docstring)."""

    def __init__(self, size_px: int, interval_s: float, slots: int = 4, lossless: bool = False) -> None:
        if size_px < 16 or slots < 1 or not interval_s > 0:
            raise ValueError(
                f"bad detection frames: size_px={size_px}, interval_s={interval_s}, slots={slots}"
            )
        self.size_px = int(size_px)
        self.interval_s = float(interval_s)
        self.lossless = bool(lossless)
        self._frames = np.zeros((slots, size_px, size_px, 3), np.uint8)  # (S, H, W, 3) BGR
        self._seqs = [-1] * slots  # ring seq of each slot's frame (-1: empty or taken)
        self._cond = threading.Condition(threading.Lock())
        self._reader_seq = -1  # the highest seq the reader has asked for: older frames are no longer wanted
        self._next = 0  # slot to write next
        self._due_s: float | None = None  # stream time of the next frame to keep
        self.frames_written = 0
        self.frames_missed = 0  # asked for a seq whose frame was overwritten (live, reader far behind)

    @property
    def nbytes(self) -> int:
        return int(self._frames.nbytes)

    def restart(self) -> None:
        """Writer: the stream clock restarted (a new connection or file pass): the next frame is kept."""
        self._due_s = None

    def offer(
        self, frame_bgr: np.ndarray, seq: int, stream_ts_s: float, timeout_s: float | None = None
    ) -> bool | None:
        """Writer: keep ``frame_bgr`` (any size) for ring seq ``seq`` if one is due at ``stream_ts_s``.

        True when kept, False when none is due; None when lossless and no slot freed up within ``timeout_s``
        (call again with the same frame: nothing changed).
        """
        if self._due_s is not None and stream_ts_s < self._due_s:
            return False
        slot = self._next
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self.lossless and self._seqs[slot] >= 0 and self._seqs[slot] > self._reader_seq:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            self._seqs[slot] = -1  # invalid while written
        cv2.resize(
            frame_bgr, (self.size_px, self.size_px), dst=self._frames[slot], interpolation=cv2.INTER_LINEAR
        )
        with self._cond:
            self._seqs[slot] = seq
        self._next = (slot + 1) % len(self._seqs)
        # a fixed grid on the stream clock (so a file read fast or slow keeps the same frames)
        if self._due_s is None or stream_ts_s - self._due_s >= self.interval_s:
            self._due_s = stream_ts_s + self.interval_s
        else:
            self._due_s += self.interval_s
        self.frames_written += 1
        return True

    def take(self, seq: int, out: np.ndarray) -> bool:
        """Reader: copy the frame kept for ``seq`` into ``out`` ((size_px, size_px, 3) uint8); False if none.

        Asking for ``seq`` also tells the writer that no frame before it is wanted any more.
        """
        with self._cond:
            if seq > self._reader_seq:
                self._reader_seq = seq
                self._cond.notify_all()
            for slot, slot_seq in enumerate(self._seqs):
                if slot_seq == seq:
                    np.copyto(
                        out, self._frames[slot]
                    )  # under the lock: the writer cannot reuse the slot meanwhile
                    self._seqs[slot] = -1  # taken
                    return True
            return False
