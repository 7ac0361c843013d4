"""A small client for the daemon's messages: a gap-reporting ``Subscriber`` yielding typed messages, and
``vstmon listen``.

Formats: docs/PROTOCOL.md; the message models are ``vstmon.wire.protocol``'s (re-exported here, so that
``from vstmon.wire.client import LabelMessage, Subscriber`` works). ``parse_message`` accepts any schema
version-1 message and ignores fields it does not know (new fields are added without bumping ``v``); a message
with another ``v`` is an error.

``vstmon listen ENDPOINT [--topic PREFIX ...] [--count N] [--timeout-s S]`` prints one compact JSON object per
line: ``{"topic": <topic>, **message}`` (the message's own fields, unchanged, after the topic). Gaps in a stream's
``seq`` are reported on stderr. With ``--server-key FILE --client-key FILE`` it connects with CURVE (the daemon's
``publish.curve``); a failed handshake (a refused key, the wrong server key, CURVE on one side only) is said on
stderr at once.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from vstmon.errors import VstmonError
from vstmon.wire.keys import describe_handshake_failure, secure_client_socket
from vstmon.wire.pretty import pretty_line
from vstmon.wire.protocol import (
    Box,
    ClipInfo,
    DaemonStatus,
    LabelMessage,
    Message,
    MessageError,
    ResetMessage,
    Score,
    SegmentLabel,
    SegmentMessage,
    StatusMessage,
    StreamEntry,
    SubjectMessage,
    SubjectSlot,
    parse_message,
)

__all__ = [
    "Box",
    "ClipInfo",
    "DaemonStatus",
    "Gap",
    "LabelMessage",
    "Message",
    "MessageError",
    "ResetMessage",
    "Score",
    "SegmentLabel",
    "SegmentMessage",
    "StatusMessage",
    "StreamEntry",
    "SubjectMessage",
    "SubjectSlot",
    "Subscriber",
    "add_arguments",
    "add_key_arguments",
    "check_connect_endpoint",
    "handshake_monitor",
    "parse_message",
    "read_handshake",
    "run",
]


# -- endpoints --------------------------------------------------------------------------------------------------
DEFAULT_PUB_PORT = 5556
_CONNECT_SCHEMES = ("tcp", "ipc", "inproc")
_PORT_RE = re.compile(r"^\d{1,5}$")
_BARE_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^/:\s\[\]]+)$")
_HOST_PORT_RE = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^/:\s\[\]]+):(?P<port>\d{1,5}|\*)$")


def _suggest(rest: str, default_port: int) -> str:
    """A tcp:// endpoint for what followed a missing or wrong transport (``localhost:5556``, ``5556``, ``cam``)."""
    rest = rest.strip().split("/", 1)[0]
    if _PORT_RE.match(rest.lstrip(":")):
        return f"tcp://127.0.0.1:{rest.lstrip(':')}"
    match = _HOST_PORT_RE.match(rest)
    if match:
        host = "127.0.0.1" if match["host"] == "*" else match["host"]
        port = default_port if match["port"] == "*" else match["port"]
        return f"tcp://{host}:{port}"
    if _BARE_HOST_RE.match(rest):
        return f"tcp://{'127.0.0.1' if rest == '*' else rest}:{default_port}"
    return f"tcp://127.0.0.1:{default_port}"


def check_connect_endpoint(endpoint: str, default_port: int = DEFAULT_PUB_PORT) -> str:
    """``endpoint`` (stripped, transport in lower case) if a client can connect to it; else ``VstmonError`` with a suggestion.

    Catches what ZeroMQ only calls "Invalid argument": a missing transport (``localhost:5556`` -> did you mean
    ``tcp://localhost:5556``?), another transport (``http://``), a bind address (``tcp://*:5556``, as in
    ``publish.endpoints``) and a missing port. ``default_port`` fills a missing port in the suggestion.
    """
    text = endpoint.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        hint = f"ipc://{text}" if text.startswith(("/", "./", "~")) else _suggest(text, default_port)
        raise VstmonError(f"endpoint {text!r} has no transport; did you mean {hint}?")
    scheme = scheme.lower()
    if scheme not in _CONNECT_SCHEMES:
        raise VstmonError(
            f"endpoint {text!r}: transport {scheme!r} is not supported (tcp://, ipc:// or inproc://); "
            f"did you mean {_suggest(rest, default_port)}?"
        )
    if scheme != "tcp":
        if not rest:
            raise VstmonError(f"endpoint {text!r} names no {'path' if scheme == 'ipc' else 'name'}")
        return f"{scheme}://{rest}"
    match = _HOST_PORT_RE.match(rest)
    hint = _suggest(rest, default_port)
    if match is None:
        if _BARE_HOST_RE.match(rest) and rest != "*":
            raise VstmonError(f"endpoint {text!r} has no port; did you mean {hint}?")
        raise VstmonError(f"endpoint {text!r} must be tcp://HOST:PORT; did you mean {hint}?")
    if "*" in (match["host"], match["port"]):
        raise VstmonError(
            f"endpoint {text!r} is a bind address (as in publish.endpoints); a client connects to the "
            f"daemon's host and port: did you mean {hint}?"
        )
    if not 1 <= int(match["port"]) <= 65535:
        raise VstmonError(f"endpoint {text!r}: port {int(match['port'])} is out of range (1-65535)")
    return f"tcp://{rest}"


