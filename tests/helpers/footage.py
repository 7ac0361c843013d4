"""Shared test helpers (moved from tests/subjects/test_subjects.py so that no test imports another test module)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SPLICE_SIZE = (384, 288)  # vtest.avi halved: the detector squeezes frames to 300 x 300 anyway

VTEST_FPS = 10.0


def lossless_from(source: Path, out: Path, ranges: list[range], size: tuple[int, int] = SPLICE_SIZE) -> Path:
    """Frames ``ranges`` of ``source`` (in order), resized, losslessly (FFV1 .avi) at vtest's 10 fps: a file
    that starts later holds exactly the same pictures. (MJPG is not enough: OpenCV's writer encodes a file's
    first frame at another quality than the rest.)"""
    capture = cv2.VideoCapture(str(source))
    frames: dict[int, np.ndarray] = {}
    wanted = {i for r in ranges for i in r}
    index = 0
    while index <= max(wanted):
        ok, frame = capture.read()
        assert ok, f"{source} has no frame {index}"
        if index in wanted:
            frames[index] = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        index += 1
    capture.release()
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"FFV1"), VTEST_FPS, size)
    assert writer.isOpened(), "OpenCV cannot write FFV1"
    for r in ranges:
        for i in r:
            writer.write(frames[i])
    writer.release()
    return out
