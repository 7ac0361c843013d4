"""``vstmon classify VIDEO``: classify a whole video file offline into a JSON-lines timeline.

The offline pipeline reuses the daemon's parts, single-threaded and lossless:
sequential ``cv2.VideoCapture`` read -> ``FrameFitter`` into a ``RingBuffer`` slot -> ``ClipSampler`` (the same
stream-clock clip rules as live streams) -> batches of ``--batch`` clips -> ``normalize_clips`` on the device ->
model under ``torch.inference_mode`` -> softmax -> one JSON line per clip, written as soon as its batch is done::

    {"clip": 0, "start_s": 0.0, "end_s": 2.48, "first_frame": 0, "last_frame": 62, "frames": 32,
     "top": [{"label": "juggling balls", "index": 166, "score": 0.91}, ...]}

``start_s``/``end_s`` are the stream times of the clip's first and last frames; ``first_frame``/``last_frame``
their 0-based indices in the file; ``frames`` the clip length T. Lines of an untrained model carry
``"untrained": true``.

The model comes from ``load_model_and_labels``, as in the daemon: the same config gives the same model
(``checkpoint: null`` -> untrained, seeded weights; ``arch: auto`` -> swin_t then). Flags override the config.
The clip shape is, key by key, the flag's, the config file's own ``clip`` key, the shape a ``vstmon train``
checkpoint records in its ``meta``, or the default (``with_clip_flags``, ``with_trained_clip``).
The video is opened and its first frame decoded before the model is loaded, so a bad input fails at once.
``--out FILE`` is written through a temporary file beside it (``FILE.<random>.part``, one line per clip as its
batch is done) that replaces FILE only when the whole video is classified: FILE is never left partial or empty.

Memory is constant whatever the video's length: a ring of one clip span (+2) frames at the crop size, one
(batch, T, S, S, 3) uint8 host buffer, nothing kept per clip (lines are streamed to the output). Batching
gains almost no speed on a CPU and multiplies the forward pass's activation memory, so ``--batch`` defaults
to 1 there and to ``inference.max_batch`` on CUDA (``default_batch``).
Stream clock: ``CAP_PROP_POS_MSEC`` while it is sane (finite and increasing), otherwise index / fps.

Per-subject mode (``--subjects``, or ``subjects.mode: per_subject`` in the config; ``classify_subjects``) gives
every tracked person who counts a timeline of their own, as the daemon's per-subject mode does. The video is
still read once: on the stream-clock grid of ``subjects.detect_fps`` the whole frame, squeezed to the detector's
300x300 input (``DetectionFrames``, as the daemon's source), goes to the ``PersonDetector``, the ``Tracker`` and
``SubjectSlots`` (a person counts once tracked for ``confirm_s``; at most ``max_subjects`` at a time, largest
boxes first). Every frame is then cropped around each slot's box (held between detections; ``crop_margin``, made
square, clamped to the frame, cut from the frame at its own resolution) into that slot's ring, and each slot's
``ClipSampler`` cuts clips from its crops with the same rules as for whole frames; a slot whose person ends and
goes to someone else restarts its sampler on an empty ring, so a clip never mixes two people. Clips of all
people share the batches. One line per subject clip, in the order clips complete, with the whole-frame fields
plus the subject and their box at the clip's last frame (normalised to the frame, 4 decimals)::

    {"clip": 7, "subject": "walkway-3", "box": [0.4123, 0.2051, 0.4870, 0.5112], "start_s": 1.2, ...}

Subject ids are ``<video file stem>-<track id>`` (the stem plays the daemon's stream name: ``walkway.mp4`` gives
``walkway-3``; ``video-3`` when the name has no stem); track ids count from 1 in the order people are first
tracked. Memory is constant whatever the video's length: ``max_subjects`` rings of one clip span (+2) crops,
one detection frame, the host batch buffer, and tracks only for the people in view.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import cv2
import numpy as np
import torch
from pydantic import ValidationError
from torch import nn
from tqdm import tqdm

import vstmon.ingest.capture  # noqa: F401  (imported for its process-wide FFmpeg/OpenCV log settings)
from vstmon.annotate import Marks, draw_timeline, write_annotated_video
from vstmon.check import preflight
from vstmon.config import ClipConfig, Config, ModelConfig, SubjectsConfig, load_config
from vstmon.errors import CheckpointError, ConfigError, SourceError, VstmonError
from vstmon.ingest.crops import CropFitter, square_crop_px
from vstmon.ingest.detection_frames import DetectionFrames
from vstmon.ingest.ring import RingBuffer
from vstmon.ingest.sampler import ClipSampler
from vstmon.log import configure_logging, get_logger
from vstmon.model.bundle import load_model_and_labels
from vstmon.model.checkpoint import read_meta
from vstmon.preprocess import FrameFitter, normalize_clips
from vstmon.runner import resolve_dtype
from vstmon.subjects.detector import PersonDetector
from vstmon.subjects.slots import SubjectSlots
from vstmon.subjects.tracker import Tracker
from vstmon.types import Box, Clip, FrameMeta

__all__ = [
    "ClassifyResult",
    "TimelineOutput",
    "VideoFile",
    "add_arguments",
    "build_detector",
    "classify_subjects",
    "classify_video",
    "default_batch",
    "open_video",
    "run",
    "subject_prefix",
    "trained_clip",
    "with_clip_flags",
    "with_trained_clip",
]

_log = get_logger(__name__)
_DEFAULT_FPS = 25.0  # when the container reports none
_MODEL_FLAGS = ("checkpoint", "arch", "labels", "device", "precision")  # flags that override config.model
_CLIP_FLAGS = {"frames": "frames", "frame_interval": "frame_interval", "size": "size_px"}  # flag -> clip key


@dataclass(slots=True)
class ClassifyResult:
    """What a ``classify_video`` run did."""

    clips: int
    frames_read: int
    seconds: float
    cpu_s: float  # CPU time of the whole process (all threads) during the run
    ring_nbytes: int  # the fixed memory of the clip ring(s): one per subject slot in per-subject mode
    clips_skipped: int
    subjects: int = 0  # per-subject mode: people who got clips of their own
    detections: int = 0  # per-subject mode: frames the person detector ran on


@dataclass(slots=True)
class VideoFile:
    """An open video file whose first frame is decoded (``first_frame``, at ``first_msec`` on its clock).

    ``capture`` is positioned after the first frame. Close it with ``close()`` (or use it in ``with``).
    """

    path: Path
    capture: cv2.VideoCapture
    fps: float
    frame_count: int  # 0 when the container does not say
    first_frame: np.ndarray
    first_msec: float

    def close(self) -> None:
        self.capture.release()

    def __enter__(self) -> VideoFile:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", type=Path, help="video file to classify")
    parser.add_argument("--config", type=Path, help="config file (its model and clip sections give defaults)")
    parser.add_argument("--out", type=Path, help="write the JSON-lines timeline here (default: stdout)")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint file (default: model.checkpoint)")
    parser.add_argument("--arch", help="swin_t|swin_s|swin_b|swin_l[_sthv2] or auto (default: model.arch)")
    parser.add_argument("--labels", help="kinetics400, sthv2 or a labels file (default: model.labels)")
    parser.add_argument("--hop-s", type=float, help="seconds of video between clips (default: clip.hop_s)")
    parser.add_argument(
        "--frames",
        type=int,
        help="frames per clip (default: clip.frames if the config sets it, else as the checkpoint was trained)",
    )
    parser.add_argument(
        "--frame-interval",
        type=int,
        help="source frames between sampled frames (default: clip.frame_interval, else as trained)",
    )
    parser.add_argument(
        "--size",
        type=int,
        help="crop size in pixels, a multiple of 32 (default: clip.size_px, else as trained)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        help="clips per forward pass (default: 1 on a CPU, where batching Swin-T gains almost nothing and "
        "multiplies memory; inference.max_batch on CUDA)",
    )
    parser.add_argument(
        "--subjects",
        action="store_true",
        help="per-subject mode: one timeline line per clip of each tracked person, cut from crops around them "
        "(as subjects.mode: per_subject; needs subjects.detector or --detector)",
    )
    parser.add_argument(
        "--detector",
        type=Path,
        help="person detector graph for per-subject mode (default: subjects.detector)",
    )
    parser.add_argument(
        "--video-out",
        type=Path,
        help="also write the video with the labels (and, per subject, boxes and ids) drawn on it (.mp4)",
    )
    parser.add_argument("--plot", type=Path, help="also draw the timeline as a chart into this PNG")
    parser.add_argument(
        "--plot-size",
        type=_size,
        default=(1200, 400),
        metavar="WxH",
        help="the chart's size (default 1200x400)",
    )
    parser.add_argument("--top-k", type=int, help="labels per clip (default: publish.top_k)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: model.device)")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16 (default: model.precision)",
    )


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected WIDTHxHEIGHT in pixels, e.g. 1200x400"
        ) from None
    if not (200 <= width <= 10_000 and 100 <= height <= 10_000):
        raise argparse.ArgumentTypeError(f"{text!r}: width 200-10000 and height 100-10000 pixels")
    return width, height


def default_batch(device: torch.device, max_batch: int) -> int:
    """Clips per forward pass when ``--batch`` is not given: 1 on a CPU, ``max_batch`` on CUDA.

    On a CPU, batching the default model gains almost nothing and multiplies the activation memory. Measured
    with benchmarks/bench_classify_memory.py (untrained Swin-T, 32 x 224 x 224 clips, 2 threads): 6.4-7.3 s
    of CPU per clip at batch 1, 6.1 s at 4, 7.0 s at 8 (run-to-run noise on a shared machine is larger than
    the differences), while the peak RSS grows from 0.9-1.0 GiB to 1.6 GiB and 2.4 GiB. Swin-T is the
    smallest official model; only much smaller models gain from ``--batch`` on a CPU.
    """
    return max_batch if device.type == "cuda" else 1


def _check_options(batch: int, top_k: int, hop_s: float) -> None:
    if batch < 1:
        raise VstmonError(f"--batch must be >= 1, got {batch}")
    if top_k < 1:
        raise VstmonError(f"--top-k must be >= 1, got {top_k}")
    if not (math.isfinite(hop_s) and hop_s > 0):
        raise VstmonError(f"--hop-s must be > 0, got {hop_s}")


def open_video(path: Path) -> VideoFile:
    """Open a video file for sequential reading and decode its first frame; clear ``SourceError``s."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"video file {path} does not exist")
    if not path.is_file():
        raise SourceError(f"{path} is not a file")
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as error:
        raise SourceError(f"cannot read video file {path}: {error.strerror}") from None
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        capture.release()
        raise SourceError(f"{path} is not a video OpenCV/FFmpeg can open")
    ok, frame = capture.read()
    if not ok or frame is None:
        capture.release()
        raise SourceError(f"{path}: no frame could be decoded (not a video, or an empty one)")
    first_msec = capture.get(cv2.CAP_PROP_POS_MSEC)
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not (math.isfinite(fps) and 0.1 <= fps <= 1000):
        _log.warning(
            "video reports no usable frame rate; assuming default", video=str(path), fps=_DEFAULT_FPS
        )
        fps = _DEFAULT_FPS
    count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    frame_count = int(count) if math.isfinite(count) and count > 0 else 0
    return VideoFile(path, capture, float(fps), frame_count, frame, first_msec)


