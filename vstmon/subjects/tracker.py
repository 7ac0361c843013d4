"""Multi-person tracking by detection: ByteTrack's association on a constant-velocity Kalman filter.

The method is ByteTrack's (Zhang et al., "ByteTrack: Multi-Object Tracking by Associating Every Detection Box",
ECCV 2022) on the box model of SORT (Bewley et al., 2016). Each step (:meth:`Tracker.update`):

1. every live track's Kalman filter predicts its box at the step's time; steps may be irregular, the
   prediction uses the elapsed seconds;
2. *first association*: the detections scoring at least ``high_score`` against the confirmed tracks, first those
   matched at the previous step, then those coasting (unmatched for up to ``buffer_s``);
3. *second association*: the detections below ``high_score`` against the confirmed tracks matched at the
   previous step and still unmatched, with the stricter ``low_match_iou``: a weak box (often a person partly
   hidden) only continues a track that is right there; it never revives a coasting track nor starts one;
4. the high detections left against the tentative tracks (seen fewer than ``min_hits`` times); a tentative track
   that misses a step ends at once, so a box seen once never becomes confirmed;
5. a high detection still left, scoring at least ``new_track_score``, starts a tentative track;
6. a confirmed track unmatched for longer than ``buffer_s`` ends; one whose last detection touched the frame's
   edge ends after ``_EDGE_BUFFER_S`` already (the person most likely walked out, and someone entering at the same
   place soon after must not inherit the id). Ids count up from 1 and are never reused.

Matching is greedy, best overlap first, not Hungarian: a few people per frame rarely compete for one box, and
when they do, the box should go to the track that overlaps it most (an optimal assignment maximises the sum of
overlaps and can trade one clear match for two mediocre ones); it is also a dozen lines of numpy.

Where this departs from ByteTrack, and why (measured on vtest.avi, see below):

* *Overlap with an uncertainty margin* ("buffered IoU", as in C-BIoU, Yang et al., WACV 2023): before the IoU of a
  track and a detection is taken, both boxes grow on every side by ``_GATE_STDS`` standard deviations of the
  track's predicted centre (from its Kalman covariance). A perfect match keeps IoU 1, a track that is well
  followed keeps a margin of a few pixels (plain IoU), while a new track, whose speed is unknown, or one that has
  coasted for a while, accepts a detection further away. ByteTrack's plain IoU assumes 30 frames a second; at 2-5
  detections a second a walking person moves about a box width between steps, so a new track often missed its
  second detection (at 2/s nearly every step started a new tentative id) and a track unseen for a second or two
  (behind the sign post) rarely met its person again: 74 / 67 confirmed ids over vtest.avi at 5 / 2 detections a
  second, against 30 / 29 with the margin, and 68 / 40 of the 78 annotated person-frames on a track, against
  73 / 69.
* Because margins differ between tracks, their overlaps are not comparable, so the first association is
  cascaded (as DeepSORT's is): tracks matched at the previous step choose first, then the coasting ones.

The Kalman state is the box centre, aspect ratio (width / height) and height and their velocities per second,
(cx, cy, a, h, vcx, vcy, va, vh), in the frame's normalised coordinates (IoU does not depend on the frame's aspect
ratio, so normalised boxes match as pixel boxes would). Noise scales with the box height as in SORT/ByteTrack, in
continuous time (white-noise acceleration), so a 0.5 s step widens the prediction more than a 0.2 s one. While a
track coasts its height velocity is zeroed (as in ByteTrack), so an unseen box keeps its size.

Defaults, checked on opencv-doc's vtest.avi (10 fps campus walkway, 2-7 people 60-120 px tall) with the
person-only SSDLite detector at score >= 0.3, detecting at 5 and at 2 frames a second, against six people
annotated by hand (tests/subjects/test_tracker.py): ByteTrack's thresholds (``high_score`` 0.5, ``new_track_score`` 0.6,
``match_iou`` 0.2, ``low_match_iou`` 0.5), ``min_hits`` 2 and ``buffer_s`` 2.0 did as well as or better than the
alternatives tried (high 0.4-0.6, new 0.5-0.7, match 0.1-0.3, low 0.3-0.5, min_hits 1-3, buffer 1-4 s: a longer
buffer gives fewer ids but more switches between people, 1 s many more ids); the noise and margin constants below
were chosen on the same data (margin 0.5-1.5 standard deviations, acceleration 0.5-2 heights/s^2, detector noise
1/20-1/10 of the height). With the detector at 0.3, the low band of the second association is 0.3-0.5.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Track", "Tracker"]

# Kalman noise, as fractions of the box height (a near, large person moves and jitters more pixels than a far one)
_MEASURE_STD = 1.0 / 20  # detector noise on cx, cy, h
_MEASURE_ASPECT_STD = 0.1  # detector noise on the aspect ratio (absolute)
_ACCEL_STD = 1.0  # white-noise acceleration of cx, cy, h: heights per s^2
_ACCEL_ASPECT_STD = 0.05  # of the aspect ratio, per s^2 (a walking person's aspect changes little)
_INIT_SPEED_STD = 1.5  # the unknown speed of a new track, heights per second (people walk about 1 height/s)
_GATE_STDS = 0.7  # match margin: standard deviations of the predicted centre added to both boxes' sides
_EDGE_TOUCH = 0.005  # a detection this close to the frame's border (normalised) touches the edge
_EDGE_BUFFER_S = 0.5  # how long a track last seen at the edge coasts (capped by buffer_s)
_MEASURED = 4  # (cx, cy, a, h) are measured; their 4 velocities are not


@dataclass(frozen=True, slots=True)
class Track:
    """One tracked person at the tracker's latest step (a snapshot: it does not change afterwards)."""

    track_id: int  # >= 1, unique within a Tracker, never reused
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 normalised 0..1 (filtered), clipped to 0..1
    score: float  # score of the last matched detection
    first_seen_s: float  # stream time of its first detection
    last_seen_s: float  # stream time of its last matched detection
    hits: int  # detections matched so far
    confirmed: bool  # seen often enough to be trusted (min_hits)


