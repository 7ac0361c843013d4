"""``SubjectClipStreams``: per-subject mode's clip streams of one stream (its worker thread drives them).

Every slot of ``SubjectSlots`` that holds a person is a clip stream of its own: the slot's crop ring
(``SubjectCrops``, filled by the source), a ``ClipSampler`` on it, a ``SegmentState`` for the person (their own
segment numbering from 1, smoothing, subject id and box) and an engine key ``"<stream>/<subject>"``.

- ``start``: a person took a slot: the source crops around them from the next frame; ``subject.<stream>`` ``enter``
  and their ``reset`` (reason ``start``) are published.
- ``move``: new boxes at a detection step (the crops follow; the state carries the box).
- ``pump``: feed each slot's new crops to its sampler; cut and submit due clips (clips are cut on the stream clock
  exactly as for whole frames).
- ``end``: the track ended: the source stops cropping, the person's last ``segment`` summary and ``subject``
  ``leave`` are published, their pending and in-flight clips are discarded (never published) and the engine
  forgets the key; the slot's ring is cleared for the next person (the memory is the slot's, fixed).
- ``reset``: a reset of the whole stream (control, scene cut, discontinuity) resets every person's segment too.

Labels of a person go out on the stream's topics (``label.<stream>``) with ``subject`` and ``box``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from vstmon.config import Config
from vstmon.ingest.ring import FrameGone
from vstmon.ingest.sampler import ClipSampler
from vstmon.ingest.subject_crops import SubjectCrops
from vstmon.stream.buffers import ClipBuffers
from vstmon.stream.clip_stream import ClipStream
from vstmon.stream.sink import ClipSink
from vstmon.stream.state import SegmentState
from vstmon.subjects.slots import SlotChange
from vstmon.types import Box

__all__ = ["SubjectClipStreams"]

_END_DRAIN_TIMEOUT_S = 120.0  # end of input: how long to wait for a person's last results


class _Slot:
    """One slot's clip stream while a person holds it."""

    def __init__(self, clips: ClipStream, subject: str, box: Box) -> None:
        self.clips = clips
        self.subject = subject
        self.box = box
        self.next_seq = clips.sampler.ring.head_seq  # crops of this person start at or after it