def _ring_capacity(frames: int, frame_interval: int, sample_fps: float | None, fps: float) -> int:
    """Frames a lossless clip ring needs: one clip span + 2 (the sampler releases everything older)."""
    if sample_fps is None:
        return (frames - 1) * frame_interval + 3
    # time mode: a clip covers (frames - 1) / sample_fps seconds of the source's frames
    return math.ceil((frames - 1) / sample_fps * fps * 1.25) + 8


def _read_frames(video: VideoFile) -> Iterator[tuple[int, float, np.ndarray]]:
    """(index, stream time in s, BGR frame) of every frame, from the first one ``open_video`` decoded.

    The frame's array is reused for the next frame (decoded into it when the size matches): use it before
    asking for the next one. The stream time is ``CAP_PROP_POS_MSEC`` while it is sane (finite, >= 0 and
    increasing), otherwise index / fps (nudged forward by a frame when that would not increase).
    """
    capture, fps = video.capture, video.fps
    index = 0
    last_ts = -math.inf
    frame: np.ndarray | None = video.first_frame
    msec = video.first_msec
    while frame is not None:
        ts = msec / 1000.0 if math.isfinite(msec) and msec / 1000.0 > last_ts and msec >= 0 else None
        if ts is None:
            ts = index / fps if index / fps > last_ts else last_ts + 1.0 / fps
        last_ts = ts
        yield index, ts, frame
        index += 1
        ok, frame = capture.read(frame)  # decodes into the previous frame's array when the size matches
        if not ok:
            frame = None
        msec = capture.get(cv2.CAP_PROP_POS_MSEC)


