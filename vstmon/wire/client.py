"""A small client for the daemon's messages: typed parsing, a gap-reporting ``Subscriber``, and ``vstmon listen``.

Formats: docs/PROTOCOL.md. ``parse_message`` accepts any schema version-1 message and ignores fields it does not
know (new fields are added without bumping ``v``); a message with another ``v`` is an error.

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from vstmon.errors import VstmonError
from vstmon.wire.keys import describe_handshake_failure, secure_client_socket
from vstmon.wire.pretty import pretty_line

__all__ = [
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
    "SubjectMessage",
    "Subscriber",
    "add_arguments",
    "add_key_arguments",
    "check_connect_endpoint",
    "handshake_monitor",
    "parse_message",
    "read_handshake",
    "run",
]

SCHEMA_VERSION = 1
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 normalised to the source frame (0..1)


class MessageError(VstmonError):
    """A received message does not follow the protocol (the message says which field and why)."""


# -- typed messages ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Score:
    """One entry of a top-k list."""

    label: str
    index: int
    score: float


@dataclass(frozen=True, slots=True)
class ClipInfo:
    """The frames a label was computed from."""

    start_ts: float
    end_ts: float
    first_frame: int
    last_frame: int
    frames: int


@dataclass(frozen=True, slots=True)
class LabelMessage:
    """``label.<stream>``: the classification of one clip."""

    topic: str
    v: int
    ts: float
    stream: str
    seq: int
    segment: int
    subject: str | None
    clip: ClipInfo
    top: tuple[Score, ...]
    smoothed: tuple[Score, ...]
    latency_ms: float
    model: str
    untrained: bool = False
    box: Box | None = None  # the subject's box at the clip's end (streams that track subjects)


@dataclass(frozen=True, slots=True)
class ResetMessage:
    """``reset.<stream>``: a new segment started."""

    topic: str
    v: int
    ts: float
    stream: str
    seq: int
    segment: int
    previous_segment: int
    subject: str | None
    reason: str
    box: Box | None = None  # where the subject is (per-subject mode; null otherwise)


@dataclass(frozen=True, slots=True)
class SegmentLabel:
    """Per-label statistics of a closed segment."""

    label: str
    index: int
    clips: int
    seconds: float


@dataclass(frozen=True, slots=True)
class SegmentMessage:
    """``segment.<stream>``: summary of a closed segment."""

    topic: str
    v: int
    ts: float
    stream: str
    seq: int
    segment: int
    subject: str | None
    start_ts: float
    end_ts: float
    clips: int
    labels: tuple[SegmentLabel, ...]
    box: Box | None = None  # where the subject last was (per-subject mode; null otherwise)


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """``status.<stream>``: the source's state and counters."""

    topic: str
    v: int
    ts: float
    stream: str
    seq: int
    state: str
    reason: str
    fps_in: float
    frames_dropped: int
    clips_dropped: int
    reconnects: int
    clips: int
    people: int | None = None  # people in view (None: the stream does not track subjects)
    subject: str | None = None
    subjects: tuple[Mapping[str, Any], ...] | None = (
        None  # per-subject mode: {subject, box, segment, clips} each
    )
    waiting: int | None = None  # per-subject mode: people who count but have no slot


@dataclass(frozen=True, slots=True)
class SubjectMessage:
    """``subject.<stream>``: the stream's subject entered, changed or left (after the reset it caused)."""

    topic: str
    v: int
    ts: float
    stream: str
    seq: int
    event: str  # enter | change | leave
    segment: int  # the segment the event opened
    subject: str | None  # the subject from now on (null after leave)
    previous: str | None  # the subject before (null on enter)
    box: Box | None  # the new subject's box; on leave, the leaving subject's last box
    score: float | None
    people: int


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    """``status``: the daemon's heartbeat."""

    topic: str
    v: int
    ts: float
    uptime_s: float
    device: tuple[str, ...]
    model: str
    streams: Mapping[str, Any] = field(default_factory=dict)
    state: str = "running"  # "stopped" in the daemon's last status before its sockets close


Message = LabelMessage | ResetMessage | SegmentMessage | StatusMessage | SubjectMessage | DaemonStatus


