"""Running as a service: reload on SIGHUP, signals, one shutdown deadline, last messages, health that means progress.

Real ``vstmon`` processes, real signals, real files and sockets; the watchdog test runs the daemon in-process with
a model whose forward pass blocks (a wedged GPU call, as far as the daemon can tell).
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from tests.helpers.daemon import collect, daemon_config, write_mjpg
from tests.helpers.notify_listener import NotifyListener, received_within
from tests.helpers.process import Vstmon
from vstmon.model import LoadedModel
from vstmon.service.health import DropLog, Throughput, stalled, status_line
from vstmon.stage import Stage
from vstmon.wire.client import Message, Subscriber

pytestmark = pytest.mark.slow


def looping(tmp_path: Path, name: str, first: int = 0) -> dict[str, Any]:
    video = write_mjpg(tmp_path / f"{name}.avi", [("moving", range(first, first + 48))])
    return {"name": name, "url": str(video), "loop": True, "realtime": True}


def of(messages: list[tuple[str, Any]], topic: str) -> list[Any]:
    """The typed messages on ``topic``."""
    return [m for t, m in messages if t == topic]


def rewrite(process: Vstmon, data: dict[str, Any]) -> None:
    """Write a new config over the running process's file (keeping its OS-chosen endpoints as they were)."""
    current = yaml.safe_load(process.config_path.read_text())
    data = {**data, "publish": current["publish"], "log": current["log"]}
    process.config_path.write_text(yaml.safe_dump(data))


# -- reload ---------------------------------------------------------------------------------------------------------
def test_sighup_applies_stream_changes_and_leaves_the_untouched_stream_alone(
    tmp_path: Path, model_files: tuple[Path, Path], vstmon_process
) -> None:
    checkpoint, labels = model_files
    keep, gone, change = (
        looping(tmp_path, "keep"),
        looping(tmp_path, "gone", 5),
        looping(tmp_path, "change", 9),
    )
    data = daemon_config(checkpoint, labels, [keep, gone, change])
    notify = NotifyListener(tmp_path / "notify.sock")  # plays systemd's part, reading all the time
    process = vstmon_process(data, {"NOTIFY_SOCKET": notify.address}).wait_running()
    with Subscriber(process.pub) as sub:
        collect(
            sub,
            lambda b: all(any(t.startswith("label.") for t, _ in b[n]) for n in ("keep", "gone", "change")),
        )
        changed = {**change, "url": str(write_mjpg(tmp_path / "change2.avi", [("scene_b", range(48))]))}
        added = looping(tmp_path, "added", 20)
        rewrite(process, daemon_config(checkpoint, labels, [keep, changed, added]))
        hup_s = time.monotonic()
        process.proc.send_signal(signal.SIGHUP)

        def applied(b: dict[str, list[tuple[str, dict[str, Any]]]]) -> bool:
            return (
                any(m.state == "stopped" for m in of(b["gone"], "status.gone"))
                and any(m.reason == "start" for m in of(b["change"], "reset.change"))
                and any(t == "label.added" for t, _ in b["added"])
            )

        after = collect(sub, applied, timeout_s=60)
        reload_s = time.monotonic() - hup_s
        # a broken file: refused, the daemon runs on
        process.config_path.write_text("streams: [\n")
        process.proc.send_signal(signal.SIGHUP)
        more = collect(sub, lambda b: len(of(b["keep"], "label.keep")) >= 6, timeout_s=60)
    assert process.proc.poll() is None, process.log()
    print(f"reload: SIGHUP -> the added stream's first label in {reload_s:.2f} s")
    told = notify.wait_for(lambda m: sum(x.startswith(b"READY=1\nSTATUS=") for x in m) >= 2, timeout_s=30)
    notify.close()
    said = [m.decode() for m in told[told.index(b"READY=1") + 1 :]]  # after start-up
    reloads = [m for m in said if m.startswith("RELOADING=1\nMONOTONIC_USEC=")]
    readies = [m for m in said if m.startswith("READY=1\nSTATUS=")]
    assert len(reloads) == 2 and len(readies) == 2  # each RELOADING=1 answered by a READY=1
    assert readies[0] == "READY=1\nSTATUS=reloaded"
    assert readies[1].startswith("READY=1\nSTATUS=reload refused (still running the previous config)")
    keep_messages = after["keep"] + more["keep"]
    seqs = [m.seq for _, m in keep_messages]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap across two reloads
    assert [m for m in of(keep_messages, "reset.keep") if m.reason != "loop"] == []  # only its own loops
    gone_summary = of(after["gone"], "segment.gone")
    assert gone_summary and gone_summary[-1].clips >= 0  # its last segment was closed, then it stopped
    assert not any(t.startswith("label.gone") for t, _ in more["gone"])
    change_starts = of(after["change"], "reset.change")
    assert change_starts[-1].segment == 1  # restarted: a new stream under the same name
    events = process.log_events()
    reloaded = [e for e in events if e.get("event") == "config reloaded"]
    assert reloaded and reloaded[0]["stopped"] == ["gone"] and reloaded[0]["started"] == ["added"]
    assert reloaded[0]["restarted"] == ["change"] and reloaded[0]["unchanged"] == ["keep"]
    refused = [e for e in events if "reload refused" in e.get("event", "")]
    assert len(refused) == 1 and "not valid YAML" in refused[0]["error"]
    assert process.terminate() == 0


