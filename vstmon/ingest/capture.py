"""Opening video inputs: what a URL means, and one small reader per kind.

Kinds: ``rtsp`` (rtsp://, rtsps://), ``http`` (http(s):// MJPEG or HLS), ``webcam`` (an integer index or
/dev/videoN), ``file`` (a path or file://), ``testsrc`` (synthetic, ``testsrc://?width=640&height=480&fps=25``).
Every reader has ``read() -> np.ndarray | None`` (a BGR frame valid until the next read; None = no frame),
``stream_ts_s`` (the stream's clock for the frame just read, or None for live inputs), ``fps`` and ``close()``.

OpenCV/FFmpeg facts this module is built on (measured, see shared/ENVIRONMENT.md):
- open and read timeouts and decoder threads are per-capture open params;
- ``rtsp_transport`` and the probe limits exist only as ``OPENCV_FFMPEG_CAPTURE_OPTIONS``, an environment
  variable that OpenCV reads at the start of every open. It is process-wide, and there is no way to know when an
  open in progress has read it, so changing it between opens would make every open wait for the ones in flight
  (one hung camera stalled every other stream's (re)open for its whole open timeout). It is therefore ONE value
  for every open in the process, set once: the RTSP transport (the config requires one transport for all RTSP
  streams) and small probe limits (0.2 s / 1 MB: an RTSP open takes ~0.3 s instead of ~1.2 s; files, whose
  headers carry what the probe needs, are unaffected). A user's own value is appended and wins.
  ``fflags;nobuffer`` is deliberately NOT in it: on a file it drops the packets read while probing (measured: the
  first 5 of 30 H.264 frames); without it the first ~6 frames of an RTSP connection come out up to ~0.25 s late
  (measured), after which latency is the same (44 ms);
- FFmpeg prints its own messages to stderr, at debug level with the full URL; the level is set to quiet
  (``OPENCV_FFMPEG_LOGLEVEL``; a user's choice is capped at info) and our own reasons say what failed.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from vstmon.config import StreamConfig
from vstmon.ingest.urls import CaptureError, SourceSpec, parse_source
from vstmon.log import get_logger

__all__ = [
    "CaptureError",
    "FileInfo",
    "Reader",
    "SourceSpec",
    "TestPattern",
    "file_info",
    "live_read_timeout_s",
    "open_reader",
    "parse_source",
    "use_capture_options",
]

# FFmpeg's own stderr output. Measured: at debug level (48) FFmpeg prints "Opening 'http://user:password@...'";
# at info (32) and below no URL was seen. Default quiet (AV_LOG_QUIET, -8); a user's level is capped at info.
# OpenCV reads it once, when its FFmpeg backend initialises: this module must be imported before the first
# capture or writer opens (vstmon imports it before any).
_FFMPEG_MAX_SAFE_LOG_LEVEL = 32


def _safe_ffmpeg_log_level(value: str | None) -> str:
    try:
        level = int(value) if value is not None else -8
    except ValueError:
        level = -8
    return str(min(level, _FFMPEG_MAX_SAFE_LOG_LEVEL))


os.environ["OPENCV_FFMPEG_LOGLEVEL"] = _safe_ffmpeg_log_level(os.environ.get("OPENCV_FFMPEG_LOGLEVEL"))
# OpenCV serialises FFmpeg opens behind one global lock unless told FFmpeg is thread-safe (it is, since 4.0).
# Measured: two opens of silent ports with a 2 s open timeout take 4.0 s by default, 2.0 s with this set, so
# one hung camera no longer delays the (re)connection of every other stream.
os.environ.setdefault("OPENCV_FFMPEG_IS_THREAD_SAFE", "1")

_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
# Probe limits: FFmpeg's defaults (5 s / 5 MB) make an RTSP open take ~1.2 s; ~0.3 s with these. probesize is
# generous enough for a 1080p key frame.
_PROBE_LIMITS = "analyzeduration;200000|probesize;1000000"
_log = get_logger("ingest")


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What a video file's header says (0 where it says nothing usable)."""

    fps: float
    frames: int


