"""Pictures of a timeline: ``classify --video-out`` (the video with its labels drawn) and ``--plot`` (a chart).

Both read the timeline as ``classify`` writes it (``Marks.add_line`` takes its JSON lines), so they show exactly
what the timeline says. The video is written in a second pass over the input: every frame carries the label of
the newest clip that had ended by that frame (what a live monitor would have shown at that moment), with its
score; in per-subject mode each person's box and id, at the box of their newest clip, for as long as their clips
keep coming (``hold_s`` after the last one). Same size, frame count and frame rate as the input. The chart is
drawn with OpenCV (no plotting library on an edge box): one row per label that was ever top, a band per clip over
its time span, shaded by score; per-subject clips are banded in their subject's colour.

A timeline from an untrained model (its lines carry ``"untrained": true``) is marked as the live page marks it:
every label drawn on the video reads ``<label> <score> (untrained)``, and the chart's heading, in red, starts
by saying that the labels are meaningless.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from vstmon.errors import VstmonError

__all__ = [
    "UNTRAINED_HEADING",
    "UNTRAINED_SUFFIX",
    "Mark",
    "Marks",
    "draw_timeline",
    "subject_starts",
    "timeline_heading",
    "write_annotated_video",
]

_FONT = cv2.FONT_HERSHEY_SIMPLEX
RESET_BGR = (40, 40, 220)  # segment starts on the chart (red)
UNTRAINED_BGR = (0, 0, 200)  # the chart's "untrained" warning (red)
UNTRAINED_SUFFIX = " (untrained)"  # after every score drawn from an untrained model, as on the live page
UNTRAINED_HEADING = "UNTRAINED model: labels are meaningless"


@dataclass(frozen=True)
class Mark:
    """One clip of the timeline: where it ends (frame and seconds), its top label, score, subject and box."""

    last_frame: int
    start_s: float
    end_s: float
    label: str
    score: float
    subject: str | None = None
    box: tuple[float, float, float, float] | None = None


@dataclass
class Marks:
    """The clips of one timeline, in the order written; ``untrained`` once any line says its model was."""

    items: list[Mark] = field(default_factory=list)
    untrained: bool = False

    def add_line(self, line: str) -> None:
        data = json.loads(line)
        self.untrained = self.untrained or bool(data.get("untrained"))
        top = data["top"][0]
        box = data.get("box")
        self.items.append(
            Mark(
                int(data["last_frame"]),
                float(data["start_s"]),
                float(data["end_s"]),
                str(top["label"]),
                float(top["score"]),
                data.get("subject"),
                tuple(box) if box else None,
            )
        )


def _colour(key: str) -> tuple[int, int, int]:
    """A stable, saturated BGR colour for a name."""
    hue = sum(ord(c) * 131**i for i, c in enumerate(key)) % 180
    hsv = np.array([[[hue, 200, 230]]], np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def _text(
    image: np.ndarray, text: str, org: tuple[int, int], scale: float, colour: tuple[int, int, int]
) -> None:
    """Text on a dark box, readable on any picture; ``org`` is the box's top-left corner (kept inside the image)."""
    thickness = max(1, round(scale * 1.5))
    (w, h), base = cv2.getTextSize(text, _FONT, scale, thickness)
    x = min(max(0, org[0]), max(0, image.shape[1] - w - 4))
    y = min(max(0, org[1]), max(0, image.shape[0] - h - base - 4))
    cv2.rectangle(image, (x, y), (x + w + 4, y + h + base + 4), (0, 0, 0), -1)
    cv2.putText(image, text, (x + 2, y + h + 2), _FONT, scale, colour, thickness, cv2.LINE_AA)


