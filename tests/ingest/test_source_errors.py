"""Bad input: every failure becomes a state and a clear reason, never an exception out of the reader.

What can never work (a bad scheme, a missing or undecodable file) fails at once; what may come back
(a refused port, an unreachable host, a silent server, a missing webcam) is retried with backoff.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.helpers.rtsp_fixtures import EventLog, stream_config
from tests.helpers.videos import make_not_a_video, make_video
from vstmon.ingest.ring import RingBuffer
from vstmon.ingest.source import Source
from vstmon.types import SourceState, StreamEvent

SIZE_PX = 32


def _run_until_final(url: str, timeout_s: float = 20.0, **overrides: object) -> tuple[Source, EventLog]:
    events = EventLog()
    source = Source(stream_config(url, **overrides), RingBuffer(4, SIZE_PX, SIZE_PX), SIZE_PX, events)
    source.start()
    final = events.wait_for(lambda e: e.state in (SourceState.FAILED, SourceState.ENDED), timeout_s)
    source.stop()
    assert source.join(10.0), "the reader thread did not end"
    assert final is not None, f"no final state; events: {events.events}"
    return source, events


def test_unsupported_scheme_fails_at_once_with_the_scheme_named() -> None:
    source, events = _run_until_final("ftp://user:secret@127.0.0.1/video.mp4")
    assert events.states() == [SourceState.CONNECTING, SourceState.FAILED]
    reason = events.events[-1].reason
    assert "unsupported URL scheme 'ftp'" in reason and "rtsp://" in reason
    assert "secret" not in reason and "user:***@" in reason
    assert source.state == SourceState.FAILED and source.stats()["state"] == "failed"


def test_missing_file_fails(tmp_path: Path) -> None:
    _, events = _run_until_final(str(tmp_path / "nope.mp4"))
    assert events.states()[-1] == SourceState.FAILED
    assert "does not exist" in events.events[-1].reason and "nope.mp4" in events.events[-1].reason


def test_not_a_video_file_fails_with_a_clear_reason(tmp_path: Path) -> None:
    path = make_not_a_video(tmp_path / "fake.mp4")
    _, events = _run_until_final(str(path))
    assert events.states() == [SourceState.CONNECTING, SourceState.FAILED]
    assert "fake.mp4 is not a video" in events.events[-1].reason


def test_refused_port_is_retried_with_growing_backoff_then_fails_after_max_attempts(closed_port: int) -> None:
    url = f"rtsp://127.0.0.1:{closed_port}/stream"
    reconnect = {"initial_delay_s": 0.1, "max_delay_s": 0.4, "jitter": 0.0, "max_attempts": 4}
    source, events = _run_until_final(url, reconnect=reconnect)
    states = events.states()
    assert states[0] == SourceState.CONNECTING and states[-1] == SourceState.FAILED
    retries = [e for e in events.events if e.state == SourceState.RECONNECTING]
    assert [r.reason.rsplit("; ", 1)[1] for r in retries] == [
        "retry 1 in 0.1 s",
        "retry 2 in 0.2 s",
        "retry 3 in 0.4 s",
        "retry 4 in 0.4 s",
    ]
    assert "cannot open rtsp stream" in retries[0].reason
    assert "gave up after 4 attempts" in events.events[-1].reason
    assert source.stats()["reconnects"] == 0  # never streamed, so never a reconnect of a stream


def test_unreachable_host_keeps_retrying_while_unlimited(closed_port: int) -> None:
    url = f"http://127.0.0.3:{closed_port}/mjpeg"  # nothing listens on 127.0.0.3
    events = EventLog()
    source = Source(stream_config(url), RingBuffer(4, SIZE_PX, SIZE_PX), SIZE_PX, events)
    source.start()
    try:
        third = events.wait_for(
            lambda e: e.reason.endswith("retry 3 in 0.4 s") or "retry 3" in e.reason, 20.0
        )
        assert third is not None, events.events
        assert third.state == SourceState.RECONNECTING and "cannot open http stream" in third.reason
        assert source.alive
    finally:
        source.stop()
        assert source.join(10.0)
    assert SourceState.FAILED not in events.states()


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_port_that_never_answers_times_out_on_open(silent_server: int, scheme: str) -> None:
    url = f"{scheme}://127.0.0.1:{silent_server}/stream"
    events = EventLog()
    source = Source(stream_config(url, open_timeout_s=1.0), RingBuffer(4, SIZE_PX, SIZE_PX), SIZE_PX, events)
    started_s = time.monotonic()
    source.start()
    try:
        event = events.wait_state(SourceState.RECONNECTING, 15.0)
        took_s = time.monotonic() - started_s
    finally:
        source.stop()
        assert source.join(10.0)
    assert event is not None, events.events
    assert "timed out" in event.reason, event.reason
    assert 0.8 < took_s < 8.0  # the open timeout (1 s) bounds it, not FFmpeg's 30 s default


@pytest.mark.parametrize("url", ["0", "/dev/video7"])
def test_missing_webcam_is_a_clear_failure(url: str) -> None:
    _, events = _run_until_final(
        url, reconnect={"initial_delay_s": 0.1, "max_delay_s": 0.1, "max_attempts": 1}
    )
    assert events.states()[-2:] == [SourceState.RECONNECTING, SourceState.FAILED]
    assert f"cannot open webcam {url} (V4L2)" in events.events[-1].reason


@pytest.mark.parametrize("url", ["testsrc://?width=abc", "testsrc://?width=4&height=4"])
def test_bad_testsrc_parameters_fail(url: str) -> None:
    _, events = _run_until_final(url)
    assert events.states()[-1] == SourceState.FAILED and "testsrc" in events.events[-1].reason


def test_a_raising_event_callback_does_not_kill_the_reader() -> None:
    seen: list[StreamEvent] = []

    def explode(event: StreamEvent) -> None:
        seen.append(event)
        raise RuntimeError("owner bug")

    ring = RingBuffer(8, SIZE_PX, SIZE_PX)
    source = Source(stream_config("testsrc://?width=32&height=32&fps=200&frames=30"), ring, SIZE_PX, explode)
    source.start()
    assert source.join(10.0)
    assert [e.state for e in seen] == [SourceState.CONNECTING, SourceState.STREAMING, SourceState.ENDED]
    assert source.stats()["frames_read"] == 30


def test_a_hung_camera_open_does_not_hold_up_another_streams_opens(
    silent_server: int, tmp_path: Path
) -> None:
    # an RTSP camera that accepts the connection and never answers: its open hangs for open_timeout_s (10 s)
    hung_events = EventLog()
    hung = Source(
        stream_config(f"rtsp://127.0.0.1:{silent_server}/stream", name="hung", open_timeout_s=10.0),
        RingBuffer(4, SIZE_PX, SIZE_PX),
        SIZE_PX,
        hung_events,
    )
    # a looping file reopens its capture at every loop (at most once a second)
    path = make_video(tmp_path / "short.mp4", 5, 25.0, size=(64, 48))
    file_events = EventLog()
    looping = Source(
        stream_config(str(path), name="file", loop=True),
        RingBuffer(8, SIZE_PX, SIZE_PX),
        SIZE_PX,
        file_events,
    )
    hung.start()
    assert hung_events.wait_for(lambda e: e.reason == "opening", 5.0) is not None
    looping.start()
    try:
        loops = 0
        while loops < 3:  # three reopens of the file while the camera's open is still hanging
            after = len(file_events)
            assert file_events.wait_for(lambda e: e.looped, 15.0, after=after) is not None, file_events.events
            loops = sum(e.looped for e in file_events.events)
        assert hung_events.states() == [SourceState.CONNECTING], hung_events.events
    finally:
        hung.stop()
        looping.stop()
        assert looping.join(10.0) and hung.join(30.0)


def test_capture_options_are_one_process_wide_value_that_opens_never_change(closed_port: int) -> None:
    from vstmon.ingest import capture

    before = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS")
    assert before is not None and "rtsp_transport;tcp" in before and "nobuffer" not in before
    url = f"rtsp://127.0.0.1:{closed_port}/stream"
    _run_until_final(url, reconnect={"initial_delay_s": 0.1, "max_delay_s": 0.1, "max_attempts": 1})
    assert os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS") == before
    capture.use_capture_options(None)  # a file open keeps the RTSP transport in force
    assert os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS") == before
