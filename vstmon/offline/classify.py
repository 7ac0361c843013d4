"""``vstmon classify VIDEO``: a whole video file, offline, into a JSON-lines timeline.

The video goes through the daemon's own stream pipeline (``offline.run.OfflineStream``: the same ring, clip
sampler, scene and idle detectors, people in view and resets, on the file's own clock) and the daemon's own
``Runner`` (precision, staging, attention kernel, out-of-memory split), run synchronously: a file gives the same
clips and scores here as in the daemon (tested). One JSON line per clip, written as soon as its batch is done::

    {"clip": 0, "segment": 1, "start_s": 0.0, "end_s": 2.48, "first_frame": 0, "last_frame": 62, "frames": 32,
     "top": [{"label": "juggling balls", "index": 166, "score": 0.91}, ...]}

``start_s``/``end_s`` are the stream times of the clip's first and last frames; ``first_frame``/``last_frame``
their 0-based indices in the file; ``frames`` the clip length T; ``segment`` the segment it belongs to (a new one
after a scene cut, an idle spell, a subject change or a jump of the clock, as in the daemon). With people tracked
(``subjects.detector`` set) lines carry ``subject`` and ``box`` (the subject's box at the clip's last frame,
0..1 of the frame, 4 decimals); per subject (``--subjects`` or ``subjects.mode: per_subject``) every person who
counts has clips of their own, ``subject`` = ``<file stem>-<track id>`` (the stem plays the daemon's stream
name). Lines of an untrained model carry ``"untrained": true``.

The model comes from ``load_model_and_labels``, as in the daemon: the same config gives the same model
(``checkpoint: null`` -> untrained, seeded weights; ``arch: auto`` -> swin_t then). Flags override the config.
The clip shape is, key by key, the flag's, the config file's own ``clip`` key, the shape a ``vstmon train``
checkpoint records in its ``meta``, or the default (``with_clip_flags``, ``with_trained_clip``).
The video is opened (and its first frame checked) before the model is loaded, so a bad input fails at once.
``--out FILE`` is written through a temporary file beside it (``FILE.<random>.part``, one line per clip as its
batch is done) that replaces FILE only when the whole video is classified: FILE is never left partial or empty.

Memory is constant whatever the video's length: the stream's ring (one clip span and a second), per subject the
crop rings, the runner's staging buffer of ``--batch`` clips; nothing is kept per clip (lines are streamed out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from pydantic import ValidationError
from tqdm import tqdm

from vstmon.config import Config, ModelConfig, StreamConfig, SubjectsConfig, load_config
from vstmon.errors import ConfigError, SourceError, VstmonError
from vstmon.ingest.capture import CaptureError, file_info, parse_source
from vstmon.log import configure_logging, get_logger
from vstmon.model.bundle import LoadedModel, load_model_and_labels
from vstmon.offline.annotate import Marks, draw_timeline, write_annotated_video
from vstmon.offline.clip_shape import trained_clip, with_clip_flags, with_trained_clip
from vstmon.offline.run import FileRun, OfflineStream
from vstmon.offline.timeline import TimelineOutput
from vstmon.service.preflight import preflight
from vstmon.stream.state import SegmentState
from vstmon.subjects.detector import PersonDetector, detector_device
from vstmon.types import Box, ClipResult

if TYPE_CHECKING:
    import torch

__all__ = [
    "TimelineOutput",
    "add_arguments",
    "build_detector",
    "classify_file",
    "default_batch",
    "run",
    "subject_prefix",
    "trained_clip",
    "with_clip_flags",
    "with_trained_clip",
]

_log = get_logger(__name__)
_MODEL_FLAGS = ("checkpoint", "arch", "labels", "device", "precision")  # flags that override config.model


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


def check_video(path: Path) -> None:
    """One-line ``SourceError``s, before any model is loaded, unless ``path`` is a file OpenCV/FFmpeg opens and
    decodes a first frame of."""
    try:
        spec = parse_source(str(path))
    except CaptureError as error:
        raise SourceError(str(error)) from None
    if spec.kind != "file":
        raise SourceError(f"{spec.display} is not a video file")
    try:
        with open(spec.target, "rb") as handle:
            handle.read(1)
    except OSError as error:
        raise SourceError(f"cannot read video file {spec.display}: {error.strerror}") from None
    capture = cv2.VideoCapture(str(spec.target), cv2.CAP_FFMPEG)
    try:
        if not capture.isOpened():
            raise SourceError(f"{spec.display} is not a video OpenCV/FFmpeg can open")
        ok, frame = capture.read()
        if not ok or frame is None:
            raise SourceError(f"{spec.display}: no frame could be decoded (not a video, or an empty one)")
    finally:
        capture.release()


def classify_file(
    video: Path,
    config: Config,
    loaded: LoadedModel,
    write_line: Any,
    *,
    batch: int,
    device: str = "cpu",
    progress: bool = False,
    on_crop: Any = None,
) -> FileRun:
    """Classify ``video`` with ``config`` (clip, reset, subjects, smoothing, ``publish.top_k``, ``model``'s
    precision) and the loaded model; ``write_line`` gets one JSON line (no newline) per published clip, in order.

    ``device`` runs the model; ``on_crop(subject, frame_index, box)`` sees every crop cut per subject.
    """
    from vstmon.inference.runner import Runner  # torch

    clip = config.clip
    top_k = max(1, min(config.publish.top_k, len(loaded.labels)))
    name = subject_prefix(video)
    stream = StreamConfig(name=name, url=str(video))
    runner = Runner(loaded.model, device, config.model.precision, batch,
                    clip_shape=(clip.frames, clip.size_px, clip.size_px, 3))  # fmt: skip
    runner.warm_up()
    tracking = config.subjects.detector is not None
    lines = 0
    bar: Any = None  # a progress bar on a terminal

    def make_state(_subject: str = "") -> SegmentState:
        return SegmentState(name, config.smoothing, loaded.labels, top_k, loaded.model_id, loaded.untrained)

    def on_label(result: ClipResult, state: SegmentState) -> None:
        nonlocal lines
        write_line(json.dumps(_line(lines, result, state, loaded, top_k, tracking)))
        lines += 1
        if bar is not None:
            bar.set_postfix_str(f"{lines} clips", refresh=False)

    detector = build_detector(config.subjects) if tracking else None
    offline = OfflineStream(
        str(video), stream, config, runner, batch, make_state, on_label, detector=detector
    )
    if not progress:
        return offline.run(on_crop=on_crop)
    info = file_info(offline.spec)
    bar = tqdm(
        total=(info.frames if info is not None and info.frames else None),
        unit="frame",
        file=sys.stderr,
        smoothing=0,  # frames come in bursts (decoding, then a batch waits): a mean since the start is steadier
        dynamic_ncols=True,
        mininterval=0.5,
    )
    with bar:
        return offline.run(on_frame=lambda: bar.update(1), on_crop=on_crop)


def _line(
    number: int, result: ClipResult, state: SegmentState, loaded: LoadedModel, top_k: int, tracking: bool
) -> dict[str, Any]:
    """One timeline line (module docstring)."""
    clip = result.clip
    record: dict[str, Any] = {"clip": number}
    if tracking:
        record["subject"] = state.subject
        record["box"] = _rounded(clip.box)
    order = np.argsort(-result.probs, kind="stable")[:top_k]
    record.update(
        segment=clip.segment,
        start_s=round(clip.start_stream_s, 6),
        end_s=round(clip.end_stream_s, 6),
        first_frame=clip.first_frame,
        last_frame=clip.last_frame,
        frames=int(clip.frames.shape[0]),
        top=[{"label": loaded.labels[i], "index": int(i), "score": float(result.probs[i])} for i in order],
    )
    if loaded.untrained:
        record["untrained"] = True
    return record


def _rounded(box: Box | None) -> list[float] | None:
    return None if box is None else [round(float(v), 4) for v in box]


def subject_prefix(path: Path) -> str:
    """The stream-name part of per-subject ids for a video file: its stem (``walkway.mp4`` -> ``walkway``), or
    ``video`` when the name has none."""
    return Path(path).stem or "video"


def build_detector(subjects: SubjectsConfig) -> PersonDetector:
    """The person detector ``subjects`` names (its graph, score threshold, person class and device)."""
    if subjects.detector is None:
        raise ConfigError("per-subject mode needs a person detector: subjects.detector is not set")
    return PersonDetector(
        Path(subjects.detector),
        subjects.score_threshold,
        subjects.person_class_id,
        device=detector_device(subjects.device),
    )


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
    args: argparse.Namespace, config: Config, device: str, batch: int, per_subject: bool
) -> FileRun:
    """Open the output (before the models load: a bad target fails at once), load the model as the daemon does,
    classify, and put the timeline (and its pictures) in place."""
    with TimelineOutput(args.out) as timeline:
        config = with_trained_clip(
            config
        )  # reads the checkpoint: after the video and the output, as the model
        loaded = load_model_and_labels(config)  # warns (once) about untrained weights
        _log.info(
            "classifying",
            video=str(args.video),
            model=loaded.model_id,
            device=device,
            batch=batch,
            mode="per_subject" if per_subject else "frame",
            writing=str(timeline.part or args.out or "stdout"),
        )
        marks = Marks() if args.video_out or args.plot else None

        def write_line(line: str) -> None:
            timeline.write_line(line)
            if marks is not None:
                marks.add_line(line)

        result = classify_file(
            Path(args.video), config, loaded, write_line, batch=batch, device=device,
            progress=sys.stderr.isatty(),
        )  # fmt: skip
        timeline.commit()
        if marks is not None and args.plot:
            draw_timeline(marks, args.plot, args.plot_size, f"{Path(args.video).name}: top label per clip")
        if marks is not None and args.video_out:
            write_annotated_video(Path(args.video), args.video_out, marks)
    return result


def run(args: argparse.Namespace) -> int:
    """``vstmon classify``: resolve options (flags > config file > defaults), check the video, load the model
    (as the daemon does), write the timeline."""
    config = load_config(args.config, require_streams=False) if args.config else Config()
    configure_logging(config.log.level, config.log.format)  # logs go to stderr; stdout may be the timeline
    config = _with_flags(config, args)
    source = str(args.config or "vstmon classify")
    subjects_config = _per_subject(config, args, source)
    per_subject = subjects_config is not None
    if subjects_config is not None:
        config = subjects_config.model_copy(
            update={"subjects": subjects_config.subjects.model_copy(update={"mode": "per_subject"})}
        )
    check_video(Path(args.video))
    # devices, precision, checkpoint, labels and detector files, as `vstmon check` does; one device: the first
    resolved = preflight(config, source)[0]
    config = with_clip_flags(config, args)
    batch = (
        args.batch if args.batch is not None else default_batch(resolved.device, config.inference.max_batch)
    )
    top_k = args.top_k if args.top_k is not None else config.publish.top_k
    hop_s = args.hop_s if args.hop_s is not None else config.clip.hop_s
    _check_options(batch, top_k, hop_s)
    config = config.model_copy(
        update={
            "clip": config.clip.model_copy(update={"hop_s": hop_s}),
            "publish": config.publish.model_copy(update={"top_k": top_k}),
        }
    )
    if config.inference.threads:
        import torch

        torch.set_num_threads(config.inference.threads)
    try:
        result = _classify_to_output(args, config, str(resolved.device), batch, per_subject)
    except BrokenPipeError:  # the reader of stdout went away (`vstmon classify v.mp4 | head -3`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        _log.info("stopped: the reader of the timeline closed it", video=str(args.video))
        return 128 + signal.SIGPIPE  # what a shell reports for a process ended by SIGPIPE
    extra = {"subjects": result.subjects, "detections": result.detections} if per_subject else {}
    _log.info(
        "classified",
        video=str(args.video),
        clips=result.clips,
        frames=result.frames_read,
        resets=result.resets,
        seconds=round(result.seconds, 3),
        cpu_s=round(result.cpu_s, 3),
        batch=batch,
        out=str(args.out or "stdout"),
        **extra,
    )
    return 0
