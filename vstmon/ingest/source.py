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
from vstmon.ingest.clock import StreamClock
from vstmon.ingest.detection_frames import DetectionFrames
from vstmon.ingest.intake import FrameIntake
from vstmon.ingest.ring import RingBuffer
from vstmon.ingest.subject_crops import SubjectCrops
from vstmon.log import get_logger, redact
from vstmon.stage import Stage
from vstmon.types import Discontinuity, FrameMeta, SourceState, StreamEvent

__all__ = ["Source"]

_FPS_WINDOW = 32  # frames in the rolling fps estimate
_RESYNC_BEHIND_S = 1.0  # realtime pacing: further behind than this, restart the pacing clock
_MIN_LOOP_INTERVAL_S = 1.0  # loop: true: a file starts over at most this often (a short file cannot spin)


class _Outcome:
    STOPPED = "stopped"
    ENDED = "ended"
    LOST = "lost"


class Source(Stage):
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
        decoder_threads: int | None = None,
    ) -> None:
        super().__init__(f"source-{cfg.name}")
        self.cfg = cfg
        self.stream = cfg.name
        self._decode, self._gpu = decode, gpu  # the decoder (vstmon.ingest.decode): cpu = OpenCV, as always
        self._decoder_threads = (
            decoder_threads  # FFmpeg's threads (None: the stream's own setting or default)
        )
        self._detection_frames = detection_frames  # whole frames for the person detector, a few per second
        self.ring = ring
        self.size_px = size_px
        self._on_event = on_event
        # lossless per subject: crops wait for the pipeline's boxes (ingest/intake.py), as offline
        lockstep = ring.lossless and subject_crops is not None
        self._intake = FrameIntake(ring, size_px, detection_frames, subject_crops, lockstep)
        self._stop = self._stop_event  # the reader's waits (backoff, pacing, full rings) end on it
        self._log = get_logger("ingest").bind(stream=cfg.name)
        self._backoff = Backoff(
            cfg.reconnect.initial_delay_s,
            cfg.reconnect.max_delay_s,
            cfg.reconnect.jitter,
            cfg.reconnect.max_attempts,
        )
        self.state = SourceState.CONNECTING
        self.reason = "not started"
        self._frames_read = 0
        self._frame_shape: tuple[int, ...] = (0, 0, 3)  # (height, width, 3) of the newest decoded frame
        self._reconnects = 0
        self._fps_times = np.zeros(_FPS_WINDOW, np.float64)  # capture monotonic times, circular
        self._previous: np.ndarray | None = (
            None  # the last fitted frame (frozen-picture detection, live only)
        )

    # -- owner API --------------------------------------------------------------------------------------
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
        state: SourceState,
        reason: str,
        discontinuity: Discontinuity | None = None,
        at_seq: int | None = None,
    ) -> None:
        reason = redact(reason)
        self.state, self.reason = state, reason
        log = self._log.warning if state in (SourceState.RECONNECTING, SourceState.FAILED) else self._log.info
        log("stream state", state=str(state), reason=reason, discontinuity=discontinuity)
        try:
            self._on_event(StreamEvent(self.stream, state, reason, discontinuity, time.time(), at_seq))
        except Exception as error:  # the owner's callback must not kill the reader
            self._log.error("on_event callback failed", error=redact(repr(error)))

    def _run(self) -> None:
        try:
            self._run_states()
        except Exception as error:  # last resort: never raise out of the thread
            self._log.exception("reader crashed")
            self._emit(SourceState.FAILED, f"internal error in reader: {type(error).__name__}: {error}")

    def _retry_or_fail(self, reason: str, discontinuity: Discontinuity | None, at_seq: int | None) -> bool:
        """Report the failure, wait out the backoff; False when the source gives up or is stopped."""
        if self._backoff.exhausted:
            self._emit(
                SourceState.FAILED,
                f"{reason}; gave up after {self._backoff.attempts} attempts",
                discontinuity,
                at_seq,
            )
            return False
        delay_s = self._backoff.next_delay_s()
        attempt = self._backoff.attempts
        self._emit(
            SourceState.RECONNECTING, f"{reason}; retry {attempt} in {delay_s:.1f} s", discontinuity, at_seq
        )
        return not self._stop.wait(delay_s)

    def _run_states(self) -> None:
        self._emit(SourceState.CONNECTING, "opening")
        try:
            spec = parse_source(self.cfg.url)
        except CaptureError as error:
            self._emit(SourceState.FAILED, str(error))
            return
        while not self._stop.is_set():
            opened_mono_s = time.monotonic()
            try:
                reader = open_reader(
                    self.cfg, spec, decode=self._decode, gpu=self._gpu, threads=self._decoder_threads
                )
            except CaptureError as error:
                if self._stop.is_set():
                    return
                if error.permanent:
                    self._emit(SourceState.FAILED, str(error))
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
                    self._emit(SourceState.STREAMING, f"{reason}; looping", Discontinuity.LOOP, at_seq)
                    continue
                self._emit(SourceState.ENDED, reason)
                return
            # LOST: a live stream dropped, stalled or froze; frames before and after must not share a clip
            lost, at_seq = None, None
            if had_frames:
                lost, at_seq = Discontinuity.RECONNECT, self.ring.begin_epoch()
                self._reconnects += 1
            if not spec.live:  # a file that cannot be read on is over
                self._emit(SourceState.FAILED, reason, lost, at_seq)
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
        clock = StreamClock(cfg.max_time_jump_s, reader.fps)
        intake = self._intake
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
                    SourceState.STREAMING,
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
            slot = intake.slot(self._stop.is_set)
            if slot is None:  # stopped while a lossless ring was full
                return _Outcome.STOPPED, "stopped", index > 0
            try:
                intake.fit(frame, slot)
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
            meta.index, meta.capture_mono_s, meta.capture_wall_s = index, now_mono_s, now_wall_s
            meta.stream_ts_s = stream_ts_s
            seq = intake.commit(frame, meta, self._stop.is_set)
            if seq is None or not intake.crop(frame, meta, seq, self._stop.is_set):
                return _Outcome.STOPPED, "stopped", index > 0
            self._fps_times[self._frames_read % _FPS_WINDOW] = now_mono_s
            self._frames_read += 1
            if index == 0:
                self._backoff.reset()
                self._emit(SourceState.STREAMING, f"receiving {spec.kind} frames")
            index += 1
        return _Outcome.STOPPED, "stopped", index > 0

    def _lost_reason(self, waited_s: float, frames: int) -> str:
        what = "stalled" if waited_s >= self.cfg.stall_timeout_s * 0.9 else "lost"
        return f"stream {what}: no frame for {waited_s:.1f} s after {frames} frames"