def test_a_model_change_is_reported_as_needing_a_restart_not_applied(
    tmp_path: Path, model_files: tuple[Path, Path], vstmon_process
) -> None:
    checkpoint, labels = model_files
    data = daemon_config(checkpoint, labels, [looping(tmp_path, "cam")])
    process = vstmon_process(data).wait_running()
    data["model"] = {**data["model"], "device": "cpu", "precision": "fp32"}
    data["inference"] = {**data["inference"], "max_batch": 2}
    rewrite(process, data)
    process.proc.send_signal(signal.SIGHUP)
    done = threading.Event()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(
        e.get("event") == "config reloaded" for e in process.log_events()
    ):
        done.wait(0.1)
    events = process.log_events()
    reloaded = next(e for e in events if e.get("event") == "config reloaded")
    assert reloaded["needs_restart"] == ["model", "inference"] and reloaded["unchanged"] == ["cam"]
    assert any("need a restart" in e.get("event", "") for e in events)
    assert process.terminate() == 0


# -- signals and stopping ---------------------------------------------------------------------------------------
def test_sigterm_ends_with_final_summaries_and_a_stopped_status(
    tmp_path: Path, model_files: tuple[Path, Path], vstmon_process
) -> None:
    checkpoint, labels = model_files
    process = vstmon_process(daemon_config(checkpoint, labels, [looping(tmp_path, "cam")])).wait_running()
    with Subscriber(process.pub) as sub:
        collect(sub, lambda b: len(of(b["cam"], "label.cam")) >= 2)
        started_s = time.monotonic()
        process.proc.send_signal(signal.SIGTERM)
        last: list[tuple[str, Message]] = []
        last_s = started_s
        while (message := sub.recv(timeout_s=5.0)) is not None:
            last.append((message.topic, message))
            last_s = time.monotonic()
        assert sub.malformed == 0, sub.last_error
    assert process.terminate() == 0
    topics = [t for t, _ in last]
    assert "segment.cam" in topics and topics.index("segment.cam") < topics.index("status"), process.log()[
        -6000:
    ]
    stopped = [m for t, m in last if t == "status.cam" and m.state == "stopped"]
    assert stopped and [m for t, m in last if t == "status"][-1].state == "stopped"
    assert topics[-1] == "status"  # the daemon's last word before its socket closed
    print(f"SIGTERM -> last message in {last_s - started_s:.3f} s")


def test_one_shutdown_deadline_and_a_second_sigint_exits_at_once(
    tmp_path: Path, model_files: tuple[Path, Path], vstmon_process, silent_server: int
) -> None:
    """A camera whose open hangs for 60 s keeps its reader thread busy: the stop still ends at the deadline."""
    checkpoint, labels = model_files
    hung = {"name": "hung", "url": f"rtsp://127.0.0.1:{silent_server}/s", "open_timeout_s": 60}
    data = daemon_config(checkpoint, labels, [hung], service={"shutdown_timeout_s": 3})
    first = vstmon_process(data).wait_running()
    started_s = time.monotonic()
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(30) == 0
    took_s = time.monotonic() - started_s
    assert took_s < 3 + 20.0, took_s  # the deadline, plus the slack of a loaded machine: not the 60 s open
    print(f"SIGTERM with a hung camera: stopped in {took_s:.2f} s (deadline 3 s)")
    assert any("did not stop in time" in e.get("event", "") for e in first.log_events())

    (tmp_path / "second").mkdir()
    second = Vstmon(tmp_path / "second", data)
    try:
        second.wait_running()
        second.proc.send_signal(signal.SIGINT)  # an orderly stop begins (and waits for the hung camera)
        stopping = threading.Event()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            e.get("event") == "stopping" for e in second.log_events()
        ):
            stopping.wait(0.05)
        interrupted_s = time.monotonic()
        second.proc.send_signal(signal.SIGINT)  # enough: now
        assert second.proc.wait(10) == 130  # 130: the second interrupt's exit, not the orderly stop's 0
        assert time.monotonic() - interrupted_s < 10.0
        assert "second interrupt" in second.log()
    finally:
        second.kill()


