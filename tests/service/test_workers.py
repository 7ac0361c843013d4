"""Streams in worker processes (``workers.processes``): shared memory, the pipe, and crash isolation, with real
processes and signals."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.helpers.daemon import collect, daemon_config, ended, join_subscriber, write_mjpg
from vstmon.config import WorkersConfig, parse_config, worker_processes
from vstmon.service.daemon import Daemon
from vstmon.stream.buffers import SharedBlock, SharedClipBuffers, clip_shape
from vstmon.wire.client import LabelMessage, ResetMessage, Subscriber


# -- sizes ----------------------------------------------------------------------------------------------------------
def test_auto_means_one_process_per_stream_up_to_the_cores_minus_one() -> None:
    auto = WorkersConfig()
    assert worker_processes(auto, 8, cores=2) == 1
    assert worker_processes(auto, 8, cores=16) == 8
    assert worker_processes(auto, 64, cores=16) == 15
    assert worker_processes(auto, 0, cores=16) == 0
    assert worker_processes(WorkersConfig(processes=0), 8) == 0
    assert worker_processes(WorkersConfig(processes=4), 2) == 2  # never more processes than streams


def test_a_streams_shared_block_is_fixed_and_has_no_name_in_dev_shm() -> None:
    before = set(os.listdir("/dev/shm"))
    shape = clip_shape(32, 224)
    block = SharedBlock.create("cam1", slots=5, shape=shape)  # the stream's own clips + 4 people's
    try:
        assert block.nbytes == 5 * 2 * 32 * 224 * 224 * 3  # 48.2 MiB: fixed, whatever the video
        assert block.arrays.shape == (5, 2, 32, 224, 224, 3)
        assert set(os.listdir("/dev/shm")) == before  # a memfd: nothing to leak if a process dies
        other = SharedBlock.attach(os.dup(block.fd), 5, shape)  # what a worker process maps
        other.arrays[3, 1, 0, 0, 0] = (1, 2, 3)
        assert tuple(block.arrays[3, 1, 0, 0, 0]) == (1, 2, 3)  # one memory
        assert block.index_of(block.arrays[3, 1]) == (3, 1) and other.index_of(other.arrays[0, 1]) == (0, 1)
        other.close()
    finally:
        block.close()


def test_a_clip_array_is_cut_into_again_only_once_the_engine_released_it() -> None:
    buffers = SharedClipBuffers(np.zeros((2, 2, 4, 4, 3), np.uint8))
    first = buffers.acquire(lambda: False)
    buffers.submitted(first)
    second = buffers.acquire(lambda: False)
    assert second != first  # the other one
    buffers.submitted(second)
    assert buffers.acquire(lambda: True) is None  # both held by the engine: none to cut into (given up)
    buffers.released(first)
    assert buffers.acquire(lambda: False) == first


# -- the same labels as in one process ------------------------------------------------------------------------------
def _labels(data: dict[str, Any], names: list[str]) -> dict[tuple[str, int, int], np.ndarray]:
    daemon = Daemon(parse_config(data))
    daemon.start(start_sources=False)
    try:
        with Subscriber(daemon.publisher.endpoints[0]) as sub:
            join_subscriber(sub)
            daemon.start_sources()
            messages = collect(sub, ended(names), timeout_s=180)
            assert sub.gaps == 0  # no message lost
    finally:
        daemon.stop()
    out = {}
    for name in names:
        for _topic, message in messages[name]:
            if isinstance(message, LabelMessage):
                probs = np.zeros(10)
                for score in message.top:
                    probs[score.index] = score.score
                out[name, message.clip.first_frame, message.clip.last_frame] = probs
    return out


def test_worker_processes_give_the_labels_of_one_process(
    tmp_path: Path, model_files: tuple[Path, Path]
) -> None:
    checkpoint, labels = model_files
    videos = [
        write_mjpg(tmp_path / "a.avi", [("scene_a", range(30)), ("scene_b", range(30, 50))]),
        write_mjpg(tmp_path / "b.avi", [("moving", range(40))]),
        write_mjpg(tmp_path / "c.avi", [("scene_b", range(35))]),
    ]
    streams = [{"name": n, "url": str(v)} for n, v in zip("abc", videos, strict=True)]
    names = ["a", "b", "c"]
    alone = _labels(daemon_config(checkpoint, labels, streams, workers={"processes": 0}), names)
    spread = _labels(daemon_config(checkpoint, labels, streams, workers={"processes": 2}), names)
    assert sorted(spread) == sorted(alone) and len(alone) >= 12
    for key, probs in alone.items():
        np.testing.assert_allclose(spread[key], probs, atol=1e-5, rtol=0, err_msg=str(key))


# -- crash isolation ---------------------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _paced(tmp_path: Path, name: str) -> dict[str, Any]:
    """A camera-paced stream (a looping file read at its frame rate)."""
    video = write_mjpg(tmp_path / f"{name}.avi", [("moving", range(48))])
    return {"name": name, "url": str(video), "loop": True, "realtime": True}


def test_a_killed_worker_process_comes_back_with_a_reset_and_the_others_lose_nothing(
    tmp_path: Path, model_files: tuple[Path, Path], vstmon_process: Any
) -> None:
    checkpoint, labels = model_files
    streams = [_paced(tmp_path, name) for name in ("a", "b", "c", "d")]
    data = daemon_config(checkpoint, labels, streams, workers={"processes": 2, "restart_delay_s": 0.2})
    data["clip"] = {**data["clip"], "hop_s": 0.25}
    daemon = vstmon_process(data).wait_running(timeout_s=120)
    workers = [e for e in daemon.log_events() if e.get("event") == "worker process started"]
    assert len(workers) == 2 and sorted(_children(daemon.proc.pid)) == sorted(e["pid"] for e in workers)
    with Subscriber(daemon.pub) as sub:
        # every stream labelled, then one worker process killed as a crash would
        collect(sub, lambda b: all(any(t.startswith("label.") for t, _ in b.get(n, [])) for n in "abcd"), 120)
        victim = workers[0]["pid"]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        after = collect(
            sub,
            lambda b: (
                sum(
                    isinstance(m, ResetMessage) and m.reason == "worker_restart"
                    for n in "abcd"
                    for _, m in b.get(n, [])
                )
                >= 2
            ),
            timeout_s=60,
        )
        back_s = time.monotonic() - killed_at
        # and they label again
        more = collect(
            sub, lambda b: all(any(t.startswith("label.") for t, _ in b.get(n, [])) for n in "abcd"), 60
        )
        assert sub.malformed == 0
    restarted = {
        n
        for n in "abcd"
        for _, m in after.get(n, [])
        if isinstance(m, ResetMessage) and m.reason == "worker_restart"
    }
    others = set("abcd") - restarted
    assert len(restarted) == 2 and len(others) == 2
    assert back_s < 5.0 + 10.0  # within seconds (a loaded 2-core machine's slack on the 5 s goal)
    gaps = [gap for gap in sub.gap_log if gap.stream in others]
    assert gaps == []  # the other streams lost no message: no gap in their seq
    for name in restarted:
        resets = [m for _, m in after[name] if isinstance(m, ResetMessage) and m.reason == "worker_restart"]
        assert resets[0].segment == resets[0].previous_segment + 1 >= 2  # their segments go on
    assert all(any(t.startswith("label.") for t, _ in more[n]) for n in "abcd")
    new_workers = [e for e in daemon.log_events() if e.get("event") == "worker process started"]
    assert len(new_workers) == 3 and victim not in _children(daemon.proc.pid)
    assert daemon.terminate() == 0
    print(f"killed worker: its streams back in {back_s:.2f} s")


def test_killing_the_daemon_leaves_no_worker_process_and_no_shared_memory(
    tmp_path: Path, model_files: tuple[Path, Path], vstmon_process: Any
) -> None:
    shm_before = set(os.listdir("/dev/shm"))
    checkpoint, labels = model_files
    data = daemon_config(
        checkpoint, labels, [_paced(tmp_path, n) for n in ("a", "b")], workers={"processes": 2}
    )
    daemon = vstmon_process(data).wait_running(timeout_s=120)
    children = _children(daemon.proc.pid)
    assert len(children) == 2
    daemon.proc.kill()  # SIGKILL: nothing of the daemon runs after it
    daemon.proc.wait(10)
    gone = threading.Event()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in children):
        gone.wait(0.1)
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)]
    assert alive == [], f"worker processes outlived the daemon: {alive}"
    assert set(os.listdir("/dev/shm")) - shm_before == set()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
