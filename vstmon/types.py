"""Plain data passed between pipeline stages (source -> ring -> sampler -> engine -> state -> publisher).

Stages import these, never each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

__all__ = [
    "Box",
    "Clip",
    "ClipResult",
    "Discontinuity",
    "FrameMeta",
    "ResetReason",
    "SourceState",
    "StreamEvent",
]

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 normalised to 0..1 of the (whole) source frame


class SourceState(StrEnum):
    """Life cycle of one source (reported as ``state`` in ``status.<stream>`` messages)."""

    CONNECTING = "connecting"
    STREAMING = "streaming"
    RECONNECTING = "reconnecting"
    ENDED = "ended"
    FAILED = "failed"
    STOPPED = "stopped"  # the daemon stopped the stream (shutdown, or removed by a reload)


class Discontinuity(StrEnum):
    """Why a source's frames stopped following on from the ones before (the ring was cleared)."""

    RECONNECT = "reconnect"  # a live source was lost (dropped, stalled, frozen picture) and reopened
    LOOP = "loop"  # a file with ``loop: true`` started over
    TIME_JUMP = "time_jump"  # the stream clock jumped (backwards, or forwards beyond ``max_time_jump_s``)


class ResetReason(StrEnum):
    """Why a segment ended and the next one began (``reason`` in ``reset.<stream>`` messages)."""

    START = "start"  # the stream (or a person, per subject) started: the first segment, announced
    CONTROL = "control"  # an operator asked (control socket)
    SCENE_CHANGE = "scene_change"  # the scene detector saw a hard cut
    IDLE = "idle"  # no motion for ``reset.idle_s``
    SUBJECT_CHANGE = "subject_change"  # another person became the subject (or the first one entered)
    ABSENT = "absent"  # the subject left and nobody took over
    RECONNECT = "reconnect"  # a live source was lost and reopened
    LOOP = "loop"  # a looping file started over
    TIME_JUMP = "time_jump"  # the stream clock jumped
    END = "end"  # end of input
    WORKER_RESTART = "worker_restart"  # the process hosting the stream died and was restarted

    @property
    def automatic(self) -> bool:
        """The stream decided it by itself from what it saw (not an operator, not the start or the end).

        In a file read losslessly, the clips cut before such a reset are published before it."""
        return self in _AUTOMATIC

    @property
    def new_place(self) -> bool:
        """After it the picture may show other people in another place (people are tracked afresh)."""
        return self in (ResetReason.LOOP, ResetReason.TIME_JUMP)


_AUTOMATIC = frozenset(
    {
        ResetReason.SCENE_CHANGE,
        ResetReason.IDLE,
        ResetReason.SUBJECT_CHANGE,
        ResetReason.ABSENT,
        ResetReason.RECONNECT,
        ResetReason.LOOP,
        ResetReason.TIME_JUMP,
    }
)


@dataclass(slots=True)
class FrameMeta:
    """Metadata stored beside each ring-buffer slot."""

    index: int = -1  # source frame index (0-based, counts every decoded frame since the source opened)
    capture_mono_s: float = 0.0  # time.monotonic() when the frame was read
    capture_wall_s: float = 0.0  # time.time() when the frame was read
    stream_ts_s: float = 0.0  # the stream's own clock (file PTS, or index / fps when no PTS), seconds


@dataclass(slots=True)
class StreamEvent:
    """A state transition of a source, reported to its owner (the daemon)."""

    stream: str
    state: SourceState
    reason: str  # human-readable; never contains credentials
    discontinuity: Discontinuity | None = None  # set when clip timing must restart, and why
    wall_s: float = 0.0
    at_seq: int | None = (
        None  # discontinuity: ring seq of the first frame after it (``RingBuffer.begin_epoch``)
    )

    @property
    def looped(self) -> bool:
        """The discontinuity is a file starting over (``loop: true``)."""
        return self.discontinuity == Discontinuity.LOOP


@dataclass(slots=True)
class Clip:
    """A clip cut from one stream's ring buffer, ready for the engine.

    ``frames`` is (T, H, W, 3) uint8 RGB at the model's crop size, owned by whoever cut the clip.
    """

    stream: str
    generation: int  # ring-buffer generation when cut; a clip whose generation is stale is discarded
    frames: np.ndarray  # (T, size_px, size_px, 3) uint8 RGB
    first_frame: int  # source frame index of frames[0]
    last_frame: int  # source frame index of frames[-1]
    start_ts: float  # unix seconds (capture wall clock) of frames[0]
    end_ts: float  # unix seconds (capture wall clock) of frames[-1]
    start_stream_s: float  # stream clock of frames[0]
    end_stream_s: float  # stream clock of frames[-1]
    ready_mono_s: float  # time.monotonic() of the last frame's capture (for latency)
    segment: int = 0  # filled in by per-stream state when the clip is accepted
    box: Box | None = None  # the subject's box at the clip's end
    key: str = ""  # the clip stream: the stream name, or "<stream>/<subject>" per subject ("" -> the stream)

    def __post_init__(self) -> None:
        if not self.key:
            self.key = self.stream


@dataclass(slots=True)
class ClipResult:
    """The engine's answer for one clip: softmax probabilities over the classes."""

    clip: Clip
    probs: np.ndarray  # (num_classes,) float32, sums to 1
    batch_size: int = 1  # size of the batch the clip ran in (visible batching across streams)
    extra: dict[str, object] = field(default_factory=dict)
