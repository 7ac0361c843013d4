"""Prometheus metrics of the daemon, in their own ``CollectorRegistry`` (nothing global).

Counters that the pipeline stages already keep (frames read, drops, reconnects) are copied into the metrics on
every heartbeat by ``Metrics.update_stream`` rather than incremented on the hot path; the engine's batch
sizes and inference seconds are observed per batch.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import start_http_server

from vstmon.errors import VstmonError
from vstmon.types import StreamState

__all__ = ["Metrics"]

_STATES = [state.value for state in StreamState]


class _MonotonicCounter:
    """Feeds an absolute total (as the stages keep it) into a prometheus Counter as increments."""

    __slots__ = ("counter", "last")

    def __init__(self, counter: Any) -> None:
        self.counter = counter
        self.last = 0

    def set_total(self, total: int) -> None:
        if total > self.last:
            self.counter.inc(total - self.last)
        self.last = max(self.last, total)


class Metrics:
    """All vstmon metrics; ``start_server(host, port)`` serves them at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.frames_read = Counter(
            "vstmon_frames_read", "frames read from the source", ["stream"], registry=r
        )
        self.frames_dropped = Counter(
            "vstmon_frames_dropped",
            "frames overwritten before use (ring buffer full)",
            ["stream"],
            registry=r,
        )
        self.clips = Counter("vstmon_clips", "clips classified and published", ["stream"], registry=r)
        self.clips_dropped = Counter(
            "vstmon_clips_dropped", "clips replaced in the engine's pending slot", ["stream"], registry=r
        )
        self.reconnects = Counter("vstmon_reconnects", "source reconnects", ["stream"], registry=r)
        self.resets = Counter("vstmon_resets", "segment resets", ["stream", "reason"], registry=r)
        self.fps_in = Gauge("vstmon_fps_in", "frames per second read from the source", ["stream"], registry=r)
        self.stream_state = Gauge(
            "vstmon_stream_state", "1 for the stream's current state", ["stream", "state"], registry=r
        )
        self.batch_size = Histogram(
            "vstmon_batch_size",
            "clips per inference batch",
            ["device"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256),
            registry=r,
        )
        self.inference_seconds = Histogram(
            "vstmon_inference_seconds",
            "seconds per inference batch (copy, normalise, forward, softmax)",
            ["device"],
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.latency_seconds = Histogram(
            "vstmon_latency_seconds",
            "last frame captured -> label published",
            ["stream"],
            buckets=(0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self._totals: dict[tuple[str, str], _MonotonicCounter] = {}
        self._lock = threading.Lock()
        self._server: Any = None
        self._server_thread: threading.Thread | None = None

    def _total(self, name: str, stream: str) -> _MonotonicCounter:
        key = (name, stream)
        total = self._totals.get(key)
        if total is None:
            total = _MonotonicCounter(getattr(self, name).labels(stream=stream))
            self._totals[key] = total
        return total

    def update_stream(
        self,
        stream: str,
        state: str,
        fps_in: float,
        frames_read: int,
        frames_dropped: int,
        clips: int,
        clips_dropped: int,
        reconnects: int,
    ) -> None:
        """Copy a stream's running totals into the metrics (called on every heartbeat)."""
        with self._lock:
            self._total("frames_read", stream).set_total(frames_read)
            self._total("frames_dropped", stream).set_total(frames_dropped)
            self._total("clips", stream).set_total(clips)
            self._total("clips_dropped", stream).set_total(clips_dropped)
            self._total("reconnects", stream).set_total(reconnects)
            self.fps_in.labels(stream=stream).set(fps_in)
            for name in _STATES:
                self.stream_state.labels(stream=stream, state=name).set(1.0 if name == str(state) else 0.0)

    def observe_batch(self, device: str, size: int, seconds: float) -> None:
        self.batch_size.labels(device=device).observe(size)
        self.inference_seconds.labels(device=device).observe(seconds)

    def observe_latency(self, stream: str, seconds: float) -> None:
        self.latency_seconds.labels(stream=stream).observe(seconds)

    def count_reset(self, stream: str, reason: str) -> None:
        self.resets.labels(stream=stream, reason=reason).inc()

    def render(self) -> bytes:
        """The text exposition format (what ``/metrics`` serves)."""
        return generate_latest(self.registry)

    def start_server(self, host: str, port: int) -> None:
        """Serve ``/metrics`` on ``host:port`` (a daemon thread owned by prometheus_client; ``stop_server``)."""
        try:
            self._server, self._server_thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            raise VstmonError(f"metrics.port: cannot listen on {host}:{port}: {error.strerror}") from None

    def stop_server(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._server_thread is not None:
                self._server_thread.join(5)
            self._server = None
            self._server_thread = None
