"""``SubjectSlots``: which tracked people get one of a stream's ``max_subjects`` per-subject clip streams.

Per-subject mode (``subjects.mode: per_subject``) gives every person who *counts* (confirmed and tracked for
``confirm_s``, as for the whole-stream subject) a slot: its own crop ring, clip sampler, segment and smoothing.
Fed the detection steps (``update(visible, live, ts_s)``), it returns the slots that start and end:

- a slot ends when its track ends (the tracker dropped it: out of view for longer than its buffer): the subject's
  segment closes;
- a person who counts and has no slot takes a free one; when there are more such people than free slots, the
  largest boxes go first (nearest the camera: most pixels for the action model) and the rest wait, counted in
  ``waiting`` (now) and ``waited`` (detection steps a person spent waiting, since the start);
- ``boxes`` holds each active slot's box: the track's box at the last step (predicted while it coasts), which the
  source crops around until the next step.

Subject ids are ``<stream>-<track id>``, as in whole-stream mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from vstmon.subjects.tracker import Track
from vstmon.types import Box

__all__ = ["SlotChange", "SubjectSlots"]


@dataclass(frozen=True, slots=True)
class SlotChange:
    """A slot starting (a person took it) or ending (their track ended)."""

    slot: int
    kind: Literal["start", "end"]
    subject: str
    box: Box  # the box at the start, or the last box at the end


def _area(track: Track) -> float:
    x0, y0, x1, y1 = track.box
    return max(0.0, x1 - x0) * max(0.0, y1 - y0)


class SubjectSlots:
    """The per-subject slots of one stream (its worker thread only; see the module docstring)."""

    def __init__(self, stream: str, max_subjects: int, confirm_s: float = 1.0) -> None:
        if max_subjects < 1:
            raise ValueError(f"max_subjects must be >= 1, got {max_subjects}")
        self.stream = stream
        self.max_subjects = int(max_subjects)
        self.confirm_s = float(confirm_s)
        self._tracks: list[int | None] = [None] * self.max_subjects  # track id per slot
        self.subjects: list[str | None] = [None] * self.max_subjects
        self.boxes: list[Box | None] = [None] * self.max_subjects
        self.people = 0
        self.waiting = 0
        self.waited = 0

    def reset(self) -> list[SlotChange]:
        """End every slot (a file loop, a jump of the clock); returns the ends."""
        return [self._end(slot) for slot, track in enumerate(self._tracks) if track is not None]

    def update(self, visible: Sequence[Track], live: Sequence[Track], ts_s: float) -> list[SlotChange]:
        """One detection step: ``visible`` tracks (matched now), ``live`` tracks (also coasting); the changes."""
        self.people = len(visible)
        by_id = {track.track_id: track for track in live}
        changes = [
            self._end(slot)
            for slot, track_id in enumerate(self._tracks)
            if track_id is not None and track_id not in by_id
        ]
        for slot, track_id in enumerate(self._tracks):
            if track_id is not None:
                self.boxes[slot] = by_id[track_id].box
        held = set(self._tracks)
        waiting = sorted(
            (
                t
                for t in visible
                if t.confirmed and ts_s - t.first_seen_s >= self.confirm_s and t.track_id not in held
            ),
            key=_area,
            reverse=True,
        )
        for track in waiting[:]:
            if None not in self._tracks:
                break
            slot = self._tracks.index(None)
            self._tracks[slot] = track.track_id
            self.subjects[slot] = f"{self.stream}-{track.track_id}"
            self.boxes[slot] = track.box
            changes.append(SlotChange(slot, "start", f"{self.stream}-{track.track_id}", track.box))
            waiting.remove(track)
        self.waiting = len(waiting)
        self.waited += self.waiting
        return changes

    def _end(self, slot: int) -> SlotChange:
        subject, box = self.subjects[slot], self.boxes[slot]
        assert subject is not None and box is not None
        self._tracks[slot] = None
        self.subjects[slot] = None
        self.boxes[slot] = None
        return SlotChange(slot, "end", subject, box)
