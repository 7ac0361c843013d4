"""Training data: which videos, which class, which split.

``DATA_DIR`` is a folder with one sub-folder per class (``DATA_DIR/<class>/*.mp4``), or a CSV / JSON-lines list
of ``path,label[,start_s,end_s]`` (paths relative to the list's folder). Classes are sorted by name, so the
index of a class is the same for everyone who has the same class names. Every video is opened and its first
frame decoded once (``probe``), in threads (OpenCV decodes without the GIL): a video that cannot be read is
skipped and listed, and the run goes on.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vstmon.errors import VstmonError

__all__ = [
    "DataError",
    "Dataset",
    "Video",
    "VideoEntry",
    "list_entries",
    "load_dataset",
    "probe",
    "stratified_split",
]

_LIST_SUFFIXES = (".csv", ".jsonl", ".json")


class DataError(VstmonError):
    """The training or evaluation data cannot be used (names the file or folder and what is wrong)."""


@dataclass(frozen=True)
class VideoEntry:
    """One labelled video, or a time range of one (``start_s``/``end_s``, seconds)."""

    path: Path
    label: str
    start_s: float | None = None
    end_s: float | None = None


@dataclass(frozen=True)
class Video:
    """A readable video: its class index and the frames to sample from, ``[first, first + frames)``."""

    path: Path
    label: int
    first: int
    frames: int
    fps: float

    def as_json(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "label": self.label,
            "first": self.first,
            "frames": self.frames,
            "fps": self.fps,
        }


@dataclass(frozen=True)
class Dataset:
    classes: list[str]
    videos: list[Video]
    skipped: list[tuple[Path, str]]  # (file, why)


def _float_or_none(value: object, where: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"{where}: {value!r} is not a number of seconds") from None
    if not math.isfinite(number) or number < 0:
        raise DataError(f"{where}: {value!r} is not a time in seconds (finite, >= 0)")
    return number


def _entry(row: dict[str, object], base: Path, where: str) -> VideoEntry:
    path, label = row.get("path"), row.get("label")
    if not isinstance(path, str) or not path:
        raise DataError(f"{where}: no path")
    if label is None or str(label).strip() == "":
        raise DataError(f"{where}: no label")
    start_s = _float_or_none(row.get("start_s"), f"{where}: start_s")
    end_s = _float_or_none(row.get("end_s"), f"{where}: end_s")
    if start_s is not None and end_s is not None and end_s <= start_s:
        raise DataError(f"{where}: end_s ({end_s}) must be after start_s ({start_s})")
    full = Path(path) if Path(path).is_absolute() else base / path
    return VideoEntry(full, str(label).strip(), start_s, end_s)


def _from_csv(path: Path) -> list[VideoEntry]:
    entries = []
    with path.open(newline="", encoding="utf-8") as file:
        for number, row in enumerate(csv.reader(file), start=1):
            if (
                not row
                or row[0].startswith("#")
                or (number == 1 and [c.strip() for c in row[:2]] == ["path", "label"])
            ):
                continue
            if len(row) not in (2, 4):
                raise DataError(
                    f"{path}:{number}: expected path,label or path,label,start_s,end_s; got {len(row)} fields"
                )
            fields = dict(zip(("path", "label", "start_s", "end_s"), (c.strip() for c in row), strict=False))
            entries.append(_entry(fields, path.parent, f"{path}:{number}"))  # type: ignore[arg-type]
    return entries


def _from_jsonl(path: Path) -> list[VideoEntry]:
    entries = []
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected an object with path and label")
            entries.append(_entry(row, path.parent, f"{path}:{number}"))
    return entries


def list_entries(data: Path) -> list[VideoEntry]:
    """The labelled videos of a class folder tree or a list file (not yet opened)."""
    if data.is_file():
        if data.suffix.lower() == ".csv":
            return _from_csv(data)
        if data.suffix.lower() in (".jsonl", ".json"):
            return _from_jsonl(data)
        raise DataError(f"{data}: a data list must be .csv or .jsonl (path,label[,start_s,end_s])")
    if not data.is_dir():
        raise DataError(f"{data}: no such folder or list file")
    entries = []
    for class_dir in sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(f for f in class_dir.rglob("*") if f.is_file() and not f.name.startswith(".")):
            entries.append(VideoEntry(file, class_dir.name))
    if not entries:
        raise DataError(f"{data}: no videos: expected one folder per class, e.g. {data}/<class>/clip.mp4")
    return entries


def _count_frames(capture: cv2.VideoCapture) -> int:
    count = 1  # the first frame was read already
    while capture.grab():
        count += 1
    return count


def probe(entry: VideoEntry) -> tuple[int, int, float] | str:
    """(first frame, frame count, fps) of an entry, or why it cannot be used."""
    if not entry.path.is_file():
        return "no such file"
    capture = cv2.VideoCapture(str(entry.path), cv2.CAP_FFMPEG)
    try:
        if not capture.isOpened():
            return "cannot be opened as a video"
        ok, frame = capture.read()
        if not ok or frame is None:
            return "no frame could be decoded"
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = fps if math.isfinite(fps) and 0 < fps <= 1000 else 25.0
        reported = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        # the container's count can be missing or wrong: decode to the end when it looks implausible
        count = reported if 0 < reported < 10_000_000 else _count_frames(capture)
    finally:
        capture.release()
    first = round(entry.start_s * fps) if entry.start_s is not None else 0
    last = min(count, round(entry.end_s * fps)) if entry.end_s is not None else count
    if first >= count:
        return f"start_s {entry.start_s} is past the end ({count / fps:.2f} s)"
    if last <= first:
        return f"the range {entry.start_s}-{entry.end_s} s holds no frame"
    return first, last - first, fps


def load_dataset(
    data: Path, classes: Sequence[str] | None = None, threads: int | None = None, min_per_class: int = 1
) -> Dataset:
    """List and probe every video of ``data``; ``classes`` fixes the class list (evaluation of a trained model).

    Raises DataError for an empty set, a single class (training), a class with fewer than ``min_per_class``
    readable videos, or (with ``classes``) a class the model does not know.
    """
    entries = list_entries(data)
    names = sorted({e.label for e in entries})
    if classes is None:
        if len(names) < 2:
            raise DataError(f"{data}: one class only ({names[0]!r}); a classifier needs at least two")
        classes = names
    else:
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise DataError(
                f"{data}: classes the model does not know: {', '.join(unknown)} (its labels: {', '.join(classes[:8])}{' ...' if len(classes) > 8 else ''})"
            )
    index = {name: i for i, name in enumerate(classes)}
    workers = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(probe, entries))
    videos, skipped = [], []
    for entry, result in zip(entries, results, strict=True):
        if isinstance(result, str):
            skipped.append((entry.path, result))
        else:
            first, frames, fps = result
            videos.append(Video(entry.path, index[entry.label], first, frames, fps))
    counts = np.bincount([v.label for v in videos], minlength=len(classes))
    short = [
        f"{classes[i]} ({counts[i]})"
        for i in range(len(classes))
        if classes[i] in names and counts[i] < min_per_class
    ]
    if short:
        raise DataError(
            f"{data}: too few readable videos in: {', '.join(short)}; each class needs at least {min_per_class}"
            + (f" ({len(skipped)} unreadable file(s) were skipped)" if skipped else "")
        )
    return Dataset(list(classes), videos, skipped)


def stratified_split(
    videos: Sequence[Video], val_fraction: float, seed: int
) -> tuple[list[Video], list[Video]]:
    """(train, val): per class, a seeded shuffle, then ``round(n * val_fraction)`` (at least 1, leaving at least
    1 for training when the fraction is above 0) videos go to validation."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in sorted({v.label for v in videos}):
        members = [v for v in videos if v.label == label]
        order = rng.permutation(len(members))
        n_val = 0
        if val_fraction > 0 and len(members) > 1:
            n_val = min(len(members) - 1, max(1, round(len(members) * val_fraction)))
        for rank, i in enumerate(order):
            (val if rank < n_val else train).append(members[i])
    return train, val


def report_skipped(skipped: Sequence[tuple[Path, str]], say: Callable[[str], None]) -> None:
    if skipped:
        say(f"skipped {len(skipped)} unreadable video(s):")
        for path, why in skipped:
            say(f"  {path}: {why}")
