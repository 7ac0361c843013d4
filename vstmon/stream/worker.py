"""``StreamWorker``: one stream's consumer thread, ring -> detectors -> clip sampler -> engine; it performs resets.

The worker is the only reader of its stream's ring and sampler, so every reset of the stream runs on its thread
(requests from other threads queue in a small mailbox): clear the ring (keeping frames from the cut on), restart
the sampler there, reset the detectors, open the new segment in ``StreamState`` (which publishes ``segment`` then
``reset`` and clears smoothing; it then refuses clips cut from older ring generations), and discard the engine's
pending and in-flight clips of the old segment. Nothing published after a reset depends on a frame captured
before it.

Where a reset happens:

- control command: at once, cutting at the newest frame (nothing captured before the request is used after it);
- scene change, idle: at the frame that triggered it;
- source discontinuity (reconnect, file loop, clock jump; ``ResetRequest.at_seq``): exactly at the first frame
  after it; the frames before it are used first, so a file read losslessly loses none;
- end of input (``drain``): after every frame still in the ring, once their results are published.

- subject change or absence (``StreamSubjects``, whole-frame mode): at the detection frame that decided it.

A source discontinuity without a reset (``reset.on_reconnect: false``) still restarts the clip timing and the
detectors at the first frame after it (the ring's epoch changes there).

Per-subject mode (``subjects.mode: per_subject``): the worker still reads the stream's ring (scene/idle detectors,
person detection) but cuts no whole-frame clips; detection steps start and end people's slots, and every frame it
pumps each person's crop ring into their own clip stream (``per_subject.SubjectClipStreams``). A reset of the
stream resets every person's segment too.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from vstmon.config import Config
from vstmon.inference.engine import Engine
from vstmon.ingest.ring import RingBuffer
from vstmon.ingest.sampler import ClipSampler
from vstmon.ingest.subject_crops import SubjectCrops
from vstmon.log import get_logger
from vstmon.service.metrics import Metrics
from vstmon.stream.clip_stream import ClipStream
from vstmon.stream.per_subject import SubjectClipStreams
from vstmon.stream.scene import MotionDetector, SceneChangeDetector
from vstmon.stream.state import StreamState
from vstmon.stream.subjects import StreamSubjects

__all__ = ["ResetRequest", "StreamWorker"]

_log = get_logger("worker")

_WAIT_S = 0.1  # longest a worker waits for a frame before checking its mailbox and the stop event
_END_DRAIN_TIMEOUT_S = 120.0  # end of file: how long to wait for the last clips' results before the reset
_MAILBOX_REQUESTS = 64  # reset requests waiting for the worker (more are dropped, oldest first)
# resets the stream decides by itself (in a file read losslessly, the clips before them are published first)
_AUTOMATIC_REASONS = ("scene_change", "idle", "subject_change", "absent")


@dataclass
class ResetRequest:
    """A reset for the worker thread to perform (see the module docstring for where it cuts)."""

    reason: str
    subject: str | None = None
    keep_subject: bool = False
    at_seq: int | None = (
        None  # a source discontinuity: reset right before this ring seq, after the frames before
    )
    drain: bool = False  # end of file: use every frame already in the ring, and wait for their results, first
    done: threading.Event | None = None
    segment: int = 0

    @property
    def deferred(self) -> bool:
        """The reset waits until the frames before its cut have been used."""
        return self.drain or self.at_seq is not None


class StreamWorker:
    """One stream's consumer thread: ring -> detectors -> sampler -> clip -> engine; performs its resets."""

    def __init__(
        self,
        name: str,
        config: Config,
        ring: RingBuffer,
        sampler: ClipSampler,
        state: StreamState,
        engine: Engine,
        lossless: bool,
        metrics: Metrics | None = None,
        subjects: StreamSubjects | None = None,
        subject_crops: SubjectCrops | None = None,
        make_state: Callable[[str], StreamState] | None = None,
    ) -> None:
        self.name = name
        self.subjects = subjects  # people in view (None: the stream does not track subjects)
        # per-subject mode: every person in a slot has a clip stream of their own (crops the source cuts)
        self.per_subject: SubjectClipStreams | None = None
        if subject_crops is not None:
            if subjects is None or subjects.slots is None or make_state is None:
                raise ValueError("per-subject clips need subjects in per_subject mode and make_state")
            self.per_subject = SubjectClipStreams(
                name, config, subject_crops, engine, make_state, lossless, self._interrupted
            )
        self._ring = ring
        self._sampler = sampler
        self._state = state
        self._engine = engine
        self._lossless = lossless
        self._metrics = metrics
        reset_cfg = config.reset
        self._scene = SceneChangeDetector(reset_cfg.scene_change) if reset_cfg.scene_change.enabled else None
        self._idle_s = reset_cfg.idle_s
        self._motion = (
            MotionDetector(reset_cfg.idle_motion_threshold, reset_cfg.scene_change.size_px)
            if self._idle_s is not None
            else None
        )
        self._idle_fired = False
        self._clips = ClipStream(
            name, sampler, state, engine, config.clip.size_px, lossless, self._interrupted
        )
        self._requests: deque[ResetRequest] = deque(maxlen=_MAILBOX_REQUESTS)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_seq = 0
        self._generation = 0
        self._epoch: int | None = None  # source epoch of the frames being fed (None: take the next frame's)
        self.resets = 0
        self.frames_gone = 0
        self._progress_mono_s = time.monotonic()  # the worker last handled a frame, or found none waiting

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._next_seq = self._ring.oldest_seq
        self._generation = self._ring.generation
        self._epoch = None
        self._sampler.restart(self._next_seq)
        self._thread = threading.Thread(target=self._run, name=f"worker-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def join(self, timeout_s: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout_s)
            return not self._thread.is_alive()
        return True

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def progress(self) -> tuple[bool, float]:
        """(frames waiting for the worker, seconds since it last handled a frame or found none to handle)."""
        ring = self._ring
        busy = not ring.closed and ring.head_seq > self._next_seq
        return busy, time.monotonic() - self._progress_mono_s

    @property
    def people(self) -> int | None:
        """People in view at the last detection (None when the stream does not track subjects)."""
        return self.subjects.people if self.subjects is not None else None

    # -- requests from other threads --------------------------------------------------------------------------
    def request_reset(self, request: ResetRequest, wait_s: float | None = None) -> int | None:
        """Queue a reset for the worker thread; with ``wait_s``, wait for it and return the new segment."""
        if wait_s is not None:
            request.done = threading.Event()
        with self._lock:
            self._requests.append(request)
        self._wake.set()
        if wait_s is None or request.done is None:
            return None
        if not request.done.wait(wait_s):
            return None
        return request.segment

    # -- the loop ---------------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                request = self._next_request()
                if request is not None:
                    self._reset(request)
                    continue
                if not self._ring.wait_for(self._next_seq, _WAIT_S):
                    self._progress_mono_s = time.monotonic()  # nothing to do is not being stuck
                    if self._ring.closed:  # shutting down: wait for the stop event, do not spin
                        self._stop.wait(_WAIT_S)
                    continue
                self._frame(self._next_seq)
        except Exception as error:  # a worker bug is logged; the daemon and other streams carry on
            _log.exception("stream worker failed", stream=self.name, error=str(error))
        finally:
            with self._lock:
                pending = list(self._requests)
                self._requests.clear()
            for request in pending:
                if request.done is not None:
                    request.done.set()

    def _next_request(self) -> ResetRequest | None:
        with self._lock:
            if not self._requests:
                self._wake.clear()
                return None
            request = self._requests[0]
            ring = self._ring
            if request.at_seq is not None and self._next_seq < request.at_seq:
                return None  # a source discontinuity: use the frames before it first
            if request.drain and self._next_seq < ring.head_seq and ring.generation == self._generation:
                return None  # end of file: use the frames still in the ring first
            return self._requests.popleft()

    def _frame(self, seq: int) -> None:
        ring = self._ring
        self._progress_mono_s = time.monotonic()
        generation = ring.generation
        if generation != self._generation:  # the ring was cleared under us: restart timing at what is left
            self._generation = generation
            self._restart(max(seq, ring.oldest_seq))
            return
        try:
            meta = ring.meta(seq)
            frame = ring.frame(seq)
            epoch = ring.epoch_of(seq)
        except LookupError:  # FrameGone: overwritten (we fell behind) or cleared
            self.frames_gone += 1
            self._restart(max(seq + 1, ring.oldest_seq))
            return
        if self._epoch is None:
            self._epoch = epoch
        elif epoch != self._epoch:  # a source discontinuity that did not reset: timing restarts here
            self._epoch = epoch
            self._restart(seq)
        if self._scene is not None and self._scene.update(frame, meta.stream_ts_s):
            self._reset(ResetRequest("scene_change"), keep_from_seq=seq)
            # the cut frame is the first frame of the new segment; fall through to feed it to the sampler
        if self._motion is not None and self._idle_s is not None:
            idle_for_s = self._motion.update(frame, meta.stream_ts_s)
            if idle_for_s < self._idle_s:
                self._idle_fired = False
            elif not self._idle_fired:
                self._idle_fired = True
                self._reset(ResetRequest("idle"), keep_from_seq=seq, reset_motion=False)
        if self.per_subject is not None:
            self._subjects_per_slot(seq, meta.stream_ts_s)
            self._next_seq = seq + 1
            ring.release(seq + 1)  # no whole-frame clips in this mode: the frame is done with
            self.per_subject.pump()
            return
        if self.subjects is not None:
            event = self.subjects.step(seq, meta.stream_ts_s)
            if event is not None:  # the subject entered, changed or left: a new segment from this frame on
                self._reset(ResetRequest(event.reset_reason, subject=event.subject), keep_from_seq=seq)
                self._state.subject_event(
                    event.kind, event.subject, event.previous, event.box, event.score, event.people
                )
        self._next_seq = seq + 1
        try:
            due = self._sampler.on_frame(seq)
            if due:
                self._cut_and_submit()
        except LookupError:  # frames of the clip were overwritten meanwhile (live stream, slow reader)
            self.frames_gone += 1
            self._restart(max(self._next_seq, ring.oldest_seq))

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
                self.per_subject.end(change, drain=self._lossless)
            else:
                self.per_subject.start(change, slots.people)
        for slot, box in enumerate(slots.boxes):
            if box is not None:
                self.per_subject.move(slot, box)

    def _restart(self, from_seq: int) -> None:
        self._next_seq = from_seq
        self._sampler.restart(from_seq)
        if self._scene is not None:
            self._scene.reset()
        if self._motion is not None:
            self._motion.reset()
        self._idle_fired = False

    def _cut_and_submit(self) -> None:
        self._clips.cut_and_submit(self.subjects.subject_box if self.subjects is not None else None)

    def _interrupted(self) -> bool:
        """A waiting submit gives up: the worker is stopping, or a reset is waiting (the clip belongs to the
        closing segment)."""
        if self._stop.is_set():
            return True
        with self._lock:
            return bool(self._requests) and not self._requests[0].deferred

    @property
    def clips_cut(self) -> int:
        return self._clips.clips_cut

    @property
    def clips_refused(self) -> int:
        return self._clips.clips_refused

    def _reset(
        self, request: ResetRequest, keep_from_seq: int | None = None, reset_motion: bool = True
    ) -> None:
        ring = self._ring
        automatic = request.at_seq is not None or request.reason in _AUTOMATIC_REASONS
        if request.drain or (self._lossless and automatic):
            # end of file, or an automatic reset in a file read losslessly: the clips cut before the reset are
            # published (before the reset message) instead of discarded, so a file's timeline is complete
            self._engine.wait_idle(self.name, _END_DRAIN_TIMEOUT_S)
        if keep_from_seq is None:
            # a discontinuity cuts where it happened; anything else at the newest frame (nothing captured before
            # the request is used after it)
            keep_from_seq = request.at_seq if request.at_seq is not None else ring.head_seq
        generation = ring.clear(keep_from_seq)
        self._generation = generation
        self._next_seq = max(keep_from_seq, ring.oldest_seq)
        self._epoch = None
        self._sampler.restart(self._next_seq)
        if self._scene is not None and request.reason != "scene_change":
            self._scene.reset()
        if self._motion is not None and reset_motion:
            self._motion.reset()
            self._idle_fired = False
        subject = request.subject
        if self.per_subject is not None:
            assert self.subjects is not None and self.subjects.slots is not None
            if request.drain:
                self.per_subject.end_all(drain=True)
            elif request.reason in ("loop", "time_jump"):  # other people, other places: track afresh
                for change in self.subjects.slots.reset():
                    self.per_subject.end(change, drain=self._lossless)
            else:
                self.per_subject.reset(request.reason, wait_idle=self._lossless and automatic)
        if self.subjects is not None:
            if request.reason in ("loop", "time_jump"):  # other people, other places: track afresh
                self.subjects.restart()
            if request.reason == "control" and subject is not None:
                self.subjects.name_subject(subject)  # the operator's id wins while this subject stays
            if request.reason not in ("subject_change", "absent") and subject is None:
                subject = self.subjects.subject_id  # the tracked subject goes on into the new segment
        segment = self._state.reset(
            request.reason,
            subject=subject,
            keep_subject=request.keep_subject and self.subjects is None,
            min_generation=generation,
        )
        self._engine.discard(self.name, segment)
        self.resets += 1
        if self._metrics is not None:
            self._metrics.count_reset(self.name, request.reason)
        _log.info("reset", stream=self.name, reason=request.reason, segment=segment)
        request.segment = segment
        if request.done is not None:
            request.done.set()