def _progress_bar(video: VideoFile, progress: bool) -> Any:
    """A tqdm bar of frames on stderr (disabled unless ``progress``).

    The rate is the mean since the start (smoothing=0): frames arrive in bursts (decoding is fast, then a batch
    waits for the model), so a moving average would swing with every batch and so would the ETA.
    """
    return tqdm(
        total=video.frame_count or None,
        unit="frame",
        file=sys.stderr,
        disable=not progress,
        smoothing=0,
        dynamic_ncols=True,
        mininterval=0.5,
    )


class _Batches:
    """Clips waiting for the model in one preallocated (batch, T, S, S, 3) uint8 host buffer.

    ``buffer()`` is where the next clip is cut into; ``add(clip, fields)`` queues it (a full batch runs at once);
    ``flush()`` runs the model on the queued clips and writes one JSON line per clip, in the order they were
    added: ``clip`` (the line's number), then ``fields`` (per-subject mode: subject and box), then the clip's
    times, frames and top labels (and ``untrained``).
    """

    def __init__(
        self,
        model: nn.Module,
        labels: list[str],
        write_line: Callable[[str], Any],
        bar: Any,
        *,
        batch: int,
        frames: int,
        size_px: int,
        top_k: int,
        device: torch.device,
        dtype: torch.dtype,
        untrained: bool,
    ) -> None:
        self._model, self._labels, self._write_line, self._bar = model, labels, write_line, bar
        self._batch, self._frames, self._device, self._dtype = batch, frames, device, dtype
        self._top_k = min(top_k, len(labels))
        self._untrained = untrained
        shape = (batch, frames, size_px, size_px, 3)
        # (B, T, H, W, 3) uint8, pinned on CUDA for asynchronous copies
        self._host = torch.empty(shape, dtype=torch.uint8, pin_memory=device.type == "cuda")
        self._host_np = self._host.numpy()
        self._pending: list[tuple[Clip, dict[str, Any] | None]] = []
        self.clips = 0  # lines written

    def buffer(self) -> np.ndarray:
        """The (T, S, S, 3) view of the host buffer where the next clip goes."""
        return self._host_np[len(self._pending)]

    def add(self, clip: Clip, fields: dict[str, Any] | None = None) -> None:
        """Queue ``clip`` (cut into ``buffer()``); its line gets ``fields`` after ``clip``."""
        self._pending.append((clip, fields))
        if len(self._pending) == self._batch:
            self.flush()

    def flush(self) -> None:
        n = len(self._pending)
        if n == 0:
            return
        device, dtype = self._device, self._dtype
        with torch.inference_mode():
            x = normalize_clips(self._host[:n].to(device, non_blocking=True))  # (n, 3, T, H, W) float32
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                logits = self._model(x)
            probs = torch.softmax(logits.float(), dim=-1)  # (n, classes)
            scores, indices = probs.topk(self._top_k, dim=-1)
        scores_list, indices_list = scores.cpu().tolist(), indices.cpu().tolist()
        labels = self._labels
        for (clip, fields), row_scores, row_indices in zip(
            self._pending, scores_list, indices_list, strict=True
        ):
            record: dict[str, Any] = {"clip": self.clips}
            if fields:
                record.update(fields)
            record.update(
                start_s=round(clip.start_stream_s, 6),
                end_s=round(clip.end_stream_s, 6),
                first_frame=clip.first_frame,
                last_frame=clip.last_frame,
                frames=self._frames,
                top=[
                    {"label": labels[i], "index": i, "score": s}
                    for s, i in zip(row_scores, row_indices, strict=True)
                ],
            )
            if self._untrained:
                record["untrained"] = True
            self._write_line(json.dumps(record))
            self.clips += 1
        self._pending.clear()
        self._bar.set_postfix_str(f"{self.clips} clips", refresh=False)