# -- handshakes -------------------------------------------------------------------------------------------------
_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
)


def handshake_monitor(socket: zmq.Socket) -> zmq.Socket:
    """A monitor socket for ``socket``'s handshake events (read them with ``read_handshake``); close both."""
    return socket.get_monitor_socket(_HANDSHAKE_EVENTS)


def read_handshake(monitor: zmq.Socket, curve: bool) -> str | None:
    """Drain ``monitor``: what the last failed handshake means (``None`` when the last one succeeded)."""
    from zmq.utils.monitor import recv_monitor_message

    problem: str | None = None
    while monitor.poll(0, zmq.POLLIN):
        event = recv_monitor_message(monitor, zmq.NOBLOCK)
        if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            problem = None
        else:
            problem = describe_handshake_failure(event["event"], int(event["value"]), curve)
    return problem


def _json_object(frames: list[bytes]) -> tuple[str, dict[str, Any]]:
    """(topic, body) of a message's two frames, the body a JSON object; ``MessageError`` otherwise."""
    if len(frames) != 2:
        raise MessageError(f"expected 2 frames (topic, JSON), got {len(frames)}")
    try:
        topic = frames[0].decode("utf-8")
        data = json.loads(frames[1].decode("utf-8"))
    except UnicodeDecodeError:
        raise MessageError(f"{frames[0][:40]!r}: not UTF-8") from None
    except json.JSONDecodeError as error:
        raise MessageError(f"{topic}: body is not valid JSON ({error.msg} at position {error.pos})") from None
    if not isinstance(data, dict):
        raise MessageError(f"{topic}: body must be a JSON object, got {type(data).__name__}")
    return topic, data


# -- subscriber -------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Gap:
    """Messages ``first_seq..last_seq`` (inclusive) of ``stream`` were not received."""

    stream: str
    first_seq: int
    last_seq: int

    @property
    def missing(self) -> int:
        return self.last_seq - self.first_seq + 1


