"""``ClipSampler``: decides when a clip is due and which ring-buffer frames it takes, on the stream's clock.

Feed it every committed frame in order (``on_frame(seq)``); when it returns True, ``cut(out)`` copies the clip
into the caller's array and returns a ``types.Clip``.

Timing (all on ``FrameMeta.stream_ts_s``, relative to the segment's first frame, i.e. the first frame at or after
the last ``restart``; so a file read faster than real time gives the same clips, and a run started at a cut
gives exactly the clips of a fresh run on the part after the cut):

- a segment's first clip is due at the first frame for which the clip fits inside the segment:
  frame mode: ``span_frames = (frames - 1) * frame_interval + 1`` frames since the segment start;
  time mode (``sample_fps``): ``(frames - 1) / sample_fps`` seconds of stream time since the segment start;
- then one clip every ``hop_s`` on a fixed grid: clip k is due at the first frame whose relative time reaches
  ``r1 + k * hop_s`` (``r1`` = relative time of the first clip; grid points are multiplied, never accumulated,
  and compared with a 1 us tolerance, so float noise cannot shift a clip by a frame);
- frame mode takes every ``frame_interval``-th frame ending at the due frame; time mode takes, for
  ``j = 0 .. frames-1``, the frame nearest in time to ``end_ts - (frames - 1 - j) / sample_fps`` (a near-tie,
  within 1 us, goes to the later frame; a source slower than ``sample_fps`` repeats frames).

A clip never spans a restart, a ring ``clear()`` or a source discontinuity: when the ring's generation changes the
sampler restarts by itself at the ring's oldest frame; when a fed frame's epoch (``ring.epoch_of``) differs from
the segment's, it restarts at that frame; and ``cut`` refuses (``FrameGone``) a clip whose frames were cleared.

Late callers. Exactly one clip can be due at a time, always the newest: if a clip became due and the caller
fed the next frame without cutting it, or skipped frames (live mode, the reader fell behind) across several grid
points, the older due clips are not produced and are counted in ``clips_skipped``; the grid is not shifted.
If the ring lost frames the due clip needs (live overwrite), ``cut`` raises ``FrameGone`` (also counted).

Release: after every frame and every cut the sampler ``ring.release()``s the frames no future clip can use, so a
lossless ring of ``span_frames + 1`` slots (or the time-mode equivalent) never blocks its writer for long.
"""

from __future__ import annotations

import math

import numpy as np

from vstmon.ingest.ring import FrameGone, RingBuffer
from vstmon.types import Clip

__all__ = ["ClipSampler"]

_EPS_S = 1e-6  # tolerance when comparing stream times (float noise of ts - t0 is ~1e-13 s)


