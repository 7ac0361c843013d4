"""Shared test helpers (moved from tests/subjects/test_subjects.py so that no test imports another test module)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tests.helpers.videos import video_frames

SPLICE_SIZE = (384, 288)  # vtest.avi halved: the detector squeezes frames to 300 x 300 anyway

VTEST_FPS = 10.0


def lossless_from(source: Path, out: Path, ranges: list[range], size: tuple[int, int] = SPLICE_SIZE) -> Path:
    """Frames ``ranges`` of ``source`` (in order), resized, losslessly (FFV1 .avi) at vtest's 10 fps: a file
    that starts later holds exactly the same pictures. (MJPG is not enough: OpenCV's writer encodes a file's
    first frame at another quality than the rest.)"""
    wanted = {i for r in ranges for i in r}
    frames: dict[int, np.ndarray] = {}
    for index, frame, _ in video_frames(source):
        if index in wanted:
            frames[index] = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        if index == max(wanted):
            break
    assert wanted <= frames.keys(), f"{source} has no frame {min(wanted - frames.keys())}"
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"FFV1"), VTEST_FPS, size)
    assert writer.isOpened(), "OpenCV cannot write FFV1"
    for r in ranges:
        for i in r:
            writer.write(frames[i])
    writer.release()
    return out