class _LiveTrack:
    """A track's mutable state: its Kalman estimate and bookkeeping."""

    __slots__ = (
        "at_edge",
        "confirmed",
        "cov",
        "first_seen_s",
        "hits",
        "last_seen_s",
        "mean",
        "score",
        "track_id",
    )

    def __init__(
        self, track_id: int, measured: np.ndarray, score: float, ts_s: float, confirmed: bool
    ) -> None:
        self.track_id = track_id
        h = measured[3]
        self.mean = np.concatenate([measured, np.zeros(_MEASURED)])  # (8,): cx, cy, a, h, vcx, vcy, va, vh
        position_std = 2 * _MEASURE_STD * h
        speed_std = _INIT_SPEED_STD * h
        std = [position_std, position_std, 2 * _MEASURE_ASPECT_STD, position_std]
        std += [speed_std, speed_std, 2 * _ACCEL_ASPECT_STD, speed_std]
        self.cov = np.diag(np.square(std))  # (8, 8)
        self.score = score
        self.first_seen_s = ts_s
        self.last_seen_s = ts_s
        self.hits = 1
        self.confirmed = confirmed
        self.at_edge = _touches_edge(measured)

    def predict(self, transition: np.ndarray, noise_pattern: np.ndarray, coasting: bool) -> None:
        """Move the estimate one step: transition (8, 8) and noise_pattern (8, 8) come from _motion(dt)."""
        if coasting:
            self.mean[7] = 0.0  # an unseen box keeps its size
        h = self.mean[3]
        accel_std = np.array([_ACCEL_STD * h, _ACCEL_STD * h, _ACCEL_ASPECT_STD, _ACCEL_STD * h] * 2)
        self.mean = transition @ self.mean
        self.cov = transition @ self.cov @ transition.T + np.outer(accel_std, accel_std) * noise_pattern

    def update(self, measured: np.ndarray, score: float, ts_s: float) -> None:
        h = self.mean[3]
        noise = np.square([_MEASURE_STD * h, _MEASURE_STD * h, _MEASURE_ASPECT_STD, _MEASURE_STD * h])
        projected_cov = self.cov[:_MEASURED, :_MEASURED] + np.diag(noise)  # H P H^T + R, (4, 4)
        gain = np.linalg.solve(projected_cov, self.cov[:_MEASURED, :]).T  # P H^T S^-1, (8, 4)
        self.mean = self.mean + gain @ (measured - self.mean[:_MEASURED])
        self.cov = self.cov - gain @ projected_cov @ gain.T
        self.score = score
        self.last_seen_s = ts_s
        self.hits += 1
        self.at_edge = _touches_edge(measured)

    def box(self) -> np.ndarray:
        """(4,) x0, y0, x1, y1 of the current estimate, not clipped."""
        return _xyah_to_box(self.mean[:_MEASURED])

    def margins(self) -> np.ndarray:
        """(2,) x, y match margins: _GATE_STDS standard deviations of the predicted centre."""
        return _GATE_STDS * np.sqrt(self.cov[[0, 1], [0, 1]])

    def snapshot(self) -> Track:
        x0, y0, x1, y1 = np.clip(self.box(), 0.0, 1.0).tolist()
        return Track(
            track_id=self.track_id,
            box=(x0, y0, x1, y1),
            score=self.score,
            first_seen_s=self.first_seen_s,
            last_seen_s=self.last_seen_s,
            hits=self.hits,
            confirmed=self.confirmed,
        )


