"""Inference on a Triton server: a real ``vstmon serve`` (PyTriton's ``tritonserver``) on 127.0.0.1, real daemons
with ``inference.backend: triton``.

The server runs in its own environment (nvidia-pytriton pins numpy<2): ``$VSTMON_SERVE_PYTHON``, or
``.venv-serve/bin/python`` in the repo (``.ci/run`` makes it). Without one these tests are skipped, unless
``VSTMON_REQUIRE_SERVE=1`` (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers.cli import REPO_ROOT, run_vstmon
from tests.helpers.daemon import (
    ByStream,
    collect,
    daemon_config,
    ended,
    write_mjpg,
)
from tests.helpers.triton_server import Server, serve_python
from vstmon.config import TritonServerConfig, parse_config
from vstmon.errors import ConfigError
from vstmon.wire.client import LabelMessage

pytestmark = pytest.mark.slow


def _require_serve_environment() -> None:
    if serve_python() is None:
        reason = "no serve environment (.venv-serve/bin/python or $VSTMON_SERVE_PYTHON; .ci/run makes it)"
        if os.environ.get("VSTMON_REQUIRE_SERVE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    _require_serve_environment()
    started: list[Server] = []
    yield started
    for server in started:
        try:
            server.stop()
        finally:
            server.kill()


def _triton(server: Server, **triton: Any) -> dict[str, Any]:
    return {"backend": "triton", "triton": {"url": server.url, "timeout_s": 30.0, **triton}}


def _labels(by_stream: ByStream) -> dict[tuple[str, int, int], LabelMessage]:
    return {
        (m.stream, m.segment, m.clip.first_frame): m
        for messages in by_stream.values()
        for t, m in messages
        if t.startswith("label.")
    }


def test_labels_through_triton_equal_the_local_backend(tmp_path, model_files, run_daemon, servers):
    checkpoint, labels = model_files
    server = Server(tmp_path, checkpoint, labels)
    servers.append(server.start())
    cut = 27
    videos = {
        "cut": write_mjpg(tmp_path / "cut.avi", [("scene_a", range(cut)), ("scene_b", range(cut, 70))]),
        "plain": write_mjpg(tmp_path / "plain.avi", [("moving", range(50))]),
    }
    streams = [{"name": name, "url": str(path)} for name, path in videos.items()]
    runs = {}
    for backend, inference in (("local", {}), ("triton", _triton(server))):
        _daemon, sub = run_daemon(daemon_config(checkpoint, labels, streams, inference=inference))
        runs[backend] = _labels(collect(sub, ended(list(videos)), timeout_s=180))
    assert runs["local"] and runs["local"].keys() == runs["triton"].keys()
    for key, local in runs["local"].items():
        remote = runs["triton"][key]
        assert remote.model == local.model == "tiny_swin@" + local.model.split("@")[1]
        for field in ("top", "smoothed"):
            assert [s.index for s in getattr(remote, field)] == [s.index for s in getattr(local, field)]
            np.testing.assert_allclose(
                [s.score for s in getattr(remote, field)], [s.score for s in getattr(local, field)], atol=1e-5
            )


def test_the_daemon_survives_the_server_dying_drops_and_counts_clips_and_resumes(
    tmp_path, model_files, run_daemon, servers
):
    checkpoint, labels = model_files
    server = Server(tmp_path, checkpoint, labels)
    servers.append(server.start())
    video = write_mjpg(tmp_path / "loop.avi", [("scene_a", range(20)), ("scene_b", range(20, 40))])
    streams = [{"name": "cam", "url": str(video), "loop": True}]
    inference = _triton(server, timeout_s=5.0, retry_initial_s=0.2, retry_max_s=1.0)
    daemon, sub = run_daemon(daemon_config(checkpoint, labels, streams, inference=inference))
    runner = daemon.pool.engines[0].backend

    def labels_count(n: int) -> Any:
        return lambda by_stream: sum(t == "label.cam" for t, _ in by_stream.get("cam", [])) >= n

    collect(sub, labels_count(3), timeout_s=120)
    server.kill()
    # down: the daemon goes on capturing and resetting; clips are dropped and counted, not queued
    before_down = runner.clips_dropped_server_down
    down = collect(
        sub,
        lambda b: runner.up is False and runner.clips_dropped_server_down > before_down + 3
        and sum(t == "reset.cam" for t, _ in b.get("cam", [])) >= 2
        and any(t == "status.cam" and m.inference == "down" for t, m in b.get("cam", [])),
        timeout_s=120,
    )  # fmt: skip
    assert daemon.pool.engines[0].alive
    assert (
        daemon.pool.engines[0].batcher.pending_count() <= 1
    )  # one slot per clip stream, whatever the outage
    stats = daemon.pool.engines[0].stats()["backend"]
    assert stats["up"] is False and stats["request_errors"] >= 1 and stats["clips_dropped_server_down"] > 0
    resets_while_down = [m.segment for t, m in down["cam"] if t == "reset.cam"]
    # back: the same address, a new server; labels flow again and belong to the current segment
    server.start()
    after = collect(sub, labels_count(3), timeout_s=180)
    assert runner.up is True
    # the stream's heartbeat says so too
    collect(sub, lambda b: any(t == "status.cam" and m.inference == "up" for t, m in b.get("cam", [])), 30)
    resets = [m for t, m in after["cam"] if t == "reset.cam"]
    for t, m in after["cam"]:
        if t == "label.cam":
            newest = max((r.segment for r in resets if r.seq < m.seq), default=max(resets_while_down))
            assert m.segment == newest  # a label never belongs to a segment already reset
    seqs = [m.seq for _t, m in down["cam"] + after["cam"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_two_daemons_share_one_server_whose_batches_mix_them(tmp_path, model_files, run_daemon, servers):
    checkpoint, labels = model_files
    server = Server(
        tmp_path, checkpoint, labels, max_queue_delay_ms=200.0
    )  # room for both to meet in a batch
    servers.append(server.start())
    subs = []
    for name in ("north", "south"):  # looping files: the first keeps sending while the second starts
        video = write_mjpg(tmp_path / f"{name}.avi", [("moving", range(60))])
        streams = [{"name": name, "url": str(video), "loop": True}]
        inference = {**_triton(server), "max_batch": 2}
        subs.append((name, run_daemon(daemon_config(checkpoint, labels, streams, inference=inference))[1]))
    for name, sub in subs:  # both running at once, for a while
        collect(sub, lambda b, name=name: sum(t == f"label.{name}" for t, _ in b.get(name, [])) >= 10, 180)
    batches = server.batches()
    assert batches and max(b["requests"] for b in batches) >= 2, batches[:20]


def test_a_daemon_starts_without_its_server_and_counts_what_it_drops(
    tmp_path, model_files, run_daemon, closed_port
):
    checkpoint, labels = model_files
    video = write_mjpg(tmp_path / "cam.avi", [("moving", range(40))])
    inference = {"backend": "triton", "triton": {"url": f"127.0.0.1:{closed_port}", "timeout_s": 2.0}}
    daemon, sub = run_daemon(
        daemon_config(checkpoint, labels, [{"name": "cam", "url": str(video)}], inference=inference)
    )
    by_stream = collect(sub, ended(["cam"]), timeout_s=120)
    assert not any(t == "label.cam" for t, _ in by_stream["cam"])
    stats = daemon.pool.engines[0].stats()
    assert stats["backend"]["up"] is False and stats["backend"]["clips_dropped_server_down"] > 0
    assert stats["clips_failed"] == stats["backend"]["clips_dropped_server_down"]


def test_a_bad_triton_url_is_refused_at_its_key():
    with pytest.raises(ConfigError, match=r"inference\.triton\.url"):
        parse_config(
            {"streams": [{"name": "a", "url": "x.mp4"}], "inference": {"triton": {"url": "grpc://h:1"}}}
        )
    assert TritonServerConfig(url="[::1]:8001").url == "[::1]:8001"


def test_check_says_whether_the_server_answers(tmp_path, model_files, closed_port):
    checkpoint, labels = model_files
    data = daemon_config(checkpoint, labels, [{"name": "cam", "url": "testsrc://?width=64&height=64&fps=10"}])
    data["inference"] = {"backend": "triton", "triton": {"url": f"127.0.0.1:{closed_port}", "timeout_s": 2.0}}
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(data))
    result = run_vstmon("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert f"Triton server 127.0.0.1:{closed_port}, model vstmon: NOT answering" in result.stdout


def test_the_shipped_serve_yaml_is_valid_and_serve_says_what_it_needs_without_pytriton():
    from vstmon.config import load_yaml_model
    from vstmon.service.serve import ServeConfig

    config = load_yaml_model(ServeConfig, REPO_ROOT / "serve.yaml")
    assert config.serve.grpc_port == 8001 and config.clip.frames == 32
    try:
        import pytriton  # noqa: F401
    except ImportError:
        result = run_vstmon("serve", "--config", str(REPO_ROOT / "serve.yaml"))
        assert result.returncode == 78, result.stderr
        assert "nvidia-pytriton" in result.stderr and "Traceback" not in result.stderr
