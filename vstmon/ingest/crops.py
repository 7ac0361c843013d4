"""Square crops around tracked people, cut from the source frame at its own resolution.

``square_crop_px(box, width_px, height_px, margin)``: the box (normalised to the frame) grown by ``margin`` of its
size on every side, made square on its longer side, and moved inside the frame (a square larger than the frame's
short side becomes that side). Moving keeps the square square: the person is not stretched, only off-centre at an
edge. ``CropFitter.fit(frame_bgr, rect, out)`` writes that square resized to the model's input, RGB, into ``out``
(a ring slot), allocating nothing per frame once the first crop of a size has been made.

Cropping the source frame, not the model's already-downscaled frame, is the point: a person 100 px tall in a
640x480 frame is ~45 px in a 224 px centre crop, but fills a 224 px crop of its own.
"""

from __future__ import annotations

import cv2
import numpy as np

from vstmon.types import Box

__all__ = ["CropFitter", "square_crop_px"]


def square_crop_px(box: Box, width_px: int, height_px: int, margin: float) -> tuple[int, int, int]:
    """(x0, y0, side) in pixels of the square crop around ``box`` (see the module docstring)."""
    if width_px < 1 or height_px < 1:
        raise ValueError(f"frame size must be positive, got {width_px}x{height_px}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    x0, y0, x1, y1 = box
    box_w_px = max(0.0, x1 - x0) * width_px
    box_h_px = max(0.0, y1 - y0) * height_px
    centre_x_px = (x0 + x1) / 2 * width_px
    centre_y_px = (y0 + y1) / 2 * height_px
    side = max(1, min(round(max(box_w_px, box_h_px) * (1 + 2 * margin)), width_px, height_px))
    left = min(max(round(centre_x_px - side / 2), 0), width_px - side)
    top = min(max(round(centre_y_px - side / 2), 0), height_px - side)
    return left, top, side


class CropFitter:
    """Cuts square crops out of BGR frames into ``(size_px, size_px, 3)`` uint8 RGB arrays (one per thread)."""

    def __init__(self, size_px: int) -> None:
        self.size_px = int(size_px)
        self._resized = np.empty((self.size_px, self.size_px, 3), np.uint8)  # BGR, reused

    def fit(self, frame_bgr: np.ndarray, rect: tuple[int, int, int], out: np.ndarray) -> np.ndarray:
        """Write the square ``rect`` = (x0, y0, side) of ``frame_bgr``, resized and RGB, into ``out``."""
        left, top, side = rect
        crop = frame_bgr[top : top + side, left : left + side]  # (side, side, 3) view
        if crop.shape[0] != side or crop.shape[1] != side:
            raise ValueError(f"crop {rect} is outside the {frame_bgr.shape[1]}x{frame_bgr.shape[0]} frame")
        size = self.size_px
        interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        cv2.resize(crop, (size, size), dst=self._resized, interpolation=interpolation)
        cv2.cvtColor(self._resized, cv2.COLOR_BGR2RGB, dst=out)
        return out
