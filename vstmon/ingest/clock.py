"""``StreamClock``: a source's stream clock, one for the daemon's sources and the offline reader of classify.

A file's frames carry their own times (PTS); a live source's clock is the capture clock. Either can jump: two
recordings concatenated, a PTS wrap, a capture gap. The stream clock only moves forward; a jump is reported (the
caller starts a new ring epoch there: no clip spans it) and the clock is re-based to go on from where it was.
"""

from __future__ import annotations

__all__ = ["StreamClock"]

_MIN_STEP_S = 1e-3  # a zero or tiny backward step becomes this much forward


class StreamClock:
    """A source's stream clock, re-based across discontinuities so that it only ever moves forward.

    ``update(source_ts_s) -> (stream_ts_s, jump_s)``: ``jump_s`` is the raw step when it was a discontinuity
    (backwards by more than half a frame, or forwards by more than ``max_jump_s``), else None. After a jump the
    clock goes on one frame period after the last frame. Smaller backward or zero steps (timestamp noise) are
    clamped to a millisecond after the last frame.
    """

    def __init__(self, max_jump_s: float, fps: float) -> None:
        self.max_jump_s = max_jump_s
        self.frame_s = 1.0 / fps if fps > 0 else 1.0 / 25.0
        self._offset_s = 0.0
        self._last_s: float | None = None

    def update(self, source_ts_s: float) -> tuple[float, float | None]:
        ts_s = source_ts_s + self._offset_s
        last_s = self._last_s
        jump_s = None
        if last_s is not None:
            step_s = ts_s - last_s
            if step_s > self.max_jump_s or step_s < -0.5 * self.frame_s:
                jump_s = step_s
                self._offset_s += last_s + self.frame_s - ts_s
                ts_s = last_s + self.frame_s
            elif step_s <= 0:
                ts_s = last_s + _MIN_STEP_S
        self._last_s = ts_s
        return ts_s, jump_s