def classify_video(
    video: Path | VideoFile,
    model: nn.Module,
    labels: list[str],
    write_line: Callable[[str], Any],
    *,
    frames: int = 32,
    frame_interval: int = 2,
    sample_fps: float | None = None,
    size_px: int = 224,
    hop_s: float = 1.0,
    batch: int = 1,
    top_k: int = 5,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    untrained: bool = False,
    progress: bool = False,
) -> ClassifyResult:
    """Classify ``video`` clip by clip; ``write_line`` gets one JSON line (no newline) per clip, in order.

    ``video``: a path (opened and closed here) or a ``VideoFile`` from ``open_video`` (read to its end; the
    caller closes it). ``dtype`` other than fp32 runs the forward pass under autocast; probabilities are
    always fp32. ``progress`` draws a progress bar (frames, rate, ETA) on stderr.
    """
    _check_options(batch, top_k, hop_s)
    device = torch.device(device)
    owned = not isinstance(video, VideoFile)
    opened = open_video(Path(video)) if owned else video
    bar: Any = None
    started, cpu_started = time.monotonic(), time.process_time()
    try:
        path = opened.path
        capacity = _ring_capacity(frames, frame_interval, sample_fps, opened.fps)
        ring = RingBuffer(capacity, size_px, size_px, lossless=True)
        sampler = ClipSampler(ring, "file", frames, frame_interval, hop_s, sample_fps)
        fitter = FrameFitter(size_px)
        bar = _progress_bar(opened, progress)
        batches = _Batches(model, labels, write_line, bar, batch=batch, frames=frames, size_px=size_px,
                           top_k=top_k, device=device, dtype=dtype, untrained=untrained)  # fmt: skip
        frames_read = 0
        meta = FrameMeta()  # refilled per frame (the ring copies the values)
        for index, ts, frame in _read_frames(opened):
            slot = ring.write_slot(timeout_s=0)
            if slot is None:  # cannot happen while the sampler releases what it no longer needs
                raise VstmonError(f"{path}: internal error, the clip ring buffer is full at frame {index}")
            try:
                fitter.fit(frame, slot)
            except ValueError as error:
                raise SourceError(f"{path}: frame {index}: {error}") from None
            meta.index, meta.capture_mono_s, meta.stream_ts_s = index, time.monotonic(), ts
            seq = ring.commit(meta)
            frames_read = index + 1
            if sampler.on_frame(seq):
                batches.add(sampler.cut(batches.buffer()))  # the clip's frames are a view of the host buffer
            bar.update(1)
        batches.flush()
    finally:
        if bar is not None:
            bar.close()
        if owned:
            opened.close()
    return ClassifyResult(
        clips=batches.clips,
        frames_read=frames_read,
        seconds=time.monotonic() - started,
        cpu_s=time.process_time() - cpu_started,
        ring_nbytes=ring.nbytes,
        clips_skipped=sampler.clips_skipped,
    )


