"""The metrics as a scraper sees them: a real ``/metrics`` endpoint on 127.0.0.1 (an OS-chosen port) read with
urllib and parsed with prometheus_client's own text parser."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vstmon.errors import EX_CONFIG, ConfigKeyError, VstmonError
from vstmon.service.metrics import CudaMemory, Metrics, cuda_memory

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    served = Metrics()
    served.start_server("127.0.0.1", 0)
    yield served
    served.stop_server()


def scrape(metrics: Metrics) -> Series:
    """Every sample on the endpoint: (name, labels) -> value."""
    assert metrics.port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=30) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(series: Series, name: str, **labels: str) -> float:
    return series[(name, frozenset(labels.items()))]


def names(series: Series) -> set[str]:
    return {name for name, _ in series}


def test_port_zero_serves_on_the_port_the_os_picked() -> None:
    first, second = Metrics(), Metrics()
    try:
        port = first.start_server("127.0.0.1", 0)
        assert port == first.port and port > 0
        assert second.start_server("127.0.0.1", 0) != port
        assert "process_open_fds" in names(scrape(first))
    finally:
        first.stop_server()
        second.stop_server()


def test_stop_server_closes_the_port(metrics: Metrics) -> None:
    port = metrics.port
    assert port is not None
    metrics.stop_server()
    assert metrics.port is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=10).close()


def test_a_port_in_use_is_a_config_error_naming_the_key(closed_port: int) -> None:
    with pytest.raises(
        ConfigKeyError, match=rf"^metrics\.port: cannot listen on 127\.0\.0\.1:{closed_port}: "
    ) as caught:
        Metrics().start_server("127.0.0.1", closed_port)
    assert (
        caught.value.key == "metrics.port" and caught.value.exit_code == EX_CONFIG
    )  # the daemon adds the line


def test_starting_twice_is_refused(metrics: Metrics) -> None:
    with pytest.raises(VstmonError, match="already serving"):
        metrics.start_server("127.0.0.1", 0)


def test_process_metrics_are_served(metrics: Metrics) -> None:
    series = scrape(metrics)
    assert value(series, "process_resident_memory_bytes") > 10 * 2**20  # a Python process with numpy loaded
    assert value(series, "process_cpu_seconds_total") > 0
    # at least stdin/stdout/stderr and the server's listening socket
    assert value(series, "process_open_fds") >= 4
    assert value(series, "process_max_fds") >= value(series, "process_open_fds")
    assert value(series, "process_start_time_seconds") > 0


def test_engine_gauges_after_an_update(metrics: Metrics) -> None:
    memory = CudaMemory(allocated_bytes=3 * 2**30, reserved_bytes=4 * 2**30, peak_allocated_bytes=5 * 2**30)
    metrics.update_engine("cuda:0", queue_depth=3, busy=True, seconds_since_progress=1.5, memory=memory)
    series = scrape(metrics)
    assert value(series, "vstmon_engine_pending_clips", device="cuda:0") == 3
    assert value(series, "vstmon_engine_busy", device="cuda:0") == 1
    assert value(series, "vstmon_engine_last_batch_age_seconds", device="cuda:0") == 1.5
    assert value(series, "vstmon_device_memory_allocated_bytes", device="cuda:0") == 3 * 2**30
    assert value(series, "vstmon_device_memory_reserved_bytes", device="cuda:0") == 4 * 2**30
    assert value(series, "vstmon_device_memory_peak_allocated_bytes", device="cuda:0") == 5 * 2**30

    metrics.update_engine("cuda:0", queue_depth=0, busy=False, seconds_since_progress=0.25, memory=memory)
    series = scrape(metrics)
    assert value(series, "vstmon_engine_pending_clips", device="cuda:0") == 0
    assert value(series, "vstmon_engine_busy", device="cuda:0") == 0
    assert value(series, "vstmon_engine_last_batch_age_seconds", device="cuda:0") == 0.25


def test_a_cpu_engine_has_no_device_memory_series(metrics: Metrics) -> None:
    metrics.update_engine("cpu", queue_depth=2, busy=False, seconds_since_progress=0.5, memory=None)
    series = scrape(metrics)
    assert value(series, "vstmon_engine_pending_clips", device="cpu") == 2
    assert not {name for name in names(series) if name.startswith("vstmon_device_memory")}


def test_subject_gauges_after_an_update(metrics: Metrics) -> None:
    metrics.update_subjects("door", segment=4, people=5, subjects=3, waiting=2)
    series = scrape(metrics)
    assert value(series, "vstmon_stream_segment", stream="door") == 4
    assert value(series, "vstmon_stream_people", stream="door") == 5
    assert value(series, "vstmon_stream_subjects", stream="door") == 3
    assert value(series, "vstmon_stream_subjects_waiting", stream="door") == 2


def test_an_unset_optional_gauge_has_no_series(metrics: Metrics) -> None:
    metrics.update_subjects("hall", segment=1, people=2, subjects=None, waiting=None)
    series = scrape(metrics)
    assert value(series, "vstmon_stream_segment", stream="hall") == 1
    assert value(series, "vstmon_stream_people", stream="hall") == 2
    assert "vstmon_stream_subjects" not in names(series)
    assert "vstmon_stream_subjects_waiting" not in names(series)


def test_a_gauge_set_to_none_later_loses_its_series(metrics: Metrics) -> None:
    memory = CudaMemory(allocated_bytes=1, reserved_bytes=2, peak_allocated_bytes=3)
    metrics.update_engine("cuda:1", queue_depth=0, busy=False, seconds_since_progress=0.0, memory=memory)
    metrics.update_subjects("door", segment=1, people=2, subjects=2, waiting=0)
    metrics.update_engine("cuda:1", queue_depth=0, busy=False, seconds_since_progress=0.0, memory=None)
    metrics.update_subjects("door", segment=2, people=None, subjects=None, waiting=None)
    series = scrape(metrics)
    assert value(series, "vstmon_stream_segment", stream="door") == 2
    assert not {n for n in names(series) if n.startswith(("vstmon_device_memory", "vstmon_stream_people"))}
    assert not {n for n in names(series) if n.startswith("vstmon_stream_subjects")}


def test_stream_counters_are_served(metrics: Metrics) -> None:
    metrics.update_stream("cam", "streaming", 25.0, 100, 3, 7, 1, 2)
    metrics.update_stream("cam", "reconnecting", 0.0, 150, 4, 9, 1, 3)
    metrics.count_reset("cam", "scene_change")
    series = scrape(metrics)
    assert value(series, "vstmon_frames_read_total", stream="cam") == 150
    assert value(series, "vstmon_frames_dropped_total", stream="cam") == 4
    assert value(series, "vstmon_clips_total", stream="cam") == 9
    assert value(series, "vstmon_clips_dropped_total", stream="cam") == 1
    assert value(series, "vstmon_reconnects_total", stream="cam") == 3
    assert value(series, "vstmon_resets_total", stream="cam", reason="scene_change") == 1
    assert value(series, "vstmon_fps_in", stream="cam") == 0
    assert value(series, "vstmon_stream_state", stream="cam", state="reconnecting") == 1
    assert value(series, "vstmon_stream_state", stream="cam", state="streaming") == 0


def test_remove_stream_drops_its_series_and_keeps_the_others(metrics: Metrics) -> None:
    for stream in ("gone", "kept"):
        metrics.update_stream(stream, "streaming", 25.0, 100, 3, 7, 1, 2)
        metrics.update_subjects(stream, segment=3, people=1, subjects=1, waiting=0)
        metrics.count_reset(stream, "control")
        metrics.observe_latency(stream, 0.2)
    metrics.remove_stream("gone")
    series = scrape(metrics)
    assert not [key for key in series if ("stream", "gone") in key[1]]
    assert value(series, "vstmon_frames_read_total", stream="kept") == 100
    assert value(series, "vstmon_stream_segment", stream="kept") == 3
    assert value(series, "vstmon_resets_total", stream="kept", reason="control") == 1
    assert value(series, "vstmon_latency_seconds_count", stream="kept") == 1
    # a stream of the same name added back starts its counters from its new totals
    metrics.update_stream("gone", "streaming", 25.0, 40, 0, 1, 0, 0)
    assert value(scrape(metrics), "vstmon_frames_read_total", stream="gone") == 40


def test_cuda_memory_is_none_off_cuda() -> None:
    assert cuda_memory("cpu") is None


@pytest.mark.gpu
def test_cuda_memory_reads_the_allocator() -> None:
    import torch

    device = "cuda:0"
    torch.cuda.reset_peak_memory_stats(device)
    before = cuda_memory(device)
    assert before is not None
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)
    during = cuda_memory(device)
    assert during is not None
    assert during["allocated_bytes"] >= before["allocated_bytes"] + 64 * 2**20
    assert during["reserved_bytes"] >= during["allocated_bytes"]
    assert during["peak_allocated_bytes"] >= during["allocated_bytes"]
    del block
    after = cuda_memory(device)
    assert after is not None
    assert after["allocated_bytes"] < during["allocated_bytes"]
    assert after["peak_allocated_bytes"] >= during["allocated_bytes"]  # the peak outlives the block
