"""The daemon in-process: real files, real ZeroMQ sockets on 127.0.0.1, a tiny checkpoint in the official layout.

Helpers here (``tiny_checkpoint``, ``daemon_config``, ``write_mjpg``, ``collect``) are shared with
test_daemon_e2e.py.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import zmq

from tests.helpers.daemon import (
    FPS,
    FRAMES,
    NUM_CLASSES,
    VIDEO_SIZE,
    collect,
    daemon_config,
    ended,
    write_mjpg,
)
from tests.helpers.notify_listener import received_within
from tests.helpers.videos import FFMPEG, make_video
from tests.helpers.wire import stream_status
from vstmon.config import parse_config
from vstmon.ingest.capture import file_info, parse_source
from vstmon.service.daemon import Daemon
from vstmon.service.metrics import Metrics
from vstmon.service.sdnotify import SystemdNotifier
from vstmon.stream.build import ring_capacity_frames
from vstmon.wire.client import DaemonStatus, Subscriber

torch.set_num_threads(1)
cv2.setNumThreads(1)


# -- unit parts ------------------------------------------------------------------------------------------------
def test_sd_notify_sends_datagrams_to_notify_socket(tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    server.settimeout(2)
    try:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "4000000"})
        assert notifier.enabled and notifier.watchdog_interval_s == pytest.approx(2.0)
        assert notifier.notify("READY=1") and notifier.notify("WATCHDOG=1")
        assert server.recv(64) == b"READY=1"
        assert server.recv(64) == b"WATCHDOG=1"
        notifier.close()
    finally:
        server.close()
    quiet = SystemdNotifier({})
    assert not quiet.enabled and not quiet.notify("READY=1") and quiet.watchdog_interval_s is None


def test_ring_capacity_holds_one_clip_span_and_a_second() -> None:
    config = parse_config(
        {"clip": {"frames": 32, "frame_interval": 2}, "streams": [{"name": "a", "url": "x.mp4"}]}
    )
    assert ring_capacity_frames(config, config.streams[0], 25.0) == 63 + 25 + 2
    timed = parse_config(
        {"clip": {"frames": 16, "sample_fps": 8.0}, "streams": [{"name": "a", "url": "x.mp4"}]}
    )
    assert (
        ring_capacity_frames(timed, timed.streams[0], 30.0) == 57 + 1 + 30 + 2
    )  # ceil(15 / 8 * 30) + 1 frames span


def test_file_sources_are_recognised_and_probed(tmp_path: Path) -> None:
    path = write_mjpg(tmp_path / "a.avi", [("moving", range(4))])
    assert parse_source(str(path)).kind == "file" and parse_source(f"file://{path}").kind == "file"
    assert parse_source("rtsp://cam/1").kind == "rtsp" and parse_source("0").kind == "webcam"
    info = file_info(parse_source(str(path)))
    assert info is not None and info.frames == 4 and info.fps == pytest.approx(FPS)


def test_metrics_render_stream_counters_and_batches() -> None:
    metrics = Metrics()
    counters = {"frames_dropped": 3, "clips_dropped": 1}
    metrics.update_stream("cam", stream_status(**counters, clips=7, reconnects=2), frames_read=100, segment=1)
    metrics.update_stream(
        "cam",
        stream_status(**counters, state="reconnecting", clips=9, reconnects=3),
        frames_read=150,
        segment=1,
    )
    metrics.observe_batch("cpu", 4, 0.05)
    text = metrics.render().decode()
    assert 'vstmon_frames_read_total{stream="cam"} 150.0' in text
    assert 'vstmon_reconnects_total{stream="cam"} 3.0' in text
    assert 'vstmon_stream_state{state="reconnecting",stream="cam"} 1.0' in text
    assert 'vstmon_batch_size_count{device="cpu"} 1.0' in text


def test_missing_checkpoint_says_how_to_fetch(tmp_path: Path) -> None:
    from vstmon.errors import CheckpointError
    from vstmon.model.bundle import load_model_and_labels

    config = parse_config({"model": {"checkpoint": str(tmp_path / "nope.pth")}}, require_streams=False)
    with pytest.raises(CheckpointError, match="vstmon weights fetch"):
        load_model_and_labels(config)


# -- the daemon -----------------------------------------------------------------------------------------------
def test_several_file_streams_are_batched_and_published_with_continuous_seq(
    tmp_path: Path, model_files: tuple[Path, Path], run_daemon
) -> None:
    checkpoint, labels = model_files
    names = ["cam0", "cam1", "cam2", "cam3"]
    streams = []
    for i, name in enumerate(names):
        path = write_mjpg(tmp_path / f"{name}.avi", [("moving", range(i, i + 40))])
        streams.append({"name": name, "url": str(path)})
    daemon, sub = run_daemon(daemon_config(checkpoint, labels, streams, inference={"max_wait_ms": 200}))
    by_stream = collect(sub, ended(names))
    assert sub.gaps == 0
    for name in names:
        messages = by_stream[name]
        seqs = [m.seq for _, m in messages]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # +1 per message of the stream, any topic
        topics = [t.split(".")[0] for t, _ in messages]
        assert topics[0] == "reset" and messages[0][1].reason == "start"
        labels_msgs = [m for t, m in messages if t == f"label.{name}"]
        # 40 frames at 16 fps, 8-frame clips every 0.5 s (8 frames): clips end at frames 7, 15, 23, 31, 39
        assert len(labels_msgs) == 5
        for m in labels_msgs:
            assert m.v == 1 and m.type == "label" and m.segment == 1 and m.subject is None
            assert m.clip.frames == FRAMES and m.clip.last_frame - m.clip.first_frame == 7
            assert m.model and m.latency_ms >= 0
            scores = [s.score for s in m.top]
            assert len(scores) == NUM_CLASSES and scores == sorted(scores, reverse=True)
            assert abs(sum(scores) - 1.0) < 1e-4
        end = next(m for t, m in messages if t == f"reset.{name}" and m.reason == "end")
        summary = [m for t, m in messages if t == f"segment.{name}"][-1]
        assert summary.segment == 1 and summary.clips == 5 and end.previous_segment == 1
        assert topics.index("segment") < len(topics) - 1 - topics[::-1].index("reset")
    assert max(daemon.batch_sizes) > 1, daemon.batch_sizes  # clips of different streams shared batches
    assert sum(size * n for size, n in daemon.batch_sizes.items()) == 20


def test_labels_after_a_scene_cut_equal_a_fresh_run_on_the_second_half(
    tmp_path: Path, model_files: tuple[Path, Path], run_daemon
) -> None:
    """The leakage guarantee: nothing published after the automatic reset depends on frames before the cut."""
    checkpoint, labels = model_files
    cut, total = 27, 27 + 45  # the cut is not on a clip boundary of the first scene
    both = write_mjpg(tmp_path / "both.avi", [("scene_a", range(cut)), ("scene_b", range(cut, total))])
    second = write_mjpg(tmp_path / "second.avi", [("scene_b", range(cut, total))])
    streams = [{"name": "both", "url": str(both)}, {"name": "fresh", "url": str(second)}]
    _daemon, sub = run_daemon(daemon_config(checkpoint, labels, streams))
    by_stream = collect(sub, ended(["both", "fresh"]))
    resets = [m for t, m in by_stream["both"] if t == "reset.both"]
    assert [r.reason for r in resets] == ["start", "scene_change", "end"]
    assert [m.reason for t, m in by_stream["fresh"] if t == "reset.fresh"] == ["start", "end"]
    after = [m for t, m in by_stream["both"] if t == "label.both" and m.segment == 2]
    fresh = [m for t, m in by_stream["fresh"] if t == "label.fresh"]
    assert len(fresh) == 5 and len(after) == len(fresh)
    for a, f in zip(after, fresh, strict=True):
        assert a.clip.first_frame - cut == f.clip.first_frame
        assert a.clip.last_frame - cut == f.clip.last_frame
        for key in ("top", "smoothed"):
            mine, theirs = getattr(a, key), getattr(f, key)
            assert [s.index for s in mine] == [s.index for s in theirs]
            np.testing.assert_allclose([s.score for s in mine], [s.score for s in theirs], atol=1e-5)
    before = [m for t, m in by_stream["both"] if t == "label.both" and m.segment == 1]
    assert all(m.clip.last_frame < cut for m in before)


def _recording(path: Path, first_index: int, n_frames: int) -> Path:
    """One H.264 MPEG-TS recording whose clock starts at 0 (frames of the moving pattern from ``first_index``)."""
    return make_video(path, n_frames, FPS, size=VIDEO_SIZE, codec="h264", start_index=first_index)


@pytest.mark.skipif(not Path(FFMPEG).exists(), reason="needs Debian's ffmpeg (libx264, mpegts)")
def test_labels_after_a_timestamp_jump_equal_a_fresh_run_on_the_second_recording(
    tmp_path: Path, model_files: tuple[Path, Path], run_daemon
) -> None:
    """Two recordings concatenated (the clock starts over): the second one is labelled, as if alone."""
    checkpoint, labels = model_files
    first = _recording(tmp_path / "first.ts", 0, 43)
    second = _recording(tmp_path / "second.ts", 43, 40)
    both = tmp_path / "both.ts"
    both.write_bytes(first.read_bytes() + second.read_bytes())
    streams = [{"name": "both", "url": str(both)}, {"name": "fresh", "url": str(second)}]
    data = daemon_config(checkpoint, labels, streams, reset={"scene_change": {"enabled": False}})
    _daemon, sub = run_daemon(data)
    by_stream = collect(sub, ended(["both", "fresh"]))
    resets = [m for t, m in by_stream["both"] if t == "reset.both"]
    assert [r.reason for r in resets] == ["start", "time_jump", "end"]
    before = [m for t, m in by_stream["both"] if t == "label.both" and m.segment == 1]
    after = [m for t, m in by_stream["both"] if t == "label.both" and m.segment == 2]
    fresh = [m for t, m in by_stream["fresh"] if t == "label.fresh"]
    assert len(before) == 5 and len(fresh) == 5 and len(after) == len(fresh)  # nothing lost after the jump
    for a, f in zip(after, fresh, strict=True):
        # the same frames: the file is not reopened at a jump, so its frame indices go on counting
        assert a.clip.first_frame - 43 == f.clip.first_frame
        for key in ("top", "smoothed"):
            mine, theirs = getattr(a, key), getattr(f, key)
            assert [s.index for s in mine] == [s.index for s in theirs]
            np.testing.assert_allclose([s.score for s in mine], [s.score for s in theirs], atol=1e-5)


def test_a_file_loop_resets_with_reason_loop(
    tmp_path: Path, model_files: tuple[Path, Path], run_daemon
) -> None:
    checkpoint, labels = model_files
    path = write_mjpg(tmp_path / "loop.avi", [("moving", range(20))])
    streams = [{"name": "looping", "url": str(path), "loop": True}]
    _daemon, sub = run_daemon(daemon_config(checkpoint, labels, streams))

    def two_loops(by_stream: dict[str, list[tuple[str, dict[str, Any]]]]) -> bool:
        return sum(t == "reset.looping" and m.reason == "loop" for t, m in by_stream["looping"]) >= 2

    by_stream = collect(sub, two_loops)
    reasons = [m.reason for t, m in by_stream["looping"] if t == "reset.looping"]
    assert reasons[:3] == ["start", "loop", "loop"]
    # every pass of the 20-frame file gives its clips (frames 7, 15), none spanning a loop
    segment_two = [m for t, m in by_stream["looping"] if t == "label.looping" and m.segment == 2]
    assert [m.clip.last_frame for m in segment_two] == [7, 15]


def test_a_stalled_subscriber_loses_messages_and_does_not_block_the_daemon(
    tmp_path: Path, model_files: tuple[Path, Path], run_daemon
) -> None:
    checkpoint, labels = model_files
    names = ["a", "b", "c"]
    n_frames = 400  # a label per frame (hop 1/16 s): ~1,200 labels, far more than the stalled queues hold
    streams = [
        {"name": n, "url": str(write_mjpg(tmp_path / f"{n}.avi", [("moving", range(n_frames))]))}
        for n in names
    ]
    context = zmq.Context.instance()
    stalled = context.socket(zmq.SUB)  # subscribes to everything and never reads until the end
    stalled.setsockopt(zmq.RCVHWM, 1)
    stalled.setsockopt(zmq.RCVBUF, 4096)
    stalled.setsockopt(zmq.LINGER, 0)
    stalled.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        # sndhwm 100: the publisher queues at most 100 messages for the stalled subscriber, then drops its copies
        data = daemon_config(checkpoint, labels, streams, publish={"sndhwm": 100}, clip={"hop_s": 1 / FPS})
        daemon, sub = run_daemon(data, lambda d: stalled.connect(d.publisher.endpoints[0]))
        by_stream = collect(sub, ended(names), timeout_s=120)
        assert sub.gaps == 0  # the healthy subscriber, which keeps reading, lost nothing
        for name in names:
            assert len([t for t, _ in by_stream[name] if t == f"label.{name}"]) == n_frames - FRAMES + 1
        daemon.stop()  # no more heartbeats: what the stalled subscriber can still read is bounded
        published = daemon.publisher.stats()["sent"]
        stalled_count = 0
        while stalled.poll(500):
            stalled.recv_multipart()
            stalled_count += 1
        # the stalled subscriber got what fitted in its queues (the HWM and the TCP buffers), and lost the rest:
        # the drop path ran, and the daemon finished every stream meanwhile
        assert 0 < stalled_count < published - 100, (stalled_count, published)
    finally:
        stalled.close()


def test_no_motion_for_idle_s_resets_once(tmp_path: Path, model_files: tuple[Path, Path], run_daemon) -> None:
    checkpoint, labels = model_files
    still = write_mjpg(tmp_path / "still.avi", [("static", range(64))])  # 4 s without motion
    data = daemon_config(checkpoint, labels, [{"name": "still", "url": str(still)}], reset={"idle_s": 1.0})
    _daemon, sub = run_daemon(data)
    by_stream = collect(sub, ended(["still"]))
    reasons = [m.reason for t, m in by_stream["still"] if t == "reset.still"]
    assert reasons == ["start", "idle", "end"]
    labels_after = [m for t, m in by_stream["still"] if t == "label.still" and m.segment == 2]
    assert labels_after and labels_after[0].clip.first_frame >= 16  # cut from frames after the reset


def test_a_null_checkpoint_gives_untrained_weights_marked_as_such(
    tmp_path: Path, model_files: tuple[Path, Path]
) -> None:
    from vstmon.model.bundle import load_model_and_labels

    _checkpoint, labels = model_files
    config = parse_config(
        {"model": {"arch": "swin_t", "checkpoint": None, "labels": str(labels)}}, require_streams=False
    )
    loaded = load_model_and_labels(config, warn=False)
    assert loaded.untrained and loaded.model_id == "untrained:swin_t"
    assert len(loaded.labels) == NUM_CLASSES and loaded.model.config.num_classes == NUM_CLASSES


def test_watchdog_pings_stop_when_a_stage_thread_dies(
    tmp_path: Path, model_files: tuple[Path, Path], run_daemon, watchdog_socket: socket.socket
) -> None:
    checkpoint, labels = model_files
    video = write_mjpg(tmp_path / "loop.avi", [("moving", range(32))])
    stream = {"name": "cam", "url": str(video), "loop": True, "realtime": True}
    daemon, _sub = run_daemon(daemon_config(checkpoint, labels, [stream]))

    def received(window_s: float = 0.6) -> list[bytes]:
        """What arrives within ``window_s`` (pings come every 0.1 s while the daemon is healthy)."""
        return received_within(watchdog_socket, window_s)

    assert daemon.health_problems() == []
    assert b"WATCHDOG=1" in received()
    worker = daemon.streams["cam"].worker
    worker.stop()  # as if the stream's worker thread had died
    assert worker.join(5.0)
    assert daemon.health_problems() == ["worker cam thread died"]
    received(0.2)  # a ping may have been in flight when the worker died
    assert b"WATCHDOG=1" not in received()  # systemd would now kill and restart the daemon


def test_one_subscriber_fans_in_two_daemons_with_seq_per_stream(
    tmp_path: Path, model_files: tuple[Path, Path]
) -> None:
    """Labels from many boxes: one SUB socket connected to two daemons gets both, and seq still tells each
    stream's losses apart (none here)."""
    checkpoint, labels = model_files
    daemons: list[Daemon] = []
    names = ["east", "west"]
    try:
        for name in names:
            video = write_mjpg(tmp_path / f"{name}.avi", [("moving", range(40))])
            daemon = Daemon(
                parse_config(daemon_config(checkpoint, labels, [{"name": name, "url": str(video)}]))
            )
            daemon.start(start_sources=False)
            daemons.append(daemon)
        with Subscriber([d.publisher.endpoints[0] for d in daemons]) as sub:
            heard: set[str] = set()  # each daemon's heartbeat names its streams: both joined
            deadline = time.monotonic() + 30
            while heard != set(names) and time.monotonic() < deadline:
                message = sub.recv(timeout_s=0.5)
                if isinstance(message, DaemonStatus):
                    heard |= set(message.streams) & set(names)
            assert heard == set(names)
            for daemon in daemons:
                daemon.start_sources()
            by_stream = collect(sub, ended(names), timeout_s=120)
            assert sub.gaps == 0 and sub.missing == 0
        for name in names:
            seqs = [m.seq for _t, m in by_stream[name]]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
            assert any(t == f"label.{name}" for t, _m in by_stream[name])
    finally:
        for daemon in daemons:
            daemon.stop()


