"""``Source``: one reader thread per stream, from capture to ring buffer, surviving inputs that drop or hang.

The reader grabs continuously and never waits for inference: a live ring overwrites its oldest frames (the
ring counts them); a lossless ring (files in non-realtime mode) makes the reader wait for the consumer.

State machine (every transition goes to ``on_event`` with a reason free of credentials)::

    connecting --first frame--> streaming --read fails / stall--> reconnecting --first frame--> streaming
        |                           |  \\--end of file--> ended      |   (backoff between attempts)
        \\--open fails (retryable)--+----------------------------------/
    any --permanent error (bad scheme, missing or undecodable file) or max_attempts reached--> failed

A reconnect or a file loop is a discontinuity: the source clears the ring and reports ``discontinuity=True``.
Frame indices and the stream clock restart with every (re)open. End of file keeps the ring (the consumer may
still cut the last frames).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from vstmon.config import StreamConfig
from vstmon.ingest.backoff import Backoff
from vstmon.ingest.capture import CaptureError, Reader, SourceSpec, open_reader, parse_source
from vstmon.ingest.ring import RingBuffer
from vstmon.log import get_logger, redact
from vstmon.preprocess import FrameFitter
from vstmon.types import FrameMeta, StreamEvent, StreamState

__all__ = ["Source"]

_FPS_WINDOW = 32  # frames in the rolling fps estimate
_SLOT_WAIT_S = 0.1  # lossless rings: how often a waiting writer checks the stop event
_RESYNC_BEHIND_S = 1.0  # realtime pacing: further behind than this, restart the pacing clock


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
    ) -> None:
        self.cfg = cfg
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
        self._reconnects = 0
        self._fps_times = np.zeros(_FPS_WINDOW, np.float64)  # capture monotonic times, circular
        self._last_frame_mono_s = 0.0

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
        """fps_in (rolling), frames_read, frames_dropped (by the ring), reconnects, state, reason, ring_nbytes."""
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
        }

    # -- reader thread ----------------------------------------------------------------------------------
    def _emit(
        self, state: StreamState, reason: str, discontinuity: bool = False, looped: bool = False
    ) -> None:
        reason = redact(reason)
        self.state, self.reason = state, reason
        log = self._log.warning if state in (StreamState.RECONNECTING, StreamState.FAILED) else self._log.info
        log("stream state", state=str(state), reason=reason, discontinuity=discontinuity)
        try:
            self._on_event(StreamEvent(self.name, state, reason, discontinuity, time.time(), looped))
        except Exception as error:  # the owner's callback must not kill the reader
            self._log.error("on_event callback failed", error=redact(repr(error)))

    def _run(self) -> None:
        try:
            self._run_states()
        except Exception as error:  # last resort: never raise out of the thread
            self._log.exception("reader crashed")
            self._emit(StreamState.FAILED, f"internal error in reader: {type(error).__name__}: {error}")

    def _retry_or_fail(self, reason: str, discontinuity: bool) -> bool:
        """Report the failure, wait out the backoff; False when the source gives up or is stopped."""
        if self._backoff.exhausted:
            self._emit(
                StreamState.FAILED,
                f"{reason}; gave up after {self._backoff.attempts} attempts",
                discontinuity,
            )
            return False
        delay_s = self._backoff.next_delay_s()
        attempt = self._backoff.attempts
        self._emit(StreamState.RECONNECTING, f"{reason}; retry {attempt} in {delay_s:.1f} s", discontinuity)
        return not self._stop.wait(delay_s)

    def _run_states(self) -> None:
        self._emit(StreamState.CONNECTING, "opening")
        try:
            spec = parse_source(self.cfg.url)
        except CaptureError as error:
            self._emit(StreamState.FAILED, str(error))
            return
        while not self._stop.is_set():
            try:
                reader = open_reader(self.cfg, spec, self._stop)
            except CaptureError as error:
                if self._stop.is_set():
                    return
                if error.permanent:
                    self._emit(StreamState.FAILED, str(error))
                    return
                if not self._retry_or_fail(str(error), discontinuity=False):
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
                    self.ring.clear()
                    self._emit(StreamState.STREAMING, f"{reason}; looping", discontinuity=True, looped=True)
                    continue
                self._emit(StreamState.ENDED, reason)
                return
            # LOST: a live stream dropped or stalled; frames before and after must not share a clip
            if had_frames:
                self.ring.clear()
                self._reconnects += 1
            if not spec.live:  # a file that cannot be read on is over
                self._emit(StreamState.FAILED, reason, discontinuity=had_frames)
                return
            if not self._retry_or_fail(reason, discontinuity=had_frames):
                return

    def _pump(self, reader: Reader, spec: SourceSpec) -> tuple[str, str, bool]:
        """Read frames into the ring until the input ends, fails or stalls, or stop is set."""
        realtime = bool(self.cfg.realtime) if spec.kind == "file" else self.cfg.realtime is not False
        paced = spec.kind in ("file", "testsrc") and realtime
        stall_s = self.cfg.stall_timeout_s
        index = 0
        first_mono_s = 0.0
        pace_origin_s = 0.0  # monotonic time at which stream_ts 0 "happened" (paced inputs)
        last_frame_mono_s = time.monotonic()
        meta = FrameMeta()  # one per run, refilled per frame (the ring copies the values)
        while not self._stop.is_set():
            frame = reader.read()
            now_mono_s, now_wall_s = time.monotonic(), time.time()
            if frame is None:
                if spec.kind in ("file", "testsrc"):
                    return _Outcome.ENDED, f"end of input after {index} frames", index > 0
                waited_s = now_mono_s - last_frame_mono_s
                what = "stalled" if waited_s >= stall_s * 0.9 else "lost"
                return (
                    _Outcome.LOST,
                    f"stream {what}: no frame for {waited_s:.1f} s after {index} frames",
                    index > 0,
                )
            stream_ts_s = reader.stream_ts_s
            if index == 0:
                first_mono_s = now_mono_s
            if stream_ts_s is None:  # live: the capture clock, relative to the first frame
                stream_ts_s = now_mono_s - first_mono_s
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
            except ValueError as error:
                return _Outcome.LOST, f"undecodable frame {index}: {error}", index > 0
            meta.index, meta.capture_mono_s, meta.capture_wall_s = index, now_mono_s, now_wall_s
            meta.stream_ts_s = stream_ts_s
            self.ring.commit(meta)
            self._fps_times[self._frames_read % _FPS_WINDOW] = now_mono_s
            self._frames_read += 1
            last_frame_mono_s = now_mono_s
            if index == 0:
                self._backoff.reset()
                self._emit(StreamState.STREAMING, f"receiving {spec.kind} frames")
            index += 1
        return _Outcome.STOPPED, "stopped", index > 0
