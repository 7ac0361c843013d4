"""The wire protocol, written once: pydantic models of every message the daemon publishes and of every control
command and reply. Producers build these models, the publisher serialises them, the client parses into them, the
control socket validates with them, and docs/PROTOCOL.md's field tables are generated from them
(``vstmon.wire.protocol_doc``), so code and documentation cannot drift.

Two layers per message: a *body* (``LabelBody``, ...: the fields a producer sets) and a *message* (``LabelMessage``,
...: the body plus the envelope ``v``, ``type``, ``ts`` and, on stream topics, ``stream`` and ``seq``, which the
publisher adds). Messages form one union (``Message``) discriminated by ``type`` and by whether the topic names a
stream (``status`` vs ``status.<stream>``); ``parse_message`` reads one with ``MESSAGE_ADAPTER``.

Compatibility (schema version ``SCHEMA_VERSION``): messages ignore fields they do not know (``extra="ignore"``:
a newer daemon may add fields without changing ``v``) and a client refuses any other ``v``. Parsing is strict
(``"2"`` is not an int, ``true`` is not a number), as a typed client should be. Control commands forbid unknown
fields and bound every string; their errors name the field and the limit (``parse_command``).

Pydantic only (no zmq, torch or cv2): every layer can import this module. It is longer than most (about 560
lines, most of them the field descriptions PROTOCOL.md's tables are made from) because the contract is kept in
one place on purpose; how its errors are worded is in ``vstmon.wire.protocol_errors``.

Over 500 lines: the whole contract with subscribers and control clients, every field with its description (the source of docs/PROTOCOL.md's tables), is kept in one file so that it is read and changed in one place.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from vstmon.wire.protocol_errors import (
    MessageError,
    command_error,
    decode,
    echo,
    message_failure,
    reply_failure,
)

__all__ = [
    "COMMAND_ADAPTER",
    "MAX_STREAM_CHARS",
    "MAX_SUBJECT_CHARS",
    "MESSAGE_ADAPTER",
    "REPLY_ADAPTER",
    "SCHEMA_VERSION",
    "Body",
    "Box",
    "ClipInfo",
    "ControlCommand",
    "ControlReply",
    "DaemonStatus",
    "DaemonStatusBody",
    "Envelope",
    "ErrorReply",
    "LabelBody",
    "LabelMessage",
    "Message",
    "MessageError",
    "ResetBody",
    "ResetCommand",
    "ResetMessage",
    "ResetReply",
    "Score",
    "SegmentBody",
    "SegmentLabel",
    "SegmentMessage",
    "StatusCommand",
    "StatusMessage",
    "StatusReply",
    "StreamEntry",
    "StreamEnvelope",
    "StreamName",
    "StreamStatusBody",
    "SubjectBody",
    "SubjectId",
    "SubjectMessage",
    "SubjectSlot",
    "parse_command",
    "parse_message",
    "parse_reply",
]

SCHEMA_VERSION = 1
MAX_STREAM_CHARS = 64  # as stream names in the config
MAX_SUBJECT_CHARS = 128  # a subject id rides on every later label message of its stream
# control characters: C0/C1 controls, DEL, bidi overrides, zero-width characters, lone surrogates, line and
# paragraph separators
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


class _Model(BaseModel):
    """Frozen; unknown fields are ignored (a newer daemon may add fields without changing ``v``). A NaN or
    infinity stays one when dumped (not null), so that the publisher refuses it (JSON has neither)."""

    model_config = ConfigDict(frozen=True, extra="ignore", ser_json_inf_nan="constants")


_Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Box = tuple[_Unit, _Unit, _Unit, _Unit]  # x0, y0, x1, y1 normalised to the source frame (0..1)
_BOX = "`[x0, y0, x1, y1]` normalised to 0..1 of the source frame (the whole frame, not the model's crop)"


# -- parts of messages -------------------------------------------------------------------------------------------
class Score(_Model):
    """One entry of a top-k list."""

    label: str = Field(description="the label")
    index: int = Field(description="its index in the model's label list")
    score: float = Field(description="softmax probability (smoothed in `smoothed`)")


class ClipInfo(_Model):
    """The frames a label was computed from."""

    start_ts: float = Field(description="unix seconds (capture time) of the clip's first frame")
    end_ts: float = Field(description="unix seconds (capture time) of the clip's last frame")
    first_frame: int = Field(
        description="source frame index (0-based since the source opened) of the first frame"
    )
    last_frame: int = Field(description="source frame index of the last frame")
    frames: int = Field(description="frames in the clip (the model's T)")


class SegmentLabel(_Model):
    """Time spent on one label in a closed segment."""

    label: str = Field(description="a label that was top of the smoothed scores at least once")
    index: int = Field(description="its index in the model's label list")
    clips: int = Field(description="clips whose smoothed top it was")
    seconds: float = Field(description="stream seconds attributed to it (see time attribution)")


class SubjectSlot(_Model):
    """A person with clips of their own (per-subject mode)."""

    subject: str = Field(description="the person's subject id")
    box: Box | None = Field(description=f"where the person is: {_BOX}")
    segment: int = Field(description="the person's current segment")
    clips: int = Field(description="clips published in that segment")


# -- bodies: what producers build --------------------------------------------------------------------------------
class _Body(_Model):
    """The fields a producer sets; the publisher adds the envelope. ``topic_pattern`` is the topic it goes out
    on; fields in ``omitted_at_default`` are left out of the JSON while they hold their default (present only
    when they say something)."""

    topic_pattern: ClassVar[str]
    omitted_at_default: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _leave_out_defaults(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for name in self.omitted_at_default:
            if name in data and getattr(self, name) == type(self).model_fields[name].default:
                del data[name]
        return data


class LabelBody(_Body):
    """``label.<stream>``: the classification of one clip."""

    topic_pattern: ClassVar[str] = "label.<stream>"
    omitted_at_default: ClassVar[frozenset[str]] = frozenset({"untrained"})

    segment: int = Field(description="segment the clip belongs to (see the reset protocol)")
    subject: str | None = Field(description="subject id of the segment, if one was given")
    clip: ClipInfo = Field(description="the clip's frames")
    top: tuple[Score, ...] = Field(
        description="top-k (`publish.top_k`) of this clip, score descending (ties: lower index first)"
    )
    smoothed: tuple[Score, ...] = Field(description="the same form, over the smoothed scores (below)")
    latency_ms: float = Field(
        description="milliseconds from the capture of the clip's last frame to this message"
    )
    model: str = Field(description="id of the loaded checkpoint")
    box: Box | None = Field(
        default=None,
        description=f"the subject's box at the clip's end, {_BOX}; null when the stream tracks no subject or "
        "none is in view",
    )
    untrained: bool = Field(
        default=False,
        description="present (and true) only when the model runs with untrained weights; the scores are then "
        "meaningless",
    )


class SegmentBody(_Body):
    """``segment.<stream>``: summary of the segment that just closed."""

    topic_pattern: ClassVar[str] = "segment.<stream>"

    segment: int = Field(description="the closed segment")
    subject: str | None = Field(description="its subject")
    box: Box | None = Field(
        default=None, description="per-subject mode: where the person last was; null otherwise"
    )
    start_ts: float = Field(
        description="unix seconds when it opened (the previous reset, or state creation for segment 1)"
    )
    end_ts: float = Field(description="unix seconds when it closed")
    clips: int = Field(description="label messages published in it")
    labels: tuple[SegmentLabel, ...] = Field(
        description="every label that was top of the **smoothed** scores at least once, by `seconds` descending"
    )


class ResetBody(_Body):
    """``reset.<stream>``: a new segment started."""

    topic_pattern: ClassVar[str] = "reset.<stream>"

    segment: int = Field(description="the new segment")
    previous_segment: int = Field(description="the closed one (0 for reason `start`)")
    subject: str | None = Field(description="subject of the new segment")
    box: Box | None = Field(
        default=None, description=f"per-subject mode: the person's box, {_BOX}; null otherwise"
    )
    reason: str = Field(
        description="`control` (a control command), `scene_change` (hard cut detected), `reconnect` (a live "
        "source was lost: dropped, stalled or stuck on one picture; with `reset.on_reconnect`), `loop` (a file "
        "with `loop: true` started over), `subject_change` (a new subject: `enter` or `change` on "
        "`subject.<stream>`), `absent` (the subject left and nobody took over), `time_jump` (the stream clock "
        "jumped: backwards, or forwards by more than `max_time_jump_s`; e.g. two recordings concatenated), "
        "`idle` (no motion for `reset.idle_s`), `end` (the source ended), `start` (the stream started; no "
        "`segment` message precedes it), `worker_restart` (the worker process hosting the stream died and was "
        "restarted; no `segment` message precedes it: the segment ended with the process). Clients must accept "
        "reasons they do not know (new ones may be added)."
    )


class SubjectBody(_Body):
    """``subject.<stream>``: the stream's subject entered, changed or left (after the reset it caused)."""

    topic_pattern: ClassVar[str] = "subject.<stream>"

    event: str = Field(
        description="`enter` (a person became the subject: no subject before), `change` (the subject was out of "
        "view for `subjects.lost_s` and another person had been the best choice for `subjects.confirm_s`), "
        "`leave` (the subject was gone for `subjects.absent_s` with nobody to take over)"
    )
    segment: int = Field(description="the segment the event opened")
    subject: str | None = Field(
        description="the subject from now on (`<stream>-<track id>`, stable while the person is tracked; null "
        "after `leave`)"
    )
    previous: str | None = Field(description="the subject before (null on `enter`)")
    box: Box | None = Field(
        description=f"{_BOX}: the new subject's box; on `leave`, the leaving subject's last box"
    )
    score: float | None = Field(description="the detector's score for `box`")
    people: int = Field(description="people (tracks) in view at this detection")


