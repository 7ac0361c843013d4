"""The daemon's control socket: ``ControlServer`` (REP, own thread), one JSON object in, one JSON object out.

Requests are read here with the limits the socket enforces (size, nesting depth, a field given twice) and then
checked by ``vstmon.wire.protocol.parse_command`` (the control models); replies are the protocol's reply models.
Formats and error wording: docs/PROTOCOL.md.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import traceback
from collections.abc import Callable
from typing import Any

import zmq

from vstmon.config import CurveConfig
from vstmon.errors import ConfigKeyError, VstmonError
from vstmon.log import get_logger, redact
from vstmon.wire.protocol import ControlCommand, ErrorReply, ResetReply, StatusReply, parse_command
from vstmon.wire.publish import CurveServer, curve_context

__all__ = [
    "DEFAULT_CONTROL_ENDPOINT",
    "MAX_REQUEST_BYTES",
    "MAX_REQUEST_DEPTH",
    "ControlHandler",
    "ControlServer",
]

DEFAULT_CONTROL_ENDPOINT = "tcp://127.0.0.1:5557"
MAX_REQUEST_BYTES = 64 * 1024  # larger control requests get an error reply
_HARD_MAX_REQUEST_BYTES = 1024 * 1024  # ZMQ_MAXMSGSIZE: larger ones are cut off by libzmq (no reply possible)
MAX_REQUEST_DEPTH = 8  # JSON nesting of a control request (a valid one has 1 level)
_MAX_REPORTED_BUGS = 64  # distinct handler failures logged with a traceback; repeats get one line

# the daemon's side of the control socket: a validated command in, its reply out
ControlHandler = Callable[[ControlCommand], ResetReply | StatusReply]

_log = get_logger("publish")  # the component name the control log lines have always had


def _is_local(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address (``endpoint`` as bound: an address, not *)."""
    scheme, _, rest = endpoint.partition("://")
    if scheme != "tcp":
        return True
    host = rest.rpartition(":")[0].strip("[]").partition("%")[0]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _error_text(error: BaseException) -> str:
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    return str(error) or type(error).__name__


def _nesting_depth(value: Any) -> int:
    """Levels of JSON arrays/objects in ``value`` (0 for a scalar); iterative, so any depth is safe."""
    depth = 0
    level = [value] if isinstance(value, dict | list) else []
    while level:
        depth += 1
        children: list[Any] = []
        for container in level:
            items = container.values() if isinstance(container, dict) else container
            children.extend(v for v in items if isinstance(v, dict | list))
        level = children
    return depth


class _DuplicateField(ValueError):
    pass


def _quote(name: str, max_chars: int = 32) -> str:
    """A field name quoted for an error, cut to ``max_chars`` characters (an error never echoes a flood)."""
    return repr(name) if len(name) <= max_chars else f"{name[:max_chars]!r}... ({len(name)} characters)"


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateField(f"request has field {_quote(key)} twice")
        obj[key] = value
    return obj


def _failure_site(error: BaseException) -> tuple[str, str, int]:
    """(exception type, file, line) where ``error`` was raised: repeats of one bug share it."""
    frames = traceback.extract_tb(error.__traceback__)
    last = frames[-1] if frames else None
    return type(error).__name__, last.filename if last else "", (last.lineno or 0) if last else 0