# -- parsing ----------------------------------------------------------------------------------------------------
class _Fields:
    """Typed access to one JSON object; errors name the topic and the field path."""

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        self.data = data
        self.where = where

    def _get(self, name: str) -> Any:
        if name not in self.data:
            raise MessageError(f"{self.where}: missing field {name!r}")
        return self.data[name]

    def _fail(self, name: str, expected: str, value: Any) -> MessageError:
        return MessageError(f"{self.where}: field {name!r} must be {expected}, got {type(value).__name__}")

    def text(self, name: str) -> str:
        value = self._get(name)
        if not isinstance(value, str):
            raise self._fail(name, "a string", value)
        return value

    def opt_text(self, name: str) -> str | None:
        value = self._get(name)
        if value is not None and not isinstance(value, str):
            raise self._fail(name, "a string or null", value)
        return value

    def integer(self, name: str) -> int:
        value = self._get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._fail(name, "an integer", value)
        return value

    def number(self, name: str) -> float:
        value = self._get(name)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self._fail(name, "a number", value)
        return float(value)

    def opt_integer(self, name: str) -> int | None:
        """An integer, or null; an absent field (an older daemon) is None too."""
        if self.data.get(name) is None:
            return None
        return self.integer(name)

    def opt_box(self, name: str) -> Box | None:
        """[x0, y0, x1, y1] in 0..1, or null; an absent field (an older daemon) is None too."""
        value = self.data.get(name)
        if value is None:
            return None
        if (
            not isinstance(value, list)
            or len(value) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1 for v in value)
        ):
            raise MessageError(f"{self.where}: field {name!r} must be [x0, y0, x1, y1] in 0..1 or null")
        x0, y0, x1, y1 = (float(v) for v in value)
        return (x0, y0, x1, y1)

    def obj(self, name: str) -> _Fields:
        value = self._get(name)
        if not isinstance(value, dict):
            raise self._fail(name, "an object", value)
        return _Fields(value, f"{self.where}.{name}")

    def objs(self, name: str) -> list[_Fields]:
        value = self._get(name)
        if not isinstance(value, list):
            raise self._fail(name, "a list", value)
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise MessageError(f"{self.where}.{name}[{i}]: must be an object, got {type(item).__name__}")
            out.append(_Fields(item, f"{self.where}.{name}[{i}]"))
        return out


def _scores(fields: _Fields, name: str) -> tuple[Score, ...]:
    return tuple(Score(f.text("label"), f.integer("index"), f.number("score")) for f in fields.objs(name))