class StreamStatusBody(_Body):
    """``status.<stream>``: the source's state and counters."""

    topic_pattern: ClassVar[str] = "status.<stream>"
    omitted_at_default: ClassVar[frozenset[str]] = frozenset({"subjects", "waiting", "inference"})

    state: str = Field(
        description="`connecting`, `streaming`, `reconnecting`, `ended`, `failed`, `stopped` (the daemon stopped "
        "the stream: shutdown, or removed by a reload; its final `segment` summary precedes it)"
    )
    reason: str = Field(description="human-readable cause of the last change (never contains credentials)")
    fps_in: float = Field(description="frames per second read from the source (recent average)")
    frames_dropped: int = Field(description="frames overwritten before use (since start)")
    clips_dropped: int = Field(description="clips replaced by a newer clip before inference (since start)")
    reconnects: int = Field(description="reconnections (since start)")
    clips: int = Field(description="clips classified (since start)")
    people: int | None = Field(
        default=None,
        description="people (tracks) in view at the last detection; null when the stream tracks no subjects",
    )
    subject: str | None = Field(default=None, description="the current segment's subject")
    subjects: tuple[SubjectSlot, ...] | None = Field(
        default=None,
        description="per-subject mode only (absent otherwise): the people with clips of their own",
    )
    waiting: int | None = Field(
        default=None,
        description="per-subject mode only (absent otherwise): people who count but have no slot "
        "(`subjects.max_subjects` reached)",
    )
    inference: str | None = Field(
        default=None,
        description="only with `inference.backend: triton` (absent otherwise): `up` (the server answers), `down` (it does not: "
        "clips are dropped, counted by the metric `vstmon_inference_server_dropped_clips`, and labels pause "
        "until it answers), `unknown` (not asked yet)",
    )


