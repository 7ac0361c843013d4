"""The pipe between the daemon and one worker process: the messages, and the two small pieces both ends share.

Every message is a tuple whose first item says what it is. The worker process sends:

- ``("clip", key, stream, slot, index, meta)``: a clip cut into shared array ``index`` of clip slot ``slot`` of
  the stream's shared block (``meta``: the clip's fields but its frames, ``clip_meta``);
- ``("discard", key, segment)``, ``("forget", key)``: the ``ClipSink`` calls, passed on to the engine;
- ``("wait_idle", request, key, timeout_s)``: answered ``("idle", request, ok)`` once the key's results were sent;
- ``("publish", topic, body)``: a message for the publisher;
- ``("snapshot", snapshot, changed)``: a stream as its host sees it (``changed``: publish its status now);
- ``("reply", request, ok, value)``: the answer to a request of the daemon.

The daemon sends ``("add", stream_config, slots, shape, first_segment)`` followed by the shared block's file
descriptor (``send_fd``), ``("start", stream)``, ``("result", meta, probs, batch_size, extra)``,
``("released", key, stream, slot, index)``, ``("idle", request, ok)``, the requests ``("reset", request, stream,
subject)``, ``("picture", request, stream)``, ``("halt", request, names, seconds)`` and ``("close", request,
stream)``, and ``("stop",)``.
"""

from __future__ import annotations

import itertools
import socket
import threading
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from vstmon.types import Clip

__all__ = ["Link", "Requests", "clip_from_meta", "clip_meta", "recv_fd", "send_fd"]

_META_FIELDS = (
    "stream",
    "generation",
    "first_frame",
    "last_frame",
    "start_ts",
    "end_ts",
    "start_stream_s",
    "end_stream_s",
    "ready_mono_s",
    "segment",
    "box",
    "key",
)


def clip_meta(clip: Clip) -> tuple[Any, ...]:
    """A clip's fields but its frames (and their count), to cross the pipe."""
    return (*(getattr(clip, name) for name in _META_FIELDS), int(clip.frames.shape[0]))


def clip_from_meta(meta: tuple[Any, ...], frames: np.ndarray | None = None) -> Clip:
    """The clip back from ``clip_meta``: with ``frames`` (a view of the shared block), or with an empty (T, 0, 0, 3)
    placeholder where only its fields are needed (a result)."""
    *fields, count = meta
    values = dict(zip(_META_FIELDS, fields, strict=True))
    if frames is None:
        frames = np.empty((count, 0, 0, 3), np.uint8)
    return Clip(
        values["stream"],
        values["generation"],
        frames,
        values["first_frame"],
        values["last_frame"],
        values["start_ts"],
        values["end_ts"],
        values["start_stream_s"],
        values["end_stream_s"],
        values["ready_mono_s"],
        segment=values["segment"],
        box=values["box"],
        key=values["key"],
    )


def send_fd(conn: Connection, fd: int) -> None:
    """Pass a file descriptor over the pipe (a Unix socket pair): the shared block of a stream."""
    with socket.socket(fileno=conn.fileno()) as sock:  # borrowed: detached below, the pipe stays open
        try:
            socket.send_fds(sock, [b"f"], [fd])
        finally:
            sock.detach()


def recv_fd(conn: Connection) -> int:
    with socket.socket(fileno=conn.fileno()) as sock:
        try:
            _data, fds, _flags, _addr = socket.recv_fds(sock, 1, 1)
        finally:
            sock.detach()
    if not fds:
        raise ConnectionError("expected a file descriptor on the pipe")
    return fds[0]


class Link:
    """One end of the pipe: ``send`` from any thread (one at a time), ``recv`` from one thread."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()
        self.closed = False

    def send(self, message: tuple[Any, ...], fd: int | None = None) -> bool:
        """Send ``message`` (then ``fd``, atomically with it); False once the other end is gone."""
        with self._lock:
            if self.closed:
                return False
            try:
                self.conn.send(message)
                if fd is not None:
                    send_fd(self.conn, fd)
            except (OSError, EOFError, ValueError):
                self.closed = True
                return False
            return True

    def recv(self) -> tuple[Any, ...]:
        """The next message; ``EOFError`` (or ``OSError``) once the other end is gone."""
        return self.conn.recv()

    def recv_fd(self) -> int:
        return recv_fd(self.conn)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self.conn.close()


class Requests:
    """Requests waiting for their answer: ``new()`` -> id, ``answer(id, ok, value)``, ``wait(id, timeout_s)``."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._waiting: dict[int, list[Any]] = {}  # id -> [event, ok, value]

    def new(self) -> int:
        request = next(self._ids)
        with self._lock:
            self._waiting[request] = [threading.Event(), False, None]
        return request

    def answer(self, request: int, ok: bool, value: Any) -> None:
        with self._lock:
            slot = self._waiting.get(request)
            if slot is None:  # given up on already
                return
            slot[1], slot[2] = ok, value
        slot[0].set()

    def wait(self, request: int, timeout_s: float) -> tuple[bool, Any]:
        """(ok, value); (False, "timed out") when no answer came in ``timeout_s``."""
        with self._lock:
            slot = self._waiting[request]
        answered = slot[0].wait(timeout_s)
        with self._lock:
            self._waiting.pop(request, None)
        return (slot[1], slot[2]) if answered else (False, f"no answer in {timeout_s:.1f} s")

    def fail_all(self, why: str) -> None:
        """The other end is gone: every waiting request fails now."""
        with self._lock:
            slots = list(self._waiting.values())
        for slot in slots:
            slot[1], slot[2] = False, why
            slot[0].set()
