"""The latency window the daemon keeps (clip ready -> label published)."""

from __future__ import annotations

import math

from vstmon.service.health import LatencyWindow


def test_percentiles_of_everything_and_since_a_count() -> None:
    window = LatencyWindow(samples=8)
    assert math.isnan(window.percentiles_s()["p50"])
    for value in (10.0, 10.0, 1.0, 2.0, 3.0):  # a slow warm-up, then steady
        window.add(value)
    assert window.percentiles_s()["p99"] > 9.0
    after_warm_up = window.percentiles_s(since=2)
    assert after_warm_up["count"] == 5
    assert after_warm_up["p50"] == 2.0
    assert after_warm_up["p99"] < 3.0 + 1e-9
    assert math.isnan(window.percentiles_s(since=5)["p50"])  # nothing new


def test_the_ring_keeps_the_newest_samples() -> None:
    window = LatencyWindow(samples=4)
    for value in range(10):
        window.add(float(value))
    assert window.percentiles_s()["p50"] == 7.5  # 6, 7, 8, 9
    assert window.percentiles_s(since=0)["count"] == 10
    assert window.percentiles_s(since=8)["p50"] == 8.5  # 8, 9