class StreamEntry(StreamStatusBody):
    """One stream in the daemon ``status`` and in the ``status`` control reply: its ``status.<stream>`` fields
    and where it is."""

    segment: int | None = Field(description="the stream's current segment (null while it is not running)")
    device: str | None = Field(description="the engine (device) that classifies its clips")


class DaemonStatusBody(_Body):
    """``status``: the daemon's heartbeat."""

    topic_pattern: ClassVar[str] = "status"

    state: str = Field(
        default="running",
        description="`running`; `stopped` in the last `status` the daemon publishes before its sockets close",
    )
    uptime_s: float = Field(description="seconds since the daemon started")
    device: tuple[str, ...] = Field(description='devices the engines run on (`["cuda:0"]`, `["cpu"]`)')
    model: str = Field(description="id of the loaded checkpoint")
    streams: dict[str, StreamEntry] = Field(description="stream name -> the stream's entry (below)")

    @field_validator("device", mode="before")
    @classmethod
    def _one_device(cls, value: Any) -> Any:
        """An older daemon sent one device as a string. (A before-validator gets the list as Python data, which
        strict parsing would not take for a tuple.)"""
        if isinstance(value, str):
            return (value,)
        return tuple(value) if isinstance(value, list) else value


Body = LabelBody | SegmentBody | ResetBody | SubjectBody | StreamStatusBody | DaemonStatusBody


