"""``Source``: one reader thread per stream, from capture to ring buffer, surviving inputs that drop or hang.

The reader grabs continuously and never waits for inference: a live ring overwrites its oldest frames (the
ring counts them); a lossless ring (files in non-realtime mode) makes the reader wait for the consumer.

State machine (every transition goes to ``on_event`` with a reason free of credentials)::

    connecting --first frame--> streaming --read fails / stall--> reconnecting --first frame--> streaming
        |                           |  \\--end of file--> ended      |   (backoff between attempts)
        \\--open fails (retryable)--+----------------------------------/
    any --permanent error (bad scheme, missing or undecodable file) or max_attempts reached--> failed

Progress, for live sources: a frame counts only when its read returned in time. A read that hits the read
timeout (at most half of ``stall_timeout_s``) after the input hung still hands over one buffered frame; that
frame is stale, is not stored and does not restart the stall clock, so a hung camera is declared stalled within
``stall_timeout_s``. A live picture that stays bit-identical (in the fitted crop) for ``frozen_timeout_s`` is a
frozen camera and is treated like a stall (reconnect).

Discontinuities (``StreamEvent.discontinuity`` says which, ``at_seq`` where: the source starts a new ring epoch
there, ``RingBuffer.begin_epoch``, and drops nothing, so a lossless file loses no frame): a reconnect, a
file loop (at most one per ``_MIN_LOOP_INTERVAL_S``, so a file shorter than a clip cannot spin), and a jump of
the stream clock (backwards, or forwards by more than ``max_time_jump_s``: concatenated recordings, PTS wraps,
capture gaps), after which the clock is re-based to go on from where it was. Frame indices restart with every
(re)open. End of file keeps the ring (the consumer may still cut the last frames).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from vstmon.config import StreamConfig
from vstmon.ingest.backoff import Backoff
from vstmon.ingest.capture import (
    CaptureError,
    Reader,
    SourceSpec,
    live_read_timeout_s,
    open_reader,
    parse_source,
)
from vstmon.ingest.detection_frames import DetectionFrames
from vstmon.ingest.ring import RingBuffer
from vstmon.ingest.subject_crops import SubjectCrops
from vstmon.log import get_logger, redact
from vstmon.preprocess import FrameFitter
from vstmon.types import Discontinuity, FrameMeta, StreamEvent, StreamState

__all__ = ["Source"]

_FPS_WINDOW = 32  # frames in the rolling fps estimate
_SLOT_WAIT_S = 0.1  # lossless rings: how often a waiting writer checks the stop event
_RESYNC_BEHIND_S = 1.0  # realtime pacing: further behind than this, restart the pacing clock
_MIN_LOOP_INTERVAL_S = 1.0  # loop: true: a file starts over at most this often (a short file cannot spin)
_MIN_STEP_S = 1e-3  # stream clock: a zero or tiny backward step becomes this much forward


class _Outcome:
    STOPPED = "stopped"
    ENDED = "ended"
    LOST = "lost"


class Source:
    """Reads one stream into a ``RingBuffer`` on its own thread (``start``/``stop``/``join``)."""

    def __init__(
        self,
        cfg: StreamConfig,
        ring: RingBuffer,
        size_px: int,
        on_event: Callable[[StreamEvent], None],
        detection_frames: DetectionFrames | None = None,
        subject_crops: SubjectCrops | None = None,
        *,
        decode: str = "cpu",
        gpu: int = 0,
    ) -> None:
        self.cfg = cfg
        self._decode, self._gpu = decode, gpu  # the decoder (vstmon.ingest.decode): cpu = OpenCV, as always
        self._detection_frames = detection_frames  # whole frames for the person detector, a few per second
        self._subject_crops = subject_crops  # per-subject mode: crops around each tracked person, every frame
        self.name = cfg.name
        self.ring = ring
        self.size_px = size_px
        self._on_event = on_event
        self._fitter = FrameFitter(size_px)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = get_logger("ingest").bind(stream=cfg.name)
        self._backoff = Backoff(
            cfg.reconnect.initial_delay_s,
            cfg.reconnect.max_delay_s,
            cfg.reconnect.jitter,
            cfg.reconnect.max_attempts,
        )
        self.state = StreamState.CONNECTING
        self.reason = "not started"
        self._frames_read = 0
        self._frame_shape: tuple[int, ...] = (0, 0, 3)  # (height, width, 3) of the newest decoded frame
        self._reconnects = 0
        self._fps_times = np.zeros(_FPS_WINDOW, np.float64)  # capture monotonic times, circular
        self._previous: np.ndarray | None = (
            None  # the last fitted frame (frozen-picture detection, live only)
        )

    # -- owner API --------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"source {self.name} already started")
        self._thread = threading.Thread(target=self._run, name=f"source-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the reader to stop (returns at once; a read in progress ends within the read timeout)."""
        self._stop.set()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the reader thread; True when it has ended."""
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        """fps_in (rolling), frames_read, frames_dropped (by the ring), reconnects, state, reason, ring_nbytes,
        frame_wh (the source's picture size, [width, height]; [0, 0] before the first frame)."""
        n = min(self._frames_read, _FPS_WINDOW)
        fps_in = 0.0
        if n >= 2:
            last = (self._frames_read - 1) % _FPS_WINDOW
            first = (self._frames_read - n) % _FPS_WINDOW
            span_s = self._fps_times[last] - self._fps_times[first]
            idle_s = time.monotonic() - self._fps_times[last]
            if span_s > 0 and idle_s < max(2.0, 2 * span_s):
                fps_in = (n - 1) / span_s
        return {
            "state": str(self.state),
            "reason": self.reason,
            "fps_in": round(fps_in, 2),
            "frames_read": self._frames_read,
            "frames_dropped": self.ring.frames_dropped,
            "reconnects": self._reconnects,
            "ring_nbytes": self.ring.nbytes,
            "frame_wh": [int(self._frame_shape[1]), int(self._frame_shape[0])],
        }

    # -- reader thread ----------------------------------------------------------------------------------
    def _emit(
        self,
        state: StreamState,
        reason: str,
        discontinuity: Discontinuity | None = None,
        at_seq: int | None = None,
    ) -> None:
        reason = redact(reason)
        self.state, self.reason = state, reason
        log = self._log.warning if state in (StreamState.RECONNECTING, StreamState.FAILED) else self._log.info
        log("stream state", state=str(state), reason=reason, discontinuity=discontinuity)
        try:
            self._on_event(StreamEvent(self.name, state, reason, discontinuity, time.time(), at_seq))
        except Exception as error:  # the owner's callback must not kill the reader
            self._log.error("on_event callback failed", error=redact(repr(error)))

    def _run(self) -> None:
        try:
            self._run_states()
        except Exception as error:  # last resort: never raise out of the thread
            self._log.exception("reader crashed")
            self._emit(StreamState.FAILED, f"internal error in reader: {type(error).__name__}: {error}")

    def _retry_or_fail(self, reason: str, discontinuity: Discontinuity | None, at_seq: int | None) -> bool:
        """Report the failure, wait out the backoff; False when the source gives up or is stopped."""
        if self._backoff.exhausted:
            self._emit(
                StreamState.FAILED,
                f"{reason}; gave up after {self._backoff.attempts} attempts",
                discontinuity,
                at_seq,
            )
            return False
        delay_s = self._backoff.next_delay_s()
        attempt = self._backoff.attempts
        self._emit(
            StreamState.RECONNECTING, f"{reason}; retry {attempt} in {delay_s:.1f} s", discontinuity, at_seq
        )
        return not self._stop.wait(delay_s)

    def _run_states(self) -> None:
        self._emit(StreamState.CONNECTING, "opening")
        try:
            spec = parse_source(self.cfg.url)
        except CaptureError as error:
            self._emit(StreamState.FAILED, str(error))
            return
        while not self._stop.is_set():
            opened_mono_s = time.monotonic()
            try:
                reader = open_reader(self.cfg, spec, decode=self._decode, gpu=self._gpu)
            except CaptureError as error:
                if self._stop.is_set():
                    return
                if error.permanent:
                    self._emit(StreamState.FAILED, str(error))
                    return
                if not self._retry_or_fail(str(error), None, None):
                    return
                continue
            try:
                outcome, reason, had_frames = self._pump(reader, spec)
            finally:
                reader.close()
            if outcome == _Outcome.STOPPED:
                return
            if outcome == _Outcome.ENDED:
                if self.cfg.loop and had_frames:
                    at_seq = self.ring.begin_epoch()
                    # a short file must not loop at the speed of its open (measured: 354 loops/s for a file
                    # shorter than one clip): one loop per _MIN_LOOP_INTERVAL_S at most
                    wait_s = _MIN_LOOP_INTERVAL_S - (time.monotonic() - opened_mono_s)
                    if wait_s > 0 and self._stop.wait(wait_s):
                        return
                    self._emit(StreamState.STREAMING, f"{reason}; looping", Discontinuity.LOOP, at_seq)
                    continue
                self._emit(StreamState.ENDED, reason)
                return
            # LOST: a live stream dropped, stalled or froze; frames before and after must not share a clip
            lost, at_seq = None, None
            if had_frames:
                lost, at_seq = Discontinuity.RECONNECT, self.ring.begin_epoch()
                self._reconnects += 1
            if not spec.live:  # a file that cannot be read on is over
                self._emit(StreamState.FAILED, reason, lost, at_seq)
                return
            if not self._retry_or_fail(reason, lost, at_seq):
                return

    def _pump(self, reader: Reader, spec: SourceSpec) -> tuple[str, str, bool]:
        """Read frames into the ring until the input ends, fails, stalls or freezes, or stop is set."""
        cfg = self.cfg
        realtime = bool(cfg.realtime) if spec.kind == "file" else cfg.realtime is not False
        paced = spec.kind in ("file", "testsrc") and realtime
        live = spec.live
        stall_s = cfg.stall_timeout_s
        stale_read_s = 0.9 * live_read_timeout_s(cfg)  # a read this slow handed over a stale frame
        frozen_s = cfg.frozen_timeout_s if live else None
        if frozen_s is not None and self._previous is None:
            self._previous = np.empty((self.size_px, self.size_px, 3), np.uint8)  # last fitted frame
        clock = _StreamClock(cfg.max_time_jump_s, reader.fps)
        if self._detection_frames is not None:
            self._detection_frames.restart()  # a new open: the stream clock starts again
        index = 0
        first_mono_s = 0.0
        pace_origin_s = 0.0  # monotonic time at which stream_ts 0 "happened" (paced inputs)
        progress_mono_s = time.monotonic()  # the last frame that counts as progress (stall detection)
        changed_mono_s = progress_mono_s  # the last frame that differed from the one before (frozen picture)
        meta = FrameMeta()  # one per run, refilled per frame (the ring copies the values)
        while not self._stop.is_set():
            read_mono_s = time.monotonic()
            frame = reader.read()
            now_mono_s, now_wall_s = time.monotonic(), time.time()
            if frame is None:
                if spec.kind in ("file", "testsrc"):
                    return _Outcome.ENDED, f"end of input after {index} frames", index > 0
                return _Outcome.LOST, self._lost_reason(now_mono_s - progress_mono_s, index), index > 0
            if live and now_mono_s - read_mono_s >= stale_read_s:
                # the read timed out and FFmpeg handed over what it still had: a stale frame, not progress
                if now_mono_s - progress_mono_s >= stall_s:
                    return _Outcome.LOST, self._lost_reason(now_mono_s - progress_mono_s, index), index > 0
                continue
            progress_mono_s = now_mono_s
            if index == 0:
                first_mono_s = now_mono_s
            source_ts_s = reader.stream_ts_s
            if source_ts_s is None:  # live: the capture clock, relative to the first frame
                source_ts_s = now_mono_s - first_mono_s
            stream_ts_s, jump_s = clock.update(source_ts_s)
            if jump_s is not None:
                # two recordings concatenated, a PTS wrap, a capture gap: frames before and after must not
                # share a clip; the clock goes on from where it was (so realtime pacing does not freeze)
                self._emit(
                    StreamState.STREAMING,
                    f"the stream clock jumped {jump_s:+.3f} s after frame {index - 1}; clock re-based",
                    Discontinuity.TIME_JUMP,
                    self.ring.begin_epoch(),
                )
            if paced:
                if index == 0:
                    pace_origin_s = now_mono_s - stream_ts_s
                due_s = pace_origin_s + stream_ts_s
                if due_s > now_mono_s:
                    if self._stop.wait(due_s - now_mono_s):
                        return _Outcome.STOPPED, "stopped", index > 0
                    now_mono_s, now_wall_s = time.monotonic(), time.time()
                elif now_mono_s - due_s > _RESYNC_BEHIND_S:
                    pace_origin_s = now_mono_s - stream_ts_s
            slot = self.ring.write_slot(timeout_s=_SLOT_WAIT_S)
            while slot is None:  # lossless ring full (or closed): wait for the consumer or stop
                if self._stop.is_set() or self.ring.closed:
                    return _Outcome.STOPPED, "stopped", index > 0
                slot = self.ring.write_slot(timeout_s=_SLOT_WAIT_S)
            try:
                self._fitter.fit(frame, slot)
                self._frame_shape = frame.shape  # a reference to the array's own tuple: nothing allocated
            except ValueError as error:
                return _Outcome.LOST, f"undecodable frame {index}: {error}", index > 0
            if frozen_s is not None and self._previous is not None:
                if index == 0 or cv2.norm(slot, self._previous, cv2.NORM_INF) > 0:
                    changed_mono_s = now_mono_s
                    np.copyto(self._previous, slot)
                elif now_mono_s - changed_mono_s >= frozen_s:
                    return (
                        _Outcome.LOST,
                        f"frozen picture: the same frame for {now_mono_s - changed_mono_s:.1f} s "
                        f"after {index} frames",
                        index > 0,
                    )
            if self._detection_frames is not None:  # before the commit: the worker may take the frame at once
                seq = self.ring.head_seq
                while self._detection_frames.offer(frame, seq, stream_ts_s, _SLOT_WAIT_S) is None:
                    if (
                        self._stop.is_set() or self.ring.closed
                    ):  # lossless: waiting for the worker to catch up
                        return _Outcome.STOPPED, "stopped", index > 0
            meta.index, meta.capture_mono_s, meta.capture_wall_s = index, now_mono_s, now_wall_s
            meta.stream_ts_s = stream_ts_s
            self.ring.commit(meta)
            if self._subject_crops is not None:
                self._subject_crops.write(frame, meta)
            self._fps_times[self._frames_read % _FPS_WINDOW] = now_mono_s
            self._frames_read += 1
            if index == 0:
                self._backoff.reset()
                self._emit(StreamState.STREAMING, f"receiving {spec.kind} frames")
            index += 1
        return _Outcome.STOPPED, "stopped", index > 0

    def _lost_reason(self, waited_s: float, frames: int) -> str:
        what = "stalled" if waited_s >= self.cfg.stall_timeout_s * 0.9 else "lost"
        return f"stream {what}: no frame for {waited_s:.1f} s after {frames} frames"


class _StreamClock:
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
