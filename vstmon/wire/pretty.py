"""``vstmon listen --pretty``: one short, aligned line per message for a person at a terminal.

::

    12:00:03.1  cam1          p-43        walking the dog               0.71  ~ walking the dog 0.64   seg 3
    12:00:05.4  cam1          --          reset (control) -> segment 4, subject p-43
    12:00:05.4  cam1          --          segment 3 closed: 29 clips; walking the dog 27.0 s, jogging 4.0 s

Columns: local time of the message, stream, subject (``-`` for none), the clip's top label and score, the
smoothed top label and score after ``~``, the segment. Events (reset, segment, subject, status) get a sentence.
Colour (``colour=True``: the CLI turns it on for a TTY unless ``NO_COLOR`` is set) marks a confident label green,
a doubtful one yellow, events magenta and status dim. Works on the typed messages of ``vstmon.wire.protocol``.
"""

from __future__ import annotations

import time

from vstmon.wire.protocol import (
    DaemonStatus,
    LabelMessage,
    Message,
    ResetMessage,
    Score,
    SegmentMessage,
    StatusMessage,
    SubjectMessage,
)

__all__ = ["pretty_line"]

_RESET, _DIM, _GREEN, _YELLOW, _MAGENTA, _BOLD = (
    "\033[0m",
    "\033[2m",
    "\033[32m",
    "\033[33m",
    "\033[35m",
    "\033[1m",
)
_LABEL_W = 28
_STREAM_W = 12
_SUBJECT_W = 10
CONFIDENT = 0.5  # a top score at or above this is shown green on a TTY, below it yellow


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int((ts % 1) * 10)}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def _paint(text: str, code: str, colour: bool) -> str:
    return f"{code}{text}{_RESET}" if colour else text


def _label(message: LabelMessage, colour: bool) -> str:
    top = message.top[0] if message.top else Score(label="?", index=-1, score=0.0)
    shown = f"{_cut(top.label, _LABEL_W):<{_LABEL_W}} {top.score:5.2f}"
    shown = _paint(shown, _BOLD + (_GREEN if top.score >= CONFIDENT else _YELLOW), colour)
    smoothed = message.smoothed[0] if message.smoothed else None
    after = f"  ~ {_cut(smoothed.label, _LABEL_W)} {smoothed.score:.2f}" if smoothed else ""
    untrained = "  (untrained)" if message.untrained else ""
    subject = _cut(message.subject or "-", _SUBJECT_W)
    return f"{subject:<{_SUBJECT_W}}  {shown}{after}   seg {message.segment}{untrained}"


def _event(message: Message) -> tuple[str, str]:
    """The sentence for a message that is not a label, and its colour."""
    if isinstance(message, ResetMessage):
        subject = f", subject {message.subject}" if message.subject else ""
        return f"reset ({message.reason}) -> segment {message.segment}{subject}", _MAGENTA
    if isinstance(message, SegmentMessage):
        spent = ", ".join(f"{x.label} {x.seconds:.1f} s" for x in message.labels[:3])
        return f"segment {message.segment} closed: {message.clips} clips" + (
            f"; {spent}" if spent else ""
        ), _MAGENTA
    if isinstance(message, SubjectMessage):
        return f"subject {message.event} {message.subject or ''}".rstrip(), _MAGENTA
    if isinstance(message, DaemonStatus):
        up = sum(1 for entry in message.streams.values() if entry.state == "streaming")
        return f"daemon {message.state}: {up}/{len(message.streams)} streams streaming", _DIM
    assert isinstance(message, StatusMessage)
    subject = f", subject {message.subject}" if message.subject else ""
    people = f", {message.people} in view" if message.people is not None else ""
    return (
        f"status {message.state}, {message.fps_in:.1f} fps in, {message.clips} clips{people}{subject}",
        _DIM,
    )


def pretty_line(message: Message, colour: bool = False) -> str:
    """One line for a typed message."""
    stream = _cut(getattr(message, "stream", "daemon"), _STREAM_W)
    head = f"{_clock(message.ts)}  {stream:<{_STREAM_W}}  "
    if isinstance(message, LabelMessage):
        return head + _label(message, colour)
    text, code = _event(message)
    return f"{head}{'--':<{_SUBJECT_W}}  {_paint(text, code, colour)}"
