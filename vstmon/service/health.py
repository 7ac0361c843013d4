"""What the supervisor tells systemd and the log about the daemon's health (no threads of its own).

- ``stalled(engines, workers, timeout_s)``: the stages that have work and make no progress: an engine with clips
  pending or a batch running that has not finished a batch for ``timeout_s`` (a forward that never returns), a
  stream worker with frames waiting in its ring that has not handled one for ``timeout_s``. The daemon sends
  ``WATCHDOG=1`` only while this (and the list of dead threads) is empty, so systemd restarts a wedged daemon,
  not only a crashed one.
- ``Throughput``: labels published and clips dropped over the last minute, from the totals the daemon samples at
  each heartbeat (a fixed ring of samples).
- ``status_line``: the ``STATUS=`` a person reads in ``systemctl status``.
- ``DropLog``: sustained clip drops (the model cannot keep up: a CPU-only box running Swin-T drops most clips) are
  logged, at most once per ``interval_s``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from vstmon.log import get_logger

__all__ = ["DropLog", "Throughput", "stalled", "status_line"]

_log = get_logger("health")
_SAMPLES = 256  # heartbeats kept by Throughput (at least a minute at heartbeat_s >= 0.25)


class _Watched(Protocol):
    def progress(self) -> tuple[bool, float]: ...

    def stall_problem(self, since_s: float) -> str: ...


def stalled(stages: Iterable[_Watched], timeout_s: float) -> list[str]:
    """Stages that have work and have made no progress for ``timeout_s``, described for a log line."""
    problems = []
    for stage in stages:
        busy, since_s = stage.progress()
        if busy and since_s > timeout_s:
            problems.append(stage.stall_problem(since_s))
    return problems


class Throughput:
    """Labels published and clips dropped in the last ``window_s``, from totals sampled at each heartbeat."""

    def __init__(self, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self._samples = np.zeros((_SAMPLES, 3), np.float64)  # monotonic s, labels total, dropped total
        self._count = 0

    def sample(self, labels_total: int, dropped_total: int, now_s: float | None = None) -> None:
        now_s = time.monotonic() if now_s is None else now_s
        self._samples[self._count % _SAMPLES] = (now_s, labels_total, dropped_total)
        self._count += 1

    def rates(self) -> tuple[float, int]:
        """(labels per second, clips dropped) over the last ``window_s`` (or what has been sampled of it)."""
        n = min(self._count, _SAMPLES)
        if n < 2:
            return 0.0, 0
        newest = self._samples[(self._count - 1) % _SAMPLES]
        oldest = newest
        for back in range(2, n + 1):
            sample = self._samples[(self._count - back) % _SAMPLES]
            if newest[0] - sample[0] > self.window_s:
                break
            oldest = sample
        span_s = newest[0] - oldest[0]
        labels_per_s = (newest[1] - oldest[1]) / span_s if span_s > 0 else 0.0
        return float(labels_per_s), int(newest[2] - oldest[2])


def status_line(streams_up: int, streams: int, labels_per_s: float, dropped: int, problems: list[str]) -> str:
    """One line for ``STATUS=``: what is up, how fast, what is lost, what is wrong."""
    line = f"{streams_up}/{streams} streams up, {labels_per_s:.1f} labels/s, {dropped} clips dropped in the last minute"
    if problems:
        line += "; " + "; ".join(problems)
    return line


class DropLog:
    """Logs sustained clip drops, at most once per ``interval_s``."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last_s = -float("inf")
        self.lines = 0

    def update(
        self, dropped: int, labels_per_s: float, window_s: float, now_s: float | None = None, **fields: Any
    ) -> bool:
        """``dropped`` clips in the last ``window_s``: log it if there were any and the last line is old enough."""
        now_s = time.monotonic() if now_s is None else now_s
        if dropped <= 0 or now_s - self._last_s < self.interval_s:
            return False
        self._last_s = now_s
        self.lines += 1
        _log.warning(
            "clips dropped: the model cannot keep up (a newer clip of the same stream replaced a pending one); "
            "fewer labels reach subscribers. Lighten the load: a smaller model or clip, a longer clip.hop_s, "
            "fewer streams or subjects, or a GPU",
            dropped=dropped,
            window_s=window_s,
            labels_per_s=round(labels_per_s, 2),
            **fields,
        )
        return True


class LatencyWindow:
    """The last ``samples`` latencies (a fixed ring, any thread), and their p50 and p99."""

    def __init__(self, samples: int = 4096) -> None:
        self._values_s = np.zeros(samples, dtype=np.float64)
        self._count = 0
        self._lock = threading.Lock()

    def add(self, latency_s: float) -> None:
        with self._lock:
            self._values_s[self._count % len(self._values_s)] = latency_s
            self._count += 1

    def percentiles_s(self, since: int = 0) -> dict[str, float]:
        """p50 and p99 of the samples added after the first ``since`` (those the ring still holds)."""
        with self._lock:
            count = self._count
            n = min(count - since, len(self._values_s))
            if n <= 0:
                return {"count": count, "p50": float("nan"), "p99": float("nan")}
            last = (count - 1 - np.arange(n)) % len(self._values_s)
            values = self._values_s[last]
        return {
            "count": count,
            "p50": float(np.percentile(values, 50)),
            "p99": float(np.percentile(values, 99)),
        }
