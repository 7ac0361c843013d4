"""Small, valid protocol models for tests that need a message or a reply but not a pipeline behind it."""

from __future__ import annotations

import threading
from typing import Any

from vstmon.errors import VstmonError
from vstmon.wire.protocol import (
    ClipInfo,
    ControlCommand,
    DaemonStatusBody,
    LabelBody,
    ResetBody,
    ResetReply,
    Score,
    SegmentBody,
    SegmentLabel,
    StatusCommand,
    StatusReply,
    StreamEntry,
    StreamStatusBody,
)


def stream_status(**fields: Any) -> StreamStatusBody:
    """A ``status.<stream>`` body of a streaming source; ``fields`` override."""
    base: dict[str, Any] = {
        "state": "streaming",
        "reason": "opened",
        "fps_in": 25.0,
        "frames_dropped": 0,
        "clips_dropped": 0,
        "reconnects": 0,
        "clips": 0,
    }
    return StreamStatusBody(**{**base, **fields})


def stream_entry(segment: int | None = 1, device: str | None = "cpu", **fields: Any) -> StreamEntry:
    """A stream's entry in the daemon ``status`` / ``status`` reply."""
    return StreamEntry(**dict(stream_status(**fields)), segment=segment, device=device)


def daemon_status(uptime_s: float = 0.0, streams: dict[str, StreamEntry] | None = None) -> DaemonStatusBody:
    return DaemonStatusBody(uptime_s=uptime_s, device=("cpu",), model="m1", streams=streams or {})


def reset_body(segment: int, subject: str | None = None, reason: str = "control") -> ResetBody:
    return ResetBody(segment=segment, previous_segment=segment - 1, subject=subject, reason=reason)


def label_body(
    segment: int = 1,
    subject: str | None = None,
    top: tuple[tuple[str, int, float], ...] = (("walking the dog", 383, 0.71),),
    smoothed: tuple[tuple[str, int, float], ...] | None = None,
    box: tuple[float, float, float, float] | None = None,
) -> LabelBody:
    """A ``label.<stream>`` body; ``top``/``smoothed`` as (label, index, score)."""

    def scores(entries: tuple[tuple[str, int, float], ...]) -> tuple[Score, ...]:
        return tuple(Score(label=label, index=index, score=score) for label, index, score in entries)

    return LabelBody(
        segment=segment,
        subject=subject,
        clip=ClipInfo(start_ts=1.0, end_ts=2.0, first_frame=0, last_frame=31, frames=32),
        top=scores(top),
        smoothed=scores(smoothed if smoothed is not None else top),
        latency_ms=80.0,
        model="m1",
        box=box,
    )


def segment_body(segment: int, labels: tuple[tuple[str, int, int, float], ...] = ()) -> SegmentBody:
    """A ``segment.<stream>`` summary; ``labels`` as (label, index, clips, seconds)."""
    return SegmentBody(
        segment=segment,
        subject=None,
        start_ts=0.0,
        end_ts=9.0,
        clips=sum(clips for _label, _index, clips, _seconds in labels),
        labels=tuple(
            SegmentLabel(label=label, index=index, clips=clips, seconds=seconds)
            for label, index, clips, seconds in labels
        ),
    )


class FakeDaemon:
    """A real control handler with real state: streams (``segments``: name -> segment; cam1 at 1 and cam2 at 4
    by default) whose segment numbers advance on reset. ``calls``: the commands as the client sent them. The
    streams ``boom`` and ``vstmon-error`` make the handler raise."""

    def __init__(self, segments: dict[str, int] | None = None) -> None:
        self.segments = dict(segments or {"cam1": 1, "cam2": 4})
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, command: ControlCommand) -> ResetReply | StatusReply:
        with self.lock:
            self.calls.append(command.model_dump(exclude_unset=True))
            if isinstance(command, StatusCommand):
                return StatusReply(streams={name: stream_entry(seg) for name, seg in self.segments.items()})
            stream = command.stream
            if stream == "boom":
                raise RuntimeError("handler bug")
            if stream == "vstmon-error":
                raise VstmonError("stream vstmon-error is not running")
            if stream not in self.segments:
                raise KeyError(f"unknown stream {stream!r}")
            self.segments[stream] += 1
            return ResetReply(segment=self.segments[stream])
