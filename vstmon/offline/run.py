"""The offline host of one stream pipeline: a video file read frame by frame on the caller's thread, stepped
through the daemon's own ``StreamPipeline``, with the model run synchronously (``SyncEngine``).

The parts are the daemon's (``stream.build.build_stream``: ring, state, people, pipeline; ``ingest.intake``:
fit, detection frames, crops; ``ingest.clock``: the stream clock; ``ingest.capture``: the file reader), and so
are the rules: clips on the stream clock, resets on a scene cut, idle, a subject change or a jump of the clock,
the end of the file draining every clip. The only difference is who steps: here, after each frame is committed
(and before its crops are cut, which is the order the daemon's reader keeps for files read losslessly).
The file is read once; memory does not depend on its length.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vstmon.config import Config, StreamConfig
from vstmon.errors import SourceError
from vstmon.inference.runner import Runner
from vstmon.inference.sync import SyncEngine
from vstmon.ingest.capture import open_reader, parse_source
from vstmon.ingest.clock import StreamClock
from vstmon.ingest.intake import FrameIntake
from vstmon.stream.build import StreamParts, build_stream
from vstmon.stream.pipeline import ResetRequest, StreamPipeline
from vstmon.stream.state import SegmentState
from vstmon.subjects.detector import PersonDetector
from vstmon.types import Box, ClipResult, FrameMeta, ResetReason

__all__ = ["FileRun", "OfflineStream"]


@dataclass(slots=True)
class FileRun:
    """What ``run_file`` did."""

    frames_read: int
    clips: int  # results published (labels)
    seconds: float
    cpu_s: float  # CPU time of the whole process (all threads) during the run
    ring_nbytes: int  # the fixed memory of the rings: the stream's, and per subject every slot's crop ring
    clips_skipped: int
    resets: int
    subjects: int = 0  # per-subject mode: people who got clips of their own
    detections: int = 0  # frames the person detector ran on


class OfflineStream:
    """One file, one pipeline, stepped on the caller's thread (module docstring)."""

    def __init__(
        self,
        path: str,
        stream: StreamConfig,
        config: Config,
        runner: Runner,
        batch: int,
        make_state: Callable[[str], SegmentState],
        on_label: Callable[[ClipResult, SegmentState], Any],
        *,
        detector: PersonDetector | None = None,
    ) -> None:
        """``runner`` runs the clips, ``batch`` at a time; ``on_label(result, state)`` gets every result the
        stream's state (or a person's, per subject) published as a ``label``, in order. The file is opened
        here: a bad input fails before anything else is built."""
        self.path = path
        self.stream = stream
        self.spec = parse_source(path)
        if self.spec.kind != "file":
            raise SourceError(f"{self.spec.display} is not a video file")
        self._reader = open_reader(stream, self.spec)
        self.sink = SyncEngine(runner, batch, self.deliver)
        self._on_label = on_label
        self.parts: StreamParts = build_stream(
            config, stream, self._reader.fps, True, self.sink, make_state, detector=detector
        )
        self.pipeline: StreamPipeline = self.parts.pipeline
        self._intake = FrameIntake(
            self.parts.ring, config.clip.size_px, self.parts.detection_frames, self.parts.crops
        )
        self._requests: list[ResetRequest] = []
        self.clips = 0

    def deliver(self, result: ClipResult) -> None:
        """The sink's results: each goes to its clip stream's state, and on to ``on_label`` if published."""
        state = self.pipeline.state_for(result.clip.key)
        if state is not None and state.on_result(result):
            self.clips += 1
            self._on_label(result, state)

    def run(
        self,
        on_frame: Callable[[], Any] | None = None,
        on_crop: Callable[[str, int, Box], Any] | None = None,
    ) -> FileRun:
        """Read the file to its end. ``on_frame()`` after every frame (a progress bar); ``on_crop(subject,
        frame_index, box)`` for every crop cut per subject (a hook for tests and tools)."""
        started_s, cpu_started_s = time.monotonic(), time.process_time()
        pipeline, ring, reader = self.pipeline, self.parts.ring, self._reader
        pipeline.state.announce_start()
        pipeline.start()
        clock = StreamClock(self.stream.max_time_jump_s, reader.fps)
        meta = FrameMeta()  # refilled per frame (the rings copy the values)
        index = 0
        try:
            while (frame := reader.read()) is not None:
                source_ts_s = reader.stream_ts_s
                stream_ts_s, jump_s = clock.update(index / reader.fps if source_ts_s is None else source_ts_s)
                if jump_s is not None:  # no clip spans it: reset right before this frame
                    at_seq = ring.begin_epoch()
                    self._requests.append(
                        ResetRequest(ResetReason.TIME_JUMP, keep_subject=True, at_seq=at_seq)
                    )
                slot = self._intake.slot(_never)
                assert slot is not None  # the pipeline is stepped after every frame: the ring is never full
                try:
                    self._intake.fit(frame, slot)
                except ValueError as error:
                    raise SourceError(f"{self.spec.display}: frame {index}: {error}") from None
                now_mono_s = time.monotonic()
                meta.index, meta.capture_mono_s, meta.capture_wall_s = index, now_mono_s, time.time()
                meta.stream_ts_s = stream_ts_s
                seq = self._intake.commit(frame, meta, _never)
                assert seq is not None
                self._step()
                self._intake.crop(frame, meta, seq, _never)
                if on_crop is not None:
                    self._report_crops(index, on_crop)
                index += 1
                if on_frame is not None:
                    on_frame()
            self._requests.append(ResetRequest(ResetReason.END, drain=True))
            self._step()
            self.sink.flush()
        finally:
            reader.close()
        parts = self.parts
        per_subject = pipeline.per_subject
        ring_nbytes = ring.nbytes + (parts.crops.nbytes if parts.crops is not None else 0)
        skipped = pipeline.sampler.clips_skipped + (
            per_subject.clips_skipped if per_subject is not None else 0
        )
        return FileRun(
            frames_read=index,
            clips=self.clips,
            seconds=time.monotonic() - started_s,
            cpu_s=time.process_time() - cpu_started_s,
            ring_nbytes=ring_nbytes,
            clips_skipped=skipped,
            resets=pipeline.resets,
            subjects=per_subject.subjects_started if per_subject is not None else 0,
            detections=parts.subjects.detections if parts.subjects is not None else 0,
        )

    def _step(self) -> None:
        """Perform the resets that are due and step every committed frame, in the worker thread's order."""
        pipeline = self.pipeline
        while True:
            if self._requests and pipeline.ready(self._requests[0]):
                pipeline.reset(self._requests.pop(0))
            elif not pipeline.step():
                return

    def _report_crops(self, index: int, on_crop: Callable[[str, int, Box], Any]) -> None:
        per_subject, crops = self.pipeline.per_subject, self.parts.crops
        if per_subject is None or crops is None:
            return
        for slot, box in enumerate(crops.cropped):
            subject = per_subject.subject_in(slot)
            if box is not None and subject is not None:
                on_crop(subject, index, box)


def _never() -> bool:
    return False