def test_compile_tensorrt_without_torch_tensorrt_extends_the_start_then_falls_back_with_one_error_line(
    tmp_path: Path,
    model_files: tuple[Path, Path],
    run_daemon,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``inference.compile: tensorrt`` here (no torch-tensorrt, no GPU): the warm-up runs inside systemd start-up
    extensions (EXTEND_TIMEOUT_USEC before READY=1), the build fails with one error line, torch.compile takes over
    and labels flow. ``torch.compile`` is replaced by a no-op so that the fallback costs nothing here;
    tests/inference/test_engine_compile.py compiles for real."""
    from tests.helpers.notify_listener import NotifyListener
    from vstmon.log import configure_logging

    configure_logging("info", "json")
    monkeypatch.setattr(torch, "compile", lambda model, **_options: model)  # the fallback costs nothing here
    checkpoint, labels = model_files
    video = write_mjpg(tmp_path / "clip.avi", [("moving", range(24))])
    with NotifyListener(tmp_path / "notify.sock") as listener:
        monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
        data = daemon_config(checkpoint, labels, [{"name": "cam", "url": str(video)}],
                             inference={"compile": "tensorrt"})  # fmt: skip
        daemon, sub = run_daemon(data)
        messages = listener.wait_for(lambda m: b"READY=1" in m, timeout_s=60)
        ready = messages.index(b"READY=1")
        assert any(m.startswith(b"EXTEND_TIMEOUT_USEC=") for m in messages[:ready])
        assert daemon.pool is not None and daemon.pool.engines[0].backend.forward_mode == "inductor"
        collect(sub, lambda by_stream: any(t.startswith("label.") for t, _m in by_stream.get("cam", [])))
    errors = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    errors = [r for r in errors if r.get("level") == "error"]
    assert len(errors) == 1, errors
    assert errors[0]["event"] == "tensorrt engine unavailable; running inductor instead"
    assert errors[0]["error"].startswith("ModuleNotFoundError")