class ControlServer:
    """The control socket: a REP socket served by its own thread, one JSON object in, one JSON object out.

    Requests are validated here with the control models of ``vstmon.wire.protocol`` (``reset`` with ``stream``,
    1-64 characters, and optional ``subject``, 1-128 characters or null, no control characters; ``status``);
    ``handler(command) -> ResetReply | StatusReply`` does the work and its reply is sent. Any problem (oversized,
    nested deeper than ``MAX_REQUEST_DEPTH``, bad JSON, duplicate or unknown fields, wrong types or lengths,
    unknown command, the handler raising ``VstmonError``/``KeyError``/``ValueError``) is answered
    ``{"ok": false, "error": "..."}`` and logged as one line. Any other exception from the handler is a bug:
    answered the same way and logged with its traceback the first time, as one line when it repeats (a client
    cannot flood the log with tracebacks). Replies pass through ``redact`` (no credentials in URLs). The
    thread never dies on a bad request.

    ``curve`` (``publish.curve``; None or both keys null = off): the socket is a CURVE server and only clients
    with an allowed key can send a request; the ``CurveServer`` (``self.curve``) starts in ``start`` and
    stops when the serving thread ends. Bound beyond loopback without CURVE, ``start`` logs a warning: anyone
    who can reach the port can reset streams.
    """

    def __init__(
        self,
        endpoint: str,
        handler: ControlHandler,
        context: zmq.Context | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        poll_interval_s: float = 0.1,
        curve: CurveConfig | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._handler = handler
        self._given_context = context
        self._context: zmq.Context | None = None
        self._own_context = False
        self._curve_cfg = curve
        self.curve: CurveServer | None = None
        self._max_request_bytes = max_request_bytes
        self._poll_ms = max(1, int(poll_interval_s * 1000))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._socket: zmq.Socket | None = None
        self.requests = 0
        self.errors = 0
        self.bound_endpoint: str | None = None
        self._reported_failures: set[tuple[str, str, int]] = set()

    def start(self) -> None:
        """Bind (errors raise ``VstmonError`` here, in the caller) and start serving."""
        if self._thread is not None:
            raise RuntimeError("ControlServer already started")
        self._context, self.curve, self._own_context = curve_context(
            self._curve_cfg, self._given_context, "control"
        )
        socket = self._context.socket(zmq.REP)
        if self.curve is not None:
            self.curve.secure(socket)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.MAXMSGSIZE, max(_HARD_MAX_REQUEST_BYTES, self._max_request_bytes * 2))
        try:
            socket.bind(self.endpoint)
        except zmq.ZMQError as error:
            socket.close(linger=0)
            self._release()
            raise ConfigKeyError("publish.control", f"cannot bind {self.endpoint}: {error}") from None
        self.bound_endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        if self.curve is None and not _is_local(self.bound_endpoint):
            _log.warning(
                "the control socket is reachable beyond this machine without CURVE: anyone who can connect can "
                "reset streams and read their status; bind publish.control to 127.0.0.1 or set publish.curve",
                endpoint=self.bound_endpoint,
            )
        self._socket = socket  # handed to the thread; never used by this thread again
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="vstmon-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish (it notices within one poll interval)."""
        self._stop.set()

    @property
    def alive(self) -> bool:
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
            self._release()

    def _release(self) -> None:
        """Stop CURVE's ZAP handler and end a context of our own (after the socket is closed)."""
        if self.curve is not None:
            self.curve.stop()
        if self._own_context and self._context is not None:
            self._own_context = False
            self._context.term()

    def _answer(self, frames: list[bytes]) -> dict[str, Any]:
        self.requests += 1
        try:
            command = self._parse(frames)
            reply = self._handler(command)
            if not isinstance(reply, ResetReply | StatusReply):
                raise TypeError(f"control handler returned {type(reply).__name__}, not a reply model")
            data = redact(reply.model_dump(mode="json"), mask_secret_keys=False)
            json.dumps(data)  # fail here (and answer) rather than after the reply is half built
            return data
        except (VstmonError, KeyError, ValueError) as error:
            self.errors += 1
            text = redact(_error_text(error))
            _log.info("control request rejected", error=text)
            return ErrorReply(error=text).model_dump(mode="json")
        except Exception as error:  # a handler bug must not kill the control thread
            self.errors += 1
            text = redact(_error_text(error))
            site = _failure_site(error)
            if site in self._reported_failures:
                _log.error("control handler failed again", error=text, where=f"{site[1]}:{site[2]}")
            else:
                if len(self._reported_failures) < _MAX_REPORTED_BUGS:
                    self._reported_failures.add(site)
                _log.exception("control handler failed", error=text)
            return ErrorReply(error=f"internal error: {text}").model_dump(mode="json")

    def _parse(self, frames: list[bytes]) -> ControlCommand:
        if len(frames) != 1:
            raise ValueError(f"request must be one message frame, got {len(frames)}")
        data = frames[0]
        if len(data) > self._max_request_bytes:
            raise ValueError(f"request too large: {len(data)} bytes (limit {self._max_request_bytes})")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("request is not UTF-8") from None
        too_deep = f"request nested too deeply (limit {MAX_REQUEST_DEPTH} levels)"
        try:
            request = json.loads(text, object_pairs_hook=_refuse_duplicates)
        except RecursionError:  # the C parser's guard; far deeper than the limit below
            raise ValueError(too_deep) from None
        except json.JSONDecodeError as error:
            raise ValueError(f"request is not valid JSON: {error.msg} at position {error.pos}") from None
        except _DuplicateField as error:
            raise ValueError(str(error)) from None
        except ValueError as error:  # e.g. an integer of more than 4300 digits
            raise ValueError(f"request is not valid JSON: {str(error).split(':')[0]}") from None
        if _nesting_depth(request) > MAX_REQUEST_DEPTH:
            raise ValueError(too_deep)
        return parse_command(request)