class ClipSampler:
    """When a clip is due and which frames it takes; see the module docstring for the exact rules.

    Used by the stream's reader thread only (not thread-safe by itself; the ring it reads is).
    """

    def __init__(
        self,
        ring: RingBuffer,
        stream: str,
        frames: int = 32,
        frame_interval: int = 2,
        hop_s: float = 1.0,
        sample_fps: float | None = None,
    ) -> None:
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        if frame_interval < 1:
            raise ValueError(f"frame_interval must be >= 1, got {frame_interval}")
        if not hop_s > 0:
            raise ValueError(f"hop_s must be > 0, got {hop_s}")
        if sample_fps is not None and not sample_fps > 0:
            raise ValueError(f"sample_fps must be > 0, got {sample_fps}")
        self.ring = ring
        self.stream = stream
        self.frames = int(frames)
        self.frame_interval = int(frame_interval)
        self.hop_s = float(hop_s)
        self.sample_fps = None if sample_fps is None else float(sample_fps)
        self.span_frames = (self.frames - 1) * self.frame_interval + 1  # frame mode only
        self.duration_s = 0.0 if self.sample_fps is None else (self.frames - 1) / self.sample_fps  # time mode
        self.clips_cut = 0
        self.clips_skipped = 0
        self.restarts = 0
        self._seqs = np.zeros(self.frames, np.int64)  # the clip's frame seqs, reused by every cut
        self._restart(ring.oldest_seq)
        self.restarts = 0

    # -- segment ----------------------------------------------------------------------------------------------

    def _restart(self, from_seq: int) -> None:
        self._generation = self.ring.generation
        self._start = max(int(from_seq), 0)  # first seq of the segment
        self._t0: float | None = None  # stream time of the segment's first frame
        self._first_rel: float | None = None  # relative time of the segment's first clip
        self._next_k = 0  # grid index of the next clip
        self._due: int | None = None  # seq of the due clip's last frame
        self._last_fed = self._start - 1
        self._keep_from = self._start  # time mode: oldest frame a future clip may use
        self._epoch: int | None = (
            None  # the source epoch of the segment's frames (taken from the first one fed)
        )
        self.restarts += 1

    def restart(self, from_seq: int) -> None:
        """Discontinuity or reset: timing restarts at ``from_seq``; no clip will span it (a due clip is dropped)."""
        self._restart(from_seq)
        self.ring.release(self._start)

    @property
    def segment_start_seq(self) -> int:
        """The first seq of the current segment."""
        return self._start

    @property
    def due(self) -> bool:
        """True while a clip is due and not cut yet."""
        return self._due is not None

    # -- feeding ----------------------------------------------------------------------------------------------

    def on_frame(self, seq: int) -> bool:
        """Feed committed frame ``seq`` (in order); True when a clip ending at ``seq`` is due.

        A frame the ring has already lost (live mode, the caller fell behind) is ignored (False).
        """
        ring = self.ring
        if ring.generation != self._generation:  # cleared behind our back: a new segment from what is left
            self._restart(ring.oldest_seq)
        if seq < self._start or seq <= self._last_fed:
            return False
        try:
            epoch = ring.epoch_of(seq)
            if self._epoch is not None and epoch != self._epoch:  # a source discontinuity: start over here
                self._restart(seq)
                ring.release(seq)
            if self._t0 is None:
                self._start = max(self._start, ring.oldest_seq)
                if self._start > seq:
                    return False
                if ring.epoch_of(self._start) != epoch:  # frames skipped across a discontinuity
                    self._start = seq
                self._t0 = ring.stream_ts_s(self._start)
                self._epoch = epoch
            rel_s = ring.stream_ts_s(seq) - self._t0
        except FrameGone:
            return False
        jumped = seq != self._last_fed + 1
        self._last_fed = seq
        if self.sample_fps is None:
            enough = seq - self._start + 1 >= self.span_frames
        else:
            enough = rel_s >= self.duration_s - _EPS_S
        due = False
        if enough:
            if self._first_rel is None:
                self._first_rel, k = rel_s, 0
                due = True
            elif rel_s >= self._first_rel + self._next_k * self.hop_s - _EPS_S:
                k = math.floor((rel_s - self._first_rel + _EPS_S) / self.hop_s)
                due = True
                if jumped and k > self._next_k:  # grid points passed on frames the caller never fed
                    self.clips_skipped += k - self._next_k
            if due:
                self._next_k = k + 1
                if self._due is not None:  # the previous due clip was never cut
                    self.clips_skipped += 1
                self._due = seq
        self._release(seq if self._due is not None else seq + 1)
        return due

    def _release(self, earliest_end_seq: int) -> None:
        """Release frames no clip ending at or after ``earliest_end_seq`` can use."""
        ring = self.ring
        if self.sample_fps is None:
            ring.release(max(self._start, earliest_end_seq - self.span_frames + 1))
            return
        # time mode: the earliest target time is end_ts - duration_s >= ts(earliest end) - duration_s; a frame
        # is useless once the next frame is at or before that time (the later frame is nearer, ties go later)
        end_seq = min(earliest_end_seq, self._last_fed)
        try:
            limit_s = ring.stream_ts_s(end_seq) - self.duration_s - _EPS_S
            keep = max(self._keep_from, ring.oldest_seq)
            while keep < end_seq and ring.stream_ts_s(keep + 1) <= limit_s:
                keep += 1
        except FrameGone:
            return
        self._keep_from = keep
        ring.release(keep)

    # -- cutting ----------------------------------------------------------------------------------------------

    def _choose_by_time(self, end: int) -> None:
        ring = self.ring
        low = max(self._start, ring.oldest_seq)
        seq = end
        ts = ring.stream_ts_s(seq)
        end_ts = ts
        for j in range(self.frames - 1, -1, -1):
            target = end_ts - (self.frames - 1 - j) / self.sample_fps  # type: ignore[operator]
            while seq > low:
                earlier = ring.stream_ts_s(seq - 1)
                if abs(earlier - target) < abs(ts - target) - _EPS_S:
                    seq, ts = seq - 1, earlier
                else:
                    break
            self._seqs[j] = seq

    def cut(self, out: np.ndarray) -> Clip:
        """Copy the due clip into ``out`` ((frames, H, W, 3) uint8, caller-owned) and describe it.

        Raises ``FrameGone`` if the ring lost (overwrite) or dropped (clear) any of its frames meanwhile, and
        ``RuntimeError`` if no clip is due.
        """
        if self._due is None:
            raise RuntimeError("no clip is due (call cut() only after on_frame() returned True)")
        if out.shape[0] != self.frames:
            raise ValueError(f"out must hold {self.frames} frames, got shape {out.shape}")
        end, generation = self._due, self._generation
        self._due = None
        try:
            if self.ring.generation != generation:
                raise FrameGone(f"the ring was cleared after the clip ending at frame {end} became due")
            if self.sample_fps is None:
                self._seqs[:] = np.arange(end - self.span_frames + 1, end + 1, self.frame_interval)
            else:
                self._choose_by_time(end)
            metas = self.ring.read(self._seqs, out)
            if self.ring.generation != generation:
                raise FrameGone(f"the ring was cleared while the clip ending at frame {end} was copied")
        except FrameGone:
            self.clips_skipped += 1
            raise
        self.clips_cut += 1
        self._release(end + 1)
        first, last = metas[0], metas[-1]
        return Clip(
            stream=self.stream,
            generation=generation,
            frames=out,
            first_frame=first.index,
            last_frame=last.index,
            start_ts=first.capture_wall_s,
            end_ts=last.capture_wall_s,
            start_stream_s=first.stream_ts_s,
            end_stream_s=last.stream_ts_s,
            ready_mono_s=last.capture_mono_s,
        )

    def stats(self) -> dict[str, int]:
        """Counters: clips cut, clips skipped (late caller or lost frames), restarts."""
        return {"clips_cut": self.clips_cut, "clips_skipped": self.clips_skipped, "restarts": self.restarts}
