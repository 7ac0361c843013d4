"""RTSP sources against a real GStreamer RTSP server on 127.0.0.1: frames, kill/restart, freeze, secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import pytest

from tests.helpers.cli import REPO_ROOT
from tests.helpers.rtsp_fixtures import (
    EventLog,
    RtspServer,
    stream_config,
    wait_until,
)
from vstmon.ingest.ring import RingBuffer
from vstmon.ingest.source import Source
from vstmon.types import Discontinuity, SourceState

pytestmark = pytest.mark.rtsp

SIZE_PX = 64
OPEN_S = 3.0  # an RTSP open with small probe limits takes ~0.2-1.2 s here; generous for a loaded machine
RECONNECT = {"initial_delay_s": 0.2, "max_delay_s": 1.0, "jitter": 0.2}


def _source(url: str, name: str = "cam", **overrides: object) -> tuple[Source, RingBuffer, EventLog]:
    ring = RingBuffer(16, SIZE_PX, SIZE_PX)
    events = EventLog()
    overrides.setdefault("reconnect", RECONNECT)
    overrides.setdefault("open_timeout_s", 3.0)
    return Source(stream_config(url, name=name, **overrides), ring, SIZE_PX, events), ring, events


def _frames(source: Source) -> int:
    return int(source.stats()["frames_read"])


def _keeps_receiving(source: Source, during: Callable[[], None]) -> None:
    before = _frames(source)
    during()
    assert wait_until(lambda: _frames(source) > before + 5, 5.0), "the other stream stopped receiving"


def test_frames_arrive_from_an_rtsp_server(rtsp_servers: Callable[..., RtspServer]) -> None:
    server = rtsp_servers()
    source, ring, events = _source(server.url)
    source.start()
    try:
        assert wait_until(lambda: _frames(source) >= 25, 20.0), events.events
        assert events.states()[:2] == [SourceState.CONNECTING, SourceState.STREAMING]
        stats = source.stats()
        assert 10.0 < stats["fps_in"] < 40.0  # loose: the server sends 25 fps
        last = ring.meta(ring.head_seq - 1)
        assert last.stream_ts_s > 0.5 and last.index == stats["frames_read"] - 1
        assert ring.frame(ring.head_seq - 1).std() > 5  # a real picture, not a blank slot
    finally:
        source.stop()
        assert source.join(10.0)


def test_udp_transport_also_streams(rtsp_servers: Callable[..., RtspServer]) -> None:
    server = rtsp_servers()
    source, _, events = _source(server.url, transport="udp")
    source.start()
    try:
        assert wait_until(lambda: _frames(source) >= 10, 20.0), events.events
    finally:
        source.stop()
        assert source.join(10.0)


def test_killed_server_reconnects_after_restart_and_other_stream_is_unaffected(
    rtsp_servers: Callable[..., RtspServer],
) -> None:
    server, other_server = rtsp_servers(), rtsp_servers()
    source, ring, events = _source(server.url)
    other, _, other_events = _source(other_server.url, name="other")
    source.start()
    other.start()
    try:
        assert wait_until(lambda: _frames(source) >= 10 and _frames(other) >= 10, 20.0)
        epoch = ring.epoch
        mark = len(events)
        _keeps_receiving(other, server.kill)
        lost = events.wait_state(SourceState.RECONNECTING, 10.0, after=mark)
        assert lost is not None and lost.discontinuity == Discontinuity.RECONNECT, events.events[mark:]
        assert ring.epoch == epoch + 1 and lost.at_seq == ring.head_seq  # frames after it: a new epoch
        _keeps_receiving(other, lambda: None)  # during the reconnect attempts
        server.restart()  # same port
        restarted_s = time.monotonic()
        back = events.wait_state(SourceState.STREAMING, 30.0, after=mark)
        assert back is not None, events.events[mark:]
        # bound: one backoff delay (max 1.0 s + 20 % jitter) + one open + the first frame
        assert time.monotonic() - restarted_s < 1.2 + OPEN_S + 2.0
        assert source.stats()["reconnects"] == 1
        assert wait_until(lambda: ring.head_seq - lost.at_seq >= 5, 10.0)
        # indices restart at the discontinuity: frame at_seq + k of the new epoch is the k-th since the reopen
        held = [seq for seq in range(ring.oldest_seq, ring.head_seq) if ring.epoch_of(seq) == epoch + 1]
        assert held and all(ring.meta(seq).index == seq - lost.at_seq for seq in held)
        _keeps_receiving(other, lambda: None)
        assert SourceState.RECONNECTING not in other_events.states()
    finally:
        source.stop()
        other.stop()
        assert source.join(10.0) and other.join(10.0)


def test_frozen_server_is_detected_as_a_stall_and_recovers_after_thaw(
    rtsp_servers: Callable[..., RtspServer],
) -> None:
    server = rtsp_servers()
    # the read timeout is capped at half the stall timeout, and the stale frame a timed-out read hands over is
    # no progress: detection within stall_s (it took 2 x read_s = 4 s when that frame restarted the clock)
    stall_s, read_s = 2.0, 2.0
    source, ring, events = _source(server.url, stall_timeout_s=stall_s, read_timeout_s=read_s)
    other, _, _ = _source("testsrc://?width=64&height=64&fps=25", name="other")
    source.start()
    other.start()
    try:
        assert wait_until(lambda: _frames(source) >= 10, 20.0), events.events
        mark = len(events)
        frozen_s = time.monotonic()
        _keeps_receiving(other, server.freeze)
        stalled = events.wait_state(SourceState.RECONNECTING, 10.0, after=mark)
        detected_s = time.monotonic() - frozen_s
        assert stalled is not None and stalled.discontinuity == Discontinuity.RECONNECT
        assert "stalled" in stalled.reason, stalled.reason
        assert detected_s < stall_s + 1.0  # + slack for a loaded machine
        # the stale frame (handed over ~1 s after the freeze) was not stored
        assert stalled.at_seq is not None
        assert ring.meta(stalled.at_seq - 1).capture_mono_s < frozen_s + 0.5
        _keeps_receiving(other, lambda: None)
        mark = len(events)
        server.thaw()
        assert events.wait_state(SourceState.STREAMING, 30.0, after=mark) is not None, events.events[mark:]
        assert wait_until(lambda: ring.head_seq - ring.oldest_seq >= 5, 10.0)
    finally:
        if server.frozen:
            server.thaw()
        source.stop()
        other.stop()
        assert source.join(10.0) and other.join(10.0)


_SECRET_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading
    from vstmon.log import configure_logging
    from vstmon.config import StreamConfig
    from vstmon.ingest.ring import RingBuffer
    from vstmon.ingest.source import Source

    configure_logging("debug", "json")
    reasons = []
    sources = []
    for name, url in json.loads(sys.argv[1]).items():
        cfg = StreamConfig(name=name, url=url, open_timeout_s=2.0, read_timeout_s=1.0, stall_timeout_s=1.0,
                           reconnect={"initial_delay_s": 0.2, "max_delay_s": 0.5})
        source = Source(cfg, RingBuffer(8, 32, 32), 32, lambda e: reasons.append(e.reason))
        source.start()
        sources.append(source)
    threading.Event().wait(float(sys.argv[2]))
    stats = {s.stream: s.stats() for s in sources}
    for source in sources:
        source.stop()
    for source in sources:
        source.join(10.0)
    print(json.dumps({"stats": stats, "reasons": reasons}))
    """
)


