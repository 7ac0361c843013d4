"""Plays systemd's side of sd_notify(3) in tests: a datagram socket that is read all the time, as systemd reads it.

A test that leaves ``$NOTIFY_SOCKET`` unread fills its queue (``net.unix.max_dgram_qlen``, 10 by default on
Linux), and the daemon, which never waits on systemd, drops what comes next: read it from a thread instead.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


class NotifyListener:
    """Binds ``path`` and collects every datagram in order until ``close()``."""

    def __init__(self, path: Path) -> None:
        self.address = str(path)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(self.address)
        self._socket.settimeout(0.1)
        self._messages: list[bytes] = []
        self._changed = threading.Condition()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-listener", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                message = self._socket.recv(4096)
            except TimeoutError:
                if self._closed.is_set():  # closed, and the queue is empty: all was read
                    return
                continue
            except OSError:
                return
            with self._changed:
                self._messages.append(message)
                self._changed.notify_all()

    @property
    def messages(self) -> list[bytes]:
        with self._changed:
            return list(self._messages)

    def wait_for(self, done: Callable[[list[bytes]], bool], timeout_s: float) -> list[bytes]:
        """Wait until ``done(messages)`` holds (the messages so far are returned) or fail after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not done(self._messages):
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    raise AssertionError(f"not told within {timeout_s} s; told: {self._messages[-5:]}")
                self._changed.wait(left_s)
            return list(self._messages)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self._socket.close()

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def received_within(sock: socket.socket, window_s: float) -> list[bytes]:
    """The datagrams that arrive on ``sock`` within ``window_s`` (for tests that read in windows)."""
    messages = []
    deadline = time.monotonic() + window_s
    while (left_s := deadline - time.monotonic()) > 0:
        sock.settimeout(left_s)
        try:
            messages.append(sock.recv(4096))
        except TimeoutError:
            break
    return messages


@pytest.fixture
def watchdog_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """systemd's notify socket with a watchdog of 0.2 s (a ping every 0.1 s while the daemon is healthy), in this
    process's environment, for tests that read it in windows (``received_within``)."""
    address = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(address)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    try:
        yield notify
    finally:
        notify.close()