def file_info(spec: SourceSpec) -> FileInfo | None:
    """Frame rate and frame count of a file source from its header; None when it cannot be opened."""
    if spec.kind != "file":
        raise ValueError(f"file_info needs a file source, got {spec.kind}")
    capture = cv2.VideoCapture(str(spec.target), cv2.CAP_FFMPEG)
    try:
        if not capture.isOpened():
            return None
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        count = float(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()
    return FileInfo(
        fps=fps if math.isfinite(fps) and 0 < fps < 1000 else 0.0,
        frames=int(count) if math.isfinite(count) and count > 0 else 0,
    )


class Reader(Protocol):
    """One opened input."""

    fps: float

    def read(self) -> np.ndarray | None: ...

    @property
    def stream_ts_s(self) -> float | None: ...

    def close(self) -> None: ...


_options_lock = threading.Lock()
_options_value: str | None = None  # what this module last set
_rtsp_transport: str | None = None  # the transport of the RTSP opens so far
_USER_OPTIONS = os.environ.get(_OPTIONS_ENV)  # the user's own value at import, appended (it wins)


def use_capture_options(transport: str | None = None) -> None:
    """Make the process-wide ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` right for an open; never waits.

    ``transport``: the RTSP transport an RTSP open needs (None for any other open, which keeps the current one).
    The value changes only when an RTSP open asks for another transport than the RTSP opens before it, which the
    daemon's config rules out (one transport for all RTSP streams); it is logged, since an open in flight
    elsewhere may then see the new transport.
    """
    global _options_value, _rtsp_transport
    with _options_lock:
        if transport is not None:
            if _rtsp_transport not in (None, transport):
                _log.warning(
                    "RTSP transport changed for the whole process (OpenCV/FFmpeg capture options are "
                    "process-wide)",
                    old=_rtsp_transport,
                    new=transport,
                )
            _rtsp_transport = transport
        value = f"rtsp_transport;{_rtsp_transport or 'tcp'}|{_PROBE_LIMITS}"
        if _USER_OPTIONS:
            value = f"{value}|{_USER_OPTIONS}"
        if value != _options_value:
            os.environ[_OPTIONS_ENV] = value
            _options_value = value


use_capture_options()  # before anything in the process opens a capture

# OpenCV's own warnings (e.g. "can't capture by name", or one line per open with OPENCV_FFMPEG_IS_THREAD_SAFE)
# go to stderr; keep errors only, for every capture and writer in the process.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


class _CvReader:
    """A ``cv2.VideoCapture`` that reads into one reused frame buffer."""

    def __init__(self, capture: cv2.VideoCapture, kind: str) -> None:
        self._capture = capture
        self._kind = kind
        self._frame: np.ndarray | None = None
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.0 < fps < 1000.0 else 0.0

    def read(self) -> np.ndarray | None:
        ok, frame = self._capture.read(self._frame)
        if not ok or frame is None:
            return None
        self._frame = frame  # reused by the next read when the shape stays the same
        return frame

    @property
    def stream_ts_s(self) -> float | None:
        if self._kind != "file":
            return None
        return float(self._capture.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0

    def close(self) -> None:
        self._capture.release()


class TestPattern:
    """A deterministic moving pattern: a gradient scrolling left and a white square bouncing down.

    Frame ``i`` depends only on ``i`` (and the size). ``frames`` limits the length (None = endless).
    """

    __test__ = False  # not a pytest class

    def __init__(self, width_px: int, height_px: int, fps: float, frames: int | None = None) -> None:
        self.fps = fps
        self.frames = frames
        self.width_px, self.height_px = width_px, height_px
        xs = np.arange(2 * width_px, dtype=np.float32)
        ys = np.arange(height_px, dtype=np.float32)[:, None]
        base = np.empty((height_px, 2 * width_px, 3), np.uint8)
        base[..., 0] = (127 + 120 * np.sin(xs * (2 * np.pi / width_px)))[None, :]
        base[..., 1] = (ys * (255.0 / max(1, height_px - 1))).astype(np.uint8)
        base[..., 2] = (127 + 120 * np.cos(xs * (4 * np.pi / width_px)))[None, :]
        self._base = base
        self._frame = np.empty((height_px, width_px, 3), np.uint8)
        self._index = -1

    def read(self) -> np.ndarray | None:
        if self.frames is not None and self._index + 1 >= self.frames:
            return None
        self._index += 1
        i, w, h = self._index, self.width_px, self.height_px
        offset = (4 * i) % w
        np.copyto(self._frame, self._base[:, offset : offset + w])
        side = max(4, min(w, h) // 6)
        y = (3 * i) % max(1, h - side)
        x = (w - side) // 2
        self._frame[y : y + side, x : x + side] = 255
        return self._frame

    @property
    def stream_ts_s(self) -> float | None:
        return self._index / self.fps

    def close(self) -> None:
        pass


def _testsrc(cfg: StreamConfig, target: str) -> TestPattern:
    query = parse_qs(urlsplit(target).query) if "?" in target else {}

    def number(key: str, default: float) -> float:
        try:
            return float(query[key][0]) if key in query else default
        except ValueError:
            raise CaptureError(f"testsrc: {key}={query[key][0]!r} is not a number", permanent=True) from None

    width = int(number("width", cfg.width or 320))
    height = int(number("height", cfg.height or 240))
    fps = number("fps", cfg.fps or 25.0)
    frames = int(number("frames", 0)) or None
    if width < 16 or height < 16 or fps <= 0:
        raise CaptureError(f"testsrc: bad size {width}x{height} or fps {fps}", permanent=True)
    return TestPattern(width, height, fps, frames)


def live_read_timeout_s(cfg: StreamConfig) -> float:
    """The read timeout a live capture gets: at most half the stall timeout.

    A read that times out after a stall still hands over one buffered (stale) frame; the source does not count
    it as progress, so the stall is declared by the second timed-out read: within ``stall_timeout_s``.
    """
    return min(cfg.read_timeout_s, cfg.stall_timeout_s / 2.0)


def _open_params(cfg: StreamConfig, live: bool, threads: int | None = None) -> list[int]:
    read_timeout_s = live_read_timeout_s(cfg) if live else cfg.read_timeout_s
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        round(cfg.open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        round(read_timeout_s * 1000),
    ]
    if cfg.decoder_threads or threads:  # asked for, or the daemon's share (files among several streams)
        params += [cv2.CAP_PROP_N_THREADS, int(cfg.decoder_threads or threads or 1)]
    elif live:  # one decoder thread: 42 ms instead of 83 ms latency (frame threading queues frames)
        params += [cv2.CAP_PROP_N_THREADS, 1]
    return params


def _open_nvdec(cfg: StreamConfig, spec: SourceSpec, decode: str, gpu: int) -> Reader | None:
    """The stream on NVDEC when ``decode`` (auto | nvdec) and the machine say so; None: use OpenCV (auto only).

    ``nvdec`` on a machine without it never gets here (``vstmon check``/``run`` refuse the config, exit 78).
    """
    from vstmon.ingest.decode import DecodeUnavailable, choose_decode, probe_nvdec

    try:
        choice = choose_decode(decode, spec.kind, probe_nvdec(gpu))
    except DecodeUnavailable as error:
        raise CaptureError(f"{spec.display}: {error}", permanent=True) from None
    if choice.path != "nvdec":
        _log.debug("stream decoded by OpenCV", stream=spec.display, reason=choice.reason)
        return None
    from vstmon.ingest.nvdec import NvdecReader, NvdecUnsupported

    try:
        return NvdecReader(
            str(spec.target),
            spec.display,
            kind=spec.kind,
            requested=decode,
            gpu=gpu,
            open_timeout_s=cfg.open_timeout_s,
            read_timeout_s=live_read_timeout_s(cfg) if spec.live else cfg.read_timeout_s,
        )
    except NvdecUnsupported as why:
        _log.info("stream decoded by OpenCV", stream=spec.display, reason=str(why))
        return None
    except ValueError as error:  # decode: nvdec and a codec NVDEC refuses: retrying cannot help
        raise CaptureError(str(error), permanent=True) from None
    except TimeoutError as error:
        raise CaptureError(
            f"cannot open {spec.kind} stream {spec.display}: {error}", permanent=False
        ) from None
    except Exception as error:  # PyNvVideoCodec's demuxer could not open it
        what = f"{type(error).__name__}: {error}"
        if spec.kind == "file":
            raise CaptureError(
                f"{spec.display} is not a video NVDEC's demuxer can read ({what})", True
            ) from None
        raise CaptureError(
            f"cannot open {spec.kind} stream {spec.display} on NVDEC ({what})", False
        ) from None


def open_reader(
    cfg: StreamConfig, spec: SourceSpec, *, decode: str = "cpu", gpu: int = 0, threads: int | None = None
) -> Reader:
    """Open ``spec``; raises ``CaptureError`` (``permanent`` or not) with a reason free of credentials.

    ``decode`` (auto | cpu | nvdec, :mod:`vstmon.ingest.decode`): ``cpu`` is OpenCV, as it always was; the others
    may give an NVDEC reader (CUDA device ``gpu``) for files and RTSP streams.
    """
    if spec.kind == "testsrc":
        return _testsrc(cfg, str(spec.target))
    if spec.kind == "webcam":
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, round(cfg.open_timeout_s * 1000)]
        for prop, value in (
            (cv2.CAP_PROP_FRAME_WIDTH, cfg.width),
            (cv2.CAP_PROP_FRAME_HEIGHT, cfg.height),
            (cv2.CAP_PROP_FPS, cfg.fps),
        ):
            if value:
                params += [prop, round(value)]
        capture = cv2.VideoCapture(spec.target, cv2.CAP_V4L2, params)
        if not capture.isOpened():
            capture.release()
            raise CaptureError(f"cannot open webcam {spec.display} (V4L2)", permanent=False)
        return _CvReader(capture, "webcam")

    if decode != "cpu" and (nvdec := _open_nvdec(cfg, spec, decode, gpu)) is not None:
        return nvdec
    use_capture_options(cfg.transport if spec.kind == "rtsp" else None)
    started_s = time.monotonic()
    capture = cv2.VideoCapture(str(spec.target), cv2.CAP_FFMPEG, _open_params(cfg, spec.live, threads))
    if not capture.isOpened():
        capture.release()
        if spec.kind == "file":
            raise CaptureError(
                f"{spec.display} is not a video OpenCV/FFmpeg can decode (unknown format or codec)",
                permanent=True,
            )
        took_s = time.monotonic() - started_s
        why = "timed out" if took_s >= cfg.open_timeout_s * 0.9 else "failed"
        raise CaptureError(
            f"cannot open {spec.kind} stream {spec.display}: {why} after {took_s:.1f} s "
            "(host unreachable, connection refused, not authorised or no such stream)",
            permanent=False,
        )
    return _CvReader(capture, spec.kind)
