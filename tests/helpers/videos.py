"""Real video files for tests: deterministic content in which every frame can be told apart.

``make_video(path, n_frames, fps, size=(w, h), pattern="moving", codec="mp4v")`` writes a file with OpenCV's
``VideoWriter`` (``mp4v`` -> .mp4, ``MJPG`` -> .avi, ``XVID``) or with Debian's ``/usr/bin/ffmpeg`` (``h264``,
libx264; OpenCV's bundled FFmpeg cannot encode H.264).

Every frame (except ``pattern="static"``) carries its own index as a 16-bit code: two rows of eight black/white
blocks in a band across the middle of the frame's *central square*. The central square survives the centre crop
of preprocessing, so ``decode_index`` reads the index back from a decoded frame and from a fitted model crop alike
(BGR or RGB: the blocks are grey). Blocks are large (side / 8), so compression does not flip them.

``make_two_scene_video`` writes a video whose frames ``[0, cut_frame)`` are scene A (dark, blue, moving square) and
``[cut_frame, n_frames)`` scene B (bright, warm, checkerboard): a hard cut that histogram detectors see.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "CODE_BITS",
    "FFMPEG",
    "decode_index",
    "make_not_a_video",
    "make_two_scene_video",
    "make_video",
    "render_frame",
    "video_frames",
]

CODE_BITS = 16  # indices up to 65535 are encoded (mod 65536 beyond)
FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
PATTERNS = ("moving", "static", "noise", "scene_a", "scene_b")
_EXTENSIONS = {"mp4v": ".mp4", "MJPG": ".avi", "XVID": ".avi", "h264": ".mp4"}


def _central_square(width: int, height: int) -> tuple[int, int, int]:
    """(x0, y0, side) of the centred square that a centre crop keeps."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def _draw_code(img: np.ndarray, index: int) -> None:
    """Draw ``index`` as 2 x 8 grey blocks (white = 1) across the middle of the central square."""
    height, width = img.shape[:2]
    x0, y0, side = _central_square(width, height)
    block = side // 8
    top = y0 + side // 2 - block  # two rows of blocks centred vertically
    code = index % (1 << CODE_BITS)
    for bit in range(CODE_BITS):
        row, col = divmod(bit, 8)
        value = 255 if (code >> bit) & 1 else 0
        y, x = top + row * block, x0 + col * block
        img[y : y + block, x : x + block] = value


