"""``StreamPipeline``: one stream's work from ring frames to clips, with no thread of its own.

The pipeline is the only reader of its stream's ring and sampler. It is stepped, one committed ring frame at a
time (``step()``), and asked to reset (``reset(request)``); who steps it is its host's business: the daemon's
``StreamWorker`` thread (live and file streams), or the offline loop of ``vstmon classify``, which reads a file
itself and runs the model synchronously. Both run exactly this code, so a file gives the same clips either way.

Per frame: the scene-change and idle detectors, the people in view (``StreamSubjects``: detector, tracker and
the policy or the slots), and then either the stream's own clip stream (whole-frame mode: the sampler cuts a
clip when one is due, the state stamps its segment, the sink gets it) or, per subject, every person's clip
stream (``SubjectClipStreams``: the slots start, move and end, and their crop rings are pumped).

Where a reset cuts (``ResetRequest``):

- control command: at once, at the newest frame (nothing captured before the request is used after it);
- scene change, idle, subject change or absence: at the frame that decided it;
- source discontinuity (reconnect, file loop, clock jump; ``at_seq``): exactly at the first frame after it; the
  frames before it are used first (``ready``), so a file read losslessly loses none;
- end of input (``drain``): after every frame still in the ring, once their results are in.

A reset clears the ring (keeping frames from the cut on), restarts the sampler there, resets the detectors,
opens the new segment in ``SegmentState`` (which publishes ``segment`` then ``reset`` and then refuses clips cut
from older ring generations) and discards the sink's pending and in-flight clips of the old segment. Nothing
published after a reset depends on a frame captured before it. In a file read losslessly, an automatic reset
first waits for the results of the clips cut before it, so a file's timeline is complete.

A source discontinuity without a reset (``reset.on_reconnect: false``) still restarts the clip timing and the
detectors at the first frame after it (the ring's epoch changes there).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vstmon.config import Config
from vstmon.ingest.ring import FrameGone, RingBuffer
from vstmon.ingest.sampler import ClipSampler
from vstmon.ingest.subject_crops import SubjectCrops
from vstmon.log import get_logger
from vstmon.stream.buffers import AlternatingBuffers, ClipBuffers, clip_shape
from vstmon.stream.clip_stream import ClipStream
from vstmon.stream.per_subject import SubjectClipStreams
from vstmon.stream.scene import MotionDetector, SceneChangeDetector
from vstmon.stream.sink import ClipSink
from vstmon.stream.state import SegmentState
from vstmon.stream.subjects import StreamSubjects
from vstmon.types import Discontinuity, ResetReason, SourceState, StreamEvent

__all__ = ["ResetRequest", "StreamPipeline"]

_log = get_logger("worker")

_END_DRAIN_TIMEOUT_S = 120.0  # automatic reset or end of a file: how long to wait for the last clips' results


@dataclass
class ResetRequest:
    """A reset for the pipeline to perform (see the module docstring for where it cuts)."""

    reason: ResetReason
    subject: str | None = None
    keep_subject: bool = False
    at_seq: int | None = (
        None  # a source discontinuity: reset right before this ring seq, after the frames before
    )
    drain: bool = (
        False  # end of input: use every frame already in the ring, and wait for their results, first
    )
    done: threading.Event | None = None  # set once performed (a host waiting for the new segment)
    segment: int = 0  # the new segment, once performed

    def __post_init__(self) -> None:
        self.reason = ResetReason(self.reason)  # a bare string from an older caller: refused if unknown

    @property
    def deferred(self) -> bool:
        """The reset waits until the frames before its cut have been used."""
        return self.drain or self.at_seq is not None

    @classmethod
    def for_event(cls, event: StreamEvent, on_reconnect: bool) -> ResetRequest | None:
        """The reset a source event asks for (end of input, a discontinuity), or None."""
        if event.state == SourceState.ENDED:
            return cls(ResetReason.END, drain=True)
        if event.discontinuity == Discontinuity.LOOP:
            return cls(ResetReason.LOOP, at_seq=event.at_seq)
        if event.discontinuity == Discontinuity.TIME_JUMP:
            return cls(ResetReason.TIME_JUMP, keep_subject=True, at_seq=event.at_seq)
        if event.discontinuity == Discontinuity.RECONNECT and on_reconnect:
            return cls(ResetReason.RECONNECT, keep_subject=True, at_seq=event.at_seq)
        return None


class StreamPipeline:
    """Ring -> detectors -> subjects -> clip streams -> sink, one frame per ``step()`` (module docstring).

    ``interrupted()`` (from the host) tells a lossless submit that waits for the sink to give up: the host is
    stopping, or a reset is waiting. ``on_reset(reason)`` is told of every reset performed (metrics).
    """

    def __init__(
        self,
        name: str,
        config: Config,
        ring: RingBuffer,
        state: SegmentState,
        sink: ClipSink,
        lossless: bool,
        *,
        subjects: StreamSubjects | None = None,
        subject_crops: SubjectCrops | None = None,
        make_state: Callable[[str], SegmentState] | None = None,
        interrupted: Callable[[], bool] = lambda: False,
        on_reset: Callable[[ResetReason], None] | None = None,
        buffers: Callable[[int], ClipBuffers] | None = None,
    ) -> None:
        self.name = name
        self.ring = ring
        self.state = state
        self.sink = sink
        self.lossless = lossless
        self.subjects = subjects  # people in view (None: the stream does not track subjects)
        self.interrupted = interrupted  # a host that owns a stop event replaces it (see StreamWorker)
        self._on_reset = on_reset
        clip = config.clip
        if buffers is None:  # the engine in this process

            def buffers(_slot: int) -> ClipBuffers:
                return AlternatingBuffers(np.zeros((2, *clip_shape(clip.frames, clip.size_px)), np.uint8))

        self.sampler = ClipSampler(ring, name, clip.frames, clip.frame_interval, clip.hop_s, clip.sample_fps)
        # per-subject mode: every person in a slot has a clip stream of their own (crops the source cuts)
        self.per_subject: SubjectClipStreams | None = None
        if subject_crops is not None:
            if subjects is None or subjects.slots is None or make_state is None:
                raise ValueError("per-subject clips need subjects in per_subject mode and make_state")
            slots = [buffers(1 + slot) for slot in range(len(subject_crops.rings))]
            self.per_subject = SubjectClipStreams(
                name, config, subject_crops, sink, make_state, lossless, self._is_interrupted, slots
            )
        reset_cfg = config.reset
        self._scene = SceneChangeDetector(reset_cfg.scene_change) if reset_cfg.scene_change.enabled else None
        self._idle_s = reset_cfg.idle_s
        self._motion = (
            MotionDetector(reset_cfg.idle_motion_threshold, reset_cfg.scene_change.size_px)
            if self._idle_s is not None
            else None
        )
        self._idle_fired = False
        # whole-frame clips (slot 0); per subject, the people's clip streams cut instead and this one stays unused
        own = buffers(0) if subject_crops is None else AlternatingBuffers(np.zeros((2, 1, 1, 1, 3), np.uint8))
        self._clips = ClipStream(name, self.sampler, state, sink, lossless, self._is_interrupted, own)
        self.next_seq = 0  # the next ring seq to step
        self._generation = 0
        self._epoch: int | None = None  # source epoch of the frames being fed (None: take the next frame's)
        self.resets = 0
        self.frames_gone = 0  # frames overwritten before they were stepped (live: the host fell behind)

    def _is_interrupted(self) -> bool:
        return self.interrupted()

    # -- what the host asks -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Begin at the oldest frame the ring holds."""
        self.next_seq = self.ring.oldest_seq
        self._generation = self.ring.generation
        self._epoch = None
        self.sampler.restart(self.next_seq)

    @property
    def pending(self) -> bool:
        """A committed frame waits to be stepped."""
        return self.ring.head_seq > self.next_seq

    def ready(self, request: ResetRequest) -> bool:
        """A deferred reset can be performed: the frames before its cut were stepped."""
        if request.at_seq is not None and self.next_seq < request.at_seq:
            return False  # a source discontinuity: use the frames before it first
        ring = self.ring
        # end of input: use the frames still in the ring first
        return not (request.drain and self.next_seq < ring.head_seq and ring.generation == self._generation)

    def state_for(self, key: str) -> SegmentState | None:
        """The state a result of clip stream ``key`` goes to (None: that person is gone)."""
        if key == self.name:
            return self.state
        return self.per_subject.state_for(key) if self.per_subject is not None else None

    @property
    def people(self) -> int | None:
        """People in view at the last detection (None when the stream does not track subjects)."""
        return self.subjects.people if self.subjects is not None else None

    @property
    def clips_cut(self) -> int:
        return self._clips.clips_cut

    @property
    def clips_refused(self) -> int:
        return self._clips.clips_refused

    # -- a frame ------------------------------------------------------------------------------------------------
    def step(self) -> bool:
        """Handle the next committed frame; False when none is waiting."""
        seq = self.next_seq
        ring = self.ring
        if ring.head_seq <= seq:
            return False
        generation = ring.generation
        if generation != self._generation:  # the ring was cleared under us: restart timing at what is left
            self._generation = generation
            self._restart(max(seq, ring.oldest_seq))
            return True
        try:
            meta = ring.meta(seq)
            frame = ring.frame(seq)
            epoch = ring.epoch_of(seq)
        except FrameGone:  # overwritten (we fell behind) or cleared
            self.frames_gone += 1
            self._restart(max(seq + 1, ring.oldest_seq))
            return True
        if self._epoch is None:
            self._epoch = epoch
        elif epoch != self._epoch:  # a source discontinuity that did not reset: timing restarts here
            self._epoch = epoch
            self._restart(seq)
        if self._scene is not None and self._scene.update(frame, meta.stream_ts_s):
            self.reset(ResetRequest(ResetReason.SCENE_CHANGE), keep_from_seq=seq)
            # the cut frame is the first frame of the new segment; fall through to feed it to the sampler
        if self._motion is not None and self._idle_s is not None:
            idle_for_s = self._motion.update(frame, meta.stream_ts_s)
            if idle_for_s < self._idle_s:
                self._idle_fired = False
            elif not self._idle_fired:
                self._idle_fired = True
                self.reset(ResetRequest(ResetReason.IDLE), keep_from_seq=seq, reset_motion=False)
        if self.per_subject is not None:
            # the crops cut so far (up to the previous frame) were cut around the boxes as they are now: their
            # clips are cut before this frame's detection moves the boxes, so a clip's box is its last crop's
            self.per_subject.pump()
            self._subjects_per_slot(seq, meta.stream_ts_s)
            self.next_seq = seq + 1
            ring.release(seq + 1)  # no whole-frame clips in this mode: the frame is done with
            return True
        if self.subjects is not None:
            event = self.subjects.step(seq, meta.stream_ts_s)
            if event is not None:  # the subject entered, changed or left: a new segment from this frame on
                self.reset(ResetRequest(event.reset_reason, subject=event.subject), keep_from_seq=seq)
                self.state.subject_event(
                    event.kind, event.subject, event.previous, event.box, event.score, event.people
                )
        self.next_seq = seq + 1
        try:
            if self.sampler.on_frame(seq):
                box = self.subjects.subject_box if self.subjects is not None else None
                self._clips.cut_and_submit(box)
        except FrameGone:  # frames of the clip were overwritten meanwhile (live stream, slow reader)
            self.frames_gone += 1
            self._restart(max(self.next_seq, ring.oldest_seq))
        return True

    def _subjects_per_slot(self, seq: int, stream_ts_s: float) -> None:
        """Per-subject mode: a detection step ends and starts slots and moves the crops."""
        assert self.subjects is not None and self.subjects.slots is not None and self.per_subject is not None
        found = self.subjects.detect(seq, stream_ts_s)
        if found is None:
            return
        visible, ts_s = found
        slots = self.subjects.slots
        for change in slots.update(visible, self.subjects.tracker.tracks, ts_s):
            if change.kind == "end":
                self.per_subject.end(change, drain=self.lossless)
            else:
                self.per_subject.start(change, slots.people)
        for slot, box in enumerate(slots.boxes):
            if box is not None:
                self.per_subject.move(slot, box)

    def _restart(self, from_seq: int) -> None:
        self.next_seq = from_seq
        self.sampler.restart(from_seq)
        if self._scene is not None:
            self._scene.reset()
        if self._motion is not None:
            self._motion.reset()
        self._idle_fired = False

    # -- a reset ------------------------------------------------------------------------------------------------
    def reset(
        self, request: ResetRequest, keep_from_seq: int | None = None, reset_motion: bool = True
    ) -> int:
        """Perform ``request`` now (the host checked ``ready`` for a deferred one); returns the new segment."""
        ring = self.ring
        reason = request.reason
        if request.drain or (self.lossless and reason.automatic):
            # end of file, or an automatic reset in a file read losslessly: the clips cut before the reset are
            # published (before the reset message) instead of discarded, so a file's timeline is complete
            self.sink.wait_idle(self.name, _END_DRAIN_TIMEOUT_S)
        if keep_from_seq is None:
            # a discontinuity cuts where it happened; anything else at the newest frame (nothing captured before
            # the request is used after it)
            keep_from_seq = request.at_seq if request.at_seq is not None else ring.head_seq
        generation = ring.clear(keep_from_seq)
        self._generation = generation
        self.next_seq = max(keep_from_seq, ring.oldest_seq)
        self._epoch = None
        self.sampler.restart(self.next_seq)
        if self._scene is not None and reason != ResetReason.SCENE_CHANGE:
            self._scene.reset()
        if self._motion is not None and reset_motion:
            self._motion.reset()
            self._idle_fired = False
        subject = request.subject
        if self.per_subject is not None:
            assert self.subjects is not None and self.subjects.slots is not None
            if request.drain:
                self.per_subject.end_all(drain=True)
            elif reason.new_place:  # other people, other places: track afresh
                for change in self.subjects.slots.reset():
                    self.per_subject.end(change, drain=self.lossless)
            else:
                self.per_subject.reset(reason, wait_idle=self.lossless and reason.automatic)
        if self.subjects is not None:
            if reason.new_place:
                self.subjects.restart()
            if reason == ResetReason.CONTROL and subject is not None:
                self.subjects.name_subject(subject)  # the operator's id wins while this subject stays
            if reason not in (ResetReason.SUBJECT_CHANGE, ResetReason.ABSENT) and subject is None:
                subject = self.subjects.subject_id  # the tracked subject goes on into the new segment
        segment = self.state.reset(
            reason,
            subject=subject,
            keep_subject=request.keep_subject and self.subjects is None,
            min_generation=generation,
        )
        self.sink.discard(self.name, segment)
        self.resets += 1
        _log.info("reset", stream=self.name, reason=str(reason), segment=segment)
        if self._on_reset is not None:
            self._on_reset(reason)
        request.segment = segment
        if request.done is not None:
            request.done.set()
        return segment
