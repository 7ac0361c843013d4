"""The supervisor: ``vstmon run --config config.yaml`` (the default command) and the in-process ``Daemon``.

``Daemon(config)`` builds every stage from the config and owns every thread:

- per stream: a ``RingBuffer`` (fixed memory), a ``Source`` thread (reads, fits and pushes frames), a
  ``StreamWorker`` thread (scene/idle detectors per frame, ``ClipSampler``, cuts clips into two preallocated
  arrays, stamps their segment through ``SegmentState``, submits them to the stream's engine) and a
  ``SegmentState`` (segment/subject, smoothing, label/segment/reset messages);
- one ``Engine`` per device (``EnginePool``), shared by all streams assigned to it;
- the ``Publisher`` (PUB), the ``ControlServer`` (REP, own thread), optional Prometheus metrics;
- a tick thread: ``status.<stream>`` and daemon ``status`` every ``publish.heartbeat_s`` and systemd
  ``WATCHDOG=1``.

Resets (control command, source discontinuity, scene change, idle, end of file; ``start`` once at start-up) are
performed on the stream's worker thread (vstmon/stream/worker.py), which is the only reader of its ring and sampler.

Signals only set the stop event; ``run`` then stops everything in order (sources, workers, engines, control,
publisher) and returns 0.

Over 500 lines: the supervisor builds, wires, starts, stops and reloads every stage, and answers status and control; each of those is short, and they share the daemon's state.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import numpy as np
import torch

from vstmon.config import Config, StreamConfig, stream_decode
from vstmon.errors import ConfigKeyError, DetectorError, VstmonError
from vstmon.inference.engine import Engine, EnginePool
from vstmon.ingest.capture import CaptureError, file_info, parse_source
from vstmon.log import get_logger, redact_url
from vstmon.model.bundle import LoadedModel, load_model_and_labels
from vstmon.service.health import DropLog, Throughput, stalled, status_line
from vstmon.service.metrics import Metrics, cuda_memory
from vstmon.service.sdnotify import SystemdNotifier
from vstmon.stream.build import build_stream, clip_span_frames
from vstmon.stream.pipeline import ResetRequest, StreamPipeline
from vstmon.stream.worker import StreamWorker
from vstmon.types import ClipResult, ResetReason, SourceState, StreamEvent
from vstmon.wire.protocol import (
    ControlCommand,
    DaemonStatusBody,
    ResetReply,
    StatusCommand,
    StatusReply,
    StreamEntry,
    StreamStatusBody,
)

__all__ = ["Daemon"]

_log = get_logger("daemon")

_LATENCY_SAMPLES = 4096  # clip-ready -> published latencies kept for p50/p99 (a fixed ring)
_RESTART_SECTIONS = ("model", "inference", "publish", "metrics", "view")  # a reload cannot change these
_STREAM_SECTIONS = (
    "clip",
    "reset",
    "smoothing",
    "subjects",
)  # a reload that changes these restarts every stream


# ---------------------------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------------------
# the daemon
# ---------------------------------------------------------------------------------------------------------
class _Stream:
    """Everything the daemon holds for one stream."""

    def __init__(self, cfg: StreamConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.ring: Any = None
        self.source: Any = None
        self.state: Any = None
        self.pipeline: StreamPipeline | None = None
        self.worker: StreamWorker | None = None
        self.engine: Engine | None = None
        self.subject_clips = 0  # labels of people's own clips (per-subject mode)
        self.source_state = SourceState.CONNECTING
        self.reason = "starting"
        self.error: str | None = None


class Daemon:
    """The whole monitor, in-process: ``start()``, ``wait(timeout_s)``, ``request_stop()``, ``stop()``."""

    def __init__(self, config: Config, loaded: LoadedModel | None = None) -> None:
        self.config = config
        self._loaded = loaded
        self._stop_event = threading.Event()
        self._wake_event = threading.Event()  # the supervisor loop's: set by request_stop and wake
        self._started = False
        self._running = False  # start() completed: "vstmon running" was logged
        self._sources_started = False
        self._stopped = False
        self._start_mono_s = time.monotonic()
        self.streams: dict[str, _Stream] = {}
        self.publisher: Any = None
        self.control: Any = None
        self.pool: EnginePool | None = None
        self.metrics = Metrics()
        self.notifier = SystemdNotifier()
        self._tick_thread: threading.Thread | None = None
        self.view: Any = None  # the live page's ViewServer (view.port set)
        self._latency_s = np.zeros(_LATENCY_SAMPLES, dtype=np.float64)  # clip submitted -> label published
        self._latency_count = 0
        self._latency_lock = threading.Lock()
        self.batch_sizes: dict[int, int] = {}
        self._throughput = Throughput()
        self._drop_log = DropLog(config.service.drop_log_s)

    # -- build and start --------------------------------------------------------------------------------------
    def start(self, start_sources: bool = True) -> None:
        """Build every stage and start every thread. Raises ``VstmonError`` for a fatal set-up problem.

        ``start_sources=False`` leaves the streams idle (sockets bound, heartbeat running) until
        ``start_sources()``: lets a test subscribe before the first message is sent.
        """
        if self._started:
            raise RuntimeError("Daemon already started")
        self._started = True
        try:
            self._start()
            if start_sources:
                self.start_sources()
        except BaseException as error:
            self.stop()
            if isinstance(error, ConfigKeyError):  # a port in use: name the file and line of its key
                raise self.config.config_error(error.key, error.detail) from None
            raise

    def start_sources(self) -> None:
        """Announce every stream (``reset`` reason ``start``), then start its worker and its source."""
        if self._sources_started:
            return
        self._sources_started = True
        for stream in self.streams.values():
            self._start_stream(stream)

    def _start_stream(self, stream: _Stream) -> None:
        """Announce the stream (``reset`` reason ``start``), then start its worker and its source."""
        if stream.state is not None:
            stream.state.announce_start()
        if stream.worker is not None:
            stream.worker.start()
        self._publish_stream_status(stream)
        if stream.source is not None:
            try:
                stream.source.start()
            except Exception as error:
                self._stream_failed(stream, f"cannot start the source: {error}")

    def _start(self) -> None:
        from vstmon.wire.control import ControlServer
        from vstmon.wire.publish import Publisher

        cfg = self.config
        if cfg.inference.threads:
            torch.set_num_threads(cfg.inference.threads)
        loaded = self._loaded or load_model_and_labels(cfg)
        self._loaded = loaded
        self.publisher = Publisher(cfg.publish)
        if cfg.view.port is not None:
            from vstmon.view.server import start_view

            self.view = start_view(cfg.view, self.publisher, self.daemon_status, self._picture_source)
        self.pool = EnginePool.from_config(cfg, loaded.model, self._on_result, on_batch=self._on_batch)
        with self.notifier.extending_start():  # a first engine build or a compile can outlast TimeoutStartSec
            self.pool.start()  # warm-up (remote: the server's model id) before the streams are built
        remote_id = self.pool.remote_model_id
        if remote_id:  # labels say which model answered
            loaded = self._loaded = dataclasses.replace(
                loaded, model_id=remote_id, untrained=remote_id.startswith("untrained:")
            )
        if cfg.subjects.detector is None:
            _log.info(
                "subject tracking is off (subjects.detector is not set): segments change on cuts, idle, "
                "reconnects and control commands only; `vstmon weights fetch ssdlite_mobilenet_v2_pedestrian` "
                "and subjects.detector turn it on"
            )
        for stream_cfg in cfg.streams:
            self._add_stream(stream_cfg)
        if cfg.publish.control:
            self.control = ControlServer(cfg.publish.control, self._handle_control, curve=cfg.publish.curve)
            self.control.start()
        if cfg.metrics.port:
            self.metrics.start_server(cfg.metrics.host, cfg.metrics.port)
        self._tick_thread = threading.Thread(target=self._tick_loop, name="vstmon-tick", daemon=True)
        self._tick_thread.start()
        self.notifier.notify("READY=1")
        self._running = True
        _log.info(
            "vstmon running",
            streams=len(self.streams),
            devices=self.pool.devices,
            model=loaded.model_id,
            endpoints=self.publisher.endpoints,
            control=self.control.bound_endpoint if self.control is not None else None,
        )

    def _picture_source(self, name: str) -> tuple[Any, tuple[int, int]] | None:
        """For the live page: the stream's ring and its source's picture size (None for an unknown stream)."""
        stream = self.streams.get(name)
        if stream is None or stream.ring is None:
            return None
        width, height = self._source_stats(stream).get("frame_wh", (0, 0))
        return stream.ring, (int(width), int(height))

    def _add_stream(self, stream_cfg: StreamConfig) -> _Stream:
        """Build a stream's stages (not started); a stream that cannot be built is kept as failed."""
        assert self._loaded is not None
        stream = _Stream(stream_cfg)
        self.streams[stream.name] = stream
        try:
            self._build_stream(stream, self._loaded)
        except DetectorError:  # the detector is the same for every stream: a configuration error
            raise
        except Exception as error:  # one bad stream never takes the daemon or the others down
            stream.source_state = SourceState.FAILED
            stream.reason = str(error) if isinstance(error, VstmonError) else f"cannot start: {error}"
            stream.error = stream.reason
            _log.error("stream failed to start", stream=stream.name, error=redact_url(stream.reason))
        return stream

    def _build_stream(self, stream: _Stream, loaded: LoadedModel) -> None:
        from vstmon.ingest.source import Source
        from vstmon.stream.state import SegmentState

        cfg = self.config
        scfg = stream.cfg
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
        assert self.pool is not None and self.publisher is not None
        stream.engine = self.pool.assign(stream.name)
        publisher = self.publisher

        def make_state(_subject: str = "", name: str = stream.name) -> SegmentState:
            return SegmentState(
                name,
                cfg.smoothing,
                loaded.labels,
                cfg.publish.top_k,
                loaded.model_id,
                untrained=loaded.untrained,
                publish=publisher.publish,
            )

        parts = build_stream(
            cfg,
            scfg,
            fps,
            lossless,
            stream.engine,
            make_state,
            on_reset=lambda reason, name=stream.name: self.metrics.count_reset(name, str(reason)),
        )
        stream.ring, stream.state, stream.pipeline = parts.ring, parts.state, parts.pipeline
        stream.worker = StreamWorker(parts.pipeline)
        stream.source = Source(
            scfg,
            stream.ring,
            cfg.clip.size_px,
            lambda event, s=stream: self._on_event(s, event),
            detection_frames=parts.detection_frames,
            subject_crops=parts.crops,
            decode=stream_decode(cfg.ingest, scfg),
            gpu=cfg.ingest.gpu,
        )

    # -- callbacks (other threads) ----------------------------------------------------------------------------
    def _on_result(self, result: ClipResult) -> None:
        stream = self.streams.get(result.clip.stream)
        if stream is None or stream.state is None:
            return
        state = stream.pipeline.state_for(result.clip.key) if stream.pipeline is not None else None
        if state is None:  # that person is gone: their results are not published
            return
        if state.on_result(result):
            if state is not stream.state:
                stream.subject_clips += 1
            submitted = result.extra.get("submit_mono_s")
            if isinstance(submitted, float):
                latency_s = time.monotonic() - submitted
                with self._latency_lock:
                    self._latency_s[self._latency_count % _LATENCY_SAMPLES] = latency_s
                    self._latency_count += 1
                self.metrics.observe_latency(stream.name, time.monotonic() - result.clip.ready_mono_s)

    def _on_batch(self, device: str, size: int, seconds: float) -> None:
        self.batch_sizes[size] = self.batch_sizes.get(size, 0) + 1
        self.metrics.observe_batch(device, size, seconds)

    def _on_event(self, stream: _Stream, event: StreamEvent) -> None:
        changed = event.state != stream.source_state or event.reason != stream.reason
        stream.source_state = event.state
        stream.reason = event.reason  # the source has logged the change; logging it again here doubled it
        request = ResetRequest.for_event(event, self.config.reset.on_reconnect)
        if stream.worker is not None and request is not None:
            stream.worker.request_reset(request)
        if changed:
            self._publish_stream_status(stream)

    def _stream_failed(self, stream: _Stream, reason: str) -> None:
        stream.source_state = SourceState.FAILED
        stream.reason = reason
        _log.error("stream failed", stream=stream.name, reason=redact_url(reason))
        self._publish_stream_status(stream)

    def _handle_control(self, command: ControlCommand) -> ResetReply | StatusReply:
        if isinstance(command, StatusCommand):
            return StatusReply(streams=self._streams_status())
        name = command.stream
        stream = self.streams.get(name)
        if stream is None:
            known = ", ".join(self.streams) or "none"
            raise KeyError(f"unknown stream {name!r} (streams: {known})")
        if stream.state is None:
            raise VstmonError(f"stream {name!r} is not running: {stream.reason}")
        worker = stream.worker
        if worker is not None and worker.alive:
            segment = worker.request_reset(
                ResetRequest(ResetReason.CONTROL, subject=command.subject), wait_s=5.0
            )
            if segment is None:
                raise VstmonError(f"stream {name!r}: reset timed out")
            return ResetReply(segment=segment)
        segment = stream.state.reset(ResetReason.CONTROL, subject=command.subject)
        if stream.engine is not None:
            stream.engine.discard(name, segment)
        return ResetReply(segment=segment)

    # -- status -----------------------------------------------------------------------------------------------
    def _source_stats(self, stream: _Stream) -> dict[str, Any]:
        if stream.source is None:
            return {}
        try:
            return dict(stream.source.stats())
        except Exception:
            return {}

    def _stream_status(self, stream: _Stream) -> StreamStatusBody:
        stats = self._source_stats(stream)
        frames_dropped = int(stats.get("frames_dropped", 0))
        if stream.ring is not None:
            frames_dropped = max(frames_dropped, int(stream.ring.frames_dropped))
        clips_dropped = (
            stream.engine.batcher.clips_dropped_for_stream(stream.name) if stream.engine is not None else 0
        )
        clips = (stream.state.clips_total if stream.state is not None else 0) + stream.subject_clips
        per_subject = stream.pipeline.per_subject if stream.pipeline is not None else None
        pipeline = stream.pipeline
        slots = pipeline.subjects.slots if pipeline is not None and pipeline.subjects else None
        return StreamStatusBody(
            state=str(stream.source_state),
            reason=redact_url(stream.reason),
            fps_in=float(stats.get("fps_in", 0.0)),
            frames_dropped=frames_dropped,
            clips_dropped=clips_dropped,
            reconnects=int(stats.get("reconnects", 0)),
            clips=clips,
            people=pipeline.people if pipeline is not None else None,
            subject=stream.state.subject if stream.state is not None else None,
            subjects=per_subject.snapshot() if per_subject is not None else None,
            waiting=(slots.waiting if slots is not None else 0) if per_subject is not None else None,
            inference=_server_state(stream.engine),
        )

    def _publish_stream_status(self, stream: _Stream) -> None:
        if self.publisher is None:
            return
        status = self._stream_status(stream)
        self.publisher.publish(f"status.{stream.name}", status)
        self.metrics.update_stream(
            stream.name,
            status,
            frames_read=int(self._source_stats(stream).get("frames_read", 0)),
            segment=stream.state.segment if stream.state is not None else None,
        )

    def _streams_status(self) -> dict[str, StreamEntry]:
        out: dict[str, StreamEntry] = {}
        for stream in self.streams.values():
            status = self._stream_status(stream)
            snapshot = stream.state.snapshot() if stream.state is not None else {}
            out[stream.name] = StreamEntry(
                **dict(status),
                segment=snapshot.get("segment"),
                device=stream.engine.name if stream.engine is not None else None,
            )
        return out

    def daemon_status(self, state: str = "running") -> DaemonStatusBody:
        """The daemon ``status`` heartbeat (also what the live page shows)."""
        return DaemonStatusBody(
            state=state,
            uptime_s=time.monotonic() - self._start_mono_s,
            device=tuple(self.pool.devices) if self.pool is not None else (),
            model=self._loaded.model_id if self._loaded is not None else "",
            streams=self._streams_status(),
        )

    def latency_percentiles_s(self) -> dict[str, float]:
        """Clip submitted -> label published: p50 and p99 over the last samples (seconds)."""
        with self._latency_lock:
            n = min(self._latency_count, _LATENCY_SAMPLES)
            if n == 0:
                return {"count": 0, "p50": float("nan"), "p99": float("nan")}
            values = np.sort(self._latency_s[:n])
        return {
            "count": self._latency_count,
            "p50": float(np.percentile(values, 50)),
            "p99": float(np.percentile(values, 99)),
        }

    def _tick_loop(self) -> None:
        heartbeat_s = self.config.publish.heartbeat_s
        watchdog_s = self.notifier.watchdog_interval_s
        period_s = min(heartbeat_s, watchdog_s) if watchdog_s else heartbeat_s
        next_heartbeat = time.monotonic() + heartbeat_s
        reported: list[str] = []
        while not self._stop_event.wait(period_s):
            now = time.monotonic()
            problems = self.health_problems()
            if problems and problems != reported:
                _log.error(
                    "unhealthy: no more watchdog pings (systemd restarts the daemon)", problems=problems
                )
            reported = problems
            if watchdog_s and not problems:
                self.notifier.notify("WATCHDOG=1")
            if now >= next_heartbeat:
                next_heartbeat = now + heartbeat_s
                try:
                    self._heartbeat(problems)
                except Exception as error:
                    _log.exception("heartbeat failed", error=str(error))

    def _heartbeat(self, problems: list[str]) -> None:
        """Status messages, the ``STATUS=`` line, the drop log and the metrics, every ``publish.heartbeat_s``."""
        streams = list(self.streams.values())
        for stream in streams:
            self._publish_stream_status(stream)
        if self.publisher is not None:
            self.publisher.publish("status", self.daemon_status())
        labels = sum((s.state.clips_total if s.state is not None else 0) + s.subject_clips for s in streams)
        dropped = sum(
            s.engine.batcher.clips_dropped_for_stream(s.name) for s in streams if s.engine is not None
        )
        self._throughput.sample(labels, dropped)
        labels_per_s, dropped_recently = self._throughput.rates()
        up = sum(s.source_state == SourceState.STREAMING for s in streams)
        self.notifier.notify(
            "STATUS=" + status_line(up, len(streams), labels_per_s, dropped_recently, problems)
        )
        self._drop_log.update(dropped_recently, labels_per_s, self._throughput.window_s)
        for engine in self.pool.engines if self.pool is not None else []:
            busy, since_s = engine.progress()
            memory = cuda_memory(engine.name)
            self.metrics.update_engine(engine.name, engine.batcher.pending_count(), busy, since_s, memory)
            if engine.backend.remote:
                self.metrics.update_server(engine.name, engine.backend.stats())

    def health_problems(self) -> list[str]:
        """Dead stage threads and stages with work that make no progress (``service.progress_timeout_s``)."""
        problems = [f"{name} thread died" for name in self.dead_threads()]
        if self.stop_requested or self.pool is None:
            return problems
        workers = [s.worker for s in self.streams.values() if s.worker is not None and s.worker.alive]
        return problems + stalled([*self.pool.engines, *workers], self.config.service.progress_timeout_s)

    def dead_threads(self) -> list[str]:
        """Names of stage threads that should be running and are not (engines, stream workers, control).

        The watchdog is pinged only while this is empty, so a daemon whose pipeline has silently lost a
        thread is restarted by systemd instead of living on without publishing.
        """
        if self.stop_requested:
            return []
        dead = []
        if self.pool is not None:
            dead += [f"engine {e.name}" for e in self.pool.engines if not e.alive]
        if self._sources_started:  # workers start with the sources
            dead += [
                f"worker {s.name}"
                for s in self.streams.values()
                if s.worker is not None and not s.worker.alive
            ]
        if self.control is not None and not self.control.alive:
            dead.append("control")
        return dead

    # -- stopping ---------------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the daemon to stop (safe from a signal handler: only sets events)."""
        self._stop_event.set()
        self._wake_event.set()

    def wake(self) -> None:
        """Wake the supervisor loop early (a reload was asked for); safe from a signal handler."""
        self._wake_event.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until a stop is requested (True), ``timeout_s`` passed or ``wake()`` was called (False)."""
        if self._stop_event.is_set():
            return True
        self._wake_event.wait(timeout_s)
        self._wake_event.clear()
        return self._stop_event.is_set()

    @property
    def stop_requested(self) -> bool:
        return self._stop_event.is_set()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop everything within one deadline (``service.shutdown_timeout_s`` unless ``timeout_s``): sources and
        workers, engines, control, tick; then each stream's final ``segment`` summaries and a last ``status``
        (state ``stopped``) before the publisher closes. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        deadline_s = time.monotonic() + (
            self.config.service.shutdown_timeout_s if timeout_s is None else timeout_s
        )
        self.request_stop()
        if self.view is not None:  # the page first: it reads the rings the sources are about to close
            self.view.stop(_left_s(deadline_s))
        if self._tick_thread is not None:  # first, so that no ping or STATUS= line follows STOPPING=1
            self._tick_thread.join(_left_s(deadline_s))
        self.notifier.notify("STOPPING=1")
        streams = list(self.streams.values())
        self._halt(streams, deadline_s)
        if self.pool is not None:
            self.pool.stop()
            if not self.pool.join(_left_s(deadline_s)):
                _log.error("engine did not stop in time")
        if self.control is not None:
            self.control.close(_left_s(deadline_s))
        if self.publisher is not None:
            for stream in streams:
                _call(lambda s=stream: self._close_stream(s), "final messages", stream.name)
            if self._running:
                _call(lambda: self.publisher.publish("status", self.daemon_status("stopped")), "status", "-")
            self.publisher.close()
        self.metrics.stop_server()
        self.notifier.close()
        if self._running:  # a failed start is reported by the caller, not as a stop
            _log.info("vstmon stopped")

    def _halt(self, streams: list[_Stream], deadline_s: float) -> None:
        """Stop the sources and workers of ``streams``, all waiting within one deadline."""
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

    def _close_stream(self, stream: _Stream) -> None:
        """A stopped stream's last messages: its people's and its own final ``segment`` summaries, then its
        ``status`` with state ``stopped``; its clips still in the engine are never published."""
        per_subject = stream.pipeline.per_subject if stream.pipeline is not None else None
        if per_subject is not None:
            per_subject.end_all()
        if stream.engine is not None:
            stream.engine.forget(stream.name)
        if stream.state is not None:
            stream.state.close()
        stream.source_state = SourceState.STOPPED
        stream.reason = "stopped"
        self._publish_stream_status(stream)

    # -- reload -----------------------------------------------------------------------------------------------
    def reload(self, config: Config) -> list[str]:
        """Apply a new, validated config without a restart; returns the sections that need one (not applied).

        Streams are compared one by one: removed ones are stopped (final ``segment`` summary, ``status``
        stopped), added ones started, changed ones restarted (new segment numbering); the others keep running
        untouched, with no gap in their ``seq`` and no ``reset``. A change to ``clip``, ``reset``,
        ``smoothing`` or ``subjects`` changes every stream. ``model``, ``inference``, ``publish``, ``metrics`` and ``view``
        cannot change under a running engine or socket: they are reported, not half-applied.
        """
        old = self.config
        needs_restart = [name for name in _RESTART_SECTIONS if getattr(old, name) != getattr(config, name)]
        for server in (self.publisher, self.control):  # a client key added to (or taken from) allowed_keys
            curve = getattr(server, "curve", None)
            if curve is not None:
                _call(curve.reload_allowed_keys, "reload of the allowed client keys", "-")
        kept = {name: getattr(old, name) for name in _RESTART_SECTIONS}
        every_stream = any(getattr(old, name) != getattr(config, name) for name in _STREAM_SECTIONS)
        self.config = config.model_copy(update=kept)
        before = {s.name: s for s in old.streams}
        after = {s.name: s for s in config.streams}
        gone = [n for n in before if n not in after or every_stream or before[n] != after[n]]
        deadline_s = time.monotonic() + self.config.service.shutdown_timeout_s
        streams = [self.streams[n] for n in gone if n in self.streams]
        self._halt(streams, deadline_s)
        for stream in streams:
            _call(lambda s=stream: self._close_stream(s), "final messages", stream.name)
            del self.streams[stream.name]
            if stream.name not in after:
                self.metrics.remove_stream(stream.name)
        started = [n for n in after if n not in self.streams]
        for name in started:
            stream = self._add_stream(after[name])
            if self._sources_started:
                self._start_stream(stream)
        _log.info(
            "config reloaded",
            stopped=[n for n in gone if n not in after],
            started=[n for n in started if n not in before],
            restarted=[n for n in started if n in before],
            unchanged=[n for n in after if n not in started],
            needs_restart=needs_restart,
        )
        if needs_restart:
            _log.warning(
                "these sections changed but need a restart of the daemon; they were not applied",
                sections=needs_restart,
            )
        return needs_restart


def _left_s(deadline_s: float) -> float:
    return max(0.0, deadline_s - time.monotonic())


def _call(fn: Any, what: str, stream: str) -> None:
    try:
        fn()
    except Exception as error:
        _log.warning(f"{what} failed", stream=stream, error=str(error))


def _server_state(engine: Engine | None) -> str | None:
    """``up``/``down``/``unknown`` for a stream whose engine sends its batches to a server; None for a local one."""
    if engine is None or not engine.backend.remote:
        return None
    return {True: "up", False: "down"}.get(engine.backend.stats().get("up"), "unknown")