def write_annotated_video(source: Path, out: Path, marks: Marks, hold_s: float = 2.0) -> int:
    """Write ``out`` (mp4v) from ``source`` with the labels drawn; returns the frames written."""
    capture = cv2.VideoCapture(str(source), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        raise VstmonError(f"{source}: cannot be opened again to draw the labels")
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if math.isfinite(fps) and 0 < fps <= 1000 else 25.0
    whole = [m for m in marks.items if m.subject is None]
    people = [m for m in marks.items if m.subject is not None]
    whole.sort(key=lambda m: m.last_frame)
    ends = [m.last_frame for m in whole]
    by_subject: dict[str, list[Mark]] = {}
    for mark in people:
        by_subject.setdefault(mark.subject or "", []).append(mark)
    for items in by_subject.values():
        items.sort(key=lambda m: m.last_frame)
    suffix = UNTRAINED_SUFFIX if marks.untrained else ""
    writer: cv2.VideoWriter | None = None
    part = out.with_name(out.name + ".part.mp4")
    written = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            height, width = frame.shape[:2]
            if writer is None:
                writer = cv2.VideoWriter(str(part), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
                if not writer.isOpened():
                    raise VstmonError(f"{out}: cannot be written (mp4v)")
            scale = max(0.5, min(width, height) / 600)  # text size for the frame's resolution
            small = max(0.4, scale * 0.7)
            at = bisect_right(ends, written) - 1
            if at >= 0:
                mark = whole[at]
                _text(frame, f"{mark.label}  {mark.score:.2f}{suffix}", (4, 4), scale, (255, 255, 255))
            for subject, items in by_subject.items():
                index = bisect_right([m.last_frame for m in items], written) - 1
                if (
                    index < 0
                    or (written - items[index].last_frame) / fps > hold_s
                    or items[index].box is None
                ):
                    continue
                mark = items[index]
                x0, y0, x1, y1 = (
                    int(v * s) for v, s in zip(mark.box, (width, height, width, height), strict=True)
                )
                colour = _colour(subject)
                cv2.rectangle(frame, (x0, y0), (x1, y1), colour, max(2, round(scale * 2)))
                _text(
                    frame,
                    f"{subject}: {mark.label} {mark.score:.2f}{suffix}",
                    (x0, y0 - int(24 * small)),  # just above the box (inside it at the top edge)
                    small,
                    colour,
                )
            writer.write(frame)
            written += 1
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if written == 0:
        part.unlink(missing_ok=True)
        raise VstmonError(f"{source}: no frame could be read again to draw the labels")
    part.replace(out)
    return written


def draw_timeline(marks: Marks, out: Path, size_px: tuple[int, int] = (1200, 400), title: str = "") -> None:
    """Draw the timeline chart into ``out``, a PNG of exactly ``size_px`` (width, height); as many label rows as
    fit at 14 px or more each (the labels with the most time first)."""
    width_px, height = size_px
    if not marks.items:
        raise VstmonError(
            f"{out}: nothing to plot: the timeline has no clip (is the video shorter than a clip?)"
        )
    seconds: dict[str, float] = {}
    for mark in marks.items:
        seconds[mark.label] = seconds.get(mark.label, 0.0) + (mark.end_s - mark.start_s)
    top, bottom = 34, 34
    fits = max(1, (height - top - bottom) // 14)
    rows = sorted(seconds, key=lambda label: -seconds[label])[:fits]
    row_px = min(40, (height - top - bottom) // len(rows))
    row_of = {label: i for i, label in enumerate(rows)}
    end_s = max(m.end_s for m in marks.items)
    start_s = min(m.start_s for m in marks.items)  # the chart's left edge (x_of reads it)
    label_w = min(260, max(cv2.getTextSize(r, _FONT, 0.45, 1)[0][0] for r in rows) + 16)
    plot_w = width_px - label_w - 16
    image = np.full((height, width_px, 3), 255, np.uint8)
    span = max(end_s - start_s, 1e-6)

    def x_of(t: float) -> int:
        return label_w + int((t - start_s) / span * plot_w)

    for i, label in enumerate(rows):
        y = top + i * row_px
        if i % 2:
            cv2.rectangle(image, (label_w, y), (label_w + plot_w, y + row_px - 1), (246, 246, 246), -1)
        shown = label if len(label) <= 32 else label[:31] + "~"
        cv2.putText(image, shown, (6, y + row_px // 2 + 5), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for mark in marks.items:
        row = row_of.get(mark.label)
        if row is None:
            continue
        y = top + row * row_px
        base = _colour(mark.subject) if mark.subject else (200, 120, 40)
        shade = tuple(int(255 - (255 - c) * (0.25 + 0.75 * mark.score)) for c in base)
        cv2.rectangle(
            image,
            (x_of(mark.start_s), y + 3),
            (max(x_of(mark.end_s), x_of(mark.start_s) + 1), y + row_px - 4),
            shade,
            -1,
        )
    axis_y = top + row_px * len(rows) + 2
    for first_s in subject_starts(marks):  # per subject: a new person's first clip opens their segment
        cv2.line(image, (x_of(first_s), top), (x_of(first_s), axis_y), RESET_BGR, 1)
    cv2.line(image, (label_w, axis_y), (label_w + plot_w, axis_y), (0, 0, 0), 1)
    step = _tick_step(span)
    tick = math.ceil(start_s / step) * step
    while tick <= end_s + 1e-9:
        x = x_of(tick)
        cv2.line(image, (x, axis_y), (x, axis_y + 5), (0, 0, 0), 1)
        cv2.putText(image, f"{tick:g} s", (x - 12, axis_y + 20), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        tick += step
    colour = UNTRAINED_BGR if marks.untrained else (0, 0, 0)  # an untrained model's chart says so in red
    cv2.putText(image, timeline_heading(marks, title), (6, 22), _FONT, 0.55, colour, 1, cv2.LINE_AA)
    if not cv2.imwrite(str(out), image):
        raise VstmonError(f"{out}: the plot could not be written (a .png path in a writable folder?)")


def timeline_heading(marks: Marks, title: str = "") -> str:
    """The chart's heading: ``title`` (or what the chart shows), after ``UNTRAINED_HEADING`` for an untrained
    model's timeline (drawn in red, first, so that a narrow chart cannot cut it off)."""
    heading = title or f"top label per clip ({len(marks.items)} clips; darker = higher score)"
    if any(m.subject for m in marks.items):
        heading += "; red: a new subject"
    return f"{UNTRAINED_HEADING}; {heading}" if marks.untrained else heading


def subject_starts(marks: Marks) -> list[float]:
    """Start times of each subject's first clip (the segment resets of per-subject mode; none in whole-frame mode,
    where ``classify`` runs no reset detector)."""
    first: dict[str, float] = {}
    for mark in marks.items:
        if mark.subject is not None:
            first[mark.subject] = min(first.get(mark.subject, mark.start_s), mark.start_s)
    return sorted(first.values())


def _tick_step(span_s: float) -> float:
    """A round tick spacing giving 5-12 ticks over ``span_s``."""
    raw = span_s / 8
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return factor * power
    return 10 * power
