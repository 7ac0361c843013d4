"""Sources reading files and the synthetic testsrc: exact indices and timestamps, loop, end, pacing."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.rtsp_fixtures import EventLog, stream_config, wait_until
from tests.helpers.videos import FFMPEG, decode_index, make_video
from vstmon.ingest.ring import RingBuffer
from vstmon.ingest.source import Source
from vstmon.types import Discontinuity, SourceState

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
    assert events.states() == [SourceState.CONNECTING, SourceState.STREAMING, SourceState.ENDED]
    assert "40 frames" in events.events[-1].reason
    assert source.state == SourceState.ENDED
    stats = source.stats()
    assert stats["frames_read"] == n_frames and stats["frames_dropped"] == 0 and stats["reconnects"] == 0
    assert stats["state"] == "ended" and stats["ring_nbytes"] == ring.nbytes


def test_loop_starts_a_new_epoch_reports_where_and_restarts_indices(tmp_path: Path) -> None:
    n_frames = 12
    path = make_video(tmp_path / "short.mp4", n_frames, FPS, size=(96, 64))
    ring = RingBuffer(64, SIZE_PX, SIZE_PX)
    events = EventLog()
    source = Source(stream_config(str(path), loop=True), ring, SIZE_PX, events)
    source.start()
    try:
        loops = lambda: sum(e.looped for e in events.events)  # noqa: E731
        assert wait_until(lambda: loops() >= 2, 20.0), events.events
    finally:
        source.stop()
        assert source.join(5.0)
    looped = [e for e in events.events if e.discontinuity]
    assert all(e.state == SourceState.STREAMING and e.looped and "looping" in e.reason for e in looped)
    assert [e.at_seq for e in looped[:2]] == [n_frames, 2 * n_frames]  # where each pass starts in the ring
    assert SourceState.ENDED not in events.states()
    # nothing is dropped: each pass is one epoch, its indices restart at 0 and match the pixels
    for number, start in enumerate((0, n_frames)):
        seqs = range(start, start + n_frames)
        assert [ring.epoch_of(seq) for seq in seqs] == [number] * n_frames
        assert [ring.meta(seq).index for seq in seqs] == list(range(n_frames))
        assert [decode_index(ring.frame(seq)) for seq in seqs] == list(range(n_frames))
    assert source.stats()["frames_read"] >= 2 * n_frames


def test_end_of_file_without_loop_ends_and_keeps_the_last_frames(tmp_path: Path) -> None:
    path = make_video(tmp_path / "end.mp4", 10, FPS, size=(96, 64))
    ring = RingBuffer(16, SIZE_PX, SIZE_PX)
    events = EventLog()
    source = Source(stream_config(str(path)), ring, SIZE_PX, events)
    source.start()
    assert events.wait_state(SourceState.ENDED, 15.0) is not None
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
    assert events.wait_state(SourceState.ENDED, 30.0) is not None
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
        assert events.wait_state(SourceState.ENDED, 15.0) is not None
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
        assert source.state == SourceState.STREAMING
    finally:
        source.stop()
        assert source.join(5.0)


def test_a_file_shorter_than_a_clip_loops_at_most_once_a_second(tmp_path: Path) -> None:
    path = make_video(tmp_path / "three_frames.mp4", 3, FPS, size=(96, 64))
    ring = RingBuffer(8, SIZE_PX, SIZE_PX)
    events = EventLog()
    source = Source(stream_config(str(path), loop=True), ring, SIZE_PX, events)
    source.start()
    try:
        first = events.wait_for(lambda e: e.looped, 20.0)
        third = events.wait_for(lambda e: e.looped, 20.0, after=events.events.index(first) + 1)
        third = events.wait_for(
            lambda e: e.looped and e is not third, 20.0, after=events.events.index(third) + 1
        )
        assert first is not None and third is not None, events.events
    finally:
        source.stop()
        assert source.join(5.0)
    # two loop intervals between the first and the third loop (unthrottled: ~3 ms per loop here)
    assert third.wall_s - first.wall_s >= 2 * 0.95


def _ts_file(directory: Path, name: str, offset_s: float, n_frames: int = 40) -> Path:
    """An H.264 MPEG-TS file (libx264, Debian's ffmpeg) whose timestamps start at ``offset_s`` (+1.4 s mux delay)."""
    path = directory / f"{name}.ts"
    command = [
        FFMPEG, "-y", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size=96x64:rate={FPS:g}",
        "-frames:v", str(n_frames), "-c:v", "libx264", "-g", "10", "-pix_fmt", "yuv420p",
        "-output_ts_offset", str(offset_s), "-f", "mpegts", str(path),
    ]  # fmt: skip
    subprocess.run(command, check=True, timeout=60)
    return path


def _concatenate(directory: Path, name: str, *parts: Path) -> Path:
    """Two recordings byte-concatenated, as .ts files often are (timestamps start over or jump)."""
    path = directory / name
    path.write_bytes(b"".join(part.read_bytes() for part in parts))
    return path


@pytest.fixture(scope="module")
def jumpy_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not Path(FFMPEG).exists():
        pytest.skip("needs Debian's ffmpeg (libx264, mpegts)")
    directory = tmp_path_factory.mktemp("jumps")
    first = _ts_file(directory, "first", 0.0)
    return {
        # the second recording's clock starts over: back by 1.56 s
        "backwards": _concatenate(directory, "backwards.ts", first, _ts_file(directory, "again", 0.0)),
        # a recording made just before a 33-bit PTS wrap follows: forward by 26.5 hours, then the wrap itself
        "wrap": _concatenate(directory, "wrap.ts", first, _ts_file(directory, "near_wrap", 95442.0)),
    }


def _drain(ring: RingBuffer, source: Source) -> list[float]:
    """Every frame's stream_ts_s, consuming as the frames come (lossless ring)."""
    return [g[1] for g in _read_all_slowly(ring, source, pause_s=0.0)]


@pytest.mark.parametrize(("name", "jumps"), [("backwards", 1), ("wrap", 2)])
def test_a_timestamp_jump_is_a_discontinuity_with_a_rebased_clock(
    jumpy_files: dict[str, Path], name: str, jumps: int
) -> None:
    ring = RingBuffer(8, SIZE_PX, SIZE_PX, lossless=True)
    events = EventLog()
    source = Source(stream_config(str(jumpy_files[name])), ring, SIZE_PX, events)
    source.start()
    times = _drain(ring, source)
    assert source.join(5.0)
    jumped = [e for e in events.events if e.discontinuity == Discontinuity.TIME_JUMP]
    assert len(jumped) == jumps, events.events
    assert all(e.state == SourceState.STREAMING and "clock re-based" in e.reason for e in jumped)
    assert events.states()[-1] == SourceState.ENDED and ring.epoch == jumps  # a new epoch at each jump
    assert len(times) == 80  # every frame of both recordings was read (none lost after the jump)
    steps = np.diff(times)
    assert steps.min() > 0 and steps.max() < 0.05  # the re-based clock goes on at the frame rate


def test_a_forward_jump_does_not_freeze_a_realtime_file(jumpy_files: dict[str, Path]) -> None:
    ring = RingBuffer(8, SIZE_PX, SIZE_PX)
    events = EventLog()
    source = Source(stream_config(str(jumpy_files["wrap"]), realtime=True), ring, SIZE_PX, events)
    started_s = time.monotonic()
    source.start()
    # 80 frames at 25 fps: 3.2 s; paced on the raw clock it would wait 26.5 hours at the jump
    assert events.wait_state(SourceState.ENDED, 30.0) is not None, events.events
    assert time.monotonic() - started_s < 20.0
    assert source.join(5.0)
    assert sum(e.discontinuity == Discontinuity.TIME_JUMP for e in events.events) == 2
