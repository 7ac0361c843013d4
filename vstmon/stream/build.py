"""Building one stream's parts from the config, the same way for every host (the daemon, ``vstmon classify``).

``build_stream`` makes the ring (one clip span plus about a second, fixed memory), the stream's
``SegmentState``, the people in view (detector, detection frames, tracker, policy or slots, and per subject the
crop rings) and the ``StreamPipeline`` over them. The host adds what reads frames into them (a ``Source``
thread, or the offline reader) and what steps the pipeline (a ``StreamWorker`` thread, or the offline loop).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vstmon.config import Config, StreamConfig
from vstmon.ingest.detection_frames import DetectionFrames
from vstmon.ingest.ring import RingBuffer
from vstmon.ingest.subject_crops import SubjectCrops
from vstmon.stream.buffers import ClipBuffers
from vstmon.stream.pipeline import StreamPipeline
from vstmon.stream.sink import ClipSink
from vstmon.stream.state import SegmentState
from vstmon.stream.subjects import StreamSubjects
from vstmon.types import ResetReason

if TYPE_CHECKING:  # torch: imported only by a stream that tracks people
    from vstmon.subjects.detector import PersonDetector

__all__ = ["StreamParts", "build_stream", "clip_slots", "clip_span_frames", "ring_capacity_frames"]

_DEFAULT_FPS = 30.0  # a live source's rate before it is known (the ring is sized on it)


def clip_span_frames(config: Config, fps: float) -> int:
    """Source frames one clip spans (at ``fps`` when clips are sampled by time)."""
    clip = config.clip
    if clip.sample_fps:
        return math.ceil((clip.frames - 1) / clip.sample_fps * fps) + 1
    return (clip.frames - 1) * clip.frame_interval + 1


def ring_capacity_frames(config: Config, stream: StreamConfig, fps: float | None) -> int:
    """One clip span + about one second (or ``stream.buffer_s``), in source frames."""
    fps = fps or stream.fps or _DEFAULT_FPS
    if stream.buffer_s is not None:
        return max(math.ceil(stream.buffer_s * fps), config.clip.frames + 1)
    return clip_span_frames(config, fps) + math.ceil(fps) + 2


def clip_slots(config: Config, stream: StreamConfig) -> int:
    """Clip streams a stream has arrays for: its own (slot 0), plus one per subject slot in per-subject mode."""
    per_subject = config.subjects.mode == "per_subject" and config.subjects.detector is not None
    return 1 + (config.subjects.max_subjects if per_subject and stream.subjects else 0)


@dataclass
class StreamParts:
    """What ``build_stream`` made for one stream."""

    ring: RingBuffer
    state: SegmentState
    pipeline: StreamPipeline
    subjects: StreamSubjects | None  # None: the stream does not track people
    crops: SubjectCrops | None  # per-subject mode only

    @property
    def detection_frames(self) -> DetectionFrames | None:
        return self.subjects.frames if self.subjects is not None else None


def build_stream(
    config: Config,
    stream: StreamConfig,
    fps: float | None,
    lossless: bool,
    sink: ClipSink,
    make_state: Callable[[str], SegmentState],
    *,
    detector: PersonDetector | None = None,
    on_reset: Callable[[ResetReason], None] | None = None,
    buffers: Callable[[int], ClipBuffers] | None = None,
) -> StreamParts:
    """The ring, state, people and pipeline of ``stream`` (see the module docstring).

    ``make_state(subject)`` makes a ``SegmentState`` publishing for this stream (``""``: the stream's own).
    People are tracked when ``subjects.detector`` is set and the stream does not opt out; ``detector`` is
    the person detector to use (default: one loaded from ``subjects.detector``). ``buffers(slot)`` gives the
    clip arrays of the stream's clip streams (slot 0: whole frame; 1..: per-subject slots; default: plain
    arrays for an engine in this process).
    """
    size_px = config.clip.size_px
    ring = RingBuffer(ring_capacity_frames(config, stream, fps), size_px, size_px, lossless=lossless)
    state = make_state("")
    subjects = crops = None
    if config.subjects.detector is not None and stream.subjects:
        subjects = StreamSubjects.build(
            stream.name,
            config.subjects,
            ring.capacity_frames,
            fps or stream.fps or _DEFAULT_FPS,
            lossless,
            detector=detector,
        )
        if config.subjects.mode == "per_subject":
            crops = SubjectCrops(
                config.subjects.max_subjects, ring.capacity_frames, size_px, config.subjects.crop_margin
            )
    pipeline = StreamPipeline(
        stream.name,
        config,
        ring,
        state,
        sink,
        lossless,
        subjects=subjects,
        subject_crops=crops,
        make_state=make_state,
        on_reset=on_reset,
        buffers=buffers,
    )
    return StreamParts(ring, state, pipeline, subjects, crops)