def subject_prefix(path: Path) -> str:
    """The stream-name part of per-subject ids for a video file: its stem (``walkway.mp4`` -> ``walkway``), or
    ``video`` when the name has none."""
    return Path(path).stem or "video"


def build_detector(subjects: SubjectsConfig) -> PersonDetector:
    """The person detector ``subjects`` names (its graph, score threshold, person class and threads)."""
    if subjects.detector is None:
        raise ConfigError("per-subject mode needs a person detector: subjects.detector is not set")
    return PersonDetector(
        Path(subjects.detector), subjects.score_threshold, subjects.person_class_id, threads=subjects.threads
    )


def classify_subjects(
    video: Path | VideoFile,
    model: nn.Module,
    labels: list[str],
    write_line: Callable[[str], Any],
    subjects: SubjectsConfig,
    *,
    detector: PersonDetector | None = None,
    frames: int = 32,
    frame_interval: int = 2,
    sample_fps: float | None = None,
    size_px: int = 224,
    hop_s: float = 1.0,
    batch: int = 1,
    top_k: int = 5,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    untrained: bool = False,
    progress: bool = False,
    on_crop: Callable[[str, int, Box], Any] | None = None,
) -> ClassifyResult:
    """Per-subject mode (module docstring): ``write_line`` gets one JSON line per subject clip, in the order the
    clips complete, each with ``subject`` and ``box``.

    ``subjects`` gives the detection grid (``detect_fps``), the tracker (``track_buffer_s``), who counts
    (``confirm_s``), ``max_subjects`` and ``crop_margin``; its ``mode`` is not looked at. ``detector``: the
    person detector (default: ``build_detector(subjects)``). ``on_crop(subject, frame_index, box)`` is called for
    every crop taken, before a clip ending with it is cut (a hook for tests and tools: the crop is
    ``square_crop_px(box, width_px, height_px, subjects.crop_margin)`` of that frame, resized to ``size_px``).
    Other arguments as for ``classify_video``.
    """
    _check_options(batch, top_k, hop_s)
    device = torch.device(device)
    if detector is None:
        detector = build_detector(subjects)
    owned = not isinstance(video, VideoFile)
    opened = open_video(Path(video)) if owned else video
    bar: Any = None
    started, cpu_started = time.monotonic(), time.process_time()
    try:
        stream = subject_prefix(opened.path)
        capacity = _ring_capacity(frames, frame_interval, sample_fps, opened.fps)
        rings = [RingBuffer(capacity, size_px, size_px, lossless=True) for _ in range(subjects.max_subjects)]
        samplers = [ClipSampler(ring, stream, frames, frame_interval, hop_s, sample_fps) for ring in rings]
        # the whole frame squeezed to the detector's square input on the stream-clock grid, as the daemon's source
        detection = DetectionFrames(detector.input_size_px, 1.0 / subjects.detect_fps, slots=1)
        image = np.zeros((detector.input_size_px, detector.input_size_px, 3), np.uint8)  # (300, 300, 3) BGR
        tracker = Tracker(buffer_s=subjects.track_buffer_s)
        slots = SubjectSlots(stream, subjects.max_subjects, subjects.confirm_s)
        fitter = CropFitter(size_px)
        margin = subjects.crop_margin
        bar = _progress_bar(opened, progress)
        batches = _Batches(model, labels, write_line, bar, batch=batch, frames=frames, size_px=size_px,
                           top_k=top_k, device=device, dtype=dtype, untrained=untrained)  # fmt: skip
        frames_read = detections = people = 0
        meta = FrameMeta()  # refilled per frame (the rings copy the values)
        for index, ts, frame in _read_frames(opened):
            if detection.offer(frame, index, ts) and detection.take(index, image):
                visible = tracker.update(detector.detect(image), ts)
                detections += 1
                for change in slots.update(visible, tracker.tracks, ts):
                    ring = rings[change.slot]
                    if change.kind == "end":  # the track ended: nothing of this person is used again
                        ring.clear()
                    else:  # a person took the slot: their clips start at their first crop
                        samplers[change.slot].restart(ring.head_seq)
                        people += 1
            height_px, width_px = frame.shape[:2]
            meta.index, meta.capture_mono_s, meta.stream_ts_s = index, time.monotonic(), ts
            for slot, box in enumerate(slots.boxes):  # each held between detections
                if box is None:
                    continue
                subject = slots.subjects[slot]
                assert subject is not None  # a slot with a box has a subject
                ring, sampler = rings[slot], samplers[slot]
                out = ring.write_slot(timeout_s=0)
                if out is None:  # cannot happen while the sampler releases what it no longer needs
                    raise VstmonError(
                        f"{opened.path}: internal error, the crop ring of {subject} is full at frame {index}"
                    )
                fitter.fit(frame, square_crop_px(box, width_px, height_px, margin), out)
                seq = ring.commit(meta)
                if on_crop is not None:
                    on_crop(subject, index, box)
                if sampler.on_frame(seq):
                    clip = sampler.cut(batches.buffer())  # the clip's frames are a view of the host buffer
                    batches.add(clip, {"subject": subject, "box": [round(float(v), 4) for v in box]})
            frames_read = index + 1
            bar.update(1)
        batches.flush()
    finally:
        if bar is not None:
            bar.close()
        if owned:
            opened.close()
    return ClassifyResult(
        clips=batches.clips,
        frames_read=frames_read,
        seconds=time.monotonic() - started,
        cpu_s=time.process_time() - cpu_started,
        ring_nbytes=sum(ring.nbytes for ring in rings),
        clips_skipped=sum(sampler.clips_skipped for sampler in samplers),
        subjects=people,
        detections=detections,
    )


