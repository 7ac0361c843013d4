"""Camera passwords and tokens never reach any output: log lines (JSON and console), ``status`` messages, control
replies, ``vstmon check``, and the stderr of a real ``vstmon`` process and of its clients.

The stream URLs carry passwords with ``@`` and ``/`` (invalid by the URL standard, common in practice) and secret
query parameters. They point at a 127.0.0.1 port that is held (bound, never listening), so FFmpeg's open is
refused at once and the reconnect reasons, which quote the (masked) URL, flow through every output.
FFmpeg takes the authority up to the first ``/``, so ``rtsp://admin:Zq7@127.0.0.1:P/Pw9@127.0.0.1:P/live`` makes
FFmpeg connect to 127.0.0.1:P while the redaction (user-info up to the last ``@``) masks ``Zq7@...Pw9``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.cli import REPO_ROOT, run_vstmon
from tests.helpers.daemon import daemon_config, join_subscriber, tiny_checkpoint
from vstmon.config import parse_config
from vstmon.log import configure_logging
from vstmon.service.control_cli import request
from vstmon.service.daemon import Daemon
from vstmon.wire.client import DaemonStatus, Message, StatusMessage, Subscriber, parse_message
from vstmon.wire.protocol import StatusReply

SECRETS = ("Zq7", "Pw9", "Tk8s3cret", "Tok3nUser", "Ak9key")


def _urls(port: int) -> dict[str, tuple[str, str]]:
    """Stream name -> (URL with secrets, how every output must show it)."""
    return {
        "door": (
            f"rtsp://admin:Zq7@127.0.0.1:{port}/Pw9@127.0.0.1:{port}/live?token=Tk8s3cret&channel=1",
            f"rtsp://admin:***@127.0.0.1:{port}/live?token=***&channel=1",
        ),
        "yard": (
            f"http://Tok3nUser@127.0.0.1:{port}/video.mjpg?api_key=Ak9key",
            f"http://***@127.0.0.1:{port}/video.mjpg?api_key=***",
        ),
    }


def _assert_no_secret(where: str, text: str) -> None:
    leaked = [secret for secret in SECRETS if secret in text]
    assert not leaked, f"{where} shows {leaked}: {text[-2000:]}"


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory for ipc:// endpoints (Unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="vstmon-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _config(
    model_files: tuple[Path, Path], port: int, socket_dir: Path, log_format: str = "auto"
) -> dict[str, Any]:
    checkpoint, labels = model_files
    streams = [
        {
            "name": name,
            "url": url,
            "open_timeout_s": 2,
            "reconnect": {"initial_delay_s": 0.2, "max_delay_s": 0.5},
        }
        for name, (url, _shown) in _urls(port).items()
    ]
    data = daemon_config(checkpoint, labels, streams)
    data["publish"]["endpoints"] = [f"ipc://{socket_dir}/pub.sock"]
    data["publish"]["control"] = f"ipc://{socket_dir}/control.sock"
    data["log"] = {"level": "info", "format": log_format}
    return data


def _reconnect_statuses(
    sub: Subscriber, names: list[str], timeout_s: float = 60.0
) -> tuple[list[Message], list[dict[str, Any]]]:
    """Status messages until every stream has published one with a reconnect reason: typed, and as sent (every
    field, for the secret check)."""
    messages: list[Message] = []
    sent: list[dict[str, Any]] = []
    waiting = set(names)
    deadline = time.monotonic() + timeout_s
    while waiting and time.monotonic() < deadline:
        got = sub.recv_raw(timeout_s=0.5)
        if got is None:
            continue
        message = parse_message(got[0], got[1])
        messages.append(message)
        sent.append({"topic": got[0], **got[1]})
        if isinstance(message, StatusMessage) and "retry" in message.reason:
            waiting.discard(message.stream)
    assert not waiting, f"no reconnect status from {sorted(waiting)}; got {messages[-5:]}"
    return messages, sent


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_log_lines_status_messages_and_control_replies_of_a_daemon(
    model_files: tuple[Path, Path],
    closed_port: int,
    socket_dir: Path,
    log_format: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", log_format)  # as `vstmon run` does with the config's log section
    daemon = Daemon(parse_config(_config(model_files, closed_port, socket_dir, log_format)))
    daemon.start(start_sources=False)
    try:
        with Subscriber(daemon.publisher.endpoints[0], ("status",)) as sub:
            join_subscriber(sub)
            daemon.start_sources()
            messages, sent = _reconnect_statuses(sub, list(_urls(closed_port)))
        reply = request(daemon.control.bound_endpoint, {"cmd": "status"}, timeout_s=30)
    finally:
        daemon.stop()
    out, err = capfd.readouterr()
    published = json.dumps(sent)
    for where, text in (("stderr", err), ("stdout", out), ("status messages", published)):
        _assert_no_secret(where, text)
    _assert_no_secret("the control status reply", reply.model_dump_json())
    for name, (_url, shown) in _urls(closed_port).items():
        assert shown in err  # the URL did go through the log lines, masked
        reasons = [m.reason for m in messages if m.topic == f"status.{name}" and "retry" in m.reason]
        assert reasons and all(shown in r for r in reasons)
        assert isinstance(reply, StatusReply) and shown in reply.streams[name].reason
        daemon_status = [m for m in messages if isinstance(m, DaemonStatus)]
        assert all(
            shown in m.streams[name].reason for m in daemon_status if "retry" in m.streams[name].reason
        )


def test_check_output(model_files: tuple[Path, Path], closed_port: int, socket_dir: Path) -> None:
    config_path = socket_dir / "config.yaml"
    data = _config(model_files, closed_port, socket_dir)
    config_path.write_text(yaml.safe_dump(data))
    proc = run_vstmon("check", "--config", str(config_path), "--no-model")
    assert proc.returncode == 0, proc.stderr
    _assert_no_secret("check output", proc.stdout + proc.stderr)
    for _url, shown in _urls(closed_port).values():
        assert shown in proc.stdout
    # a config that fails: whatever check says about it, no secret
    data["streams"][0]["transport"] = "carrier-pigeon"
    data["streams"].append({"name": "ftp", "url": "ftp://admin:Zq7@127.0.0.1/Pw9@x/clip.mp4"})
    config_path.write_text(yaml.safe_dump(data))
    failed = run_vstmon("check", "--config", str(config_path), "--no-model")
    assert failed.returncode != 0
    _assert_no_secret("check output for a bad config", failed.stdout + failed.stderr)


def test_a_vstmon_process_and_its_clients(
    model_files: tuple[Path, Path], closed_port: int, socket_dir: Path
) -> None:
    config_path = socket_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(_config(model_files, closed_port, socket_dir)))
    daemon = subprocess.Popen(
        [sys.executable, "-m", "vstmon.cli", "--config", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        cwd=REPO_ROOT,
    )
    err_lines: list[str] = []
    reconnecting = threading.Event()
    shown = [shown for _url, shown in _urls(closed_port).values()]

    def read_stderr() -> None:
        for line in daemon.stderr:
            err_lines.append(line)
            if all(any(s in seen and "retry" in seen for seen in err_lines) for s in shown):
                reconnecting.set()

    reader = threading.Thread(target=read_stderr)
    reader.start()
    try:
        assert reconnecting.wait(120), "".join(err_lines[-20:])
        listen = run_vstmon(
            "listen", f"ipc://{socket_dir}/pub.sock", "--topic", "status", "--count", "6", "--timeout-s", "60"
        )
        ctl = run_vstmon("ctl", f"ipc://{socket_dir}/control.sock", "status", "--timeout-s", "30")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            out, _ = daemon.communicate(timeout=60)
        finally:
            daemon.kill()
            reader.join(10)
    assert daemon.returncode == 0, "".join(err_lines[-20:])
    assert listen.returncode == 0, listen.stderr
    assert ctl.returncode == 0, ctl.stderr
    for where, text in (
        ("the daemon's stderr", "".join(err_lines)),
        ("the daemon's stdout", out),
        ("listen", listen.stdout + listen.stderr),
        ("ctl", ctl.stdout + ctl.stderr),
    ):
        _assert_no_secret(where, text)
    for s in shown:
        assert s in ctl.stdout
        assert s in listen.stdout
