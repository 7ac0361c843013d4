"""Sources reading files and the synthetic testsrc: exact indices and timestamps, loop, end, pacing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.rtsp_fixtures import EventLog, stream_config, wait_until
from tests.videos import FFMPEG, decode_index, make_video
from vstmon.ingest.ring import RingBuffer
from vstmon.ingest.source import Source
from vstmon.types import StreamState

SIZE_PX = 64
FPS = 25.0
CODECS = [
    "mp4v",
    pytest.param("h264", marks=pytest.mark.skipif(not Path(FFMPEG).exists(), reason="no ffmpeg")),
]


def _read_all_slowly(ring: RingBuffer, source: Source, pause_s: float) -> list[tuple[int, float, int, int]]:
    """(meta.index, meta.stream_ts_s, decoded code, seq) for every frame, consuming slower than the source."""
    got: list[tuple[int, float, int, int]] = []
    seq = ring.oldest_seq
    pause = threading.Event()
    while True:
        if not ring.wait_for(seq, 0.2):
            if not source.alive and seq >= ring.head_seq:
                return got
            continue
        meta = ring.meta(seq)
        got.append((meta.index, meta.stream_ts_s, decode_index(ring.frame(seq)), seq))
        ring.release(seq + 1)
        seq += 1
        pause.wait(pause_s)


@pytest.mark.parametrize("codec", CODECS)
def test_lossless_file_delivers_every_frame_in_order_with_exact_timestamps(
    tmp_path: Path, codec: str
) -> None:
    n_frames = 40
    path = make_video(tmp_path / f"clip_{codec}.mp4", n_frames, FPS, size=(96, 64), codec=codec)
    ring = RingBuffer(6, SIZE_PX, SIZE_PX, lossless=True)  # much smaller than the file: the reader must wait
    events = EventLog()
    source = Source(stream_config(str(path)), ring, SIZE_PX, events)
    source.start()
    got = _read_all_slowly(ring, source, pause_s=0.005)
    assert source.join(5.0)
    assert [g[0] for g in got] == list(range(n_frames))  # meta index
    assert [g[2] for g in got] == list(range(n_frames))  # the pixels really are frame i
    assert [g[1] for g in got] == pytest.approx([i / FPS for i in range(n_frames)], abs=1e-6)
    assert [g[3] for g in got] == list(range(n_frames))  # ring seqs without a gap
    assert ring.frames_dropped == 0
    assert events.states() == [StreamState.CONNECTING, StreamState.STREAMING, StreamState.ENDED]
    assert "40 frames" in events.events[-1].reason
    assert source.state == StreamState.ENDED
    stats = source.stats()
    assert stats["frames_read"] == n_frames and stats["frames_dropped"] == 0 and stats["reconnects"] == 0
    assert stats["state"] == "ended" and stats["ring_nbytes"] == ring.nbytes


def test_loop_clears_the_ring_reports_a_discontinuity_and_restarts_indices(tmp_path: Path) -> None:
    n_frames = 12
    path = make_video(tmp_path / "short.mp4", n_frames, FPS, size=(96, 64))
    ring = RingBuffer(32, SIZE_PX, SIZE_PX)
    events = EventLog()
    source = Source(stream_config(str(path), loop=True), ring, SIZE_PX, events)
    source.start()
    try:
        loops = lambda: sum(e.discontinuity for e in events.events)  # noqa: E731
        assert wait_until(lambda: loops() >= 2, 20.0), events.events
    finally:
        source.stop()
        assert source.join(5.0)
    looped = [e for e in events.events if e.discontinuity]
    assert all(e.state == StreamState.STREAMING and e.looped and "looping" in e.reason for e in looped)
    assert ring.generation >= 2
    assert StreamState.ENDED not in events.states()
    # what the ring holds now comes from the last pass only: indices restart at 0 and match the pixels
    held = [ring.meta(seq).index for seq in range(ring.oldest_seq, ring.head_seq)]
    codes = [decode_index(ring.frame(seq)) for seq in range(ring.oldest_seq, ring.head_seq)]
    assert held == list(range(len(held))) == codes
    assert source.stats()["frames_read"] >= 2 * n_frames


def test_end_of_file_without_loop_ends_and_keeps_the_last_frames(tmp_path: Path) -> None:
    path = make_video(tmp_path / "end.mp4", 10, FPS, size=(96, 64))
    ring = RingBuffer(16, SIZE_PX, SIZE_PX)
    events = EventLog()
    source = Source(stream_config(str(path)), ring, SIZE_PX, events)
    source.start()
    assert events.wait_state(StreamState.ENDED, 15.0) is not None
    assert source.join(5.0)
    assert not events.events[-1].discontinuity
    assert ring.head_seq - ring.oldest_seq == 10  # not cleared: the consumer may still cut them


def test_realtime_file_is_paced_at_about_its_fps(tmp_path: Path) -> None:
    path = make_video(tmp_path / "two_seconds.mp4", 50, FPS, size=(96, 64))  # 2 s at 25 fps
    ring = RingBuffer(8, SIZE_PX, SIZE_PX)
    events = EventLog()
    source = Source(stream_config(str(path), realtime=True), ring, SIZE_PX, events)
    started_s = time.monotonic()
    source.start()
    assert events.wait_state(StreamState.ENDED, 30.0) is not None
    took_s = time.monotonic() - started_s
    assert took_s > 1.0  # not read as fast as possible (that takes a few ms here)
    assert source.join(5.0)
    # a live-style ring: the 8-slot ring kept only the newest frames, the rest were overwritten (counted)
    assert ring.frames_dropped == 50 - 8
    last = ring.meta(ring.head_seq - 1)
    assert last.index == 49 and last.stream_ts_s == pytest.approx(49 / FPS)


def test_testsrc_is_deterministic_and_ends_after_the_requested_frames() -> None:
    url = "testsrc://?width=80&height=64&fps=500&frames=20"
    frames = []
    for _ in range(2):
        ring = RingBuffer(32, SIZE_PX, SIZE_PX)
        events = EventLog()
        source = Source(stream_config(url, name="synthetic"), ring, SIZE_PX, events)
        source.start()
        assert events.wait_state(StreamState.ENDED, 15.0) is not None
        assert source.join(5.0)
        metas = [ring.meta(seq) for seq in range(ring.oldest_seq, ring.head_seq)]
        assert [m.index for m in metas] == list(range(20))
        assert [m.stream_ts_s for m in metas] == pytest.approx([i / 500 for i in range(20)])
        frames.append(np.stack([ring.frame(seq).copy() for seq in range(ring.oldest_seq, ring.head_seq)]))
    assert np.array_equal(frames[0], frames[1])
    assert not np.array_equal(frames[0][0], frames[0][1])  # it moves


def test_testsrc_streams_until_stopped_and_reports_fps() -> None:
    ring = RingBuffer(16, SIZE_PX, SIZE_PX)
    events = EventLog()
    source = Source(stream_config("testsrc://?width=64&height=64&fps=50"), ring, SIZE_PX, events)
    source.start()
    try:
        assert wait_until(lambda: source.stats()["frames_read"] >= 30, 10.0)
        assert 20.0 < source.stats()["fps_in"] < 80.0  # loose: paced at 50 fps
        assert source.state == StreamState.STREAMING
    finally:
        source.stop()
        assert source.join(5.0)