class SubjectClipStreams:
    """The per-subject clip streams of one stream (see the module docstring). Worker thread only, except
    ``state_for`` and ``snapshot`` (engine and status threads)."""

    def __init__(
        self,
        stream: str,
        config: Config,
        crops: SubjectCrops,
        sink: ClipSink,
        make_state: Callable[[str], SegmentState],
        lossless: bool,
        interrupted: Callable[[], bool],
        buffers: list[ClipBuffers],
    ) -> None:
        if len(buffers) != len(crops.rings):
            raise ValueError(f"{len(crops.rings)} slots need as many clip buffers, got {len(buffers)}")
        self.stream = stream
        self.crops = crops
        self._sink = sink
        self._make_state = make_state
        self._lossless = lossless
        self._interrupted = interrupted
        clip = config.clip
        self._samplers = [
            ClipSampler(ring, stream, clip.frames, clip.frame_interval, clip.hop_s, clip.sample_fps)
            for ring in crops.rings
        ]
        self._slots: list[_Slot | None] = [None] * len(crops.rings)
        self._buffers = buffers  # each slot's two clip arrays, reused by every person who holds the slot
        self._by_key: dict[str, SegmentState] = {}  # engine key -> state, read by the engine thread
        self._lock = threading.Lock()
        self.subjects_started = 0
        self.subjects_ended = 0
        self.clips_lost = (
            0  # clips whose crops were overwritten before they were cut (the worker fell behind)
        )

    # -- slots come and go ----------------------------------------------------------------------------------
    def start(self, change: SlotChange, people: int) -> None:
        """A person took ``change.slot`` (``people``: in view at this step)."""
        if self._slots[change.slot] is not None:
            raise RuntimeError(f"slot {change.slot} of {self.stream} is taken")
        key = f"{self.stream}/{change.subject}"
        state = self._make_state(change.subject)
        state.set_subject(change.subject)
        state.set_box(change.box)
        sampler = self._samplers[change.slot]
        sampler.restart(sampler.ring.head_seq)
        clips = ClipStream(
            key, sampler, state, self._sink, self._lossless, self._interrupted, self._buffers[change.slot]
        )
        with self._lock:
            self._by_key[key] = state
        self._slots[change.slot] = _Slot(clips, change.subject, change.box)
        self.crops.start(change.slot, change.box)
        state.announce_start()
        state.subject_event("enter", change.subject, None, change.box, None, people)
        self.subjects_started += 1

    def move(self, slot: int, box: Box) -> None:
        held = self._slots[slot]
        if held is not None:
            held.box = box
            held.clips.state.set_box(box)
            self.crops.move(slot, box)

    def end(self, change: SlotChange, drain: bool = False) -> None:
        """The person of ``change.slot`` is gone; ``drain``: use their crops and results first (end of input)."""
        held = self._slots[change.slot]
        if held is None:
            return
        self.crops.stop(change.slot)
        key = held.clips.key
        if drain:
            self._pump_slot(held)
            self._sink.wait_idle(key, _END_DRAIN_TIMEOUT_S)
        state = held.clips.state
        state.set_box(change.box)
        state.close()  # the last segment summary; later results of this person are discarded
        state.subject_event("leave", None, change.subject, change.box, None, 0)  # people: not known here
        self._sink.forget(key)
        with self._lock:
            self._by_key.pop(key, None)
        ring = self._samplers[change.slot].ring
        ring.clear()  # the next person of this slot starts from nothing
        self._slots[change.slot] = None
        self.subjects_ended += 1

    def end_all(self, drain: bool = False) -> None:
        for slot, held in enumerate(self._slots):
            if held is not None:
                self.end(SlotChange(slot, "end", held.subject, held.box), drain=drain)

    def subject_in(self, slot: int) -> str | None:
        """The subject holding ``slot`` (None: free)."""
        held = self._slots[slot]
        return held.subject if held is not None else None

    @property
    def clips_skipped(self) -> int:
        """Clips the slots' samplers skipped (see ``ClipSampler``), every person so far."""
        return sum(sampler.clips_skipped for sampler in self._samplers)

    # -- the flow -----------------------------------------------------------------------------------------
    def pump(self) -> None:
        """Feed every held slot's new crops to its sampler; cut and submit the clips that are due."""
        for held in self._slots:
            if held is not None:
                self._pump_slot(held)

    def _pump_slot(self, held: _Slot) -> None:
        clips = held.clips
        sampler = clips.sampler
        ring = sampler.ring
        while held.next_seq < ring.head_seq:
            seq = max(held.next_seq, ring.oldest_seq)
            held.next_seq = seq + 1
            try:
                if sampler.on_frame(seq):
                    clips.cut_and_submit(held.box)
            except FrameGone:  # the crops of a due clip were overwritten meanwhile (the worker fell behind)
                self.clips_lost += 1
                sampler.restart(held.next_seq)

    def reset(self, reason: str, wait_idle: bool) -> None:
        """A reset of the whole stream: every person's segment resets too, cut at their newest crop."""
        for held in self._slots:
            if held is None:
                continue
            clips = held.clips
            if wait_idle:
                self._pump_slot(held)
                self._sink.wait_idle(clips.key, _END_DRAIN_TIMEOUT_S)
            ring = clips.sampler.ring
            generation = ring.clear(ring.head_seq)
            held.next_seq = ring.head_seq
            clips.sampler.restart(held.next_seq)
            segment = clips.state.reset(reason, subject=held.subject, min_generation=generation)
            self._sink.discard(clips.key, segment)

    @property
    def nbytes(self) -> int:
        """Fixed memory of this stream's per-subject mode: the crop rings and every slot's two clip arrays."""
        return self.crops.nbytes + sum(int(b.arrays.nbytes) for b in self._buffers)

    # -- other threads ----------------------------------------------------------------------------------------
    def state_for(self, key: str) -> SegmentState | None:
        """The state a result of engine key ``key`` goes to (None: that person is gone)."""
        with self._lock:
            return self._by_key.get(key)

    def snapshot(self) -> list[dict[str, Any]]:
        """The people with clips of their own: subject, box, segment, clips (for ``status``)."""
        with self._lock:
            states = list(self._by_key.values())
        out = []
        for state in states:
            info = state.snapshot()
            out.append(
                {
                    "subject": info["subject"],
                    "box": info["box"],
                    "segment": info["segment"],
                    "clips": info["clips"],
                }
            )
        return out
