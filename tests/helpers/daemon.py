"""Shared test helpers (moved from tests/service/test_daemon.py so that no test imports another test module)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import pytest
import torch

from tests.helpers.videos import render_frame
from vstmon.config import parse_config
from vstmon.service.daemon import Daemon
from vstmon.wire.client import DaemonStatus, Message, Subscriber

NUM_CLASSES = 10


SIZE_PX = 64


FRAMES = 8


FPS = 16.0


VIDEO_SIZE = (96, 64)  # (width, height); fitted to 64x64 (short side 64, centre crop)


# -- shared helpers -------------------------------------------------------------------------------------------
def tiny_checkpoint(directory: Path) -> tuple[Path, Path]:
    """A small Video Swin (random weights, fixed seed) saved in the official layout, and its label file."""
    from vstmon.model import build_model
    from vstmon.model.presets import SwinConfig

    torch.manual_seed(1234)
    config = SwinConfig(
        embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=(8, 7, 7), drop_path_rate=0.0
    )
    model = build_model(config, NUM_CLASSES)
    path = directory / "tiny_swin.pth"
    torch.save(
        {"meta": {"note": "vstmon test model, random weights"}, "state_dict": model.state_dict()}, path
    )
    labels = directory / "labels.txt"
    labels.write_text("".join(f"action_{i}\n" for i in range(NUM_CLASSES)))
    return path, labels


def write_mjpg(path: Path, patterns: list[tuple[str, range]], fps: float = FPS) -> Path:
    """An MJPG .avi (intra-only: equal frames decode equally in any file) of ``(pattern, frame indices)``."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, VIDEO_SIZE)
    assert writer.isOpened()
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 95)
    try:
        for pattern, indices in patterns:
            for index in indices:
                writer.write(render_frame(index, VIDEO_SIZE, pattern))
    finally:
        writer.release()
    return path


def daemon_config(
    checkpoint: Path,
    labels: Path,
    streams: list[dict[str, Any]],
    pub_port: int | str = "*",
    control_port: int | str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A small daemon config; ports default to ``*`` (the OS picks a free one: no race with other processes),
    ``control_port=None`` disables the control socket."""
    data: dict[str, Any] = {
        "model": {"arch": "auto", "checkpoint": str(checkpoint), "labels": str(labels), "device": "cpu"},
        "clip": {"frames": FRAMES, "frame_interval": 1, "size_px": SIZE_PX, "hop_s": 0.5},
        "inference": {"max_batch": 4, "max_wait_ms": 100, "threads": 1},
        "streams": streams,
        "reset": {"scene_change": {"enabled": True, "threshold": 0.5, "min_segment_s": 0.5}},
        "smoothing": {"method": "mean", "window_clips": 3},
        "publish": {
            "endpoints": [f"tcp://127.0.0.1:{pub_port}"],
            "control": f"tcp://127.0.0.1:{control_port}" if control_port is not None else None,
            "top_k": NUM_CLASSES,
            "heartbeat_s": 0.2,
        },
        "log": {"level": "warning", "format": "console"},
    }
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data


def join_subscriber(sub: Subscriber, timeout_s: float = 10.0) -> None:
    """Slow joiner: wait until the daemon's heartbeat reaches the subscriber."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if isinstance(sub.recv(timeout_s=0.5), DaemonStatus):
            return
    raise AssertionError("the subscriber never received the daemon's status heartbeat")


ByStream = dict[str, list[tuple[str, Any]]]  # stream -> (topic, typed message of vstmon.wire.protocol)


def collect(sub: Subscriber, until: Any, timeout_s: float = 60.0) -> ByStream:
    """Per stream, every (topic, typed message) received until ``until(by_stream)`` is true. Every message must
    parse into the client's models: one that does not fails the test."""
    by_stream: ByStream = defaultdict(list)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message: Message | None = sub.recv(timeout_s=0.5)
        assert sub.malformed == 0, f"a message does not follow the protocol: {sub.last_error}"
        if message is None:
            continue
        if not isinstance(message, DaemonStatus):
            by_stream[message.stream].append((message.topic, message))
        if until(by_stream):
            return by_stream
    raise AssertionError(f"timed out; received: { {k: len(v) for k, v in by_stream.items()} }")


def ended(names: list[str]) -> Any:
    def check(by_stream: ByStream) -> bool:
        return all(
            any(t.startswith("reset.") and m.reason == "end" for t, m in by_stream.get(n, [])) for n in names
        )

    return check


# -- fixtures -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


@pytest.fixture
def run_daemon():
    """``start(data, before_sources=None) -> (daemon, subscriber)``: an in-process daemon on OS-chosen ports, with
    a subscriber that has joined (seen a heartbeat) before the streams start; stopped and checked for leaked
    threads at the end."""
    started: list[Daemon] = []

    def start(data: dict[str, Any], before_sources: Any = None) -> tuple[Daemon, Subscriber]:
        # in this process, on threads (tests look inside), unless the test asks for worker processes
        config = parse_config({"workers": {"processes": 0}, **data})
        daemon = Daemon(config)
        daemon.start(start_sources=False)
        started.append(daemon)
        if before_sources is not None:
            before_sources(daemon)
        sub = Subscriber(daemon.publisher.endpoints[0])
        subs.append(sub)
        join_subscriber(sub)
        daemon.start_sources()
        return daemon, sub

    subs: list[Subscriber] = []
    before = {t.ident for t in threading.enumerate()}
    yield start
    for daemon in started:
        daemon.stop()
    for sub in subs:
        sub.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        leftover = [
            t for t in threading.enumerate() if t.ident not in before and not t.name.startswith("ZMQbg")
        ]
        if not leftover:
            break
        time.sleep(0.05)
    assert not leftover, f"threads left running: {[t.name for t in leftover]}"