class Subscriber:
    """A SUB socket connected to ``endpoint`` (or to several: the messages of several daemons fan in), yielding
    typed messages and tracking ``seq`` gaps per stream (stream names must differ across the daemons).

    Iterating yields messages until none arrives for ``timeout_s`` (``None`` = wait forever). Malformed or
    unknown messages are skipped and counted in ``malformed`` (the last error in ``last_error``). ``gaps``
    counts gap events, ``missing`` the messages lost, ``gap_log`` keeps the last 1000 ``Gap``s. A ``seq``
    that does not increase means the daemon restarted: tracking restarts (counted in ``restarts``).

    CURVE (the daemon's ``publish.curve``): ``server_key`` is the daemon's public key file (``NAME.key``),
    ``client_key`` this client's secret key file (``NAME.key_secret``, its ``NAME.key`` in the daemon's
    ``allowed_keys``); both or neither (``VstmonError`` naming the file otherwise). A failed handshake (a refused
    key, the wrong server key, CURVE on one side only) delivers nothing; it is described in
    ``handshake_error`` (None once a handshake succeeds) and passed to ``on_handshake_failure`` when it changes.
    """

    def __init__(
        self,
        endpoint: str | Sequence[str],
        topics: tuple[str, ...] | list[str] = ("",),
        timeout_s: float | None = None,
        context: zmq.Context | None = None,
        rcvhwm: int = 100_000,
        server_key: str | os.PathLike[str] | None = None,
        client_key: str | os.PathLike[str] | None = None,
        on_handshake_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.endpoints = [
            check_connect_endpoint(e, DEFAULT_PUB_PORT)
            for e in ([endpoint] if isinstance(endpoint, str) else endpoint)
        ]
        if not self.endpoints:
            raise VstmonError("a subscriber needs at least one endpoint")
        self.endpoint = ", ".join(self.endpoints)  # for messages
        self.timeout_s = timeout_s
        self.handshake_error: str | None = None
        self._on_handshake_failure = on_handshake_failure
        self._context = context if context is not None else zmq.Context.instance()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVHWM, rcvhwm)
        for topic in topics or ("",):
            self._socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
        try:
            self.curve = secure_client_socket(self._socket, server_key, client_key)
        except VstmonError:
            self._socket.close(linger=0)
            raise
        self._monitor = handshake_monitor(self._socket)
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        for address in self.endpoints:  # several daemons: one socket, their messages fan in
            try:
                self._socket.connect(address)
            except zmq.ZMQError as error:
                self._close_sockets()
                raise VstmonError(f"cannot connect to {address}: {error}") from None
        self._last_seq: dict[str, int] = {}
        self.received = 0
        self.gaps = 0
        self.missing = 0
        self.restarts = 0
        self.malformed = 0
        self.last_error: str | None = None
        self.gap_log: deque[Gap] = deque(maxlen=1000)

    def _frames(self, deadline: float | None) -> list[bytes] | None:
        """The next multipart message's frames; None at ``deadline`` (monotonic seconds; None: wait forever)."""
        while True:
            wait_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            ready = dict(self._poller.poll(wait_ms))
            if self._monitor in ready:
                self._check_handshake()
            if self._socket in ready:
                return self._socket.recv_multipart()
            if not ready or (deadline is not None and time.monotonic() >= deadline):
                return None

    def _deadline(self, timeout_s: float | None) -> float | None:
        timeout = self.timeout_s if timeout_s == -1.0 else timeout_s
        return None if timeout is None else time.monotonic() + timeout

    def _refuse(self, error: MessageError) -> None:
        self.malformed += 1
        self.last_error = str(error)

    def recv(self, timeout_s: float | None = -1.0) -> Message | None:
        """Next typed message; None after ``timeout_s`` (default: the instance's). Messages that do not follow
        the protocol are skipped and counted in ``malformed``."""
        deadline = self._deadline(timeout_s)
        while (frames := self._frames(deadline)) is not None:
            try:
                if len(frames) != 2:
                    raise MessageError(f"expected 2 frames (topic, JSON), got {len(frames)}")
                message = parse_message(frames[0], frames[1])
            except MessageError as error:
                self._refuse(error)
                continue
            self.received += 1
            self._track(getattr(message, "stream", None), getattr(message, "seq", None))
            return message
        return None

    def recv_raw(self, timeout_s: float | None = -1.0) -> tuple[str, dict[str, Any], list[Gap]] | None:
        """Next ``(topic, the JSON object as sent, new gaps)``, not checked against the protocol: for printing a
        message unchanged (``vstmon listen``); ``recv`` gives the typed message. None after ``timeout_s``."""
        deadline = self._deadline(timeout_s)
        while (frames := self._frames(deadline)) is not None:
            try:
                topic, data = _json_object(frames)
            except MessageError as error:
                self._refuse(error)
                continue
            self.received += 1
            return topic, data, self._track(data.get("stream"), data.get("seq"))
        return None

    def __iter__(self) -> Iterator[Message]:
        while (message := self.recv()) is not None:
            yield message

    def _track(self, stream: Any, seq: Any) -> list[Gap]:
        """Note ``seq`` of ``stream``; the gap it reveals, if any (nothing for the daemon status)."""
        if not isinstance(stream, str) or not isinstance(seq, int) or isinstance(seq, bool):
            return []
        last = self._last_seq.get(stream)
        self._last_seq[stream] = seq
        if last is None:
            return []
        if seq <= last:
            self.restarts += 1
            return []
        if seq == last + 1:
            return []
        gap = Gap(stream, last + 1, seq - 1)
        self.gaps += 1
        self.missing += gap.missing
        self.gap_log.append(gap)
        return [gap]

    def _check_handshake(self) -> None:
        problem = read_handshake(self._monitor, self.curve)
        if problem is not None and problem != self.handshake_error and self._on_handshake_failure is not None:
            self._on_handshake_failure(problem)
        self.handshake_error = problem

    def _close_sockets(self) -> None:
        self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._socket.close(linger=0)

    def close(self) -> None:
        if not self._socket.closed:
            self._close_sockets()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pretty(topic: str, data: dict[str, Any], colour: bool) -> str:
    """``--pretty``'s line for a message; a message that does not follow the protocol says what is wrong."""
    try:
        return pretty_line(parse_message(topic, data), colour)
    except MessageError as error:
        return f"{topic}: not shown: {error}"


