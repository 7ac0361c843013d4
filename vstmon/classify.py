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

Memory is constant whatever the video's length: a ring of one clip span (+2) frames at the crop size, one
(batch, T, S, S, 3) uint8 host buffer, nothing kept per clip (lines are streamed to the output).
Stream clock: ``CAP_PROP_POS_MSEC`` while it is sane (finite and increasing), otherwise index / fps.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import cv2
import torch
from torch import nn

from vstmon.config import Config, load_config
from vstmon.errors import SourceError, VstmonError
from vstmon.ingest.ring import RingBuffer
from vstmon.ingest.sampler import ClipSampler
from vstmon.log import configure_logging, get_logger
from vstmon.preprocess import FrameFitter, normalize_clips
from vstmon.types import Clip, FrameMeta

__all__ = ["ClassifyResult", "add_arguments", "classify_video", "open_video", "run"]

_log = get_logger(__name__)
_DEFAULT_FPS = 25.0  # when the container reports none


@dataclass(slots=True)
class ClassifyResult:
    """What a ``classify_video`` run did."""

    clips: int
    frames_read: int
    seconds: float
    ring_nbytes: int
    clips_skipped: int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", type=Path, help="video file to classify")
    parser.add_argument("--config", type=Path, help="config file (its model and clip sections give defaults)")
    parser.add_argument("--out", type=Path, help="write the JSON-lines timeline here (default: stdout)")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint file (default: model.checkpoint)")
    parser.add_argument("--arch", help="swin_t|swin_s|swin_b|swin_l[_sthv2] or auto (default: model.arch)")
    parser.add_argument("--labels", help="kinetics400, sthv2 or a labels file (default: model.labels)")
    parser.add_argument("--hop-s", type=float, help="seconds of video between clips (default: clip.hop_s)")
    parser.add_argument("--batch", type=int, help="clips per forward pass (default: inference.max_batch)")
    parser.add_argument("--top-k", type=int, help="labels per clip (default: publish.top_k)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: model.device)")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16 (default: model.precision)",
    )


