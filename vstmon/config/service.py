"""How the daemon runs and is watched: the ``service`` (shutdown, watchdog), ``log``, ``metrics``
(Prometheus) and ``view`` (the live page) sections.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field

from vstmon.config.base import StrictModel

__all__ = ["LogConfig", "MetricsConfig", "ServiceConfig", "ViewConfig", "WorkersConfig", "worker_processes"]


class MetricsConfig(StrictModel):
    """The Prometheus endpoint."""

    port: int | None = Field(
        None, ge=1, le=65535, description="serve Prometheus /metrics on this port; null = off"
    )
    host: str = Field(
        "127.0.0.1", min_length=1, max_length=253, description="address the metrics server binds"
    )


class ViewConfig(StrictModel):
    """The operator's live page (read-only HTML, JSON and JPEG over HTTP); off unless ``port`` is set."""

    port: int | None = Field(
        None, ge=0, le=65535, description="serve the live page on this port; null = off (0 = any free port)"
    )
    host: str = Field(
        "127.0.0.1",
        min_length=1,
        max_length=253,
        description="address the page binds (keep it local, or proxy it)",
    )
    fps: float = Field(
        4.0, ge=0.2, le=30, description="frames/s: most a stream's picture is re-encoded for viewers"
    )
    jpeg_quality: int = Field(80, ge=20, le=100, description="JPEG quality of the pictures")
    timeline_s: float = Field(
        600.0, ge=10, le=86_400, description="seconds of labels kept per stream for the timeline"
    )
    max_clients: int = Field(16, ge=1, le=256, description="requests served at once; more get 503")


class ServiceConfig(StrictModel):
    """Running under a supervisor: shutdown, health and what systemd is told."""

    shutdown_timeout_s: float = Field(
        15.0,
        ge=1,
        le=600,
        description="seconds a stop may take in all (below the unit's TimeoutStopSec=20); then threads are left",
    )
    progress_timeout_s: float = Field(
        120.0,
        ge=1,
        le=86_400,
        description="seconds an engine with work (or a worker with frames) may go without progress before the "
        "watchdog pings stop (above the slowest batch: Swin-T on a CPU takes ~2 s a clip)",
    )
    drop_log_s: float = Field(
        60.0,
        ge=1,
        le=86_400,
        description="seconds between log lines about sustained clip drops (at most one)",
    )


class LogConfig(StrictModel):
    """Logging to stderr (the journal under systemd)."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="debug | info | warning | error"
    )
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto (console on a TTY, JSON otherwise) | json | console"
    )


class WorkersConfig(StrictModel):
    """Where the streams run: worker processes, each hosting a group of streams (decoding, detectors, the stream
    pipeline), with the engine, publisher and control in the daemon's own process. A worker that dies (a decoder
    crash) is started again and its streams resume with a reset; the other streams never notice."""

    processes: Annotated[int, Field(ge=0, le=256)] | Literal["auto"] = Field(
        "auto",
        description="worker processes; auto = one per stream up to the cores minus one (at least 1); 0 = every "
        "stream on threads inside the daemon's own process (no isolation)",
    )
    restart_delay_s: float = Field(
        0.5,
        ge=0,
        le=60,
        description="seconds before a worker process that died is started again (doubling while it keeps dying "
        "within a minute, up to 30 s)",
    )


def worker_processes(workers: WorkersConfig, streams: int, cores: int | None = None) -> int:
    """How many worker processes host ``streams`` streams (0: none, every stream in the daemon's process)."""
    if workers.processes != "auto":
        return min(int(workers.processes), streams)
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, min(streams, cores - 1)) if streams else 0
