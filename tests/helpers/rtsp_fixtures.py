"""pytest fixtures around tests/helpers/rtsp_server.py (Debian's GStreamer RTSP server run by /usr/bin/python3).

``rtsp_servers`` is a factory: ``rtsp_servers(mode="testsrc", auth=None, path=None)`` starts a server on a free
127.0.0.1 port and returns an ``RtspServer`` (``url``, ``kill``, ``restart``, ``freeze``, ``thaw``); every server
it started is stopped at the end of the test. Tests are skipped (with the reason) when the system Python cannot
import GstRtspServer. Import the fixture into a test module with
``from tests.helpers.rtsp_fixtures import rtsp_servers``. ``EventLog``, ``stream_config`` and ``wait_until`` are small
helpers shared by the source tests.
"""

from __future__ import annotations

import functools
import os
import selectors
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vstmon.config import StreamConfig
from vstmon.types import SourceState, StreamEvent

__all__ = [
    "SYSTEM_PYTHON",
    "EventLog",
    "RtspServer",
    "gst_rtsp_missing",
    "rtsp_servers",
    "silent_server",
    "stream_config",
    "wait_until",
]

SYSTEM_PYTHON = os.environ.get("VSTMON_GST_PYTHON", "/usr/bin/python3")
SERVER_SCRIPT = Path(__file__).resolve().parent / "rtsp_server.py"
READY_TIMEOUT_S = 20.0


@functools.cache
def gst_rtsp_missing() -> str | None:
    """None when the RTSP server can run here, else why not."""
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
        "from gi.repository import Gst, GstRtspServer"
    )
    try:
        result = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{SYSTEM_PYTHON} cannot run: {error}"
    if result.returncode != 0:
        last = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        return (
            f"{SYSTEM_PYTHON} cannot import GstRtspServer ({last[0]}); install python3-gi and "
            "gir1.2-gst-rtsp-server-1.0 (see .ci/run)"
        )
    return None


class RtspServer:
    """One rtsp_server.py process serving ``rtsp://127.0.0.1:PORT/stream``."""

    def __init__(self, args: list[str], port: int) -> None:
        self.port = port
        self._args = args
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.frozen = False

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/stream"

    def url_with(self, userinfo: str) -> str:
        return f"rtsp://{userinfo}@127.0.0.1:{self.port}/stream"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> RtspServer:
        command = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(self.port), *self._args]
        self._proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._stderr)
        assert self._proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        with selectors.DefaultSelector() as selector:
            selector.register(self._proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if selector.select(timeout=0.2):
                    line = self._proc.stdout.readline().decode(errors="replace")
                    if line.startswith("READY"):
                        self.port = int(line.split()[1])  # the OS's choice when started with port 0
                        return self
                    if not line:  # exited
                        break
                if self._proc.poll() is not None:
                    break
        self.kill()
        self._stderr.seek(0)
        raise RuntimeError(
            f"RTSP server did not become ready: {self._stderr.read().decode(errors='replace')[-2000:]}"
        )

    def kill(self) -> None:
        """SIGKILL (a crashed camera): no goodbye to clients."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self.frozen = False

    def restart(self) -> RtspServer:
        self.kill()
        return self.start()

    def freeze(self) -> None:
        """SIGSTOP (a hung camera): connections stay open, nothing is sent."""
        os.kill(self.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        if self._proc is None:
            return
        if self.frozen:
            self.thaw()
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._stderr.close()


@pytest.fixture
def rtsp_servers() -> Iterator[Callable[..., RtspServer]]:
    reason = gst_rtsp_missing()
    if reason:
        if os.environ.get("VSTMON_REQUIRE_RTSP") == "1":
            pytest.fail(f"VSTMON_REQUIRE_RTSP=1 but the RTSP test server cannot run: {reason}")
        pytest.skip(reason)
    started: list[RtspServer] = []

    def start(
        mode: str = "testsrc", auth: str | None = None, path: str | Path | None = None, fps: int = 25
    ) -> RtspServer:
        args = ["--mode", mode, "--fps", str(fps)]
        if auth:
            args += ["--auth", auth]
        if path:
            args += ["--path", str(path)]
        server = RtspServer(args, 0)  # port 0: the server binds a free port itself (no race), then keeps it
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


class EventLog:
    """Collects a source's ``StreamEvent``s (the ``on_event`` callback) and waits for one."""

    def __init__(self) -> None:
        self.events: list[StreamEvent] = []
        self._cond = threading.Condition()

    def __call__(self, event: StreamEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def states(self) -> list[SourceState]:
        with self._cond:
            return [event.state for event in self.events]

    def wait_for(
        self, predicate: Callable[[StreamEvent], bool], timeout_s: float, after: int = 0
    ) -> StreamEvent | None:
        """The first event at position >= ``after`` that matches, waiting up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for event in self.events[after:]:
                    if predicate(event):
                        return event
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    return None
                self._cond.wait(left_s)

    def wait_state(self, state: SourceState, timeout_s: float, after: int = 0) -> StreamEvent | None:
        return self.wait_for(lambda event: event.state == state, timeout_s, after)

    def __len__(self) -> int:
        with self._cond:
            return len(self.events)


def stream_config(url: str, name: str = "cam", **overrides: Any) -> StreamConfig:
    """A StreamConfig with short timeouts and a quick backoff, for tests."""
    values: dict[str, Any] = {
        "name": name,
        "url": url,
        "open_timeout_s": 2.0,
        "read_timeout_s": 1.0,
        "stall_timeout_s": 1.0,
        "reconnect": {"initial_delay_s": 0.1, "max_delay_s": 0.5, "jitter": 0.2},
    }
    values.update(overrides)
    return StreamConfig.model_validate(values)


def wait_until(predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout_s``; bounded."""
    done = threading.Event()
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        done.wait(step_s)
    return True


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts connections and never says a word."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    stop = threading.Event()
    accepted: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)

    thread = threading.Thread(target=serve, name="silent-server")
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5.0)
    listener.close()
    for conn in accepted:
        conn.close()