def _device(spec: str | list[str]) -> torch.device:
    name = spec if isinstance(spec, str) else spec[0]
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise VstmonError(f"unknown device {name!r} (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VstmonError(f"device {name!r} was asked for, but no CUDA device is available")
    return device


def _num_classes(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "num_classes", None):
        return int(config.num_classes)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise VstmonError("cannot tell the model's number of classes (no linear head)")
    return int(linears[-1].out_features)


def open_video(path: Path) -> tuple[cv2.VideoCapture, float, int]:
    """Open a video file for sequential reading: (capture, fps, frame count or 0); clear errors."""
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
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not (math.isfinite(fps) and 0.1 <= fps <= 1000):
        _log.warning(
            "video reports no usable frame rate; assuming default", video=str(path), fps=_DEFAULT_FPS
        )
        fps = _DEFAULT_FPS
    count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    frame_count = int(count) if math.isfinite(count) and count > 0 else 0
    return capture, float(fps), frame_count


class _Progress:
    """A one-line progress bar on stderr (only drawn on a TTY)."""

    def __init__(self, total_frames: int, enabled: bool) -> None:
        self.total = total_frames
        self.enabled = enabled
        self._start = time.monotonic()
        self._last = 0.0

    def update(self, frames: int, clips: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.2):
            return
        self._last = now
        rate = frames / max(now - self._start, 1e-9)
        if self.total:
            done = min(frames / self.total, 1.0)
            bar = "#" * int(done * 30)
            text = f"[{bar:<30}] {done:6.1%} {frames}/{self.total} frames, {clips} clips, {rate:.0f} fps"
        else:
            text = f"{frames} frames, {clips} clips, {rate:.0f} fps"
        sys.stderr.write("\r" + text)
        sys.stderr.flush()

    def close(self, frames: int, clips: int) -> None:
        if self.enabled:
            self.update(frames, clips, force=True)
            sys.stderr.write("\n")
            sys.stderr.flush()


def classify_video(
    path: Path,
    model: nn.Module,
    labels: list[str],
    write_line: Callable[[str], Any],
    *,
    frames: int = 32,
    frame_interval: int = 2,
    sample_fps: float | None = None,
    size_px: int = 224,
    hop_s: float = 1.0,
    batch: int = 8,
    top_k: int = 5,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    untrained: bool = False,
    progress: bool = False,
) -> ClassifyResult:
    """Classify ``path`` clip by clip; ``write_line`` gets one JSON line (no newline) per clip, in order.

    ``dtype`` other than fp32 runs the forward pass under autocast; probabilities are always fp32.
    """
    if batch < 1:
        raise VstmonError(f"--batch must be >= 1, got {batch}")
    if top_k < 1:
        raise VstmonError(f"--top-k must be >= 1, got {top_k}")
    if not hop_s > 0:
        raise VstmonError(f"--hop-s must be > 0, got {hop_s}")
    device = torch.device(device)
    top_k = min(top_k, len(labels))
    capture, fps, frame_count = open_video(Path(path))
    started = time.monotonic()
    try:
        if sample_fps is None:
            capacity = (frames - 1) * frame_interval + 3
        else:  # a clip covers (frames - 1) / sample_fps seconds of the source's frames
            capacity = math.ceil((frames - 1) / sample_fps * fps * 1.25) + 8
        ring = RingBuffer(capacity, size_px, size_px, lossless=True)
        sampler = ClipSampler(ring, "file", frames, frame_interval, hop_s, sample_fps)
        fitter = FrameFitter(size_px)
        shape = (batch, frames, size_px, size_px, 3)
        host = torch.empty(shape, dtype=torch.uint8, pin_memory=device.type == "cuda")  # (B, T, H, W, 3)
        host_np = host.numpy()
        pending: list[Clip] = []
        bar = _Progress(frame_count, progress)
        clip_number = 0

        def flush() -> None:
            nonlocal clip_number
            n = len(pending)
            if n == 0:
                return
            with torch.inference_mode():
                x = normalize_clips(host[:n].to(device, non_blocking=True))  # (n, 3, T, H, W) float32
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    logits = model(x)
                probs = torch.softmax(logits.float(), dim=-1)  # (n, classes)
                scores, indices = probs.topk(top_k, dim=-1)
            scores_list, indices_list = scores.cpu().tolist(), indices.cpu().tolist()
            for clip, row_scores, row_indices in zip(pending, scores_list, indices_list, strict=True):
                record: dict[str, Any] = {
                    "clip": clip_number,
                    "start_s": round(clip.start_stream_s, 6),
                    "end_s": round(clip.end_stream_s, 6),
                    "first_frame": clip.first_frame,
                    "last_frame": clip.last_frame,
                    "frames": frames,
                    "top": [
                        {"label": labels[i], "index": i, "score": s}
                        for s, i in zip(row_scores, row_indices, strict=True)
                    ],
                }
                if untrained:
                    record["untrained"] = True
                write_line(json.dumps(record))
                clip_number += 1
            pending.clear()

        index = 0
        last_ts = -math.inf
        frame = None
        meta = FrameMeta()  # refilled per frame (the ring copies the values)
        while True:
            ok, frame = capture.read(frame)  # decodes into the previous frame's array when the size matches
            if not ok or frame is None:
                break
            msec = capture.get(cv2.CAP_PROP_POS_MSEC)
            ts = msec / 1000.0 if math.isfinite(msec) and msec / 1000.0 > last_ts and msec >= 0 else None
            if ts is None:
                ts = index / fps if index / fps > last_ts else last_ts + 1.0 / fps
            last_ts = ts
            slot = ring.write_slot(timeout_s=0)
            if slot is None:  # cannot happen while the sampler releases what it no longer needs
                raise VstmonError(f"{path}: internal error, the clip ring buffer is full at frame {index}")
            try:
                fitter.fit(frame, slot)
            except ValueError as error:
                raise SourceError(f"{path}: frame {index}: {error}") from None
            meta.index, meta.capture_mono_s, meta.stream_ts_s = index, time.monotonic(), ts
            seq = ring.commit(meta)
            index += 1
            if sampler.on_frame(seq):
                pending.append(sampler.cut(host_np[len(pending)]))  # the clip's frames are a view of host
                if len(pending) == batch:
                    flush()
            bar.update(index, clip_number + len(pending))
        flush()
        bar.close(index, clip_number)
        if index == 0:
            raise SourceError(f"{path}: no frame could be decoded (not a video, or an empty one)")
        return ClassifyResult(
            clips=clip_number,
            frames_read=index,
            seconds=time.monotonic() - started,
            ring_nbytes=ring.nbytes,
            clips_skipped=sampler.clips_skipped,
        )
    finally:
        capture.release()


def run(args: argparse.Namespace) -> int:
    """``vstmon classify``: resolve options (flags > config file > defaults), load the model, write the timeline."""
    from vstmon.engine import resolve_dtype
    from vstmon.model import build_model, load_labels, load_model

    config = load_config(args.config, require_streams=False) if args.config else Config()
    configure_logging(config.log.level, config.log.format)  # logs go to stderr; stdout may be the timeline
    clip_cfg, model_cfg = config.clip, config.model
    checkpoint = args.checkpoint or model_cfg.checkpoint
    arch = args.arch or model_cfg.arch
    device = _device(args.device or model_cfg.device)
    dtype = resolve_dtype(args.precision or model_cfg.precision, device)
    batch = args.batch or config.inference.max_batch
    top_k = args.top_k or config.publish.top_k
    hop_s = args.hop_s if args.hop_s is not None else clip_cfg.hop_s
    if config.inference.threads:
        torch.set_num_threads(config.inference.threads)
    video = Path(args.video)
    if not video.exists():  # fail before loading a large checkpoint
        raise SourceError(f"video file {video} does not exist")

    untrained = checkpoint is None
    if untrained:
        if arch == "auto":
            raise VstmonError("no checkpoint given: pass --checkpoint, or --arch to run an untrained model")
        message = (
            "no checkpoint: classifying with an UNTRAINED model; its labels are meaningless "
            '(every line carries "untrained": true)'
        )
        _log.warning(message, arch=arch)
        print(f"vstmon: WARNING: {message}", file=sys.stderr)
        model = build_model(arch, model_cfg.num_classes)
    else:
        model = load_model(checkpoint, arch, num_classes=model_cfg.num_classes)
    model = model.to(device).eval()
    labels = load_labels(args.labels or model_cfg.labels, _num_classes(model))

    out: IO[str]
    if args.out is None or str(args.out) == "-":
        out = sys.stdout
    else:
        try:
            out = args.out.open("w", encoding="utf-8")
        except OSError as error:
            raise VstmonError(f"cannot write the timeline to {args.out}: {error.strerror}") from None

    def write_line(line: str) -> None:
        out.write(line + "\n")

    try:
        result = classify_video(
            video,
            model,
            labels,
            write_line,
            frames=clip_cfg.frames,
            frame_interval=clip_cfg.frame_interval,
            sample_fps=clip_cfg.sample_fps,
            size_px=clip_cfg.size_px,
            hop_s=hop_s,
            batch=batch,
            top_k=top_k,
            device=device,
            dtype=dtype,
            untrained=untrained,
            progress=sys.stderr.isatty(),
        )
    finally:
        if out is not sys.stdout:
            out.close()
        else:
            out.flush()
    _log.info(
        "classified",
        video=str(video),
        clips=result.clips,
        frames=result.frames_read,
        seconds=round(result.seconds, 3),
        out=str(args.out or "stdout"),
    )
    return 0