class TimelineOutput:
    """Where the JSON lines go, one flushed line per clip.

    stdout (``None`` or ``-``); a regular file, written as ``<name>.<random>.part`` beside it and renamed over
    it by ``commit()`` (closing without a commit removes the part file: the target is never partial or empty,
    and an existing one is kept); anything else that exists (``/dev/null``, a FIFO) is written directly.
    """

    def __init__(self, out: Path | None) -> None:
        self.target = out
        self._part: Path | None = None
        self._stream: IO[str]
        if out is None or str(out) == "-":
            self._stream = sys.stdout
            return
        try:
            mode = out.stat().st_mode if out.exists() else None
            if mode is not None and stat.S_ISDIR(mode):
                raise VstmonError(f"cannot write the timeline to {out}: it is a directory")
            if mode is not None and not stat.S_ISREG(mode):
                self._stream = out.open("w", encoding="utf-8")
                return
            part = out.with_name(f"{out.name}.{secrets.token_hex(4)}.part")
            fd = os.open(
                part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666
            )  # the umask applies, as for open()
        except OSError as error:
            raise VstmonError(f"cannot write the timeline to {out}: {error.strerror}") from None
        self._part = part
        self._stream = os.fdopen(fd, "w", encoding="utf-8")

    @property
    def part(self) -> Path | None:
        """The temporary file being written (None for stdout and non-regular targets)."""
        return self._part

    def write_line(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()  # a reader of the file (tail -f) or the pipe sees each clip when its batch is done

    def commit(self) -> None:
        """Finish: the part file replaces the target."""
        if self._stream is sys.stdout:
            return
        self._stream.close()
        if self._part is not None and self.target is not None:
            try:
                os.replace(self._part, self.target)
            except OSError as error:
                raise VstmonError(f"cannot write the timeline to {self.target}: {error.strerror}") from None
            self._part = None

    def __enter__(self) -> TimelineOutput:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._stream is not sys.stdout:
            self._stream.close()
        if self._part is not None:  # not committed: failed or interrupted
            self._part.unlink(missing_ok=True)
            self._part = None


def _with_flags(config: Config, args: argparse.Namespace) -> Config:
    """``config`` with the model flags (``--checkpoint``, ``--arch``, ...) put over its model section."""
    overrides = {name: getattr(args, name) for name in _MODEL_FLAGS if getattr(args, name) is not None}
    if not overrides:
        return config
    try:
        model = ModelConfig.model_validate(config.model.model_dump() | overrides)
    except ValidationError as error:
        item = error.errors(include_url=False)[0]
        message = str(item["msg"]).removeprefix("Value error, ")
        raise VstmonError(f"--{item['loc'][0]}: {message}") from None
    return config.model_copy(update={"model": model})


def trained_clip(checkpoint: Path | None) -> dict[str, int]:
    """The clip shape (``frames``, ``frame_interval``, ``size_px``) that a ``vstmon train`` checkpoint records in
    its ``meta``; {} for a checkpoint that records none (the official ones) and for untrained weights."""
    if checkpoint is None:
        return {}
    recorded = read_meta(checkpoint).get("clip")
    if not isinstance(recorded, dict):
        return {}
    return {key: recorded[key] for key in ("frames", "frame_interval", "size_px") if key in recorded}


def _flag_of(key: str) -> str:
    """The ``classify`` flag that sets ``clip.<key>``."""
    return "--" + next((flag for flag, k in _CLIP_FLAGS.items() if k == key), key).replace("_", "-")


def with_clip_flags(config: Config, args: argparse.Namespace) -> Config:
    """``config`` with ``--frames``, ``--frame-interval`` and ``--size`` put over its clip section (they then count
    as set: ``with_trained_clip`` leaves them alone). A bad value is a one-line error naming the flag."""
    flags = {key: getattr(args, flag) for flag, key in _CLIP_FLAGS.items() if getattr(args, flag) is not None}
    if not flags:
        return config
    clip = _clip_with(config.clip, flags, _flag_of, VstmonError)
    return config.model_copy(update={"clip": clip})


def with_trained_clip(config: Config) -> Config:
    """``config`` with the clip shape its checkpoint was trained on (``trained_clip``) in every clip key that
    neither the config file nor a flag set; logged when it changes anything. (With ``inference.backend: triton``
    the server holds the model: its shape is the config's.)"""
    clip = config.clip
    checkpoint = config.model.checkpoint if config.inference.backend != "triton" else None
    trained = {k: v for k, v in trained_clip(checkpoint).items() if k not in clip.model_fields_set}
    if not trained:
        return config
    clip = _clip_with(clip, trained, lambda key: f"checkpoint {checkpoint}: meta.clip.{key}", CheckpointError)
    _log.info("clip shape as the checkpoint was trained", **{f"clip.{k}": v for k, v in trained.items()})
    return config.model_copy(update={"clip": clip})


def _clip_with(
    clip: ClipConfig, values: dict[str, Any], name: Callable[[str], str], error: type[VstmonError]
) -> ClipConfig:
    """``clip`` with ``values`` set, validated; the first problem as ``error`` naming its source (``name(key)``)."""
    try:
        return ClipConfig.model_validate(clip.model_dump(exclude_unset=True) | values)
    except ValidationError as problem:
        item = problem.errors(include_url=False)[0]
        key = str(item["loc"][0]) if item["loc"] else "clip"
        raise error(f"{name(key)}: {str(item['msg']).removeprefix('Value error, ')}") from None


def _per_subject(config: Config, args: argparse.Namespace, source: str) -> Config | None:
    """Per-subject mode (``--subjects`` or ``subjects.mode: per_subject``): ``config`` with ``--detector`` put
    over ``subjects.detector``; None in whole-frame mode. One-line errors for a missing detector."""
    wanted = bool(args.subjects) or config.subjects.mode == "per_subject"
    detector: Path | None = args.detector
    if detector is not None:
        if not wanted:
            raise VstmonError("--detector is only used in per-subject mode: add --subjects")
        if not detector.exists():
            raise ConfigError(f"--detector: {detector} does not exist")
        if not detector.is_file():
            raise ConfigError(f"--detector: {detector} is not a file")
        subjects = config.subjects.model_copy(update={"detector": detector})
        return config.model_copy(update={"subjects": subjects})
    if not wanted:
        return None
    if config.subjects.detector is None:
        fetch = "`vstmon weights fetch ssdlite_mobilenet_v2_pedestrian` downloads one"
        if args.subjects:
            raise ConfigError(
                f"--subjects needs a person detector: give --detector PATH or set subjects.detector in the "
                f"config ({fetch})"
            )
        raise ConfigError(
            f"{source}: subjects.mode is per_subject but subjects.detector is null: set it or give "
            f"--detector PATH ({fetch})"
        )
    return config


def _classify_to_output(
    args: argparse.Namespace,
    config: Config,
    device: torch.device,
    dtype: torch.dtype,
    batch: int,
    top_k: int,
    hop_s: float,
    per_subject: bool,
) -> tuple[ClassifyResult, VideoFile]:
    """Open the video and the output (before the models load: a bad input fails at once), load the person
    detector (per-subject mode) and the model as the daemon does, classify, and put the timeline in place."""
    with open_video(Path(args.video)) as video, TimelineOutput(args.out) as timeline:
        config = with_trained_clip(config)  # reads the checkpoint: after the video, as the model
        clip_cfg = config.clip
        detector = build_detector(config.subjects) if per_subject else None
        loaded = load_model_and_labels(config)  # warns (once) about untrained weights
        model = loaded.model.to(device).eval()
        _log.info(
            "classifying",
            video=str(video.path),
            frames=video.frame_count or None,
            model=loaded.model_id,
            device=str(device),
            batch=batch,
            mode="per_subject" if per_subject else "frame",
            writing=str(timeline.part or args.out or "stdout"),
        )
        options: dict[str, Any] = {
            "frames": clip_cfg.frames,
            "frame_interval": clip_cfg.frame_interval,
            "sample_fps": clip_cfg.sample_fps,
            "size_px": clip_cfg.size_px,
            "hop_s": hop_s,
            "batch": batch,
            "top_k": top_k,
            "device": device,
            "dtype": dtype,
            "untrained": loaded.untrained,
            "progress": sys.stderr.isatty(),
        }
        marks = Marks() if args.video_out or args.plot else None

        def write_line(line: str) -> None:
            timeline.write_line(line)
            if marks is not None:
                marks.add_line(line)

        if detector is not None:
            result = classify_subjects(
                video,
                model,
                loaded.labels,
                write_line,
                config.subjects,
                detector=detector,
                **options,
            )
        else:
            result = classify_video(video, model, loaded.labels, write_line, **options)
        timeline.commit()
        if marks is not None and args.plot:
            draw_timeline(marks, args.plot, args.plot_size, f"{video.path.name}: top label per clip")
        if marks is not None and args.video_out:
            write_annotated_video(video.path, args.video_out, marks)
    return result, video


def run(args: argparse.Namespace) -> int:
    """``vstmon classify``: resolve options (flags > config file > defaults), open the video, load the model
    (as the daemon does), write the timeline."""
    config = load_config(args.config, require_streams=False) if args.config else Config()
    configure_logging(config.log.level, config.log.format)  # logs go to stderr; stdout may be the timeline
    config = _with_flags(config, args)
    source = str(args.config or "vstmon classify")
    subjects_config = _per_subject(config, args, source)
    per_subject = subjects_config is not None
    if subjects_config is not None:
        config = subjects_config
    elif config.subjects.detector is not None:  # whole-frame: the detector is not used, so need not be there
        config = config.model_copy(update={"subjects": config.subjects.model_copy(update={"detector": None})})
    # devices, precision, checkpoint, labels and detector files, as `vstmon check` does; one device: the first
    resolved = preflight(config, source)[0]
    config = with_clip_flags(config, args)
    device, dtype = resolved.device, resolve_dtype(resolved.precision, resolved.device)
    batch = args.batch if args.batch is not None else default_batch(device, config.inference.max_batch)
    top_k = args.top_k if args.top_k is not None else config.publish.top_k
    hop_s = args.hop_s if args.hop_s is not None else config.clip.hop_s
    _check_options(batch, top_k, hop_s)
    if config.inference.threads:
        torch.set_num_threads(config.inference.threads)

    try:
        result, video = _classify_to_output(args, config, device, dtype, batch, top_k, hop_s, per_subject)
    except BrokenPipeError:  # the reader of stdout went away (`vstmon classify v.mp4 | head -3`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        _log.info("stopped: the reader of the timeline closed it", video=str(args.video))
        return 128 + signal.SIGPIPE  # what a shell reports for a process ended by SIGPIPE
    extra = {"subjects": result.subjects, "detections": result.detections} if per_subject else {}
    _log.info(
        "classified",
        video=str(video.path),
        clips=result.clips,
        frames=result.frames_read,
        seconds=round(result.seconds, 3),
        cpu_s=round(result.cpu_s, 3),
        batch=batch,
        out=str(args.out or "stdout"),
        **extra,
    )
    return 0
