"""Shared test helpers (moved from tests/service/test_daemon_e2e.py so that no test imports another test module)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq

from tests.helpers.cli import vstmon_env
from vstmon.wire.protocol import ControlReply, parse_reply


class Vstmon:
    """A ``python -m vstmon`` subprocess with its config file; its publish and control addresses (ports the OS
    chose, so no other process can take them first) are read from its "vstmon running" log line."""

    def __init__(
        self,
        tmp_path: Path,
        data: dict[str, Any],
        extra_env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        data = {**data, "log": {"level": "info", "format": "json"}}
        data["publish"] = {**data["publish"], "endpoints": ["tcp://127.0.0.1:*"]}
        if data["publish"].get("control") is not None:
            data["publish"]["control"] = "tcp://127.0.0.1:*"
        self.config_path = tmp_path / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(data))
        self.pub = ""
        self.control = ""
        self.log_path = tmp_path / "vstmon.log"
        self._log = self.log_path.open("wb")
        env = vstmon_env(OMP_NUM_THREADS="1", **(extra_env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vstmon", "--config", str(self.config_path), *args],
            cwd=tmp_path,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        events = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    events.append(json.loads(line))
        return events

    def wait_running(self, timeout_s: float = 60.0) -> Vstmon:
        """Wait for the "vstmon running" line; take the bound addresses from it."""
        done = threading.Event()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            running = [e for e in self.log_events() if e.get("event") == "vstmon running"]
            if running:
                self.pub = running[0]["endpoints"][0]
                self.control = running[0]["control"] or ""
                return self
            assert self.proc.poll() is None, f"vstmon exited with {self.proc.returncode}:\n{self.log()}"
            done.wait(0.1)
        raise AssertionError(f"vstmon did not start in {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, payload: bytes | dict[str, Any], timeout_s: float = 10.0) -> ControlReply:
        """Send a control request (a dict, or raw bytes to send as they are); its reply, typed."""
        context = zmq.Context.instance()
        sock = context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.control)
        try:
            sock.send(payload if isinstance(payload, bytes) else json.dumps(payload).encode())
            assert sock.poll(int(timeout_s * 1000)), f"no control reply; log:\n{self.log()}"
            return parse_reply(payload.get("cmd", "?") if isinstance(payload, dict) else "?", sock.recv())
        finally:
            sock.close()

    def terminate(self, timeout_s: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def vstmon_process(tmp_path: Path) -> Iterator[Any]:
    started: list[Vstmon] = []

    def start(
        data: dict[str, Any], extra_env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> Vstmon:
        process = Vstmon(tmp_path, data, extra_env, args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