@pytest.mark.parametrize(
    "opencv_env",
    [{}, {"OPENCV_FFMPEG_LOGLEVEL": "56", "OPENCV_FFMPEG_DEBUG": "1"}],  # FFmpeg debug prints URLs
    ids=["default", "ffmpeg-debug-asked"],
)
def test_password_never_reaches_logs_stderr_reasons_or_status(
    rtsp_servers: Callable[..., RtspServer], opencv_env: dict[str, str]
) -> None:
    secret = "s3cr3tPassw0rd"
    server = rtsp_servers(auth=f"admin:{secret}")
    urls = {
        "good": server.url_with(f"admin:{secret}"),  # streams
        "wrong": server.url_with(f"admin:{secret}x"),  # 401 from the server, retried
        "refused": f"rtsp://admin:{secret}@127.0.0.1:{server.port + 1}/stream",  # nothing listens
        "http": f"http://admin:{secret}@127.0.0.1:{server.port + 1}/mjpeg",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")} | opencv_env
    result = subprocess.run(
        [sys.executable, "-c", _SECRET_SCRIPT, json.dumps(urls), "5"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert secret not in result.stdout
    assert secret not in result.stderr  # structlog lines, OpenCV warnings and FFmpeg's own messages
    report = json.loads(result.stdout.strip().splitlines()[-1])  # OpenCV debug output may precede it
    assert report["stats"]["good"]["state"] == "streaming" and report["stats"]["good"]["frames_read"] > 10
    assert report["stats"]["wrong"]["state"] == "reconnecting"
    assert report["stats"]["refused"]["state"] == "reconnecting"
    assert "admin:***@" in result.stderr  # the URL is logged, masked
    assert any("admin:***@" in reason for reason in report["reasons"])


def test_a_hung_open_does_not_delay_another_streams_connect(
    rtsp_servers: Callable[..., RtspServer], silent_server: int
) -> None:
    server = rtsp_servers()
    hung, _, hung_events = _source(
        f"rtsp://127.0.0.1:{silent_server}/stream", name="hung", open_timeout_s=6.0
    )
    good, _, good_events = _source(server.url, name="good")
    hung.start()
    assert wait_until(lambda: len(hung_events) >= 1, 5.0)
    time.sleep(0.2)  # let the hung open begin (it holds the silent connection for 6 s)
    started_s = time.monotonic()
    good.start()
    try:
        assert good_events.wait_state(SourceState.STREAMING, 10.0) is not None
        # OpenCV serialises FFmpeg opens unless OPENCV_FFMPEG_IS_THREAD_SAFE=1 (set by vstmon): without it
        # the good stream would wait for the hung open's 6 s timeout
        assert time.monotonic() - started_s < 4.0
        assert hung.state == SourceState.CONNECTING
    finally:
        good.stop()
        hung.stop()
        assert good.join(10.0) and hung.join(10.0)


def test_a_camera_stuck_on_one_picture_is_a_stall(rtsp_servers: Callable[..., RtspServer]) -> None:
    server = rtsp_servers(mode="frozen")  # a live stream whose every frame decodes to the same picture
    source, _, events = _source(server.url, frozen_timeout_s=1.5, stall_timeout_s=5.0)
    source.start()
    try:
        streaming = events.wait_state(SourceState.STREAMING, 20.0)
        assert streaming is not None, events.events
        lost = events.wait_state(SourceState.RECONNECTING, 15.0)
        assert lost is not None and lost.discontinuity == Discontinuity.RECONNECT, events.events
        assert "frozen picture" in lost.reason and "1.5 s" in lost.reason, lost.reason
        assert _frames(source) >= 25  # frames kept arriving: this was not a stall of the transport
    finally:
        source.stop()
        assert source.join(10.0)


def test_a_moving_picture_is_not_taken_for_a_frozen_camera(rtsp_servers: Callable[..., RtspServer]) -> None:
    server = rtsp_servers()  # testsrc: a moving pattern
    source, _, events = _source(server.url, frozen_timeout_s=0.5)
    source.start()
    try:
        assert wait_until(lambda: _frames(source) >= 75, 30.0), events.events  # 3 s of frames, 6 x the limit
        assert SourceState.RECONNECTING not in events.states(), events.events
    finally:
        source.stop()
        assert source.join(10.0)


def test_a_gap_in_a_live_stream_is_a_clock_jump_not_a_stall(rtsp_servers: Callable[..., RtspServer]) -> None:
    server = rtsp_servers()
    # a hiccup of ~2 s: longer than max_time_jump_s, shorter than the stall timeout and the read timeout
    source, ring, events = _source(server.url, max_time_jump_s=1.0, stall_timeout_s=10.0, read_timeout_s=4.0)
    source.start()
    try:
        assert wait_until(lambda: _frames(source) >= 10, 20.0), events.events
        mark = len(events)
        server.freeze()
        frozen = threading.Event()
        frozen.wait(2.0)  # the hiccup itself (the camera is silent this long), not a check
        server.thaw()
        jumped = events.wait_for(lambda e: e.discontinuity == Discontinuity.TIME_JUMP, 15.0, after=mark)
        assert jumped is not None, events.events[mark:]
        assert jumped.state == SourceState.STREAMING and "clock re-based" in jumped.reason
        assert SourceState.RECONNECTING not in [e.state for e in events.events[mark:]]
        assert ring.epoch == 1  # frames after the gap start a new epoch: no clip spans the hiccup
    finally:
        if server.frozen:
            server.thaw()
        source.stop()
        assert source.join(10.0)