# -- health ---------------------------------------------------------------------------------------------------------
class _Blocking(nn.Module):
    """A model whose forward pass waits until released: an engine stuck in a device call."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 10)
        self.entered = threading.Event()
        self.release = threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        self.release.wait(60)
        return self.head(x.mean(dim=(2, 3, 4)))


def test_a_wedged_engine_stops_the_watchdog_pings_and_says_so(
    tmp_path: Path, model_files: tuple[Path, Path], watchdog_socket: socket.socket
) -> None:
    from vstmon.config import parse_config
    from vstmon.service.daemon import Daemon

    checkpoint, labels = model_files
    data = daemon_config(checkpoint, labels, [looping(tmp_path, "cam")], service={"progress_timeout_s": 1})
    model = _Blocking()
    names = [f"action_{i}" for i in range(10)]
    daemon = Daemon(parse_config(data), LoadedModel(model.eval(), names, "blocking", untrained=True))

    def received(window_s: float) -> list[bytes]:
        return received_within(watchdog_socket, window_s)

    try:
        daemon.start()
        assert model.entered.wait(30)  # the first batch is in the forward pass, and stays there
        assert any(m == b"WATCHDOG=1" for m in received(0.5))  # not yet: within progress_timeout_s
        wedged = threading.Event()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not daemon.health_problems():
            wedged.wait(0.1)
        assert any("engine cpu: no batch finished" in p for p in daemon.health_problems())
        daemon._heartbeat(daemon.health_problems())  # what the tick loop does: the metrics say it too
        scraped = daemon.metrics.render().decode()
        assert 'vstmon_engine_busy{device="cpu"} 1.0' in scraped
        assert (
            'vstmon_stream_segment{stream="cam"} 1.0' in scraped
            and "process_resident_memory_bytes" in scraped
        )
        received(0.3)  # a ping may have been in flight
        later = received(1.0)
        assert b"WATCHDOG=1" not in later
        status = [m for m in later if m.startswith(b"STATUS=")]
        assert status and b"no batch finished" in status[-1] and b"streams up" in status[-1]
        model.release.set()  # it comes back: pings resume
        assert any(m == b"WATCHDOG=1" for m in received(3.0))
    finally:
        model.release.set()
        daemon.stop()


def test_throughput_and_drop_log_count_the_last_minute() -> None:
    window = Throughput(window_s=60.0)
    for i in range(0, 100, 5):  # every 5 s: 2 labels/s and 1 drop/s
        window.sample(labels_total=2 * i, dropped_total=i, now_s=float(i))
    labels_per_s, dropped = window.rates()
    assert labels_per_s == pytest.approx(2.0) and dropped == 60  # the last 60 s only
    log = DropLog(interval_s=60.0)
    assert log.update(60, 2.0, 60.0, now_s=100.0) is True
    assert log.update(60, 2.0, 60.0, now_s=130.0) is False  # rate-limited
    assert log.update(0, 2.0, 60.0, now_s=200.0) is False  # nothing dropped: nothing said
    assert log.update(5, 2.0, 60.0, now_s=200.0) is True and log.lines == 2
    line = status_line(3, 4, 12.34, 7, ["engine cuda:0: no batch finished for 130 s with clips waiting"])
    assert line == (
        "3/4 streams up, 12.3 labels/s, 7 clips dropped in the last minute; "
        "engine cuda:0: no batch finished for 130 s with clips waiting"
    )


def test_stalled_names_only_the_stages_with_work_and_no_progress() -> None:
    class Waiting(Stage):
        def __init__(self, name: str, busy: bool, since_s: float) -> None:
            super().__init__(name)
            self._progress = (busy, since_s)

        def progress(self) -> tuple[bool, float]:
            return self._progress

    stages = [Waiting("engine-cpu", True, 200.0), Waiting("engine-cuda:1", False, 999.0)]
    stages += [Waiting("worker-cam1", True, 5.0), Waiting("worker-cam2", True, 121.0)]
    assert stalled(stages, timeout_s=120.0) == [
        "engine-cpu: no progress for 200 s with work waiting",
        "worker-cam2: no progress for 121 s with work waiting",
    ]
