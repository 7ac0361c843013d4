"""The daemon's PUB socket: ``Publisher`` (never blocks) and, for it and the control socket
(``vstmon.wire.control``), the CURVE server side (``CurveServer``, ``curve_context``).

The messages are the models of ``vstmon.wire.protocol`` (a public contract, documented in docs/PROTOCOL.md); the
publisher adds their envelope and serialises them.

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

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from vstmon.config import CurveConfig, PublishConfig
from vstmon.errors import ConfigError, ConfigKeyError
from vstmon.log import get_logger, redact
from vstmon.wire.protocol import SCHEMA_VERSION, Body, Message, MessageError, parse_message

__all__ = ["CurveServer", "Publisher", "curve_context"]

_SNDBUF_BYTES = 256 * 1024  # per subscriber connection: ample for a LAN (~250 MB/s at 1 ms RTT), and bounded
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


def curve_context(
    cfg: CurveConfig | None, context: zmq.Context | None, name: str
) -> tuple[zmq.Context, CurveServer | None, bool]:
    """For a socket of ``name``: (context, started CurveServer or None, whether the context is ours to end)."""
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
        self._context, self.curve, self._own_context = curve_context(cfg.curve, context, "publish")
        self._lock = threading.Lock()
        self._seq: dict[str, int] = {}
        self.sent = 0
        self.dropped = 0
        self.errors = 0
        self._taps: list[Callable[[str, Message], None]] = []
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

    def publish(self, topic: str, body: Body, stream: str | None = None) -> bool:
        """Send ``body`` (a model of ``vstmon.wire.protocol``) under ``topic`` with the envelope added; True when
        queued, False when dropped. Never blocks, never raises.

        For ``<type>.<stream>`` topics the stream is taken from the topic unless ``stream`` is given. A body
        that does not belong on ``topic`` (a ``LabelBody`` on ``reset.cam1``) is a bug: logged and dropped.
        """
        kind, _, topic_stream = topic.partition(".")
        if stream is None and topic_stream:
            stream = topic_stream
        pattern = f"{kind}.<stream>" if stream is not None else kind
        if getattr(body, "topic_pattern", None) != pattern:
            with self._lock:
                self.errors += 1
            _log.error("message does not belong on its topic, dropped", topic=topic, body=type(body).__name__)
            return False
        message = body.model_dump(mode="json")
        if kind == "status":  # status reasons are free text about sources: mask credentials here too
            message = redact(message, mask_secret_keys=False)
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
                data = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
            except (TypeError, ValueError) as error:
                self.errors += 1
                _log.error("message not JSON-serialisable, dropped", topic=topic, error=str(error))
                return False
            if self._taps:  # in-process readers (the live page) see every message, typed, in order
                self._tap(topic, data)
            try:
                self._socket.send_multipart((topic.encode(), data), flags=zmq.NOBLOCK, copy=True)
            except zmq.Again:
                self.dropped += 1
                return False
            except zmq.ZMQError as error:
                self.errors += 1
                _log.error("publish failed", topic=topic, error=str(error))
                return False
            self.sent += 1
            return True

    def _tap(self, topic: str, data: bytes) -> None:
        """Hand the message, parsed as a subscriber would parse it, to every tap (publish lock held)."""
        try:
            message = parse_message(topic, data)
        except MessageError as error:  # a producer bug: subscribers will count it as malformed too
            _log.error("message does not follow the protocol", topic=topic, error=str(error))
            return
        for tap in self._taps:
            try:
                tap(topic, message)
            except Exception as error:
                _log.error("message tap failed", topic=topic, error=str(error))

    def add_tap(self, tap: Callable[[str, Message], None]) -> None:
        """Also hand every message (topic, the typed message with its envelope) to ``tap``, under the publish
        lock: a tap must be quick. Add taps before publishing starts."""
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
