"""``StreamSubjects``: one stream's people: detection frame -> person detector -> tracker, and what decides on
the tracks: the subject policy (whole-frame mode: one subject per stream) or the subject slots (per-subject mode).

The stream worker calls ``detect(seq, stream_ts_s)`` for every frame it consumes; only frames the source kept in
``DetectionFrames`` (a few per second) run the detector, the others cost a look at its few slots. Between
detections the tracks and the subject's box are held as they were at the last one.

The tracker and the policy run on a clock that only moves forward: the stream clock, re-based when it restarts
(a reconnect starts it at 0 again), so the time spent reconnecting is not counted as the subject being away.
``restart()`` forgets every track and the subject (a file loop or a clock jump: other people, other places).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vstmon.config import SubjectsConfig
from vstmon.ingest.detection_frames import DetectionFrames
from vstmon.subjects.policy import SubjectEvent, SubjectPolicy
from vstmon.subjects.slots import SubjectSlots
from vstmon.subjects.tracker import Track, Tracker
from vstmon.types import Box

if TYPE_CHECKING:  # torch: imported only by a stream that tracks people
    from vstmon.subjects.detector import PersonDetector

__all__ = ["StreamSubjects"]

_MIN_STEP_S = 1e-3  # the policy clock moves at least this much between two detection steps


class StreamSubjects:
    """Detector, tracker and policy of one stream (its worker thread only; see the module docstring)."""

    def __init__(
        self, stream: str, cfg: SubjectsConfig, frames: DetectionFrames, detector: PersonDetector
    ) -> None:
        if frames.size_px != detector.input_size_px:
            raise ValueError(
                f"detection frames are {frames.size_px} px, the detector wants {detector.input_size_px} px"
            )
        self.stream = stream
        self.frames = frames
        self.detector = detector
        self.tracker = Tracker(buffer_s=cfg.track_buffer_s)
        self.policy = SubjectPolicy(stream, cfg.select, cfg.confirm_s, cfg.lost_s, cfg.absent_s)
        self.slots = (
            SubjectSlots(stream, cfg.max_subjects, cfg.confirm_s) if cfg.mode == "per_subject" else None
        )
        self.people = 0  # tracks in view at the last detection
        self._image = np.zeros((frames.size_px, frames.size_px, 3), np.uint8)  # the detector's input, reused
        self._offset_s = 0.0  # added to the stream clock so that the policy clock never goes back
        self._last_s: float | None = None
        self.detections = 0
        self.detect_s = 0.0  # wall seconds spent in the detector (for metrics and benchmarks)

    @classmethod
    def build(
        cls,
        stream: str,
        cfg: SubjectsConfig,
        ring_frames: int,
        fps: float,
        lossless: bool,
        detector: PersonDetector | None = None,
    ) -> StreamSubjects:
        """A detector (the network is shared by the streams, the buffers are not; ``detector`` or one loaded from
        ``cfg.detector``) and the detection frames the source fills for it.

        Live, the source may run up to ``ring_frames`` frames ahead of the worker before the worker loses frames
        anyway: there are slots for the detection frames of that span (at ``fps``). Lossless, the source waits for
        the worker, and the same number of slots keeps it from waiting often.
        """
        if detector is None:
            from vstmon.subjects.detector import PersonDetector, detector_device

            if cfg.detector is None:
                raise ValueError("subjects.detector is not set")
            detector = PersonDetector(
                Path(cfg.detector),
                cfg.score_threshold,
                cfg.person_class_id,
                device=detector_device(cfg.device),
            )
        frames_per_detection = max(1, math.floor(fps / cfg.detect_fps))
        slots = math.ceil(ring_frames / frames_per_detection) + 1
        frames = DetectionFrames(detector.input_size_px, 1.0 / cfg.detect_fps, slots=slots, lossless=lossless)
        return cls(stream, cfg, frames, detector)

    # -- what the worker and the daemon read ----------------------------------------------------------------
    @property
    def subject_id(self) -> str | None:
        return self.policy.subject_id

    @property
    def subject_box(self) -> Box | None:
        return self.policy.subject_box

    def name_subject(self, subject_id: str) -> None:
        self.policy.name_subject(subject_id)

    # -- the flow ---------------------------------------------------------------------------------------------
    def step(self, seq: int, stream_ts_s: float) -> SubjectEvent | None:
        """Whole-frame mode: detect and track on frame ``seq`` if the source kept it; the policy's event, if any."""
        found = self.detect(seq, stream_ts_s)
        return None if found is None else self.policy.update(*found)

    def detect(self, seq: int, stream_ts_s: float) -> tuple[list[Track], float] | None:
        """Frame ``seq`` was consumed: if the source kept it for detection, detect and track; returns the tracks
        in view and the (monotonic) clock time of the step, or None."""
        if not self.frames.take(seq, self._image):
            return None
        ts_s = stream_ts_s + self._offset_s
        if self._last_s is not None and ts_s <= self._last_s:  # the stream clock restarted (reconnect)
            self._offset_s += self._last_s + _MIN_STEP_S - ts_s
            ts_s = self._last_s + _MIN_STEP_S
        self._last_s = ts_s
        started_s = time.perf_counter()
        detections = self.detector.detect(self._image)
        self.detect_s += time.perf_counter() - started_s
        self.detections += 1
        visible = self.tracker.update(detections, ts_s)
        self.people = len(visible)
        return visible, ts_s

    def restart(self) -> None:
        """Forget every track and the subject (the next person in view enters)."""
        self.tracker.reset()
        self.policy.reset()
        self._last_s = None
        self._offset_s = 0.0
