"""``SubjectPolicy``: which tracked person is a stream's subject, and when the subject changes or leaves.

Fed the tracks seen at each detection step (``update(tracks, ts_s)``, stream time), it returns at most one
``SubjectEvent`` per step; the stream worker turns ``reset`` events into resets of the stream's segment.

Rules (all times are stream seconds, so a file read faster than real time behaves as it would live):

- a person *counts* once their track is confirmed and has been tracked for ``confirm_s`` (a false box or a
  glimpse does not); the *candidate* is the best person in view who counts, other than the subject, by
  ``select``: ``largest`` (box area), ``central`` (box centre nearest the frame centre) or ``longest`` (tracked
  since the earliest time). (Counting presence rather than "being the best" for ``confirm_s`` keeps two people of
  about the same size from holding each other back.)
- no subject: the candidate becomes the subject: ``enter`` (reset ``subject_change``);
- the subject stays the subject while its track lives, even if someone else becomes larger or more central;
  it is *lost* when its track is not in view; up to ``lost_s`` that is an occlusion and nothing happens;
- lost for ``lost_s`` or more, and there is a candidate: ``change`` (reset ``subject_change``);
- lost for ``absent_s`` or more (``absent_s >= lost_s``) and no candidate: ``leave`` (reset ``absent``): the
  segment closes and the next person to count starts a new one (``enter``).

Subject ids are ``<stream>-<track id>``: stable while the track lives. ``name_subject(id)`` (a ``reset`` control
command naming the subject) renames the current subject until it leaves or changes; with no subject in view the
name is the segment's only (the next person to enter gets their own id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from vstmon.subjects.tracker import Track
from vstmon.types import Box

__all__ = ["SELECT_RULES", "SubjectEvent", "SubjectPolicy"]

SELECT_RULES = ("largest", "central", "longest")


@dataclass(frozen=True, slots=True)
class SubjectEvent:
    """A change of a stream's subject, and the reset it calls for."""

    kind: Literal["enter", "change", "leave"]
    subject: str | None  # the subject from now on (None after ``leave``)
    previous: str | None  # the subject before (None on ``enter``)
    box: Box | None  # the new subject's box; on ``leave``, the leaving subject's last box
    score: float | None  # the detection score behind ``box``
    people: int  # tracks in view at this step
    ts_s: float  # stream time of the step

    @property
    def reset_reason(self) -> str:
        """The reason of the reset the stream performs for this event."""
        return "absent" if self.kind == "leave" else "subject_change"


def _area(track: Track) -> float:
    x0, y0, x1, y1 = track.box
    return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def _centrality(track: Track) -> float:
    x0, y0, x1, y1 = track.box
    return -(((x0 + x1) / 2 - 0.5) ** 2 + ((y0 + y1) / 2 - 0.5) ** 2)  # higher = nearer the centre


class SubjectPolicy:
    """One stream's subject (see the module docstring). Used by the stream's worker thread only."""

    def __init__(
        self,
        stream: str,
        select: str = "largest",
        confirm_s: float = 1.0,
        lost_s: float = 1.5,
        absent_s: float = 3.0,
    ) -> None:
        if select not in SELECT_RULES:
            raise ValueError(f"select must be one of {', '.join(SELECT_RULES)}; got {select!r}")
        if min(confirm_s, lost_s, absent_s) < 0:
            raise ValueError("confirm_s, lost_s and absent_s must be >= 0")
        if absent_s < lost_s:
            raise ValueError(f"absent_s ({absent_s}) must be >= lost_s ({lost_s})")
        self.stream = stream
        self.select = select
        self.confirm_s = float(confirm_s)
        self.lost_s = float(lost_s)
        self.absent_s = float(absent_s)
        self.people = 0
        self.subject_id: str | None = None
        self.subject_box: Box | None = None
        self.subject_score: float | None = None
        self.events = 0
        self.reset()

    def reset(self) -> None:
        """Forget the subject (a file loop, a jump of the clock): the next person who counts enters."""
        self._subject_track: int | None = None
        self._subject_seen_s = 0.0
        self.subject_id = None
        self.subject_box = None
        self.subject_score = None

    def name_subject(self, subject_id: str) -> None:
        """A control command names the current subject: the name holds until this subject leaves or changes."""
        if self._subject_track is not None:
            self.subject_id = subject_id

    def _key(self, track: Track) -> float:
        if self.select == "largest":
            return _area(track)
        if self.select == "central":
            return _centrality(track)
        return -track.first_seen_s

    def update(self, tracks: Sequence[Track], ts_s: float) -> SubjectEvent | None:
        """One detection step: the tracks in view at stream time ``ts_s``; returns the event it caused, if any."""
        self.people = len(tracks)
        subject = None
        best: Track | None = None
        for track in tracks:
            if track.track_id == self._subject_track:
                subject = track
            elif (
                track.confirmed
                and ts_s - track.first_seen_s >= self.confirm_s
                and (best is None or self._key(track) > self._key(best))
            ):
                best = track

        if subject is not None:  # in view: nothing changes
            self._subject_seen_s = ts_s
            self.subject_box, self.subject_score = subject.box, subject.score
            return None
        if self._subject_track is None:
            return self._take(best, ts_s, "enter") if best is not None else None
        lost_for_s = ts_s - self._subject_seen_s
        if lost_for_s >= self.lost_s and best is not None:
            return self._take(best, ts_s, "change")
        if lost_for_s >= self.absent_s:
            event = SubjectEvent(
                "leave", None, self.subject_id, self.subject_box, self.subject_score, self.people, ts_s
            )
            self.reset()
            self.events += 1
            return event
        return None

    def _take(self, track: Track, ts_s: float, kind: Literal["enter", "change"]) -> SubjectEvent:
        previous = self.subject_id
        self._subject_track = track.track_id
        self._subject_seen_s = ts_s
        self.subject_id = f"{self.stream}-{track.track_id}"
        self.subject_box, self.subject_score = track.box, track.score
        self.events += 1
        return SubjectEvent(kind, self.subject_id, previous, track.box, track.score, self.people, ts_s)
