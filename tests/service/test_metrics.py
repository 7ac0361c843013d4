"""The metrics as a scraper sees them: a real ``/metrics`` endpoint on 127.0.0.1 (an OS-chosen port) read with
urllib and parsed with prometheus_client's own text parser."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.wire import stream_status
from vstmon.errors import EX_CONFIG, ConfigKeyError, VstmonError
from vstmon.service.metrics import CudaMemory, Metrics, cuda_memory
from vstmon.wire.protocol import StreamStatusBody, SubjectSlot


def _slots(n: int) -> list[SubjectSlot]:
    return [SubjectSlot(subject=f"door-{i}", box=None, segment=1, clips=0) for i in range(n)]


def _counters(
    state: str, fps_in: float, dropped: int, clips: int, clips_dropped: int, reconnects: int
) -> StreamStatusBody:
    """A stream's status with these counters (the numbers the metrics copy)."""
    return stream_status(
        state=state,
        fps_in=fps_in,
        frames_dropped=dropped,
        clips=clips,
        clips_dropped=clips_dropped,
        reconnects=reconnects,
    )


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
    metrics.update_stream("door", stream_status(people=5, subjects=_slots(3), waiting=2), 0, segment=4)
    series = scrape(metrics)
    assert value(series, "vstmon_stream_segment", stream="door") == 4
    assert value(series, "vstmon_stream_people", stream="door") == 5
    assert value(series, "vstmon_stream_subjects", stream="door") == 3
    assert value(series, "vstmon_stream_subjects_waiting", stream="door") == 2


def test_an_unset_optional_gauge_has_no_series(metrics: Metrics) -> None:
    metrics.update_stream("hall", stream_status(people=2), 0, segment=1)
    series = scrape(metrics)
    assert value(series, "vstmon_stream_segment", stream="hall") == 1
    assert value(series, "vstmon_stream_people", stream="hall") == 2
    assert "vstmon_stream_subjects" not in names(series)
    assert "vstmon_stream_subjects_waiting" not in names(series)


def test_a_gauge_set_to_none_later_loses_its_series(metrics: Metrics) -> None:
    memory = CudaMemory(allocated_bytes=1, reserved_bytes=2, peak_allocated_bytes=3)
    metrics.update_engine("cuda:1", queue_depth=0, busy=False, seconds_since_progress=0.0, memory=memory)
    metrics.update_stream("door", stream_status(people=2, subjects=_slots(2), waiting=0), 0, segment=1)
    metrics.update_engine("cuda:1", queue_depth=0, busy=False, seconds_since_progress=0.0, memory=None)
    metrics.update_stream("door", stream_status(), 0, segment=2)
    series = scrape(metrics)
    assert value(series, "vstmon_stream_segment", stream="door") == 2
    assert not {n for n in names(series) if n.startswith(("vstmon_device_memory", "vstmon_stream_people"))}
    assert not {n for n in names(series) if n.startswith("vstmon_stream_subjects")}


def test_stream_counters_are_served(metrics: Metrics) -> None:
    metrics.update_stream("cam", _counters("streaming", 25.0, 3, 7, 1, 2), frames_read=100, segment=1)
    metrics.update_stream("cam", _counters("reconnecting", 0.0, 4, 9, 1, 3), frames_read=150, segment=1)
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
        status = stream_status(frames_dropped=3, clips=7, clips_dropped=1, reconnects=2, people=1)
        metrics.update_stream(
            stream, status.model_copy(update={"subjects": tuple(_slots(1)), "waiting": 0}), 100, 3
        )
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
    metrics.update_stream("gone", _counters("streaming", 25.0, 0, 1, 0, 0), frames_read=40, segment=1)
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