def _motion(dt_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The constant-velocity transition over dt_s (8, 8), and the pattern (8, 8) of its white-noise-acceleration
    noise: per coordinate [[dt^3/3, dt^2/2], [dt^2/2, dt]] over (position, velocity), to be scaled by the
    acceleration variances (outer product of their standard deviations)."""
    transition = np.eye(8)
    transition[:_MEASURED, _MEASURED:] = dt_s * np.eye(_MEASURED)
    block = np.array([[dt_s**3 / 3, dt_s**2 / 2], [dt_s**2 / 2, dt_s]])  # (pos, vel) x (pos, vel)
    return transition, np.kron(block, np.eye(_MEASURED))


def _box_to_xyah(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) x0, y0, x1, y1 -> (N, 4) centre x, centre y, aspect (w / h), height."""
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    return np.stack(
        [(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2, width / height, height], axis=1
    )


def _xyah_to_box(xyah: np.ndarray) -> np.ndarray:
    cx, cy, aspect, height = xyah.tolist()  # floats: cheaper than numpy on four numbers
    height = max(height, 1e-6)
    width = max(aspect, 1e-6) * height
    return np.array([cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2])


def _touches_edge(xyah: np.ndarray) -> bool:
    x0, y0, x1, y1 = _xyah_to_box(xyah)
    return bool(min(x0, y0) <= _EDGE_TOUCH or max(x1, y1) >= 1.0 - _EDGE_TOUCH)


def _buffered_iou(tracks: np.ndarray, margins: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(T, 4) track boxes with (T, 2) x, y margins, and (B, 4) boxes -> (T, B) IoU of each pair once both of its
    boxes have grown by the track's margins on every side."""
    grow = np.concatenate([-margins, margins], axis=1)  # (T, 4)
    a = (tracks + grow)[:, None, :]  # (T, 1, 4)
    b = boxes[None, :, :] + grow[:, None, :]  # (T, B, 4)
    lo = np.maximum(a[..., :2], b[..., :2])
    hi = np.minimum(a[..., 2:], b[..., 2:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=2)  # (T, B)
    union = np.prod(a[..., 2:] - a[..., :2], axis=2) + np.prod(b[..., 2:] - b[..., :2], axis=2) - inter
    return inter / np.maximum(union, 1e-12)


def _greedy_match(
    tracks: list[_LiveTrack], boxes: np.ndarray, min_iou: float
) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Pairs (track index, box index), best overlap first, each overlapping at least min_iou; then the indices of
    the tracks and of the boxes left unmatched, in order."""
    if not tracks or len(boxes) == 0:
        return [], list(range(len(tracks))), list(range(len(boxes)))
    track_boxes = np.stack([t.box() for t in tracks])  # (T, 4)
    margins = np.stack([t.margins() for t in tracks])  # (T, 2)
    overlap = _buffered_iou(track_boxes, margins, boxes)  # (T, B)
    pairs: list[tuple[int, int]] = []
    used_tracks: set[int] = set()
    used_boxes: set[int] = set()
    for flat in np.argsort(-overlap, axis=None, kind="stable").tolist():  # flat (T, B) indices, best first
        t, b = divmod(flat, overlap.shape[1])
        if overlap[t, b] < min_iou:
            break
        if t not in used_tracks and b not in used_boxes:
            pairs.append((t, b))
            used_tracks.add(t)
            used_boxes.add(b)
    unmatched_tracks = [t for t in range(len(tracks)) if t not in used_tracks]
    unmatched_boxes = [b for b in range(len(boxes)) if b not in used_boxes]
    return pairs, unmatched_tracks, unmatched_boxes


class Tracker:
    """Turns per-step person detections into tracks with stable ids (ByteTrack's method, module docstring).

    ``high_score``: detections at or above it are matched first and may start tracks; those below it only
    continue a track matched at the previous step. ``new_track_score``: the least score that starts a track.
    ``match_iou``: the least overlap between a track's predicted box and a high detection; ``low_match_iou``:
    the same for low detections. ``min_hits``: detections a new track needs, in consecutive steps, to be
    confirmed. ``buffer_s``: how long an unmatched confirmed track lives on, coasting on its prediction.

    Not thread-safe: one tracker per stream, fed from one thread.
    """

    def __init__(
        self,
        high_score: float = 0.5,
        new_track_score: float = 0.6,
        match_iou: float = 0.2,
        low_match_iou: float = 0.5,
        min_hits: int = 2,
        buffer_s: float = 2.0,
    ) -> None:
        if not 0.0 < high_score <= 1.0:
            raise ValueError(f"tracker high_score must be in (0, 1]; got {high_score}")
        if not high_score <= new_track_score <= 1.0:
            raise ValueError(f"tracker new_track_score must be in [high_score, 1]; got {new_track_score}")
        for name, value in (("match_iou", match_iou), ("low_match_iou", low_match_iou)):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"tracker {name} must be in (0, 1]; got {value}")
        if isinstance(min_hits, bool) or not isinstance(min_hits, int) or min_hits < 1:
            raise ValueError(f"tracker min_hits must be an integer >= 1; got {min_hits!r}")
        if not (math.isfinite(buffer_s) and buffer_s >= 0.0):
            raise ValueError(f"tracker buffer_s must be a finite number >= 0; got {buffer_s}")
        self.high_score = float(high_score)
        self.new_track_score = float(new_track_score)
        self.match_iou = float(match_iou)
        self.low_match_iou = float(low_match_iou)
        self.min_hits = min_hits
        self.buffer_s = float(buffer_s)
        self._ids = itertools.count(1)
        self._live: list[_LiveTrack] = []  # every live track, in id order
        self._matched_ids: set[int] = set()  # ids matched at the latest step
        self._last_ts_s: float | None = None

    def reset(self) -> None:
        """Forget every track and the stream clock (ids keep counting up)."""
        self._live = []
        self._matched_ids = set()
        self._last_ts_s = None

    @property
    def tracks(self) -> list[Track]:
        """Every live track, matched at the latest step or coasting within buffer_s, ordered by track_id; a
        coasting track's box is its prediction at the latest step."""
        return [track.snapshot() for track in self._live]

    def update(self, detections: np.ndarray, ts_s: float) -> list[Track]:
        """Feed one detection step, (N, 5) rows [x0, y0, x1, y1, score] with boxes normalised to 0..1, at stream
        time ts_s (seconds, never decreasing; steps may be irregular: the prediction uses the elapsed seconds).
        Returns the tracks matched at this step (visible now), confirmed or not, ordered by track_id. Tracks
        unmatched for longer than buffer_s end."""
        boxes, scores = _check_detections(detections)
        ts_s = self._check_time(ts_s)
        if self._last_ts_s is not None and ts_s > self._last_ts_s:
            transition, noise_pattern = _motion(ts_s - self._last_ts_s)
            for track in self._live:
                track.predict(transition, noise_pattern, coasting=track.track_id not in self._matched_ids)
        self._last_ts_s = ts_s

        measured = _box_to_xyah(boxes)  # (N, 4)
        high = np.flatnonzero(scores >= self.high_score)
        low = np.flatnonzero(scores < self.high_score)
        recent = [t for t in self._live if t.confirmed and t.track_id in self._matched_ids]
        coasting = [t for t in self._live if t.confirmed and t.track_id not in self._matched_ids]
        tentative = [t for t in self._live if not t.confirmed]
        matched: set[int] = set()

        def associate(
            tracks: list[_LiveTrack], candidates: np.ndarray, min_iou: float
        ) -> tuple[list, np.ndarray]:
            """Match candidates (detection indices) to tracks; the tracks and candidates left."""
            pairs, rest_tracks, rest_boxes = _greedy_match(tracks, boxes[candidates], min_iou)
            for t, b in pairs:
                index = int(candidates[b])
                tracks[t].update(measured[index], float(scores[index]), ts_s)
                matched.add(tracks[t].track_id)
            return [tracks[t] for t in rest_tracks], candidates[rest_boxes]

        # 1. high detections: the tracks matched at the previous step choose first, then the coasting ones
        recent_left, high_left = associate(recent, high, self.match_iou)
        _, high_left = associate(coasting, high_left, self.match_iou)
        # 2. low detections only continue a track matched at the previous step
        associate(recent_left, low, self.low_match_iou)
        # 3. the high detections left against tentative tracks
        _, high_left = associate(tentative, high_left, self.match_iou)
        for track in tentative:
            track.confirmed = track.hits >= self.min_hits

        def lives_on(track: _LiveTrack) -> bool:
            if track.track_id in matched:
                return True
            if not track.confirmed:  # a tentative track that missed a step
                return False
            buffer_s = min(self.buffer_s, _EDGE_BUFFER_S) if track.at_edge else self.buffer_s
            return ts_s - track.last_seen_s <= buffer_s

        self._live = [t for t in self._live if lives_on(t)]
        # 4. a confident detection left starts a track
        for index in high_left.tolist():
            if scores[index] >= self.new_track_score:
                track = _LiveTrack(
                    next(self._ids), measured[index], float(scores[index]), ts_s, self.min_hits <= 1
                )
                self._live.append(track)
                matched.add(track.track_id)
        self._matched_ids = matched
        return [t.snapshot() for t in self._live if t.track_id in matched]

    def _check_time(self, ts_s: float) -> float:
        try:
            value = float(ts_s)
        except (TypeError, ValueError):
            raise ValueError(f"tracker update: ts_s must be a number of seconds; got {ts_s!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"tracker update: ts_s must be finite; got {value}")
        if self._last_ts_s is not None and value < self._last_ts_s:
            raise ValueError(
                f"tracker update: ts_s went back from {self._last_ts_s} s to {value} s "
                "(reset() the tracker on a discontinuity)"
            )
        return value


def _check_detections(detections: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) float64 boxes and (N,) scores from an (N, 5) array; a clear ValueError for anything else."""
    if not isinstance(detections, np.ndarray) or detections.ndim != 2 or detections.shape[1] != 5:
        raise ValueError(
            "tracker update: detections must be an (N, 5) array of [x0, y0, x1, y1, score] rows; got "
            f"{type(detections).__name__} of shape {getattr(detections, 'shape', None)}"
        )
    if detections.dtype.kind not in "fiu":
        raise ValueError(f"tracker update: detections must be real numbers; got dtype {detections.dtype}")
    rows = detections.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
    if len(bad):
        raise ValueError(f"tracker update: detection row {bad[0]} is not finite: {rows[bad[0]].tolist()}")
    empty = np.flatnonzero((rows[:, 2] <= rows[:, 0]) | (rows[:, 3] <= rows[:, 1]))
    if len(empty):
        raise ValueError(
            f"tracker update: detection row {empty[0]} has no area (needs x1 > x0 and y1 > y0): "
            f"{rows[empty[0]].tolist()}"
        )
    return rows[:, :4], rows[:, 4]
