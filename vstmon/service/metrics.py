"""Prometheus metrics of the daemon, in their own ``CollectorRegistry`` (nothing global).

Counters that the pipeline stages already keep (frames read, drops, reconnects) are copied into the metrics on
every heartbeat by ``Metrics.update_stream`` (from the stream's ``status.<stream>`` model, the numbers the
subscribers see) rather than incremented on the hot path, with each stream's segment and subject counts; so are
the engine's gauges (``update_engine``: queue depth, busy, age of its last batch, CUDA memory). Only the engine's batch sizes and inference seconds are observed per batch. The
registry also holds prometheus_client's ``process_*`` metrics (resident memory, CPU seconds, open fds; Linux).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, TypedDict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import start_http_server

from vstmon.errors import ConfigKeyError, VstmonError
from vstmon.types import SourceState
from vstmon.wire.protocol import StreamStatusBody

__all__ = ["CudaMemory", "Metrics", "cuda_memory"]

_STATES = [state.value for state in SourceState]


class CudaMemory(TypedDict):
    """A CUDA device's memory as PyTorch's caching allocator sees it (``cuda_memory``)."""

    allocated_bytes: int  # held by live tensors (torch.cuda.memory_allocated)
    reserved_bytes: int  # held by the caching allocator, allocated or not (torch.cuda.memory_reserved)
    peak_allocated_bytes: int  # the most ever allocated at once since start (torch.cuda.max_memory_allocated)


def cuda_memory(device: str) -> CudaMemory | None:
    """The memory of CUDA device ``device`` (``"cuda"``, ``"cuda:1"``); None for any other device or without CUDA.

    Cheap (reads the allocator's counters, no synchronisation): fit for every heartbeat.
    """
    if not str(device).startswith("cuda"):
        return None
    import torch  # here, so that importing the metrics does not import torch

    if not torch.cuda.is_available():
        return None
    dev = torch.device(device)
    return CudaMemory(
        allocated_bytes=int(torch.cuda.memory_allocated(dev)),
        reserved_bytes=int(torch.cuda.memory_reserved(dev)),
        peak_allocated_bytes=int(torch.cuda.max_memory_allocated(dev)),
    )


def _remove_series(metric: Any, *labels: str) -> None:
    """Remove one labelled series of ``metric`` if it exists."""
    # a series never set: older prometheus_client versions raise KeyError, newer ones ignore it
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


def _set_or_remove(gauge: Gauge, label: str, value: float | None) -> None:
    """Set the series of ``label`` to ``value``, or remove it when ``value`` is None: no series rather than a
    stale or made-up value."""
    if value is None:
        _remove_series(gauge, label)
    else:
        gauge.labels(label).set(value)


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
        # process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds, ... (read from /proc)
        ProcessCollector(registry=r)
        self.engine_pending_clips = Gauge(
            "vstmon_engine_pending_clips",
            "clips waiting in the engine's pending slots (queue depth)",
            ["device"],
            registry=r,
        )
        self.engine_busy = Gauge(
            "vstmon_engine_busy", "1 while the engine runs a batch, 0 while it waits", ["device"], registry=r
        )
        self.engine_last_batch_age_seconds = Gauge(
            "vstmon_engine_last_batch_age_seconds",
            "seconds since the engine last finished a batch (or started, before its first)",
            ["device"],
            registry=r,
        )
        self.inference_server_up = Gauge(
            "vstmon_inference_server_up",
            "1 while the Triton server answers, 0 while it does not (inference.backend: triton)",
            ["device"],
            registry=r,
        )
        self.inference_server_errors = Gauge(
            "vstmon_inference_server_errors",
            "requests to the Triton server that failed (timeouts, refused connections, server errors), in total",
            ["device"],
            registry=r,
        )
        self.inference_server_dropped_clips = Gauge(
            "vstmon_inference_server_dropped_clips",
            "clips dropped because the Triton server did not answer or was down, in total",
            ["device"],
            registry=r,
        )
        self.device_memory_allocated_bytes = Gauge(
            "vstmon_device_memory_allocated_bytes",
            "CUDA memory held by live tensors (torch.cuda.memory_allocated)",
            ["device"],
            registry=r,
        )
        self.device_memory_reserved_bytes = Gauge(
            "vstmon_device_memory_reserved_bytes",
            "CUDA memory held by PyTorch's caching allocator (torch.cuda.memory_reserved)",
            ["device"],
            registry=r,
        )
        self.device_memory_peak_allocated_bytes = Gauge(
            "vstmon_device_memory_peak_allocated_bytes",
            "most CUDA memory held by live tensors at once since start (torch.cuda.max_memory_allocated)",
            ["device"],
            registry=r,
        )
        self.stream_segment = Gauge(
            "vstmon_stream_segment", "the stream's current segment number", ["stream"], registry=r
        )
        self.stream_people = Gauge(
            "vstmon_stream_people", "people in view (person detector on)", ["stream"], registry=r
        )
        self.stream_subjects = Gauge(
            "vstmon_stream_subjects",
            "people with clips of their own (per-subject mode)",
            ["stream"],
            registry=r,
        )
        self.stream_subjects_waiting = Gauge(
            "vstmon_stream_subjects_waiting",
            "people in view waiting for a subject slot (per-subject mode)",
            ["stream"],
            registry=r,
        )
        self._totals: dict[tuple[str, str], _MonotonicCounter] = {}
        self._reset_reasons: dict[str, set[str]] = {}  # stream -> reasons counted (for remove_stream)
        self._lock = threading.Lock()
        self._server: Any = None
        self._server_thread: threading.Thread | None = None
        # the port /metrics is served on (the OS's pick for port 0); None while not serving
        self.port: int | None = None

    def _total(self, name: str, stream: str) -> _MonotonicCounter:
        key = (name, stream)
        total = self._totals.get(key)
        if total is None:
            total = _MonotonicCounter(getattr(self, name).labels(stream=stream))
            self._totals[key] = total
        return total

    def update_stream(
        self, stream: str, status: StreamStatusBody, frames_read: int, segment: int | None
    ) -> None:
        """Copy a stream's running totals and gauges from its ``status`` (called on every heartbeat), with the
        frames read from its source and its current ``segment`` (None: the stream is not running). A gauge whose
        value is None (``people`` without a person detector, ``subjects`` and ``waiting`` outside per-subject
        mode) loses its series rather than keep a stale value."""
        with self._lock:
            self._total("frames_read", stream).set_total(frames_read)
            self._total("frames_dropped", stream).set_total(status.frames_dropped)
            self._total("clips", stream).set_total(status.clips)
            self._total("clips_dropped", stream).set_total(status.clips_dropped)
            self._total("reconnects", stream).set_total(status.reconnects)
            self.fps_in.labels(stream=stream).set(status.fps_in)
            for name in _STATES:
                self.stream_state.labels(stream=stream, state=name).set(1.0 if name == status.state else 0.0)
            _set_or_remove(self.stream_segment, stream, segment)
            _set_or_remove(self.stream_people, stream, status.people)
            _set_or_remove(
                self.stream_subjects, stream, None if status.subjects is None else len(status.subjects)
            )
            _set_or_remove(self.stream_subjects_waiting, stream, status.waiting)

    def update_engine(
        self,
        device: str,
        queue_depth: int,
        busy: bool,
        seconds_since_progress: float,
        memory: CudaMemory | None,
    ) -> None:
        """Set an engine's gauges (called on every heartbeat): ``queue_depth`` pending clips, ``busy`` while a
        batch runs, ``seconds_since_progress`` since it last finished a batch, and ``memory`` from
        ``cuda_memory(device)`` (None on CPU: no device memory series)."""
        with self._lock:
            self.engine_pending_clips.labels(device=device).set(queue_depth)
            self.engine_busy.labels(device=device).set(1.0 if busy else 0.0)
            self.engine_last_batch_age_seconds.labels(device=device).set(seconds_since_progress)
            for gauge, key in (
                (self.device_memory_allocated_bytes, "allocated_bytes"),
                (self.device_memory_reserved_bytes, "reserved_bytes"),
                (self.device_memory_peak_allocated_bytes, "peak_allocated_bytes"),
            ):
                _set_or_remove(gauge, device, memory[key] if memory is not None else None)

    def update_server(self, device: str, remote: dict[str, Any]) -> None:
        """Set a remote engine's server gauges from its runner's ``stats()`` (``triton_runner``)."""
        with self._lock:
            self.inference_server_up.labels(device=device).set(1.0 if remote.get("up") else 0.0)
            self.inference_server_errors.labels(device=device).set(remote.get("request_errors", 0))
            self.inference_server_dropped_clips.labels(device=device).set(
                remote.get("clips_dropped_server_down", 0)
            )

    def remove_stream(self, stream: str) -> None:
        """Drop every series of ``stream`` (a stream removed on reload), so none lingers with its last value.
        Call it once the stream's worker has stopped and its last results are in: a later update or observation
        for the stream creates its series again."""
        with self._lock:
            for metric in (
                self.frames_read,
                self.frames_dropped,
                self.clips,
                self.clips_dropped,
                self.reconnects,
                self.fps_in,
                self.latency_seconds,
                self.stream_segment,
                self.stream_people,
                self.stream_subjects,
                self.stream_subjects_waiting,
            ):
                _remove_series(metric, stream)
            for name in _STATES:
                _remove_series(self.stream_state, stream, name)
            for reason in self._reset_reasons.pop(stream, ()):
                _remove_series(self.resets, stream, reason)
            for key in [key for key in self._totals if key[1] == stream]:
                del self._totals[key]

    def observe_batch(self, device: str, size: int, seconds: float) -> None:
        self.batch_size.labels(device=device).observe(size)
        self.inference_seconds.labels(device=device).observe(seconds)

    def observe_latency(self, stream: str, seconds: float) -> None:
        self.latency_seconds.labels(stream=stream).observe(seconds)

    def count_reset(self, stream: str, reason: str) -> None:
        with self._lock:
            self._reset_reasons.setdefault(stream, set()).add(reason)
            self.resets.labels(stream=stream, reason=reason).inc()

    def render(self) -> bytes:
        """The text exposition format (what ``/metrics`` serves)."""
        return generate_latest(self.registry)

    def start_server(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` (a daemon thread owned by prometheus_client; ``stop_server``).
        ``port`` 0 lets the OS pick a free port. Returns the bound port (also in ``self.port``)."""
        if self._server is not None:
            raise VstmonError(f"metrics: already serving on port {self.port}; stop_server first")
        try:
            self._server, self._server_thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            raise ConfigKeyError(
                "metrics.port", f"cannot listen on {host}:{port}: {error.strerror}"
            ) from None
        self.port = int(self._server.server_address[1])
        return self.port

    def stop_server(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._server_thread is not None:
                self._server_thread.join(5)
            self._server = None
            self._server_thread = None
            self.port = None
