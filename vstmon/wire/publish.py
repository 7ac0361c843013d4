"""ZeroMQ side of the daemon: ``Publisher`` (PUB, never blocks) and ``ControlServer`` (REP, own thread).

The message formats are a public contract, documented in docs/PROTOCOL.md.

Thread safety of ``Publisher``: ZeroMQ sockets must not be used by two threads at once, and several daemon
threads publish (engine results, stream workers, heartbeat). A lock around the socket serialises them. Every
send is ``NOBLOCK`` (a full high-water mark drops the message instead of waiting), so the lock is held for a few
microseconds; ``seq`` numbers are assigned under the same lock, so each stream's messages leave the socket in
``seq`` order. A dedicated sender thread with a queue would add a copy and a second bounded buffer in front of
the socket's own, for no gain.

CURVE (``publish.curve``, off by default): both sockets become CURVE servers with the daemon's secret key, and a
ZAP handler (pyzmq's ``ThreadAuthenticator``, one thread) lets in only clients whose public key is in
``allowed_keys``; any other client (an unknown key, the wrong server key, no CURVE at all) fails the handshake
and never gets a message or a reply. libzmq allows one ZAP handler per context, so with CURVE each socket gets
a context of its own (unless the caller passes one), and its owner starts and stops the handler with the socket.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
import traceback
import unicodedata
from collections.abc import Callable
from typing import Any, NamedTuple

import zmq

from vstmon.config import CurveConfig, PublishConfig
from vstmon.errors import ConfigError, ConfigKeyError, VstmonError
from vstmon.log import get_logger, redact

__all__ = [
    "CONTROL_COMMANDS",
    "DEFAULT_CONTROL_ENDPOINT",
    "MAX_REQUEST_BYTES",
    "MAX_REQUEST_DEPTH",
    "MAX_STREAM_CHARS",
    "MAX_SUBJECT_CHARS",
    "SCHEMA_VERSION",
    "ControlField",
    "ControlServer",
    "CurveServer",
    "Publisher",
    "validate_request",
]

SCHEMA_VERSION = 1
DEFAULT_CONTROL_ENDPOINT = "tcp://127.0.0.1:5557"
MAX_REQUEST_BYTES = 64 * 1024  # larger control requests get an error reply
_HARD_MAX_REQUEST_BYTES = 1024 * 1024  # ZMQ_MAXMSGSIZE: larger ones are cut off by libzmq (no reply possible)
MAX_REQUEST_DEPTH = 8  # JSON nesting of a control request (a valid one has 1 level)
MAX_STREAM_CHARS = 64  # as stream names in the config
MAX_SUBJECT_CHARS = 128  # a subject id rides on every later label message of its stream
_ECHO_CHARS = 32  # at most this much of an offending value is quoted back in an error
_ECHO_NAMES = 5  # at most this many unknown field names are quoted back
_MAX_REPORTED_BUGS = 64  # distinct handler failures logged with a traceback; repeats get one line
_HEADER_KEYS = ("v", "type", "ts", "stream", "seq")
_SNDBUF_BYTES = 256 * 1024  # per subscriber connection: ample for a LAN (~250 MB/s at 1 ms RTT), and bounded


class ControlField(NamedTuple):
    """One field of a control request: accepted JSON types, whether it is required, its length limit."""

    types: tuple[type, ...]
    required: bool
    max_chars: int


# known commands -> {field: ControlField}. Every string is 1..max_chars characters without control
# characters (Unicode categories Cc, Cf, Cs, Zl, Zp: C0/C1 controls, DEL, bidi overrides, zero-width
# characters, lone surrogates, line and paragraph separators).
CONTROL_COMMANDS: dict[str, dict[str, ControlField]] = {
    "reset": {
        "stream": ControlField((str,), True, MAX_STREAM_CHARS),
        "subject": ControlField((str, type(None)), False, MAX_SUBJECT_CHARS),
    },
    "status": {},
}
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

_log = get_logger("publish")
_MAX_REPORTED_CLIENTS = 256  # distinct refused client keys logged one by one; later ones are only counted


class CurveServer:
    """The server side of CURVE for the sockets of one ZeroMQ context: the daemon's keys and a ZAP handler.

    ``start()`` runs pyzmq's ``ThreadAuthenticator`` (its own thread, named ``vstmon-zap-<name>``) in
    ``context`` with a key check (``configure_curve_callback``) against the public keys read from
    ``cfg.allowed_keys`` at start; ``secure(socket)`` makes a socket a CURVE server (before it binds);
    ``stop()`` stops and joins the thread. The owner of the socket owns this object: it starts it before
    binding and stops it after closing the socket. Key files are read in ``__init__`` (``ConfigError`` naming
    ``publish.curve.*`` and the file). Refused clients are counted in ``refused`` and each distinct key is
    logged once (a client that retries is not a log flood); ``accepted`` counts handshakes let in.
    ``reload_allowed_keys()`` re-reads the directory (for a reload: new clients in, removed ones out).
    """

    def __init__(self, cfg: CurveConfig, context: zmq.Context, name: str) -> None:
        from vstmon.wire.keys import read_secret_certificate

        if cfg.secret_key is None or cfg.allowed_keys is None:
            raise ValueError("CurveServer needs publish.curve.secret_key and allowed_keys")
        try:
            self._keys = read_secret_certificate(cfg.secret_key)
        except ValueError as error:
            raise ConfigKeyError("publish.curve.secret_key", str(error)) from None
        self._allowed_dir = cfg.allowed_keys
        self._allowed = self._read_allowed()
        self.name = name
        self.public_key = self._keys.public
        self._context = context
        self._auth: Any = None
        self._reported: set[bytes] = set()
        self.accepted = 0
        self.refused = 0

    def _read_allowed(self) -> frozenset[bytes]:
        from vstmon.wire.keys import read_allowed_keys

        try:
            return frozenset(read_allowed_keys(self._allowed_dir))
        except ValueError as error:
            raise ConfigKeyError("publish.curve.allowed_keys", str(error)) from None

    def reload_allowed_keys(self) -> int:
        """Re-read ``allowed_keys``; returns how many keys are allowed now. On ``ConfigError`` (naming the
        problem) the keys allowed so far stay. Connections already made stay open (ZAP runs per handshake)."""
        allowed = self._read_allowed()
        self._allowed = allowed  # one reference swap: the handler thread sees the old set or the new one
        self._reported.clear()
        return len(allowed)

    def start(self) -> None:
        """Start the ZAP handler thread (``ConfigError`` if the context already has a handler)."""
        from zmq.auth.thread import ThreadAuthenticator

        if self._auth is not None:
            raise RuntimeError("CurveServer already started")
        auth = ThreadAuthenticator(self._context)
        try:
            auth.start()
        except zmq.ZMQError as error:
            auth.stop()
            raise ConfigError(f"publish.curve: cannot start the ZAP handler ({self.name}): {error}") from None
        auth.thread.name = f"vstmon-zap-{self.name}"
        auth.configure_curve_callback(domain="*", credentials_provider=self)
        self._auth = auth

    def callback(self, domain: str, client_key: bytes) -> bool:
        """ZAP check (the handler's thread): is ``client_key`` (Z85) one of the allowed keys?"""
        if client_key in self._allowed:
            self.accepted += 1
            return True
        self.refused += 1
        if client_key not in self._reported and len(self._reported) < _MAX_REPORTED_CLIENTS:
            self._reported.add(client_key)
            _log.warning(
                "CURVE client refused: its public key is not in publish.curve.allowed_keys",
                socket=self.name,
                client=client_key.decode("ascii", errors="replace"),
            )
        return False

    def secure(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE server with the daemon's keys (call before ``bind``)."""
        socket.curve_secretkey = self._keys.secret
        socket.curve_publickey = self._keys.public
        socket.curve_server = True

    @property
    def running(self) -> bool:
        return self._auth is not None and self._auth.is_alive()

    def stop(self) -> None:
        """Stop and join the ZAP handler thread. Idempotent."""
        auth, self._auth = self._auth, None
        if auth is not None:
            auth.stop()


def _curve_context(
    cfg: CurveConfig | None, context: zmq.Context | None, name: str
) -> tuple[zmq.Context, CurveServer | None, bool]:
    """(context, started CurveServer or None, whether the context is ours to terminate)."""
    if cfg is None or not cfg.enabled:
        return (context if context is not None else zmq.Context.instance()), None, False
    own = context is None
    ctx = zmq.Context() if context is None else context  # one ZAP handler per context: a context of its own
    try:
        curve = CurveServer(cfg, ctx, name)
        curve.start()
    except BaseException:
        if own:
            ctx.term()
        raise
    return ctx, curve, own


class Publisher:
    """A PUB socket bound to every ``cfg.endpoints`` address; ``publish`` adds the envelope and never blocks.

    ``status`` messages pass through ``redact`` (credentials in URLs of reasons are masked; a safety net
    behind the callers' own redaction).

    Envelope: ``v`` (schema version), ``type`` (first word of the topic), ``ts`` (unix seconds when sent) and,
    for stream topics (``label.cam1``), ``stream`` and ``seq`` (per stream, +1 for every message of that
    stream on any topic, starting at 1).

    Slow or absent subscribers: a PUB socket keeps one queue per subscriber, bounded by ``cfg.sndhwm``; when a
    subscriber's queue is full, libzmq drops that subscriber's copy silently and ``send`` returns at once (it
    never reports the drop), so the loss is visible to that subscriber only, as a gap in ``seq``. ``dropped``
    counts the messages the socket refused outright (``zmq.Again``, or publishing after ``close``).

    With ``cfg.curve`` set, the socket is a CURVE server and only allowed clients receive (``curve``: the
    ``CurveServer``, started here and stopped by ``close``).
    """

    def __init__(self, cfg: PublishConfig, context: zmq.Context | None = None) -> None:
        self._context, self.curve, self._own_context = _curve_context(cfg.curve, context, "publish")
        self._lock = threading.Lock()
        self._seq: dict[str, int] = {}
        self.sent = 0
        self.dropped = 0
        self.errors = 0
        self._taps: list[Callable[[str, dict[str, Any]], None]] = []
        self.endpoints: list[str] = []
        socket = self._context.socket(zmq.PUB)
        if self.curve is not None:
            self.curve.secure(socket)
        socket.setsockopt(zmq.SNDHWM, cfg.sndhwm)
        # the kernel's send buffer per connection, behind the HWM queue: left to TCP autotuning it grows to
        # megabytes (measured: a stalled subscriber soaked up ~2,000 label messages before the HWM dropped one)
        socket.setsockopt(zmq.SNDBUF, _SNDBUF_BYTES)
        socket.setsockopt(zmq.LINGER, 100)
        for index, endpoint in enumerate(cfg.endpoints):
            try:
                socket.bind(endpoint)
            except zmq.ZMQError as error:
                socket.close(linger=0)
                self._release()
                raise ConfigKeyError(
                    f"publish.endpoints[{index}]", f"cannot bind {endpoint}: {error}"
                ) from None
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
        # status reasons are free text about sources: mask credentials here too (heartbeat rate, cheap)
        message: dict[str, Any] = (
            redact(payload, mask_secret_keys=False) if kind == "status" else dict(payload)
        )
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
            for tap in self._taps:  # in-process readers (the live page) see every message, in order
                try:
                    tap(topic, message)
                except Exception as error:
                    _log.error("message tap failed", topic=topic, error=str(error))
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

    def add_tap(self, tap: Callable[[str, dict[str, Any]], None]) -> None:
        """Also hand every message (topic, the message with its envelope) to ``tap``, under the publish lock: a
        tap must be quick and must not change the message. Add taps before publishing starts."""
        self._taps.append(tap)

    def stats(self) -> dict[str, int]:
        """Counters: ``sent``, ``dropped`` (slow/absent subscribers), ``errors``."""
        with self._lock:
            return {"sent": self.sent, "dropped": self.dropped, "errors": self.errors}

    def close(self) -> None:
        """Close the socket (pending messages get at most 100 ms to leave), then stop CURVE. Idempotent."""
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
                self._release()

    def _release(self) -> None:
        if self.curve is not None:
            self.curve.stop()
        if self._own_context:
            self._own_context = False
            self._context.term()  # waits for the socket's linger (100 ms) at most


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


def _echo(value: str) -> str:
    """``value`` quoted for an error message, cut to ``_ECHO_CHARS`` characters (an error never echoes a flood)."""
    if len(value) <= _ECHO_CHARS:
        return repr(value)
    return f"{value[:_ECHO_CHARS]!r}... ({len(value)} characters)"


def _check_text(cmd: str, name: str, value: str, max_chars: int) -> None:
    if not value:
        raise ValueError(f'{cmd}: field "{name}" must not be empty')
    if len(value) > max_chars:
        raise ValueError(f'{cmd}: field "{name}" is {len(value)} characters long (limit {max_chars})')
    for position, char in enumerate(value):
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            raise ValueError(
                f'{cmd}: field "{name}" must not contain control characters '
                f"(U+{ord(char):04X} at character {position + 1})"
            )


def validate_request(request: Any) -> dict[str, Any]:
    """Check a parsed control request; returns it, raises ``ValueError`` naming the problem.

    Errors name the field and the limit and quote at most ``_ECHO_CHARS`` characters of what was sent.
    """
    if not isinstance(request, dict):
        raise ValueError(f"request must be a JSON object, got {type(request).__name__}")
    known = ", ".join(CONTROL_COMMANDS)
    cmd = request.get("cmd")
    if cmd is None:
        raise ValueError(f'request has no "cmd" (known commands: {known})')
    if not isinstance(cmd, str):
        raise ValueError(f'"cmd" must be a string, got {type(cmd).__name__}')
    fields = CONTROL_COMMANDS.get(cmd)
    if fields is None:
        raise ValueError(f"unknown command {_echo(cmd)} (known commands: {known})")
    unknown = sorted(set(request) - set(fields) - {"cmd"})
    if unknown:
        names = ", ".join(_echo(k) for k in unknown[:_ECHO_NAMES])
        more = f" and {len(unknown) - _ECHO_NAMES} more" if len(unknown) > _ECHO_NAMES else ""
        raise ValueError(f"{cmd}: unknown field(s) {names}{more}")
    for name, spec in fields.items():
        if name not in request:
            if spec.required:
                raise ValueError(f'{cmd}: field "{name}" is required')
            continue
        value = request[name]
        if not isinstance(value, spec.types) or isinstance(value, bool):
            expected = " or ".join(
                "null" if t is type(None) else t.__name__.replace("str", "string") for t in spec.types
            )
            raise ValueError(f'{cmd}: field "{name}" must be {expected}, got {type(value).__name__}')
        if isinstance(value, str):
            _check_text(cmd, name, value, spec.max_chars)
    return request


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


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateField(f"request has field {_echo(key)} twice")
        obj[key] = value
    return obj


def _failure_site(error: BaseException) -> tuple[str, str, int]:
    """(exception type, file, line) where ``error`` was raised: repeats of one bug share it."""
    frames = traceback.extract_tb(error.__traceback__)
    last = frames[-1] if frames else None
    return type(error).__name__, last.filename if last else "", (last.lineno or 0) if last else 0


class ControlServer:
    """The control socket: a REP socket served by its own thread, one JSON object in, one JSON object out.

    Known commands are validated here (``CONTROL_COMMANDS``: ``reset`` with ``stream``, 1-64 characters, and
    optional ``subject``, 1-128 characters or null, no control characters; ``status``); ``handler(request) ->
    dict`` does the work and its dict becomes the reply with ``"ok": true`` added. Any problem (oversized,
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
        handler: Callable[[dict[str, Any]], dict[str, Any]],
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
        self._context, self.curve, self._own_context = _curve_context(
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
            request = self._parse(frames)
            result = self._handler(request)
            if not isinstance(result, dict):
                raise TypeError(f"control handler returned {type(result).__name__}, not a dict")
            reply = redact({"ok": True, **result}, mask_secret_keys=False)
            json.dumps(reply)  # fail here (and answer) rather than after the reply is half built
            return reply
        except (VstmonError, KeyError, ValueError) as error:
            self.errors += 1
            text = redact(_error_text(error))
            _log.info("control request rejected", error=text)
            return {"ok": False, "error": text}
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
            return {"ok": False, "error": f"internal error: {text}"}

    def _parse(self, frames: list[bytes]) -> dict[str, Any]:
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
        return validate_request(request)