# -- messages: bodies with their envelope ------------------------------------------------------------------------
class Envelope(_Model):
    """Every message: the schema version, the type and when it was sent."""

    v: Literal[1] = Field(description="schema version, 1")
    type: str = Field(description="the topic's first word: `label`, `segment`, `reset`, `subject`, `status`")
    ts: float = Field(description="unix seconds when the message was sent")


class StreamEnvelope(Envelope):
    """Messages on stream topics also carry the stream and its sequence number."""

    stream: str = Field(description="stream topics only: stream name (equals the topic's second part)")
    seq: int = Field(
        description="stream topics only: per stream, starts at 1 and is +1 for **every** message of that "
        "stream on **any** topic"
    )

    @property
    def topic(self) -> str:
        return f"{self.type}.{self.stream}"


class LabelMessage(StreamEnvelope, LabelBody):
    """``label.<stream>`` as received."""


class SegmentMessage(StreamEnvelope, SegmentBody):
    """``segment.<stream>`` as received."""


class ResetMessage(StreamEnvelope, ResetBody):
    """``reset.<stream>`` as received."""


class SubjectMessage(StreamEnvelope, SubjectBody):
    """``subject.<stream>`` as received."""


class StatusMessage(StreamEnvelope, StreamStatusBody):
    """``status.<stream>`` as received."""


class DaemonStatus(Envelope, DaemonStatusBody):
    """``status`` (the daemon's heartbeat) as received."""

    @property
    def topic(self) -> str:
        return "status"


_MESSAGES: dict[str, type[BaseModel]] = {
    cls.topic_pattern: cls
    for cls in (LabelMessage, SegmentMessage, ResetMessage, SubjectMessage, StatusMessage, DaemonStatus)
}


def _message_tag(value: Any) -> str | None:
    """The topic pattern of a message: ``<type>.<stream>`` when it names a stream, else ``<type>``."""
    if isinstance(value, BaseModel):
        return getattr(value, "topic_pattern", None)
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        return None
    return f"{value['type']}.<stream>" if "stream" in value else value["type"]


Message = Annotated[
    Annotated[LabelMessage, Tag(LabelMessage.topic_pattern)]
    | Annotated[SegmentMessage, Tag(SegmentMessage.topic_pattern)]
    | Annotated[ResetMessage, Tag(ResetMessage.topic_pattern)]
    | Annotated[SubjectMessage, Tag(SubjectMessage.topic_pattern)]
    | Annotated[StatusMessage, Tag(StatusMessage.topic_pattern)]
    | Annotated[DaemonStatus, Tag(DaemonStatus.topic_pattern)],
    Discriminator(_message_tag),
]
MESSAGE_ADAPTER: TypeAdapter[Any] = TypeAdapter(Message)


# -- control commands and replies --------------------------------------------------------------------------------
def _no_control_characters(value: str) -> str:
    for position, char in enumerate(value):
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            raise PydanticCustomError(
                "control_character",
                "must not contain control characters (U+{code} at character {position})",
                {"code": f"{ord(char):04X}", "position": position + 1},
            )
    return value


# strings of a control request: 1..N characters without control characters (Unicode Cc, Cf, Cs, Zl, Zp)
StreamName = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_STREAM_CHARS), AfterValidator(_no_control_characters)
]
SubjectId = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_SUBJECT_CHARS), AfterValidator(_no_control_characters)
]


class _Command(BaseModel):
    """A control request: unknown fields are refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ResetCommand(_Command):
    """``reset``: close the stream's segment and open the next one."""

    cmd: Literal["reset"] = Field(default="reset", description="the command")
    stream: StreamName = Field(description=f"the stream (1-{MAX_STREAM_CHARS} characters)")
    subject: SubjectId | None = Field(
        default=None,
        description=f"optional: subject of the new segment (1-{MAX_SUBJECT_CHARS} characters), or null",
    )


class StatusCommand(_Command):
    """``status``: every stream's entry."""

    cmd: Literal["status"] = Field(default="status", description="the command")


ControlCommand = Annotated[ResetCommand | StatusCommand, Field(discriminator="cmd")]
COMMAND_ADAPTER: TypeAdapter[Any] = TypeAdapter(ControlCommand)
_COMMANDS: dict[str, type[_Command]] = {"reset": ResetCommand, "status": StatusCommand}


class ResetReply(_Model):
    """The reply to ``reset``."""

    ok: Literal[True] = Field(default=True, description="the command was carried out")
    segment: int = Field(description="the new segment")