def decode_index(img: np.ndarray) -> int:
    """Read the frame index from a frame (or a centre crop of it) drawn by ``render_frame``."""
    if img.ndim != 3:
        raise ValueError(f"expected an (H, W, C) image, got shape {img.shape}")
    height, width = img.shape[:2]
    x0, y0, side = _central_square(width, height)
    block = side // 8
    top = y0 + side // 2 - block
    grey = img.astype(np.float32).mean(axis=2)
    code = 0
    for bit in range(CODE_BITS):
        row, col = divmod(bit, 8)
        y, x = top + row * block, x0 + col * block
        inner = grey[y + block // 4 : y + block - block // 4, x + block // 4 : x + block - block // 4]
        if inner.mean() > 127.5:
            code |= 1 << bit
    return code


def render_frame(index: int, size: tuple[int, int], pattern: str = "moving") -> np.ndarray:
    """The BGR uint8 frame ``index`` of ``pattern`` at ``size`` = (width, height); deterministic."""
    width, height = size
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; use one of {', '.join(PATTERNS)}")
    ys, xs = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    if pattern in ("moving", "scene_a", "static"):
        # dark blue-ish gradient background
        img[..., 0] = (96 + 96 * xs / max(width - 1, 1)).astype(np.uint8)  # B
        img[..., 1] = (32 + 48 * ys / max(height - 1, 1)).astype(np.uint8)  # G
        img[..., 2] = 24  # R
        if pattern == "static":
            return img
        # a bright square moving left to right (and wrapping), in the top quarter
        square = max(4, height // 6)
        x = (index * max(1, width // 40)) % max(1, width - square)
        img[2 : 2 + square, x : x + square] = (40, 220, 250)
    elif pattern == "scene_b":
        # bright warm checkerboard, shifting by a pixel a frame
        cell = max(4, min(width, height) // 10)
        checker = (((xs + index) // cell + ys // cell) % 2).astype(bool)
        img[...] = (60, 170, 240)
        img[checker] = (120, 230, 255)
    else:  # noise
        rng = np.random.default_rng(index)
        img[...] = rng.integers(0, 256, size=img.shape, dtype=np.uint8)
    _draw_code(img, index)
    return img


def _check_args(n_frames: int, fps: float, size: tuple[int, int], codec: str) -> None:
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    width, height = size
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"size must be even and >= 16 px on each side, got {size}")
    if codec not in _EXTENSIONS:
        raise ValueError(f"unknown codec {codec!r}; use one of {', '.join(_EXTENSIONS)}")


def _write(path: Path, frames: Iterator[np.ndarray], fps: float, size: tuple[int, int], codec: str) -> Path:
    """Write the frames yielded by ``frames`` (BGR uint8) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    if codec == "h264":
        command = [
            FFMPEG, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "bgr24",
            "-s", f"{width}x{height}", "-r", f"{fps}", "-i", "-",
            "-c:v", "libx264", "-preset", "veryfast", "-crf", "12", "-pix_fmt", "yuv420p",
            "-g", str(max(1, round(fps))), str(path),
        ]  # fmt: skip
        with subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            assert proc.stdin is not None
            try:
                for frame in frames:
                    proc.stdin.write(frame.tobytes())
            finally:
                proc.stdin.close()
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if proc.wait(timeout=120) != 0:
                raise RuntimeError(f"ffmpeg failed writing {path}: {stderr.strip()}")
    else:
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), float(fps), (width, height))
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write {codec} to {path}")
        writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 95)  # MJPG honours it; harmless otherwise
        try:
            for frame in frames:
                writer.write(frame)
        finally:
            writer.release()
    if not path.is_file() or path.stat().st_size == 0:
        raise RuntimeError(f"no video was written to {path}")
    return path


def make_video(
    path: str | Path,
    n_frames: int,
    fps: float,
    size: tuple[int, int] = (128, 96),
    pattern: str = "moving",
    codec: str = "mp4v",
    start_index: int = 0,
) -> Path:
    """Write ``n_frames`` frames of ``pattern`` at ``fps`` and ``size`` = (width, height); returns the path.

    Patterns: ``moving`` (gradient, moving square, index code), ``static`` (identical frames, no code),
    ``noise`` (seeded noise + code), ``scene_a`` / ``scene_b`` (the two scenes of ``make_two_scene_video``).
    The path's extension should suit the codec (.mp4 for mp4v/h264, .avi for MJPG/XVID). ``start_index``
    makes the file start at that frame of the pattern (e.g. the part of a longer video after a cut).
    """
    _check_args(n_frames, fps, size, codec)
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; use one of {', '.join(PATTERNS)}")
    frames = (render_frame(i, size, pattern) for i in range(start_index, start_index + n_frames))
    return _write(Path(path), frames, fps, size, codec)


def make_two_scene_video(
    path: str | Path,
    n_frames: int,
    fps: float,
    size: tuple[int, int] = (128, 96),
    cut_frame: int | None = None,
    codec: str = "mp4v",
) -> Path:
    """Frames ``[0, cut_frame)`` show scene A, ``[cut_frame, n_frames)`` scene B (default cut: half way).

    Frame indices (the drawn code) keep counting across the cut.
    """
    _check_args(n_frames, fps, size, codec)
    cut = n_frames // 2 if cut_frame is None else cut_frame
    if not 0 < cut < n_frames:
        raise ValueError(f"cut_frame must be in (0, {n_frames}), got {cut}")
    frames = (render_frame(i, size, "scene_a" if i < cut else "scene_b") for i in range(n_frames))
    return _write(Path(path), frames, fps, size, codec)


def make_not_a_video(path: str | Path) -> Path:
    """A file with a video extension whose content is not a video (for error tests)."""
    path = Path(path)
    path.write_bytes(b"this is not a video file\n" * 64)
    return path


def video_frames(path: Path, backend: int = cv2.CAP_ANY) -> Iterator[tuple[int, np.ndarray, float]]:
    """(index, BGR frame, stream clock in s) of every frame OpenCV decodes from ``path``, in order; the capture
    is released when the loop ends or is left."""
    capture = cv2.VideoCapture(str(path), backend)
    try:
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield index, frame, capture.get(cv2.CAP_PROP_POS_MSEC) / 1000
            index += 1
    finally:
        capture.release()
