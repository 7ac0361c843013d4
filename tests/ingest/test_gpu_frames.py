"""Frames as tensors (vstmon/ingest/gpu_frames.py): the fitting, the detector's squeeze and the per-subject crops
give what the OpenCV path gives, on real footage; the ring's memory is fixed. Run on CPU tensors here (the
arithmetic is torch's on any device); the same on CUDA is in tests/test_nvdec.py.

Measured on vtest.avi frame 100 (768x576): model crops at 160-600 px differ from OpenCV's by 0.10-0.12 of 255 on
average (at most 1: rounding); crops shrunk 2x by 0.8 (OpenCV's area filter against antialiased bilinear).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.helpers.videos import video_frames
from vstmon.ingest.crops import CropFitter, square_crop_px
from vstmon.ingest.fit import FrameFitter
from vstmon.ingest.gpu_frames import GpuFrameRing, crop_tensor, fit_tensor, squeeze_tensor

MAX_MEAN_DIFF = 2.0  # of 255: the bar for frames of the GPU path against the CPU path's


def frame_at(path: Path, index: int) -> np.ndarray:
    for at, frame, _ in video_frames(path):
        if at == index:
            return frame
    raise AssertionError(f"{path} has no frame {index}")


@pytest.fixture(scope="module")
def frames(vtest_avi: Path, bikes_mp4: Path) -> list[np.ndarray]:
    return [frame_at(vtest_avi, 100), frame_at(bikes_mp4, 120)]  # 768x576 and 640x272


def as_rgb_tensor(frame_bgr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frame_bgr[..., ::-1]))


def mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("size_px", [160, 224, 320])
def test_the_model_crop_equals_the_cpu_paths(frames: list[np.ndarray], size_px: int) -> None:
    for frame in frames:
        expected = FrameFitter(size_px).fit(frame, np.empty((size_px, size_px, 3), np.uint8))
        got = fit_tensor(as_rgb_tensor(frame), size_px).numpy()
        assert mean_diff(got, expected) < 0.5  # measured 0.10-0.12: half-pixel bilinear both, rounding apart


def test_the_detection_frame_equals_the_cpu_paths_squeeze(frames: list[np.ndarray]) -> None:
    for frame in frames:
        expected = cv2.resize(frame, (300, 300), interpolation=cv2.INTER_LINEAR)[..., ::-1]
        got = squeeze_tensor(as_rgb_tensor(frame), 300).numpy()
        assert mean_diff(got, expected) < 0.5


@pytest.mark.parametrize("box", [(0.45, 0.3, 0.55, 0.6), (0.0, 0.0, 0.2, 0.3), (0.1, 0.1, 0.9, 0.95)])
def test_a_persons_crop_at_source_resolution_equals_the_cpu_paths(
    frames: list[np.ndarray], box: tuple[float, float, float, float]
) -> None:
    for frame in frames:
        height, width = frame.shape[:2]
        rect = square_crop_px(box, width, height, margin=0.2)
        expected = CropFitter(224).fit(frame, rect, np.empty((224, 224, 3), np.uint8))
        got = crop_tensor(as_rgb_tensor(frame), rect, 224).numpy()
        assert mean_diff(got, expected) < MAX_MEAN_DIFF  # measured at most 0.8 (shrunk 2x)


def test_a_crop_outside_the_frame_is_refused(frames: list[np.ndarray]) -> None:
    with pytest.raises(ValueError, match=r"crop \(700, 0, 100\) is outside the 768x576 frame"):
        crop_tensor(as_rgb_tensor(frames[0]), (700, 0, 100), 224)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 RGB tensor"):
        fit_tensor(torch.zeros((10, 10, 3), dtype=torch.float32), 8)


def test_the_ring_holds_fixed_memory_and_forgets_the_oldest(frames: list[np.ndarray]) -> None:
    ring = GpuFrameRing(slots=4, size_px=64, device="cpu")
    assert ring.vram_bytes == 4 * 64 * 64 * 3
    storage = ring.frames.data_ptr()
    rgb = as_rgb_tensor(frames[0])
    for seq in range(10):
        assert ring.write(rgb, stream_ts_s=seq * 0.04) == seq
    assert ring.frames.data_ptr() == storage and ring.vram_bytes == 4 * 64 * 64 * 3  # no allocation per frame
    assert ring.read(5) is None and ring.read(10) is None and ring.read(-1) is None  # overwritten, not yet
    frame, ts_s = ring.read(9)  # type: ignore[misc]
    assert ts_s == pytest.approx(0.36)
    np.testing.assert_array_equal(frame.numpy(), fit_tensor(rgb, 64).numpy())
