"""Automatic reset triggers on downscaled frames: ``SceneChangeDetector`` (hard cuts) and ``MotionDetector`` (idle).

Both take ``(H, W, 3)`` uint8 RGB frames (any size; the ring's fitted frames in the daemon) and the frame's
stream clock in seconds, downscale into preallocated buffers (``cv2.INTER_AREA``, which also averages away
sensor noise), and compare with the previous/reference frame. Only tiny temporaries are allocated per frame.
"""

from __future__ import annotations

import cv2
import numpy as np

from vstmon.config import SceneChangeConfig

__all__ = ["MotionDetector", "SceneChangeDetector"]


def _check_frame(frame: np.ndarray) -> None:
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 frame, got shape {frame.shape} dtype {frame.dtype}")


class SceneChangeDetector:
    """Hard-cut detector: ``update(frame, ts) -> True`` at the first frame of a new scene.

    Score between consecutive frames, both downscaled to ``cfg.size_px`` square, in 0..1:
    ``max(hist, min(1, pixel_gain * pixel))`` where ``hist`` is the total-variation distance between the
    per-channel colour histograms (``bins`` bins, averaged over R, G, B) and ``pixel`` is the mean absolute
    pixel difference / 255. The histogram term catches a cut to different colours; the pixel term catches a
    cut between scenes with similar colours but a different layout. Smooth motion and camera noise move few
    pixels far at the downscaled size, so they score low. A cut is reported when the score reaches
    ``cfg.threshold`` and at least ``cfg.min_segment_s`` of stream time has passed since the last cut (or since
    the first frame after ``reset()``); a suppressed cut is not reported later.
    """

    def __init__(self, cfg: SceneChangeConfig, bins: int = 16, pixel_gain: float = 2.5) -> None:
        if not 2 <= bins <= 256 or 256 % bins:
            raise ValueError(f"bins must divide 256, got {bins}")
        self.threshold = cfg.threshold
        self.min_segment_s = cfg.min_segment_s
        self.size_px = cfg.size_px
        self.pixel_gain = pixel_gain
        self._bins = bins
        size = cfg.size_px
        self._small = np.zeros((2, size, size, 3), dtype=np.uint8)  # (slot, H, W, C): current / previous
        self._hist = np.zeros((2, 3, bins), dtype=np.float32)  # (slot, C, bins), normalised to sum 1
        self._diff = np.zeros((size, size, 3), dtype=np.uint8)
        self._scale = 1.0 / float(size * size)
        self._cur = 0
        self.last_score = 0.0
        self.cuts = 0
        self.reset()

    def reset(self) -> None:
        """Forget the previous frame; the next frame starts a new segment (debounce restarts there)."""
        self._has_prev = False
        self._last_cut_s = 0.0

    def score(self, frame_rgb_uint8: np.ndarray) -> float | None:
        """Downscale ``frame``, make it the current frame and return its score against the previous one."""
        _check_frame(frame_rgb_uint8)
        cur = self._cur
        small = self._small[cur]
        cv2.resize(frame_rgb_uint8, (self.size_px, self.size_px), dst=small, interpolation=cv2.INTER_AREA)
        hist = self._hist[cur]
        for channel in range(3):
            counts = cv2.calcHist([small], [channel], None, [self._bins], [0, 256])  # (bins,) or (bins, 1)
            hist[channel] = counts.reshape(-1)
        hist *= self._scale
        prev = 1 - cur
        self._cur = prev  # the frame just written becomes "previous" for the next call
        if not self._has_prev:
            self._has_prev = True
            return None
        hist_distance = 0.5 * float(np.abs(hist - self._hist[prev]).sum()) / 3.0
        cv2.absdiff(small, self._small[prev], dst=self._diff)
        means = cv2.mean(self._diff)  # per-channel means (4-tuple)
        pixel = (means[0] + means[1] + means[2]) / (3.0 * 255.0)
        return max(hist_distance, min(1.0, self.pixel_gain * pixel))

    def update(self, frame_rgb_uint8: np.ndarray, stream_ts_s: float) -> bool:
        """Feed the next frame; True when a hard cut happens at this frame."""
        first = not self._has_prev
        score = self.score(frame_rgb_uint8)
        if first or score is None or stream_ts_s < self._last_cut_s:  # first frame, or the clock restarted
            self._last_cut_s = stream_ts_s
            self.last_score = 0.0
            return False
        self.last_score = score
        if score >= self.threshold and stream_ts_s - self._last_cut_s >= self.min_segment_s:
            self._last_cut_s = stream_ts_s
            self.cuts += 1
            return True
        return False


class MotionDetector:
    """Idle detector: ``update(frame, ts) -> idle_for_s``, stream seconds since the last motion.

    Motion = mean absolute grey-level difference (0..255) between the downscaled frame and a reference frame
    reaching ``threshold``; the reference is the frame of the last motion, so slow movement accumulates until it
    counts, while sensor noise (averaged away by the downscale) does not.
    """

    def __init__(self, threshold: float = 2.0, size_px: int = 32) -> None:
        if threshold < 0:
            raise ValueError(f"motion threshold must be >= 0, got {threshold}")
        self.threshold = threshold
        self.size_px = size_px
        self._small = np.zeros((size_px, size_px, 3), dtype=np.uint8)
        self._gray = np.zeros((size_px, size_px), dtype=np.uint8)
        self._ref = np.zeros((size_px, size_px), dtype=np.uint8)
        self._diff = np.zeros((size_px, size_px), dtype=np.uint8)
        self.last_difference = 0.0
        self.reset()

    def reset(self) -> None:
        """Forget the reference; the next frame counts as motion (idle time restarts)."""
        self._has_ref = False
        self._last_motion_s = 0.0

    def update(self, frame_rgb_uint8: np.ndarray, stream_ts_s: float) -> float:
        """Feed the next frame; returns seconds (stream clock) since the last motion."""
        _check_frame(frame_rgb_uint8)
        cv2.resize(
            frame_rgb_uint8, (self.size_px, self.size_px), dst=self._small, interpolation=cv2.INTER_AREA
        )
        cv2.cvtColor(self._small, cv2.COLOR_RGB2GRAY, dst=self._gray)
        if not self._has_ref or stream_ts_s < self._last_motion_s:
            self._has_ref = True
            self._ref[...] = self._gray
            self._last_motion_s = stream_ts_s
            self.last_difference = 0.0
            return 0.0
        cv2.absdiff(self._gray, self._ref, dst=self._diff)
        self.last_difference = float(cv2.mean(self._diff)[0])
        if self.last_difference >= self.threshold:
            self._ref[...] = self._gray
            self._last_motion_s = stream_ts_s
        return stream_ts_s - self._last_motion_s
