"""``vstmon listen --pretty``: one short, aligned line per message for a person at a terminal.

::

    12:00:03.1  cam1        p-43     walking the dog              0.71  ~ walking the dog 0.64   seg 3
    12:00:05.4  cam1        --       reset (control) -> segment 4, subject p-43
    12:00:05.4  cam1        --       segment 3 closed: 29 clips; walking the dog 27.0 s, jogging 4.0 s

Columns: local time of the message, stream, subject (``-`` for none), the clip's top label and score, the
smoothed top label and score after ``~``, the segment. Events (reset, segment, subject, status) get a sentence.
Colour (``colour=True``: the CLI turns it on for a TTY unless ``NO_COLOR`` is set) marks a confident label green,
a doubtful one yellow, events magenta and status dim.
"""

from __future__ import annotations

import time
from typing import Any

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


def _clock(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return " " * 10
    local = time.localtime(ts)
    return time.strftime("%H:%M:%S", local) + f".{int((ts % 1) * 10)}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def _top(entries: Any) -> tuple[str, float] | None:
    if isinstance(entries, list) and entries and isinstance(entries[0], dict):
        return str(entries[0].get("label", "?")), float(entries[0].get("score", 0.0))
    return None


def _paint(text: str, code: str, colour: bool) -> str:
    return f"{code}{text}{_RESET}" if colour else text


def _event(topic: str, data: dict[str, Any]) -> tuple[str, str] | None:
    kind = topic.split(".", 1)[0]
    if kind == "reset":
        subject = f", subject {data['subject']}" if data.get("subject") else ""
        return f"reset ({data.get('reason', '?')}) -> segment {data.get('segment')}{subject}", _MAGENTA
    if kind == "segment":
        spent = ", ".join(
            f"{x.get('label')} {float(x.get('seconds', 0)):.1f} s" for x in data.get("labels", [])[:3]
        )
        return f"segment {data.get('segment')} closed: {data.get('clips', 0)} clips" + (
            f"; {spent}" if spent else ""
        ), _MAGENTA
    if kind == "subject":
        return f"subject {data.get('event', '?')} {data.get('subject') or ''}".rstrip(), _MAGENTA
    if kind == "status":
        if "streams" in data and "stream" not in data:
            streams = data.get("streams") or {}
            up = sum(1 for s in streams.values() if isinstance(s, dict) and s.get("state") == "streaming")
            return f"daemon {data.get('state', 'running')}: {up}/{len(streams)} streams streaming", _DIM
        return (
            f"status {data.get('state', '?')}, {data.get('fps_in', 0):.1f} fps in, segment {data.get('segment')}",
            _DIM,
        )
    return None


def pretty_line(topic: str, data: dict[str, Any], colour: bool = False) -> str:
    """One line for a message (``topic`` and its JSON body)."""
    stream = _cut(str(data.get("stream") or ("daemon" if topic == "status" else "-")), _STREAM_W)
    head = f"{_clock(data.get('ts'))}  {stream:<{_STREAM_W}}  "
    if topic.startswith("label"):
        subject = _cut(str(data.get("subject") or "-"), _SUBJECT_W)
        top = _top(data.get("top")) or ("?", 0.0)
        smoothed = _top(data.get("smoothed"))
        label = _cut(top[0], _LABEL_W)
        shown = f"{label:<{_LABEL_W}} {top[1]:5.2f}"
        shown = _paint(shown, _BOLD + (_GREEN if top[1] >= CONFIDENT else _YELLOW), colour)
        after = f"  ~ {_cut(smoothed[0], _LABEL_W)} {smoothed[1]:.2f}" if smoothed else ""
        untrained = "  (untrained)" if data.get("untrained") else ""
        return f"{head}{subject:<{_SUBJECT_W}}  {shown}{after}   seg {data.get('segment')}{untrained}"
    event = _event(topic, data)
    if event is None:
        return f"{head}{'--':<{_SUBJECT_W}}  {topic}"
    text, code = event
    return f"{head}{'--':<{_SUBJECT_W}}  {_paint(text, code, colour)}"
