"""Per-stream state: segment and subject, smoothing, the reset protocol, and the messages they produce.

One ``SegmentState`` per stream. Results come in from the engine thread while resets come from the control
thread or the stream's worker, so every public method takes the instance lock; messages are published while the
lock is held, so a stream's ``label``/``segment``/``reset`` messages always leave in a consistent order (the
publisher never blocks, so holding the lock there is cheap).

Messages are the body models of ``vstmon.wire.protocol`` (formats: docs/PROTOCOL.md); the publisher adds the
envelope.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from vstmon.config import SmoothingConfig
from vstmon.log import get_logger
from vstmon.types import Clip, ClipResult, ResetReason
from vstmon.wire.protocol import (
    Body,
    ClipInfo,
    LabelBody,
    ResetBody,
    Score,
    SegmentBody,
    SegmentLabel,
    SubjectBody,
)

__all__ = ["SegmentState"]


_log = get_logger("state")


class SegmentState:
    """Segment/subject state of one stream; turns ``ClipResult``s into ``label`` messages and performs resets.

    - ``segment`` starts at 1 and is +1 on every ``reset``; ``subject`` is an optional string id.
    - Smoothing covers the last ``smoothing.window_clips`` results of the current segment only:
      ``mean`` = plain mean of their probabilities; ``ema`` = exponentially weighted mean with weights
      ``alpha * (1 - alpha) ** age`` (age 0 = newest) over that window, renormalised to sum to 1
      (so the first clip of a segment is smoothed to itself).
    - Segment statistics: each published clip adds ``end_stream_s - previous clip's end_stream_s`` seconds
      (for the first clip of the segment: its own span ``end_stream_s - start_stream_s``) to the label that is
      top of the *smoothed* scores in that message, and one to that label's ``clips``. The seconds of a
      segment therefore add up to the stream time covered by its clips (stream clock, so a file read faster
      than real time reports seconds of video).
    """

    def __init__(
        self,
        stream: str,
        smoothing: SmoothingConfig,
        labels: list[str],
        top_k: int,
        model_id: str,
        untrained: bool = False,
        publish: Callable[[str, Body], object] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        first_segment: int = 1,
    ) -> None:
        if not labels:
            raise ValueError(f"stream {stream}: the label list is empty")
        self.stream = stream
        self._labels = list(labels)
        self._num_classes = len(self._labels)
        self._top_k = max(1, min(int(top_k), self._num_classes))
        self._model_id = model_id
        self._untrained = bool(untrained)
        self._publish = publish if publish is not None else (lambda topic, body: None)
        self._clock = clock
        self._monotonic = monotonic
        self._method = smoothing.method
        window = smoothing.window_clips
        self._window = np.zeros((window, self._num_classes), dtype=np.float64)  # (K, C) ring of probabilities
        alpha = smoothing.ema_alpha
        self._ema_weights = alpha * (1.0 - alpha) ** np.arange(window, dtype=np.float64)  # (K,) by age
        self._lock = threading.Lock()
        self._segment = first_segment  # 1, or where a restarted host picks up (announce says why)
        self._subject: str | None = None
        self._box: tuple[float, float, float, float] | None = None  # per-subject mode: where the subject is
        self._closed = False
        self._min_generation = -(2**62)
        self.clips_total = 0  # label messages published, all segments
        self.results_discarded = 0  # results of an old segment (never published)
        self.clips_rejected = 0  # clips refused by accept_clip (cut before the last reset)
        self._clear_segment(self._clock())

    # -- properties -------------------------------------------------------------------------------------------
    @property
    def segment(self) -> int:
        with self._lock:
            return self._segment

    @property
    def subject(self) -> str | None:
        with self._lock:
            return self._subject

    # -- the flow -------------------------------------------------------------------------------------------
    def accept_clip(self, clip: Clip) -> bool:
        """Stamp ``clip.segment`` with the current segment (call before submitting it to the engine).

        Returns False (and counts it) for a clip cut from a ring-buffer generation older than the one
        given to the last ``reset(min_generation=...)``: its frames predate the reset.
        """
        with self._lock:
            if self._closed or clip.generation < self._min_generation:
                self.clips_rejected += 1
                return False
            clip.segment = self._segment
            return True

    def on_result(self, result: ClipResult) -> bool:
        """Publish ``label.<stream>`` for a result of the current segment; True when published.

        Results of an older segment (cut before a reset) are discarded and counted, never published.
        """
        clip = result.clip
        with self._lock:
            if self._closed or clip.segment != self._segment:
                self.results_discarded += 1
                return False
            probs = np.asarray(result.probs, dtype=np.float64).reshape(-1)  # (C,)
            if probs.shape[0] != self._num_classes or not np.all(np.isfinite(probs)):
                self.results_discarded += 1
                _log.error(
                    "result discarded: bad probabilities",
                    stream=self.stream,
                    classes=int(probs.shape[0]),
                    expected=self._num_classes,
                )
                return False
            smoothed = self._push(probs)
            top = self._top(probs)
            smoothed_top = self._top(smoothed)
            self._count_segment(clip, smoothed_top[0].index)
            label = LabelBody(
                segment=self._segment,
                subject=self._subject,
                clip=ClipInfo(
                    start_ts=float(clip.start_ts),
                    end_ts=float(clip.end_ts),
                    first_frame=int(clip.first_frame),
                    last_frame=int(clip.last_frame),
                    frames=len(clip.frames),
                ),
                top=top,
                smoothed=smoothed_top,
                latency_ms=(self._monotonic() - clip.ready_mono_s) * 1000.0,
                model=self._model_id,
                box=_rounded_box(clip.box),
                untrained=self._untrained,
            )
            self.clips_total += 1
            self._send(f"label.{self.stream}", label)
            return True

    def reset(
        self,
        reason: str,
        subject: str | None = None,
        keep_subject: bool = False,
        ts: float | None = None,
        min_generation: int | None = None,
    ) -> int:
        """Close the current segment and open the next one; returns the new segment number.

        Publishes ``segment.<stream>`` (summary of the closed segment) then ``reset.<stream>``, and clears the
        smoothing window. The new subject is ``subject`` when given, else the old one if ``keep_subject``,
        else null. ``ts`` (unix seconds, default now) is when the old segment ended and the new one starts;
        ``min_generation`` makes ``accept_clip`` refuse clips cut from older ring-buffer generations.
        """
        try:
            reason = ResetReason(reason)
        except ValueError:
            known = ", ".join(r.value for r in ResetReason)
            raise ValueError(f"unknown reset reason {reason!r} (one of {known})") from None
        if subject is not None and not isinstance(subject, str):
            raise ValueError(f"subject must be a string or null, got {type(subject).__name__}")
        with self._lock:
            now = self._clock() if ts is None else float(ts)
            summary = self._summary(now)
            previous = self._segment
            self._segment += 1
            if subject is not None:
                self._subject = subject
            elif not keep_subject:
                self._subject = None
            if min_generation is not None:
                self._min_generation = max(self._min_generation, int(min_generation))
            self._clear_segment(now)
            self._send(f"segment.{self.stream}", summary)
            self._send(f"reset.{self.stream}", self._reset_body(previous, reason))
            return self._segment

    def close(self, ts: float | None = None) -> None:
        """The subject of this state is gone (per-subject mode): publish its last ``segment`` summary; from now on
        clips are refused and results discarded (``closed``)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._send(f"segment.{self.stream}", self._summary(self._clock() if ts is None else float(ts)))

    @property
    def closed(self) -> bool:
        return self._closed

    def set_box(self, box: tuple[float, float, float, float] | None) -> None:
        """Where the subject is now (per-subject mode): carried by this state's ``reset`` and ``segment``."""
        with self._lock:
            self._box = box

    def announce_start(self, reason: ResetReason = ResetReason.START) -> None:
        """Publish ``reset.<stream>`` for the current segment: reason ``start`` (``previous_segment`` 0) once when
        the stream starts, or ``worker_restart`` when a restarted worker process picks the stream up at segment
        N + 1 (``previous_segment`` N: the one that ended with the process). No ``segment`` summary precedes it.
        """
        with self._lock:
            previous = 0 if reason == ResetReason.START else self._segment - 1
            self._send(f"reset.{self.stream}", self._reset_body(previous, str(reason)))

    def subject_event(
        self,
        event: str,
        subject: str | None,
        previous: str | None,
        box: tuple[float, float, float, float] | None,
        score: float | None,
        people: int,
    ) -> None:
        """Publish ``subject.<stream>``: a subject entered, changed or left (after the reset it caused)."""
        with self._lock:
            self._send(
                f"subject.{self.stream}",
                SubjectBody(
                    event=event,
                    segment=self._segment,
                    subject=subject,
                    previous=previous,
                    box=_rounded_box(box),
                    score=None if score is None else round(float(score), 4),
                    people=int(people),
                ),
            )

    def set_subject(self, subject: str | None) -> None:
        """Change the subject id without starting a new segment."""
        with self._lock:
            self._subject = subject

    def snapshot(self) -> dict[str, Any]:
        """``segment``, ``subject``, ``clips`` (this segment), ``clips_total``, ``results_discarded``."""
        with self._lock:
            return {
                "segment": self._segment,
                "subject": self._subject,
                "box": _rounded_box(self._box),
                "clips": self._seg_clips,
                "clips_total": self.clips_total,
                "results_discarded": self.results_discarded,
            }

    # -- internals (lock held) ---------------------------------------------------------------------------------
    def _clear_segment(self, start_ts: float) -> None:
        self._count = 0  # results in the window (<= K)
        self._head = 0  # next row of the window to write
        self._seg_start_ts = start_ts
        self._seg_clips = 0
        self._seg_label_clips: dict[int, int] = {}
        self._seg_label_seconds: dict[int, float] = {}
        self._prev_end_stream_s: float | None = None

    def _push(self, probs: np.ndarray) -> np.ndarray:
        window_clips = self._window.shape[0]
        self._window[self._head] = probs
        self._head = (self._head + 1) % window_clips
        self._count = min(self._count + 1, window_clips)
        n = self._count
        if self._method == "mean":
            return self._window[:n].mean(axis=0) if n < window_clips else self._window.mean(axis=0)
        rows = (self._head - 1 - np.arange(n)) % window_clips  # newest first
        weights = self._ema_weights[:n]
        return (weights @ self._window[rows]) / weights.sum()  # (C,)

    def _top(self, scores: np.ndarray) -> tuple[Score, ...]:
        order = np.argsort(-scores, kind="stable")[: self._top_k]
        return tuple(Score(label=self._labels[i], index=int(i), score=float(scores[i])) for i in order)

    def _count_segment(self, clip: Clip, top_index: int) -> None:
        if self._prev_end_stream_s is None:
            seconds = clip.end_stream_s - clip.start_stream_s
        else:
            seconds = clip.end_stream_s - self._prev_end_stream_s
        self._prev_end_stream_s = clip.end_stream_s
        self._seg_clips += 1
        self._seg_label_clips[top_index] = self._seg_label_clips.get(top_index, 0) + 1
        self._seg_label_seconds[top_index] = self._seg_label_seconds.get(top_index, 0.0) + max(0.0, seconds)

    def _summary(self, end_ts: float) -> SegmentBody:
        order = sorted(
            self._seg_label_clips, key=lambda i: (-self._seg_label_seconds[i], -self._seg_label_clips[i], i)
        )
        return SegmentBody(
            segment=self._segment,
            subject=self._subject,
            box=_rounded_box(self._box),
            start_ts=self._seg_start_ts,
            end_ts=end_ts,
            clips=self._seg_clips,
            labels=tuple(
                SegmentLabel(
                    label=self._labels[i],
                    index=i,
                    clips=self._seg_label_clips[i],
                    seconds=self._seg_label_seconds[i],
                )
                for i in order
            ),
        )

    def _reset_body(self, previous: int, reason: str) -> ResetBody:
        return ResetBody(
            segment=self._segment,
            previous_segment=previous,
            subject=self._subject,
            box=_rounded_box(self._box),
            reason=reason,
        )

    def _send(self, topic: str, body: Body) -> None:
        try:
            self._publish(topic, body)
        except Exception as error:  # a publishing bug must not break the engine or control thread
            _log.exception("publish callback failed", stream=self.stream, topic=topic, error=str(error))


def _rounded_box(box: tuple[float, float, float, float] | None) -> tuple[float, float, float, float] | None:
    """A normalised box for a message: (x0, y0, x1, y1) in 0..1, 4 decimals (0.1 px at 1000 px)."""
    if box is None:
        return None
    x0, y0, x1, y1 = (round(min(1.0, max(0.0, float(v))), 4) for v in box)
    return (x0, y0, x1, y1)