# -- vstmon listen ----------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "endpoint",
        metavar="ENDPOINT",
        nargs="+",
        help="the daemon's PUB address, e.g. tcp://127.0.0.1:5556; several: the labels of several daemons in one "
        "stream of messages (their stream names must differ; seq gaps are still per stream)",
    )
    parser.add_argument(
        "--topic",
        action="append",
        default=None,
        metavar="PREFIX",
        help="only topics starting with PREFIX (repeatable; e.g. label, label.cam1, status); default all",
    )
    parser.add_argument("--count", type=int, default=None, metavar="N", help="exit after N messages")
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=None,
        metavar="S",
        help="exit when no message arrives for S seconds (exit code 1, with a message on stderr, if none "
        "arrived at all or --count was not reached)",
    )
    parser.add_argument(
        "--pretty",
        action="store_true",
        help="one aligned line per message for a person (time, stream, subject, label, score; colour on a TTY "
        "unless NO_COLOR is set) instead of JSON",
    )
    add_key_arguments(parser)


def add_key_arguments(parser: argparse.ArgumentParser, default: Any = None) -> None:
    """``--server-key FILE`` and ``--client-key FILE`` (CURVE; ``vstmon listen`` and ``vstmon ctl``)."""
    parser.add_argument(
        "--server-key",
        default=default,
        metavar="FILE",
        help="CURVE: the daemon's public key file (NAME.key of its publish.curve.secret_key)",
    )
    parser.add_argument(
        "--client-key",
        default=default,
        metavar="FILE",
        help="CURVE: this client's secret key file (NAME.key_secret; its NAME.key must be in the daemon's "
        "publish.curve.allowed_keys)",
    )


def run(args: argparse.Namespace) -> int:
    """Print messages as JSON lines.

    Exit 0 after ``--count`` messages, or (without ``--count``) when ``--timeout-s`` passes without a message
    after at least one arrived; exit 1, with ``vstmon listen: no message in S s`` on stderr, when
    ``--timeout-s`` passes before the first message or before ``--count`` messages arrived.
    """
    if args.count is not None and args.count < 1:
        raise VstmonError(f"--count must be >= 1, got {args.count}")
    if args.timeout_s is not None and args.timeout_s <= 0:
        raise VstmonError(f"--timeout-s must be > 0, got {args.timeout_s}")
    printed = 0
    every_topic = not args.topic or "" in args.topic
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")

    def say_handshake_failure(problem: str) -> None:
        print(f"vstmon listen: {subscriber_endpoint}: {problem}", file=sys.stderr, flush=True)

    subscriber_endpoint = ", ".join(check_connect_endpoint(e, DEFAULT_PUB_PORT) for e in args.endpoint)
    with Subscriber(
        args.endpoint,
        tuple(args.topic or ("",)),
        timeout_s=args.timeout_s,
        server_key=args.server_key,
        client_key=args.client_key,
        on_handshake_failure=say_handshake_failure,
    ) as subscriber:
        while args.count is None or printed < args.count:
            raw = subscriber.recv_raw()
            if raw is None:
                if args.count is None and printed:
                    return 0  # the stream went quiet after messages: a normal end without --count
                got = f"; got {printed} of {args.count}" if args.count is not None else ""
                if printed:
                    hint = ""
                elif subscriber.handshake_error is not None:
                    hint = f" ({subscriber.handshake_error})"
                else:
                    hint = f" (is a daemon publishing on {subscriber.endpoint}?)"
                print(f"vstmon listen: no message in {args.timeout_s:g} s{got}{hint}", file=sys.stderr)
                return 1
            topic, data, gaps = raw
            # with a topic filter, seq jumps over the stream's other topics are expected, not losses
            for gap in gaps if every_topic else ():
                print(
                    f"vstmon listen: gap on stream {gap.stream}: missing seq {gap.first_seq}..{gap.last_seq}",
                    file=sys.stderr,
                    flush=True,
                )
            data.pop("topic", None)
            if args.pretty:
                sys.stdout.write(_pretty(topic, data, colour) + "\n")
            else:
                sys.stdout.write(json.dumps({"topic": topic, **data}, separators=(",", ":")) + "\n")
            sys.stdout.flush()
            printed += 1
    return 0
