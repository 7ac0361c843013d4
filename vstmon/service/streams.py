"""``LocalStreams``: a group of streams hosted in this process, each a ``Source`` thread and a ``StreamWorker``
thread around its ``StreamPipeline``. The daemon hosts every stream this way with ``workers.processes: 0``; a
worker process (``service/worker_process.py``) hosts its group this way, with the engine and the publisher in
the daemon's process on the other end of a pipe.

What the host needs from its owner, so that it works the same in both places:

- ``sink_for(stream)``: where a stream's clips go (the engine, or a proxy to it);
- ``publish(topic, body)``: where its messages go (the publisher, or the pipe);
- ``on_change(stream)``: its source changed state (the owner publishes ``status.<stream>`` at once);
- ``buffers_for(stream, slots)``: its clip arrays (None: plain arrays; shared memory in a worker process);
- ``first_segment(stream)`` and ``on_segment(stream)``: where a restarted host picks a stream up (its segments
  go on, reason ``worker_restart``), and a stream's own segment changed (so that its owner knows where).

The owner asks: ``snapshot(stream)`` (what ``status`` reports), ``reset(stream, subject)`` (a control command),
``deliver(result)`` (an engine's result), ``picture(stream)`` (the live page), ``problems()`` (dead threads and
stalled workers, for the watchdog) and ``halt`` / ``close`` (a stop, a reload).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from vstmon.config import Config, StreamConfig, stream_decode
from vstmon.errors import DetectorError, VstmonError
from vstmon.ingest.capture import CaptureError, file_info, parse_source
from vstmon.ingest.ring import FrameGone, RingBuffer
from vstmon.ingest.source import Source
from vstmon.log import get_logger, redact_url
from vstmon.service.health import stalled
from vstmon.stream.buffers import ClipBuffers
from vstmon.stream.build import build_stream, clip_slots, clip_span_frames
from vstmon.stream.pipeline import ResetRequest, StreamPipeline
from vstmon.stream.sink import ClipSink
from vstmon.stream.state import SegmentState
from vstmon.stream.worker import StreamWorker
from vstmon.types import ClipResult, ResetReason, SourceState, StreamEvent
from vstmon.wire.protocol import Body

__all__ = ["LocalStreams", "ModelInfo", "StreamSnapshot"]

_log = get_logger("daemon")
_RESET_WAIT_S = 5.0  # a control reset waits this long for the stream's worker


class ModelInfo(Protocol):
    """What the streams need to know of the model (a ``LoadedModel`` is one): its labels and its id."""

    labels: list[str]
    model_id: str
    untrained: bool


@dataclasses.dataclass(frozen=True)
class StreamSnapshot:
    """One stream as its host sees it (what ``status.<stream>`` and the watchdog need). Picklable: a worker
    process sends these to the daemon."""

    name: str
    state: str = str(SourceState.CONNECTING)
    reason: str = "starting"
    fps_in: float = 0.0
    frames_read: int = 0
    frames_dropped: int = 0
    reconnects: int = 0
    clips: int = 0  # labels published: the stream's own and its people's
    people: int | None = None
    subject: str | None = None
    segment: int | None = None
    subjects: list[dict[str, Any]] | None = None  # per-subject mode: the people with clips of their own
    waiting: int | None = None
    frame_wh: tuple[int, int] = (0, 0)
    worker_alive: bool = True
    worker_busy: bool = False
    worker_since_s: float = 0.0


class _Stream:
    """Everything the host holds for one stream."""

    def __init__(self, cfg: StreamConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.ring: RingBuffer | None = None
        self.source: Source | None = None
        self.state: SegmentState | None = None
        self.pipeline: StreamPipeline | None = None
        self.worker: StreamWorker | None = None
        self.subject_clips = 0  # labels of people's own clips (per-subject mode)
        self.source_state = SourceState.CONNECTING
        self.reason = "starting"
        self.started = False


class LocalStreams:
    """Streams on threads in this process (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        loaded: ModelInfo,
        *,
        sink_for: Callable[[str], ClipSink],
        publish: Callable[[str, Body], object],
        on_change: Callable[[str], None] = lambda _name: None,
        buffers_for: Callable[[str, int], Callable[[int], ClipBuffers] | None] = lambda _name, _slots: None,
        first_segment: Callable[[str], int] = lambda _name: 1,
        on_segment: Callable[[str], None] = lambda _name: None,
        decoder_threads: int | None = None,
    ) -> None:
        self.config = config
        self.loaded = loaded
        self._sink_for = sink_for
        self._publish = publish
        self._on_change = on_change
        self._buffers_for = buffers_for
        self._first_segment = first_segment
        self._on_segment = on_segment  # a stream's own segment changed (a worker process tells the daemon)
        self._decoder_threads = decoder_threads  # FFmpeg threads per file stream (None: the stream's own)
        self.streams: dict[str, _Stream] = {}

    # -- building and starting ----------------------------------------------------------------------------------
    def add(self, cfg: StreamConfig) -> None:
        """Build a stream (not started); one that cannot be built is kept as failed (the others carry on)."""
        stream = _Stream(cfg)
        self.streams[stream.name] = stream
        try:
            self._build(stream)
        except DetectorError:  # the detector is the same for every stream: a configuration error
            raise
        except Exception as error:  # one bad stream never takes the daemon or the others down
            stream.source_state = SourceState.FAILED
            stream.reason = str(error) if isinstance(error, VstmonError) else f"cannot start: {error}"
            _log.error("stream failed to start", stream=stream.name, error=redact_url(stream.reason))

    def _build(self, stream: _Stream) -> None:
        cfg, scfg, loaded = self.config, stream.cfg, self.loaded
        try:
            spec = parse_source(scfg.url)
        except CaptureError:  # the source reports it (failed) when it starts
            spec = None
        info = file_info(spec) if spec is not None and spec.kind == "file" else None
        lossless = spec is not None and spec.kind == "file" and not scfg.realtime
        fps = info.fps if info is not None else None
        if info is not None and info.frames and info.frames < clip_span_frames(cfg, fps or 30.0):
            _log.warning(
                "this file is shorter than one clip: it can never yield a label"
                + (" (loop: true does not help: every loop starts a new segment)" if scfg.loop else ""),
                stream=stream.name,
                frames=info.frames,
                clip_frames=clip_span_frames(cfg, fps or 30.0),
            )
        first = self._first_segment(stream.name)

        def make_state(subject: str = "", name: str = stream.name) -> SegmentState:
            return SegmentState(
                name,
                cfg.smoothing,
                loaded.labels,
                cfg.publish.top_k,
                loaded.model_id,
                untrained=loaded.untrained,
                publish=self._publish,
                first_segment=first if not subject else 1,
            )

        parts = build_stream(
            cfg,
            scfg,
            fps,
            lossless,
            self._sink_for(stream.name),
            make_state,
            buffers=self._buffers_for(stream.name, clip_slots(cfg, scfg)),
            on_reset=lambda _reason, name=stream.name: self._on_segment(name),
        )
        stream.ring, stream.state, stream.pipeline = parts.ring, parts.state, parts.pipeline
        stream.worker = StreamWorker(parts.pipeline)
        stream.source = Source(
            scfg,
            parts.ring,
            cfg.clip.size_px,
            lambda event, s=stream: self._on_event(s, event),
            detection_frames=parts.detection_frames,
            subject_crops=parts.crops,
            decode=stream_decode(cfg.ingest, scfg),
            gpu=cfg.ingest.gpu,
            decoder_threads=self._decoder_threads,
        )

    def start(self, name: str) -> None:
        """Announce the stream (``reset`` reason ``start``, or ``worker_restart`` when a restarted host picks it
        up), then start its worker and its source."""
        stream = self.streams[name]
        if stream.started:
            return
        stream.started = True
        if stream.state is not None:
            first = self._first_segment(name)
            stream.state.announce_start(ResetReason.START if first == 1 else ResetReason.WORKER_RESTART)
        if stream.worker is not None:
            stream.worker.start()
        self._on_change(name)
        if stream.source is not None:
            try:
                stream.source.start()
            except Exception as error:
                self._failed(stream, f"cannot start the source: {error}")

    @property
    def names(self) -> list[str]:
        return list(self.streams)

    # -- what the sources and the engine tell ---------------------------------------------------------------
    def _on_event(self, stream: _Stream, event: StreamEvent) -> None:
        changed = event.state != stream.source_state or event.reason != stream.reason
        stream.source_state = event.state
        stream.reason = event.reason  # the source has logged the change; logging it again here doubled it
        request = ResetRequest.for_event(event, self.config.reset.on_reconnect)
        if stream.worker is not None and request is not None:
            stream.worker.request_reset(request)
        if changed:
            self._on_change(stream.name)

    def _failed(self, stream: _Stream, reason: str) -> None:
        stream.source_state = SourceState.FAILED
        stream.reason = reason
        _log.error("stream failed", stream=stream.name, reason=redact_url(reason))
        self._on_change(stream.name)

    def deliver(self, result: ClipResult) -> bool:
        """An engine's result: to its clip stream's state; True when that state published it (a label)."""
        stream = self.streams.get(result.clip.stream)
        if stream is None or stream.pipeline is None:
            return False
        state = stream.pipeline.state_for(result.clip.key)
        if state is None or not state.on_result(result):  # that person is gone, or an old segment's clip
            return False
        if state is not stream.state:
            stream.subject_clips += 1
        return True

    # -- what the owner asks --------------------------------------------------------------------------------
    def reset(self, name: str, subject: str | None) -> int:
        """A control command: reset ``name`` (naming the new subject); the new segment."""
        stream = self.streams.get(name)
        if stream is None:
            known = ", ".join(self.streams) or "none"
            raise KeyError(f"unknown stream {name!r} (streams: {known})")
        if stream.state is None:
            raise VstmonError(f"stream {name!r} is not running: {stream.reason}")
        if stream.worker is not None and stream.worker.alive:
            request = ResetRequest(ResetReason.CONTROL, subject=subject)
            segment = stream.worker.request_reset(request, wait_s=_RESET_WAIT_S)
            if segment is None:
                raise VstmonError(f"stream {name!r}: reset timed out")
            return segment
        segment = stream.state.reset(ResetReason.CONTROL, subject=subject)
        with contextlib.suppress(Exception):
            self._sink_for(name).discard(name, segment)
        return segment

    def snapshot(self, name: str) -> StreamSnapshot:
        stream = self.streams[name]
        stats: dict[str, Any] = {}
        if stream.source is not None:
            with contextlib.suppress(Exception):
                stats = dict(stream.source.stats())
        frames_dropped = int(stats.get("frames_dropped", 0))
        if stream.ring is not None:
            frames_dropped = max(frames_dropped, int(stream.ring.frames_dropped))
        pipeline, state, worker = stream.pipeline, stream.state, stream.worker
        per_subject = pipeline.per_subject if pipeline is not None else None
        slots = pipeline.subjects.slots if pipeline is not None and pipeline.subjects is not None else None
        busy, since_s = worker.progress() if worker is not None and worker.alive else (False, 0.0)
        wh = stats.get("frame_wh", (0, 0))
        return StreamSnapshot(
            name=name,
            state=str(stream.source_state),
            reason=redact_url(stream.reason),
            fps_in=float(stats.get("fps_in", 0.0)),
            frames_read=int(stats.get("frames_read", 0)),
            frames_dropped=frames_dropped,
            reconnects=int(stats.get("reconnects", 0)),
            clips=(state.clips_total if state is not None else 0) + stream.subject_clips,
            people=pipeline.people if pipeline is not None else None,
            subject=state.subject if state is not None else None,
            segment=state.segment if state is not None else None,
            subjects=per_subject.snapshot() if per_subject is not None else None,
            waiting=(slots.waiting if slots is not None else 0) if per_subject is not None else None,
            frame_wh=(int(wh[0]), int(wh[1])),
            worker_alive=worker is None or not stream.started or worker.alive,
            worker_busy=busy,
            worker_since_s=since_s,
        )

    def picture(self, name: str) -> tuple[np.ndarray, tuple[int, int]] | None:
        """The stream's newest picture as the model sees it (a copy, RGB) and the source's picture size."""
        stream = self.streams.get(name)
        ring = stream.ring if stream is not None else None
        if stream is None or ring is None or ring.head_seq == 0:
            return None
        out = np.empty((1, ring.height_px, ring.width_px, 3), np.uint8)
        try:
            ring.read([ring.head_seq - 1], out)
        except (FrameGone, ValueError):
            return None
        return out[0], self.snapshot(name).frame_wh

    def problems(self, timeout_s: float) -> list[str]:
        """Stream workers that died, and workers with frames waiting that made no progress for ``timeout_s``."""
        workers = [s.worker for s in self.streams.values() if s.worker is not None and s.started]
        dead = [f"worker {w.stream} thread died" for w in workers if not w.alive]
        return dead + stalled([w for w in workers if w.alive], timeout_s)

    # -- stopping -----------------------------------------------------------------------------------------------
    def halt(self, names: list[str], deadline_s: float) -> None:
        """Stop the sources and workers of ``names``, all waiting within one deadline (monotonic seconds)."""
        streams = [self.streams[n] for n in names if n in self.streams]
        for stream in streams:
            if stream.source is not None:
                _call(stream.source.stop, "source stop", stream.name)
            if stream.worker is not None:
                stream.worker.stop()
            if stream.ring is not None:
                _call(stream.ring.close, "ring close", stream.name)  # wakes a writer blocked on a full ring
        for stream in streams:
            if stream.source is not None and not stream.source.join(_left_s(deadline_s)):
                _log.error("stream source did not stop in time", stream=stream.name)
        for stream in streams:
            if stream.worker is not None and not stream.worker.join(_left_s(deadline_s)):
                _log.error("stream worker did not stop in time", stream=stream.name)

    def close(self, name: str) -> StreamSnapshot | None:
        """A halted stream's last messages (its people's and its own final ``segment`` summaries) and its last
        snapshot (state ``stopped``); it is removed from the host. Its clips still in the engine are the
        owner's to forget."""
        stream = self.streams.get(name)
        if stream is None:
            return None
        per_subject = stream.pipeline.per_subject if stream.pipeline is not None else None
        if per_subject is not None:
            _call(per_subject.end_all, "final segments", name)
        if stream.state is not None:
            _call(stream.state.close, "final segment", name)
        stream.source_state = SourceState.STOPPED
        stream.reason = "stopped"
        last = self.snapshot(name)
        del self.streams[name]
        return last


def _left_s(deadline_s: float) -> float:
    return max(0.0, deadline_s - time.monotonic())


def _call(fn: Callable[[], object], what: str, stream: str) -> None:
    try:
        fn()
    except Exception as error:
        _log.warning(f"{what} failed", stream=stream, error=str(error))
