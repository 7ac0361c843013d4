"""ZeroMQ side of the daemon: ``Publisher`` (PUB, never blocks) and ``ControlServer`` (REP, own thread).

The message formats are a public contract, documented in docs/PROTOCOL.md.

Thread safety of ``Publisher``: ZeroMQ sockets must not be used by two threads at once, and several daemon
threads publish (engine results, stream workers, heartbeat). A lock around the socket serialises them. Every
send is ``NOBLOCK`` (a full high-water mark drops the message instead of waiting), so the lock is held for a few
microseconds; ``seq`` numbers are assigned under the same lock, so each stream's messages leave the socket in
``seq`` order. A dedicated sender thread with a queue would add a copy and a second bounded buffer in front of
the socket's own, for no gain.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from vstmon.config import PublishConfig
from vstmon.errors import VstmonError
from vstmon.log import get_logger

__all__ = [
    "CONTROL_COMMANDS",
    "DEFAULT_CONTROL_ENDPOINT",
    "MAX_REQUEST_BYTES",
    "SCHEMA_VERSION",
    "ControlServer",
    "Publisher",
    "validate_request",
]

SCHEMA_VERSION = 1
DEFAULT_CONTROL_ENDPOINT = "tcp://127.0.0.1:5557"
MAX_REQUEST_BYTES = 64 * 1024  # larger control requests get an error reply
_HARD_MAX_REQUEST_BYTES = 1024 * 1024  # ZMQ_MAXMSGSIZE: larger ones are cut off by libzmq (no reply possible)
_HEADER_KEYS = ("v", "type", "ts", "stream", "seq")
# known commands -> {field: (types, required)}
CONTROL_COMMANDS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "reset": {"stream": ((str,), True), "subject": ((str, type(None)), False)},
    "status": {},
}

_log = get_logger("publish")


class Publisher:
    """A PUB socket bound to every ``cfg.endpoints`` address; ``publish`` adds the envelope and never blocks.

    Envelope: ``v`` (schema version), ``type`` (first word of the topic), ``ts`` (unix seconds when sent) and,
    for stream topics (``label.cam1``), ``stream`` and ``seq`` (per stream, +1 for every message of that
    stream on any topic, starting at 1).

    Slow or absent subscribers: a PUB socket keeps one queue per subscriber, bounded by ``cfg.sndhwm``; when a
    subscriber's queue is full, libzmq drops that subscriber's copy silently and ``send`` returns at once (it
    never reports the drop), so the loss is visible to that subscriber only, as a gap in ``seq``. ``dropped``
    counts the messages the socket refused outright (``zmq.Again``, or publishing after ``close``).
    """

    def __init__(self, cfg: PublishConfig, context: zmq.Context | None = None) -> None:
        self._context = context if context is not None else zmq.Context.instance()
        self._lock = threading.Lock()
        self._seq: dict[str, int] = {}
        self.sent = 0
        self.dropped = 0
        self.errors = 0
        self.endpoints: list[str] = []
        socket = self._context.socket(zmq.PUB)
        socket.setsockopt(zmq.SNDHWM, cfg.sndhwm)
        socket.setsockopt(zmq.LINGER, 100)
        for endpoint in cfg.endpoints:
            try:
                socket.bind(endpoint)
            except zmq.ZMQError as error:
                socket.close(linger=0)
                raise VstmonError(f"publish.endpoints: cannot bind {endpoint}: {error}") from None
            self.endpoints.append(socket.getsockopt_string(zmq.LAST_ENDPOINT))
        self._socket: zmq.Socket | None = socket

    def publish(self, topic: str, payload: dict[str, Any], stream: str | None = None) -> bool:
        """Send ``payload`` under ``topic``; True when queued, False when dropped. Never blocks, never raises.

        For ``<type>.<stream>`` topics the stream is taken from the topic unless ``stream`` is given.
        Envelope keys win over payload keys of the same name.
        """
        kind, _, topic_stream = topic.partition(".")
        if stream is None and topic_stream:
            stream = topic_stream
        message: dict[str, Any] = dict(payload)
        with self._lock:
            if self._socket is None:
                self.dropped += 1
                return False
            message["v"] = SCHEMA_VERSION
            message["type"] = kind
            message["ts"] = time.time()
            if stream is not None:
                seq = self._seq.get(stream, 0) + 1
                self._seq[stream] = seq
                message["stream"] = stream
                message["seq"] = seq
            try:
                body = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
            except (TypeError, ValueError) as error:
                self.errors += 1
                _log.error("message not JSON-serialisable, dropped", topic=topic, error=str(error))
                return False
            try:
                self._socket.send_multipart((topic.encode(), body), flags=zmq.NOBLOCK, copy=True)
            except zmq.Again:
                self.dropped += 1
                return False
            except zmq.ZMQError as error:
                self.errors += 1
                _log.error("publish failed", topic=topic, error=str(error))
                return False
            self.sent += 1
            return True

    def stats(self) -> dict[str, int]:
        """Counters: ``sent``, ``dropped`` (slow/absent subscribers), ``errors``."""
        with self._lock:
            return {"sent": self.sent, "dropped": self.dropped, "errors": self.errors}

    def close(self) -> None:
        """Close the socket (pending messages get at most 100 ms to leave). Idempotent."""
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


def _error_text(error: BaseException) -> str:
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    return str(error) or type(error).__name__


def validate_request(request: Any) -> dict[str, Any]:
    """Check a parsed control request; returns it, raises ``ValueError`` naming the problem."""
    if not isinstance(request, dict):
        raise ValueError(f"request must be a JSON object, got {type(request).__name__}")
    cmd = request.get("cmd")
    if cmd is None:
        raise ValueError('request has no "cmd" (known commands: ' + ", ".join(CONTROL_COMMANDS) + ")")
    if not isinstance(cmd, str):
        raise ValueError(f'"cmd" must be a string, got {type(cmd).__name__}')
    fields = CONTROL_COMMANDS.get(cmd)
    if fields is None:
        raise ValueError(f"unknown command {cmd!r} (known commands: " + ", ".join(CONTROL_COMMANDS) + ")")
    unknown = sorted(set(request) - set(fields) - {"cmd"})
    if unknown:
        raise ValueError(f"{cmd}: unknown field(s) " + ", ".join(repr(k) for k in unknown))
    for name, (types, required) in fields.items():
        if name not in request:
            if required:
                raise ValueError(f'{cmd}: field "{name}" is required')
            continue
        value = request[name]
        if not isinstance(value, types) or isinstance(value, bool):
            expected = " or ".join(
                "null" if t is type(None) else t.__name__.replace("str", "string") for t in types
            )
            raise ValueError(f'{cmd}: field "{name}" must be {expected}, got {type(value).__name__}')
        if isinstance(value, str) and not value:
            raise ValueError(f'{cmd}: field "{name}" must not be empty')
    return request


class ControlServer:
    """The control socket: a REP socket served by its own thread, one JSON object in, one JSON object out.

    Known commands are validated here (``reset``: ``stream`` string required, ``subject`` string or null
    optional; ``status``); ``handler(request) -> dict`` does the work and its dict becomes the reply with
    ``"ok": true`` added. Any problem (oversized or bad JSON, wrong types, unknown command, the handler raising
    ``VstmonError``/``KeyError``/``ValueError``) is answered ``{"ok": false, "error": "..."}``; an unexpected
    exception is logged and answered the same way. The thread never dies on a bad request.
    """

    def __init__(
        self,
        endpoint: str,
        handler: Callable[[dict[str, Any]], dict[str, Any]],
        context: zmq.Context | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        poll_interval_s: float = 0.1,
    ) -> None:
        self.endpoint = endpoint
        self._handler = handler
        self._context = context if context is not None else zmq.Context.instance()
        self._max_request_bytes = max_request_bytes
        self._poll_ms = max(1, int(poll_interval_s * 1000))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._socket: zmq.Socket | None = None
        self.requests = 0
        self.errors = 0
        self.bound_endpoint: str | None = None

    def start(self) -> None:
        """Bind (errors raise ``VstmonError`` here, in the caller) and start serving."""
        if self._thread is not None:
            raise RuntimeError("ControlServer already started")
        socket = self._context.socket(zmq.REP)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.MAXMSGSIZE, max(_HARD_MAX_REQUEST_BYTES, self._max_request_bytes * 2))
        try:
            socket.bind(self.endpoint)
        except zmq.ZMQError as error:
            socket.close(linger=0)
            raise VstmonError(f"publish.control: cannot bind {self.endpoint}: {error}") from None
        self.bound_endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._socket = socket  # handed to the thread; never used by this thread again
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="vstmon-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish (it notices within one poll interval)."""
        self._stop.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout_s: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop and join."""
        self.stop()
        self.join(timeout_s)

    def _serve(self) -> None:
        socket = self._socket
        assert socket is not None
        try:
            while not self._stop.is_set():
                try:
                    if not socket.poll(self._poll_ms, zmq.POLLIN):
                        continue
                    frames = socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    continue
                except zmq.ZMQError as error:
                    if self._stop.is_set():
                        break
                    _log.error("control socket receive failed", error=str(error))
                    continue
                reply = self._answer(frames)
                try:
                    socket.send(json.dumps(reply, separators=(",", ":")).encode(), zmq.NOBLOCK)
                except zmq.ZMQError as error:  # the requester went away; REP state resets on its own
                    _log.warning("control reply not sent", error=str(error))
        finally:
            socket.close(linger=0)
            self._socket = None

    def _answer(self, frames: list[bytes]) -> dict[str, Any]:
        self.requests += 1
        try:
            request = self._parse(frames)
            result = self._handler(request)
            if not isinstance(result, dict):
                raise TypeError(f"control handler returned {type(result).__name__}, not a dict")
            reply = {"ok": True, **result}
            json.dumps(reply)  # fail here (and answer) rather than after the reply is half built
            return reply
        except (VstmonError, KeyError, ValueError) as error:
            self.errors += 1
            return {"ok": False, "error": _error_text(error)}
        except Exception as error:  # a handler bug must not kill the control thread
            self.errors += 1
            _log.exception("control handler failed", error=str(error))
            return {"ok": False, "error": f"internal error: {_error_text(error)}"}

    def _parse(self, frames: list[bytes]) -> dict[str, Any]:
        if len(frames) != 1:
            raise ValueError(f"request must be one message frame, got {len(frames)}")
        data = frames[0]
        if len(data) > self._max_request_bytes:
            raise ValueError(f"request too large: {len(data)} bytes (limit {self._max_request_bytes})")
        try:
            request = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError("request is not UTF-8") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"request is not valid JSON: {error.msg} at position {error.pos}") from None
        return validate_request(request)
