"""End to end: a real ``vstmon`` process, real files and a real RTSP server, real ZeroMQ sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers.cli import vstmon_env
from tests.helpers.daemon import ByStream, collect, daemon_config, tiny_checkpoint, write_mjpg
from tests.helpers.notify_listener import NotifyListener
from vstmon.wire.client import LabelMessage, Subscriber
from vstmon.wire.protocol import ErrorReply, ResetCommand, ResetReply, StatusReply

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


def labels_of(by_stream: ByStream, name: str) -> list[LabelMessage]:
    return [m for t, m in by_stream.get(name, []) if t == f"label.{name}"]


def test_vstmon_process_serves_files_and_control_and_exits_0_on_sigterm(
    tmp_path: Path, model_files: tuple[Path, Path], vstmon_process
) -> None:
    checkpoint, labels = model_files
    streams = [
        {
            "name": f"file{i}",
            "url": str(write_mjpg(tmp_path / f"f{i}.avi", [("moving", range(64))])),
            "loop": True,
            "realtime": True,
        }
        for i in range(2)
    ]
    streams.append({"name": "broken", "url": str(tmp_path / "missing.mp4")})
    data = daemon_config(checkpoint, labels, streams, control_port="*")
    notify = NotifyListener(tmp_path / "notify.sock")  # plays systemd's part (Type=notify, watchdog)
    notify_env = {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "1000000"}
    process = vstmon_process(data, notify_env)
    told = notify.wait_for(lambda m: b"WATCHDOG=1" in m, timeout_s=60)
    before_pings = told[: told.index(b"WATCHDOG=1")]
    ready = before_pings.index(b"READY=1")
    assert before_pings[ready:] == [b"READY=1"]  # ready first, then pings
    assert before_pings[:ready] and all(m.startswith(b"EXTEND_TIMEOUT_USEC=") for m in before_pings[:ready])
    process.wait_running()
    with Subscriber(process.pub) as sub:

        def enough(by_stream: ByStream) -> bool:
            return all(len(labels_of(by_stream, s["name"])) >= 3 for s in streams[:2])

        by_stream = collect(sub, enough, timeout_s=90)
        for name in ("file0", "file1"):
            seqs = [m.seq for _, m in by_stream[name]]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
        status = process.request({"cmd": "status"})
        assert isinstance(status, StatusReply) and set(status.streams) == {"file0", "file1", "broken"}
        assert status.streams["broken"].state == "failed"  # a bad stream never takes the others down
        assert status.streams["file0"].state == "streaming"

        reply = process.request({"cmd": "reset", "stream": "file0", "subject": "p-43"})
        assert isinstance(reply, ResetReply) and reply.segment >= 2
        segment = reply.segment

        def reset_seen(by_stream: ByStream) -> bool:
            return any(m.segment == segment and m.subject == "p-43" for m in labels_of(by_stream, "file0"))

        after = collect(sub, reset_seen, timeout_s=60)["file0"]
        topics = [t for t, _ in after]
        reset_at = next(i for i, (t, m) in enumerate(after) if t == "reset.file0" and m.reason == "control")
        assert topics[reset_at - 1] == "segment.file0"
        assert after[reset_at][1].subject == "p-43" and after[reset_at][1].segment == segment
        later = after[reset_at + 1 :]
        next_reset = next((i for i, (t, _) in enumerate(later) if t == "reset.file0"), len(later))
        later_labels = [m for t, m in later[:next_reset] if t == "label.file0"]
        assert later_labels and all(m.segment == segment and m.subject == "p-43" for m in later_labels)

        for bad in (b"{not json", {"cmd": "reset", "stream": "nope"}, {"cmd": "reset"}, {"cmd": "explode"}):
            answer = process.request(bad)
            assert isinstance(answer, ErrorReply) and answer.error
        assert process.request({"cmd": "status"}).ok  # the daemon carries on

    started = time.monotonic()
    assert process.terminate() == 0, process.log()
    assert time.monotonic() - started < 20
    notify.close()  # the process has exited: all it said has been read
    messages = notify.messages[notify.messages.index(b"WATCHDOG=1") :]
    # STOPPING=1 is the last word: no ping or STATUS= line from the heartbeat may follow it
    assert messages[-1] == b"STOPPING=1", messages[-3:]
    assert all(m == b"WATCHDOG=1" or m.startswith(b"STATUS=") for m in messages[:-1]), messages


def test_vstmon_process_with_an_rtsp_stream_and_a_file(
    tmp_path: Path,
    model_files: tuple[Path, Path],
    vstmon_process,
    rtsp_servers,
) -> None:
    checkpoint, labels = model_files
    server = rtsp_servers(mode="testsrc", fps=16)
    video = write_mjpg(tmp_path / "f.avi", [("moving", range(64))])
    streams = [
        {"name": "cam", "url": server.url, "open_timeout_s": 10},
        {"name": "file", "url": str(video), "loop": True, "realtime": True},
    ]
    process = vstmon_process(daemon_config(checkpoint, labels, streams, control_port="*")).wait_running()
    with Subscriber(process.pub) as sub:
        by_stream = collect(
            sub, lambda b: len(labels_of(b, "cam")) >= 3 and len(labels_of(b, "file")) >= 3, timeout_s=90
        )
    for message in labels_of(by_stream, "cam"):
        assert message.clip.frames == 8 and message.segment >= 1
    status = [m for t, m in by_stream["cam"] if t == "status.cam"]
    assert status and status[-1].state == "streaming"
    assert process.terminate() == 0, process.log()


def test_check_command_accepts_a_good_config_and_explains_a_bad_one(
    tmp_path: Path, model_files: tuple[Path, Path]
) -> None:
    checkpoint, labels = model_files
    streams = [{"name": "cam", "url": "rtsp://user:secret@10.0.0.5/stream1"}]
    data = daemon_config(checkpoint, labels, streams)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(data))
    env = vstmon_env()
    result = subprocess.run(
        [sys.executable, "-m", "vstmon", "check", "--config", str(good)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "10 classes" in result.stdout and "secret" not in result.stdout and "cam:" in result.stdout
    data["model"]["checkpoint"] = str(tmp_path / "absent.pth")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = subprocess.run(
        [sys.executable, "-m", "vstmon", "check", "--config", str(bad)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 78  # EX_CONFIG: a configuration error
    assert "absent.pth does not exist" in result.stderr and "vstmon weights fetch" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_rtsp_reconnect_resets_the_segment_and_keeps_the_subject(
    model_files: tuple[Path, Path],
    rtsp_servers,
) -> None:
    from tests.helpers.daemon import join_subscriber
    from vstmon.config import parse_config
    from vstmon.service.daemon import Daemon

    checkpoint, labels = model_files
    server = rtsp_servers(mode="testsrc", fps=16)
    streams = [
        {
            "name": "cam",
            "url": server.url,
            "read_timeout_s": 2,
            "stall_timeout_s": 2,
            "reconnect": {"initial_delay_s": 0.2, "max_delay_s": 1.0},
        }
    ]
    daemon = Daemon(parse_config(daemon_config(checkpoint, labels, streams, control_port="*")))
    daemon.start(start_sources=False)
    try:
        with Subscriber(daemon.publisher.endpoints[0]) as sub:
            join_subscriber(sub)
            daemon.start_sources()
            collect(sub, lambda b: len(labels_of(b, "cam")) >= 2, timeout_s=60)
            assert daemon._handle_control(ResetCommand(stream="cam", subject="p-7")) == ResetReply(segment=2)
            server.restart()  # the camera goes away and comes back: a discontinuity
            after = collect(
                sub,
                lambda b: any(m.segment == 3 for m in labels_of(b, "cam")),
                timeout_s=60,
            )["cam"]
        resets = [m for t, m in after if t == "reset.cam"]
        assert [r.reason for r in resets][-1] == "reconnect"
        assert resets[-1].subject == "p-7" and resets[-1].segment == 3
        states = [m.state for t, m in after if t == "status.cam"]
        assert "reconnecting" in states
    finally:
        daemon.stop()


def test_a_start_that_fails_reports_one_error_and_no_stop(
    tmp_path: Path, model_files: tuple[Path, Path], vstmon_process
) -> None:
    checkpoint, labels = model_files
    video = write_mjpg(tmp_path / "f.avi", [("moving", range(20))])
    with socket.socket() as taken:  # the control port is held by someone else
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        data = daemon_config(checkpoint, labels, [{"name": "f", "url": str(video)}])
        data["publish"]["control"] = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        config = tmp_path / "taken.yaml"
        config.write_text(yaml.safe_dump({**data, "log": {"level": "info", "format": "json"}}))
        result = subprocess.run(
            [sys.executable, "-m", "vstmon", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            env=vstmon_env(),
            check=False,
        )
    assert result.returncode == 78, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("vstmon: error:")]
    assert len(errors) == 1 and "publish.control: cannot bind" in errors[0], result.stderr
    assert "vstmon stopped" not in result.stderr  # it never ran: no stop is reported before the error
    assert "Traceback" not in result.stderr


def test_state_changes_are_logged_once_and_a_file_shorter_than_a_clip_is_announced(
    tmp_path: Path, model_files: tuple[Path, Path], vstmon_process
) -> None:
    checkpoint, labels = model_files
    streams = [
        {"name": "whole", "url": str(write_mjpg(tmp_path / "whole.avi", [("moving", range(20))]))},
        {
            "name": "short",
            "url": str(write_mjpg(tmp_path / "short.avi", [("moving", range(3))])),
            "loop": True,
        },
    ]
    process = vstmon_process(daemon_config(checkpoint, labels, streams)).wait_running()
    with Subscriber(process.pub) as sub:
        collect(sub, lambda b: sum(t == "reset.short" and m.reason == "loop" for t, m in b["short"]) >= 2)
    assert process.terminate() == 0, process.log()
    events = process.log_events()
    ended = [e for e in events if e.get("event") == "stream state" and e.get("state") == "ended"]
    assert [e["stream"] for e in ended] == ["whole"], ended  # once (the source logs it; the daemon did too)
    short = [e for e in events if "shorter than one clip" in e.get("event", "")]
    assert [(e["stream"], e["frames"], e["clip_frames"]) for e in short] == [("short", 3, 8)]
    assert not any(
        "shorter than one clip" in e.get("event", "") for e in events if e.get("stream") == "whole"
    )