def _decode(topic: bytes | str, body: bytes | str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    if isinstance(topic, bytes):
        try:
            topic = topic.decode("utf-8")
        except UnicodeDecodeError:
            raise MessageError(f"topic {topic[:40]!r} is not UTF-8") from None
    if isinstance(body, Mapping):
        return topic, dict(body)
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise MessageError(f"{topic}: body is not UTF-8") from None
    try:
        data = json.loads(body)
    except json.JSONDecodeError as error:
        raise MessageError(f"{topic}: body is not valid JSON ({error.msg} at position {error.pos})") from None
    if not isinstance(data, dict):
        raise MessageError(f"{topic}: body must be a JSON object, got {type(data).__name__}")
    return topic, data


def parse_message(topic: bytes | str, body: bytes | str | Mapping[str, Any]) -> Message:
    """Parse one message (its two frames) into a typed object; raises ``MessageError`` naming the problem."""
    topic, data = _decode(topic, body)
    f = _Fields(data, topic)
    kind, _, topic_stream = topic.partition(".")
    version = f.integer("v")
    if version != SCHEMA_VERSION:
        raise MessageError(f"{topic}: schema version {version} is not supported (this client reads v=1)")
    msg_type = f.text("type")
    if msg_type != kind:
        raise MessageError(f"{topic}: type {msg_type!r} does not match the topic")
    ts = f.number("ts")
    if kind == "status" and not topic_stream:
        streams = f.obj("streams").data
        device = data.get("device")
        if isinstance(device, str):
            device = [device]
        if not isinstance(device, list) or not all(isinstance(d, str) for d in device):
            raise MessageError(f"{topic}: field 'device' must be a list of strings")
        state = f.text("state") if "state" in data else "running"
        return DaemonStatus(
            topic, version, ts, f.number("uptime_s"), tuple(device), f.text("model"), dict(streams), state
        )
    if not topic_stream:
        raise MessageError(f"{topic}: a {kind!r} topic must name a stream ({kind}.<stream>)")
    stream, seq = f.text("stream"), f.integer("seq")
    if stream != topic_stream:
        raise MessageError(f"{topic}: stream {stream!r} does not match the topic")
    envelope = (topic, version, ts, stream, seq)
    if kind == "label":
        clip = f.obj("clip")
        untrained = data.get("untrained", False)
        if not isinstance(untrained, bool):
            raise MessageError(f"{topic}: field 'untrained' must be a boolean")
        return LabelMessage(
            *envelope,
            segment=f.integer("segment"),
            subject=f.opt_text("subject"),
            clip=ClipInfo(
                clip.number("start_ts"),
                clip.number("end_ts"),
                clip.integer("first_frame"),
                clip.integer("last_frame"),
                clip.integer("frames"),
            ),
            top=_scores(f, "top"),
            smoothed=_scores(f, "smoothed"),
            latency_ms=f.number("latency_ms"),
            model=f.text("model"),
            untrained=untrained,
            box=f.opt_box("box"),
        )
    if kind == "reset":
        return ResetMessage(
            *envelope,
            segment=f.integer("segment"),
            previous_segment=f.integer("previous_segment"),
            subject=f.opt_text("subject"),
            reason=f.text("reason"),
            box=f.opt_box("box"),
        )
    if kind == "segment":
        labels = tuple(
            SegmentLabel(g.text("label"), g.integer("index"), g.integer("clips"), g.number("seconds"))
            for g in f.objs("labels")
        )
        return SegmentMessage(
            *envelope,
            segment=f.integer("segment"),
            subject=f.opt_text("subject"),
            start_ts=f.number("start_ts"),
            end_ts=f.number("end_ts"),
            clips=f.integer("clips"),
            labels=labels,
            box=f.opt_box("box"),
        )
    if kind == "status":
        return StatusMessage(
            *envelope,
            state=f.text("state"),
            reason=f.text("reason"),
            fps_in=f.number("fps_in"),
            frames_dropped=f.integer("frames_dropped"),
            clips_dropped=f.integer("clips_dropped"),
            reconnects=f.integer("reconnects"),
            clips=f.integer("clips"),
            people=f.opt_integer("people"),
            subject=f.opt_text("subject") if "subject" in data else None,
            subjects=tuple(g.data for g in f.objs("subjects")) if data.get("subjects") is not None else None,
            waiting=f.opt_integer("waiting"),
        )
    if kind == "subject":
        score = data.get("score")
        return SubjectMessage(
            *envelope,
            event=f.text("event"),
            segment=f.integer("segment"),
            subject=f.opt_text("subject"),
            previous=f.opt_text("previous"),
            box=f.opt_box("box"),
            score=None if score is None else f.number("score"),
            people=f.integer("people"),
        )
    raise MessageError(f"{topic}: unknown message type {kind!r}")


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

    def recv_raw(self, timeout_s: float | None = -1.0) -> tuple[str, dict[str, Any], list[Gap]] | None:
        """Next ``(topic, message dict, new gaps)``; None after ``timeout_s`` (default: the instance's)."""
        timeout = self.timeout_s if timeout_s == -1.0 else timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            ready = dict(self._poller.poll(wait_ms))
            if self._monitor in ready:
                self._check_handshake()
            if self._socket not in ready:
                if not ready or (deadline is not None and time.monotonic() >= deadline):
                    return None
                continue
            frames = self._socket.recv_multipart()
            try:
                if len(frames) != 2:
                    raise MessageError(f"expected 2 frames (topic, JSON), got {len(frames)}")
                topic, data = _decode(frames[0], frames[1])
            except MessageError as error:
                self.malformed += 1
                self.last_error = str(error)
                continue
            self.received += 1
            return topic, data, self._track(data)

    def recv(self, timeout_s: float | None = -1.0) -> Message | None:
        """Next typed message; None after ``timeout_s`` (default: the instance's)."""
        while True:
            raw = self.recv_raw(timeout_s)
            if raw is None:
                return None
            try:
                return parse_message(raw[0], raw[1])
            except MessageError as error:
                self.malformed += 1
                self.last_error = str(error)

    def __iter__(self) -> Iterator[Message]:
        while (message := self.recv()) is not None:
            yield message

    def _track(self, data: Mapping[str, Any]) -> list[Gap]:
        stream, seq = data.get("stream"), data.get("seq")
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
                sys.stdout.write(pretty_line(topic, data, colour) + "\n")
            else:
                sys.stdout.write(json.dumps({"topic": topic, **data}, separators=(",", ":")) + "\n")
            sys.stdout.flush()
            printed += 1
    return 0
