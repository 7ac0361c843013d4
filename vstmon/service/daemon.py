"""The supervisor: ``Daemon(config)`` builds the stages from the config, wires them, starts and stops them.

- the engines (``EnginePool``: one per device, or one talking to a Triton server), batching across streams;
- the streams, hosted by a ``LocalStreams`` (``workers.processes: 0``: every stream on threads in this process)
  or by ``ProcessStreams`` (worker processes, each hosting a group of streams; a decoder crash takes one group
  down, and it is started again): the same ``Source`` and ``StreamWorker`` around each ``StreamPipeline``;
- the ``Publisher`` (PUB) and the ``ControlServer`` (REP), the live page, Prometheus metrics;
- a tick thread: ``status.<stream>`` and daemon ``status`` every ``publish.heartbeat_s``, systemd ``WATCHDOG=1``
  while every stage lives and makes progress, the ``STATUS=`` line.

Every message passes through the publisher, in this process, whichever process produced it: ``seq`` is counted
per stream here, and a publisher tap keeps the figures that come from messages (resets by reason, labels,
latency) the same in both hostings.

Signals only set the stop event (``service/run.py``); ``stop`` then stops everything within one deadline.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import numpy as np

from vstmon.config import Config, worker_processes
from vstmon.errors import ConfigKeyError
from vstmon.inference.engine import Engine, EnginePool
from vstmon.log import get_logger
from vstmon.model.bundle import LoadedModel, load_model_and_labels
from vstmon.service.health import DropLog, LatencyWindow, Throughput, stalled, status_line
from vstmon.service.metrics import Metrics, cuda_memory
from vstmon.service.sdnotify import SystemdNotifier
from vstmon.service.streams import LocalStreams, StreamSnapshot
from vstmon.types import ClipResult, ResetReason, SourceState
from vstmon.wire.protocol import (
    ControlCommand,
    DaemonStatusBody,
    LabelMessage,
    Message,
    ResetMessage,
    ResetReply,
    StatusCommand,
    StatusReply,
    StreamEntry,
    StreamStatusBody,
)

__all__ = ["Daemon"]

_log = get_logger("daemon")

_RESTART_SECTIONS = (
    "model",
    "inference",
    "publish",
    "metrics",
    "view",
    "workers",
)  # a reload cannot change these
_STREAM_SECTIONS = ("clip", "reset", "smoothing", "subjects", "ingest")  # a change restarts every stream


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
        self.host: Any = None  # LocalStreams or ProcessStreams
        self.publisher: Any = None
        self.control: Any = None
        self.pool: EnginePool | None = None
        self.metrics = Metrics()
        self.notifier = SystemdNotifier()
        self._tick_thread: threading.Thread | None = None
        self.view: Any = None  # the live page's ViewServer (view.port set)
        self.latency = LatencyWindow()  # clip ready -> label published
        self.batch_sizes: dict[int, int] = {}
        self._throughput = Throughput()
        self._drop_log = DropLog(config.service.drop_log_s)

    @property
    def streams(self) -> dict[str, Any]:
        """The streams a ``LocalStreams`` host holds (``workers.processes: 0``), by name."""
        return self.host.streams if isinstance(self.host, LocalStreams) else {}

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
        for name in self.host.names:
            self.host.start(name)

    def _start(self) -> None:
        from vstmon.wire.control import ControlServer
        from vstmon.wire.publish import Publisher

        cfg = self.config
        if cfg.inference.threads:
            import torch

            torch.set_num_threads(cfg.inference.threads)
        loaded = self._loaded or load_model_and_labels(cfg)
        self._loaded = loaded
        self.publisher = Publisher(cfg.publish)
        self.publisher.add_tap(self._on_message)
        if cfg.view.port is not None:
            from vstmon.view.server import start_view

            self.view = start_view(
                cfg.view, self.publisher, self.daemon_status, self._picture, self._picture_size
            )
        processes = worker_processes(cfg.workers, len(cfg.streams))
        release = None
        if processes:
            from vstmon.service.workers import ProcessStreams

            self.host = ProcessStreams(processes)
            release = self.host.released
        self.pool = EnginePool.from_config(
            cfg, loaded.model, self._on_result, on_batch=self._on_batch, on_release=release
        )
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
        if processes:
            self.host.begin(cfg, loaded, self.pool, self.publisher.publish, self._publish_stream_status, self)
        else:
            self.host = LocalStreams(
                cfg,
                loaded,
                sink_for=self.pool.assign,
                publish=self.publisher.publish,
                on_change=self._publish_stream_status,
                decoder_threads=1 if len(cfg.streams) > 1 else None,
            )
        for stream_cfg in cfg.streams:
            self.host.add(stream_cfg)
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
            streams=len(cfg.streams),
            devices=self.pool.devices,
            worker_processes=processes,
            model=loaded.model_id,
            endpoints=self.publisher.endpoints,
            control=self.control.bound_endpoint if self.control is not None else None,
        )

    def _picture(self, name: str) -> tuple[np.ndarray, tuple[int, int]] | None:
        """For the live page: the stream's newest picture (RGB, as the model sees it) and its source's size."""
        return self.host.picture(name) if self.host is not None else None

    def _picture_size(self, name: str) -> tuple[int, tuple[int, int]] | None:
        """For the live page: the picture's size in pixels and the source's picture size (width, height)."""
        if self.host is None or name not in self.host.names:
            return None
        return self.config.clip.size_px, self.host.snapshot(name).frame_wh

    # -- callbacks (other threads) ----------------------------------------------------------------------------
    def _on_result(self, result: ClipResult) -> None:
        self.host.deliver(result)

    def _on_batch(self, device: str, size: int, seconds: float) -> None:
        self.batch_sizes[size] = self.batch_sizes.get(size, 0) + 1
        self.metrics.observe_batch(device, size, seconds)

    def _on_message(self, topic: str, message: Message) -> None:
        """Every message sent (a publisher tap, under its lock: quick): the figures that come from messages."""
        if isinstance(message, LabelMessage):
            latency_s = message.latency_ms / 1000.0
            self.latency.add(latency_s)
            self.metrics.observe_latency(message.stream, latency_s)
        elif (
            isinstance(message, ResetMessage)
            and message.box is None  # the stream's own, not a person's (per-subject mode)
            and message.reason not in (ResetReason.START, ResetReason.WORKER_RESTART)
        ):
            self.metrics.count_reset(message.stream, message.reason)

    def _handle_control(self, command: ControlCommand) -> ResetReply | StatusReply:
        if isinstance(command, StatusCommand):
            return StatusReply(streams=self._streams_status())
        segment = self.host.reset(command.stream, command.subject)
        engine = self.pool.engine_of(command.stream) if self.pool is not None else None
        if engine is not None:
            engine.discard(command.stream, segment)
        return ResetReply(segment=segment)

    # -- status -----------------------------------------------------------------------------------------------
    def _stream_status(self, snap: StreamSnapshot) -> StreamStatusBody:
        engine = self.pool.engine_of(snap.name) if self.pool is not None else None
        return StreamStatusBody(
            state=snap.state,
            reason=snap.reason,
            fps_in=snap.fps_in,
            frames_dropped=snap.frames_dropped,
            clips_dropped=engine.batcher.clips_dropped_for_stream(snap.name) if engine is not None else 0,
            reconnects=snap.reconnects,
            clips=snap.clips,
            people=snap.people,
            subject=snap.subject,
            subjects=snap.subjects,
            waiting=snap.waiting,
            inference=_server_state(engine),
        )

    def _publish_stream_status(self, name: str, snap: StreamSnapshot | None = None) -> None:
        if self.publisher is None or self.host is None:
            return
        try:
            snap = snap or self.host.snapshot(name)
        except KeyError:  # removed meanwhile
            return
        status = self._stream_status(snap)
        self.publisher.publish(f"status.{name}", status)
        self.metrics.update_stream(name, status, frames_read=snap.frames_read, segment=snap.segment)

    def _streams_status(self) -> dict[str, StreamEntry]:
        out: dict[str, StreamEntry] = {}
        for name in self.host.names if self.host is not None else []:
            snap = self.host.snapshot(name)
            engine = self.pool.engine_of(name) if self.pool is not None else None
            out[name] = StreamEntry(
                **dict(self._stream_status(snap)),
                segment=snap.segment,
                device=engine.name if engine is not None else None,
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
        snaps = [self.host.snapshot(name) for name in self.host.names] if self.host is not None else []
        for snap in snaps:
            self._publish_stream_status(snap.name, snap)
        if self.publisher is not None:
            self.publisher.publish("status", self.daemon_status())
        labels = sum(snap.clips for snap in snaps)
        engines = self.pool.engines if self.pool is not None else []
        dropped = sum(sum(e.batcher.dropped_by_stream().values()) for e in engines)
        self._throughput.sample(labels, dropped)
        labels_per_s, dropped_recently = self._throughput.rates()
        up = sum(snap.state == SourceState.STREAMING for snap in snaps)
        self.notifier.notify(
            "STATUS=" + status_line(up, len(snaps), labels_per_s, dropped_recently, problems)
        )
        self._drop_log.update(dropped_recently, labels_per_s, self._throughput.window_s)
        for engine in engines:
            busy, since_s = engine.progress()
            memory = cuda_memory(engine.name)
            self.metrics.update_engine(engine.name, engine.batcher.pending_count(), busy, since_s, memory)
            if engine.backend.remote:
                self.metrics.update_server(engine.name, engine.backend.stats())

    def health_problems(self) -> list[str]:
        """Dead stage threads, and stages with work that make no progress (``service.progress_timeout_s``).

        The watchdog is pinged only while this is empty, so a daemon whose pipeline has silently lost a thread
        (or whose engine is wedged in a device call) is restarted by systemd instead of living on without
        publishing. A worker process that died is not a problem here: it is started again.
        """
        if self.stop_requested or self.pool is None:
            return []
        timeout_s = self.config.service.progress_timeout_s
        problems = [f"engine {e.name} thread died" for e in self.pool.engines if not e.alive]
        if self.control is not None and not self.control.alive:
            problems.append("control thread died")
        if self.host is not None and self._sources_started:
            problems += self.host.problems(timeout_s)
        return problems + stalled(self.pool.engines, timeout_s)

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
        """Stop everything within one deadline (``service.shutdown_timeout_s`` unless ``timeout_s``): the streams
        (sources, workers, worker processes), engines, control, tick; then each stream's final ``segment``
        summaries and a last ``status`` (state ``stopped``) before the publisher closes. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        deadline_s = time.monotonic() + (
            self.config.service.shutdown_timeout_s if timeout_s is None else timeout_s
        )
        self.request_stop()
        if self.view is not None:  # the page first: it reads pictures from the streams about to stop
            self.view.stop(_left_s(deadline_s))
        if self._tick_thread is not None:  # first, so that no ping or STATUS= line follows STOPPING=1
            self._tick_thread.join(_left_s(deadline_s))
        self.notifier.notify("STOPPING=1")
        names = list(self.host.names) if self.host is not None else []
        if self.host is not None:
            self.host.halt(names, deadline_s)
        if self.pool is not None:
            self.pool.stop()
            if not self.pool.join(_left_s(deadline_s)):
                _log.error("engine did not stop in time")
        if self.control is not None:
            self.control.close(_left_s(deadline_s))
        if self.publisher is not None:
            for name in names:
                _call(lambda n=name: self._close_stream(n), "final messages", name)
            if self._running:
                _call(lambda: self.publisher.publish("status", self.daemon_status("stopped")), "status", "-")
        if self.host is not None and hasattr(self.host, "shutdown"):
            self.host.shutdown(deadline_s)
        if self.publisher is not None:
            self.publisher.close()
        if self.pool is not None:
            self.pool.close()
        self.metrics.stop_server()
        self.notifier.close()
        if self._running:  # a failed start is reported by the caller, not as a stop
            _log.info("vstmon stopped")

    def _close_stream(self, name: str) -> None:
        """A halted stream's last messages: its people's and its own final ``segment`` summaries, then its
        ``status`` with state ``stopped``; its clips still in the engine are never published."""
        last = self.host.close(name)
        engine = self.pool.engine_of(name) if self.pool is not None else None
        if engine is not None:
            engine.forget_stream(name)
        if last is not None:
            self._publish_stream_status(name, last)

    # -- reload -----------------------------------------------------------------------------------------------
    def reload(self, config: Config) -> list[str]:
        """Apply a new, validated config without a restart; returns the sections that need one (not applied).

        Streams are compared one by one: removed ones are stopped (final ``segment`` summary, ``status``
        stopped), added ones started, changed ones restarted (new segment numbering); the others keep running
        untouched, with no gap in their ``seq`` and no ``reset``. A change to ``clip``, ``reset``,
        ``smoothing``, ``subjects`` or ``ingest`` changes every stream. ``model``, ``inference``, ``publish``,
        ``metrics``, ``view`` and ``workers`` cannot change under a running engine, socket or process: they are
        reported, not half-applied.
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
        self.host.config = self.config
        before = {s.name: s for s in old.streams}
        after = {s.name: s for s in config.streams}
        gone = [n for n in before if n not in after or every_stream or before[n] != after[n]]
        deadline_s = time.monotonic() + self.config.service.shutdown_timeout_s
        gone = [n for n in gone if n in self.host.names]
        self.host.halt(gone, deadline_s)
        for name in gone:
            _call(lambda n=name: self._close_stream(n), "final messages", name)
            if name not in after:
                self.metrics.remove_stream(name)
        started = [n for n in after if n not in self.host.names]
        for name in started:
            self.host.add(after[name])
            if self._sources_started:
                self.host.start(name)
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