class StatusReply(_Model):
    """The reply to ``status``."""

    ok: Literal[True] = Field(default=True, description="the command was carried out")
    streams: dict[str, StreamEntry] = Field(description="stream name -> the stream's entry (as in `status`)")


class ErrorReply(_Model):
    """The reply to anything that went wrong; the daemon carries on."""

    ok: Literal[False] = Field(default=False, description="the request was refused or failed")
    error: str = Field(description="what was wrong, naming the field and the limit")


_REPLIES: dict[str, type[_Model]] = {"reset": ResetReply, "status": StatusReply}


def _reply_tag(value: Any) -> str | None:
    """``error`` for ``"ok": false``; else the command a successful reply answers (by its fields)."""
    if isinstance(value, BaseModel):
        return (
            "error"
            if isinstance(value, ErrorReply)
            else "status"
            if isinstance(value, StatusReply)
            else "reset"
        )
    if not isinstance(value, dict) or not isinstance(value.get("ok"), bool):
        return None
    return "error" if value["ok"] is False else "status" if "streams" in value else "reset"


ControlReply = Annotated[
    Annotated[ResetReply, Tag("reset")]
    | Annotated[StatusReply, Tag("status")]
    | Annotated[ErrorReply, Tag("error")],
    Discriminator(_reply_tag),
]
REPLY_ADAPTER: TypeAdapter[Any] = TypeAdapter(ControlReply)


# -- parsing -----------------------------------------------------------------------------------------------------
def parse_message(topic: bytes | str, body: bytes | str | Mapping[str, Any]) -> Message:
    """Parse one message (its two frames: topic, JSON body) into its typed model; ``MessageError`` naming the
    topic, the field path and the problem otherwise. Unknown fields are ignored; another ``v`` is refused."""
    topic, text = decode(topic, body)
    kind, _, topic_stream = topic.partition(".")
    if kind != "status" and not topic_stream:
        raise MessageError(f"{topic}: a {kind!r} topic must name a stream ({kind}.<stream>)")
    try:
        message = MESSAGE_ADAPTER.validate_json(text, strict=True)
    except ValidationError as error:
        raise MessageError(message_failure(topic, error, _MESSAGES, SCHEMA_VERSION)) from None
    if message.type != kind:
        raise MessageError(f"{topic}: type {message.type!r} does not match the topic")
    stream = getattr(message, "stream", "")
    if stream != topic_stream:
        missing = f"{topic}: missing field 'stream'"
        raise MessageError(f"{topic}: stream {stream!r} does not match the topic" if stream else missing)
    return message


def parse_command(request: Any) -> ResetCommand | StatusCommand:
    """Validate a control request (already read from JSON); ``ValueError`` naming the field and the limit (a few
    characters of what was sent are quoted back at most)."""
    if not isinstance(request, dict):
        raise ValueError(f"request must be a JSON object, got {type(request).__name__}")
    known = ", ".join(_COMMANDS)
    cmd = request.get("cmd")
    if cmd is None:
        raise ValueError(f'request has no "cmd" (known commands: {known})')
    if not isinstance(cmd, str):
        raise ValueError(f'"cmd" must be a string, got {type(cmd).__name__}')
    if cmd not in _COMMANDS:
        raise ValueError(f"unknown command {echo(cmd)} (known commands: {known})")
    try:
        return COMMAND_ADAPTER.validate_python(request, strict=True)
    except ValidationError as error:
        errors = error.errors(include_url=False)
        raise ValueError(command_error(cmd, _COMMANDS[cmd], errors, _no_control_characters)) from None


def parse_reply(cmd: str, body: bytes | str | Mapping[str, Any]) -> ControlReply:
    """Parse the control socket's reply to command ``cmd`` into its model (``ErrorReply`` for ``"ok": false``);
    ``MessageError`` naming the field otherwise. Unknown fields are ignored, as in messages."""
    where, text = decode(f"{cmd} reply", body)
    try:
        reply = REPLY_ADAPTER.validate_json(text, strict=True)
    except ValidationError as error:
        raise MessageError(reply_failure(where, error, {**_REPLIES, "error": ErrorReply})) from None
    if not isinstance(reply, ErrorReply | _REPLIES.get(cmd, ErrorReply)):
        raise MessageError(f"{where}: a {type(reply).__name__}, not the reply to {cmd!r}")
    return reply
