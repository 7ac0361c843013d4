"""Preprocessing: BGR -> RGB, short-side resize, centre crop (host, uint8) and normalisation (device)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from tests.helpers.videos import decode_index, render_frame
from vstmon.ingest.fit import FrameFitter, fit_frame, fitted_size
from vstmon.model.normalize import MEAN_RGB, STD_RGB, normalize_clips

cv2.setNumThreads(1)


def test_output_is_rgb_uint8_of_the_crop_size() -> None:
    frame = np.empty((48, 80, 3), np.uint8)
    frame[...] = (10, 20, 30)  # B, G, R
    out = np.zeros((32, 32, 3), np.uint8)
    result = FrameFitter(32).fit(frame, out)
    assert result is out
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert (out == np.array([30, 20, 10], np.uint8)).all()  # R, G, B


def test_fitted_size_follows_short_side_with_mmcv_rounding() -> None:
    assert fitted_size(1920, 1080, 224) == (398, 224)  # 1920 * 224 / 1080 = 398.2
    assert fitted_size(1080, 1920, 224) == (224, 398)
    assert fitted_size(340, 256, 224) == (298, 224)  # 297.5 rounds up
    assert fitted_size(224, 224, 224) == (224, 224)


@pytest.mark.parametrize("landscape", [True, False])
def test_crop_is_the_centre_of_the_long_side(landscape: bool) -> None:
    # three bands along the long side: quarter red, half green, quarter blue; the crop sees only green
    long_px, short_px = 160, 80
    frame = np.empty((long_px, short_px, 3), np.uint8)
    frame[:40], frame[40:120], frame[120:] = (0, 0, 255), (0, 255, 0), (255, 0, 0)
    if landscape:
        frame = np.ascontiguousarray(frame.transpose(1, 0, 2))  # (80, 160, 3)
    out = fit_frame(frame, 32)
    assert (out == np.array([0, 255, 0], np.uint8)).all()


def test_fit_equals_resize_then_crop_then_rgb_by_hand() -> None:
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, size=(90, 150, 3), dtype=np.uint8)
    out = fit_frame(frame, 64)
    new_w, new_h = fitted_size(150, 90, 64)  # (107, 64)
    resized = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    left = (new_w - 64) // 2
    expected = resized[:, left : left + 64, ::-1]
    np.testing.assert_array_equal(out, expected)


def test_the_index_code_of_test_videos_survives_the_fit() -> None:
    fitter = FrameFitter(64)
    out = np.empty((64, 64, 3), np.uint8)
    for index in (0, 1, 777, 40_000):
        fitter.fit(render_frame(index, (160, 96)), out)
        assert decode_index(out) == index


def test_no_reallocation_for_the_same_source_size() -> None:
    fitter = FrameFitter(32)
    out = np.empty((32, 32, 3), np.uint8)
    fitter.fit(render_frame(0, (96, 64)), out)
    buffer = fitter._resized
    for index in range(1, 5):
        assert fitter.fit(render_frame(index, (96, 64)), out) is out
        assert fitter._resized is buffer
    fitter.fit(render_frame(0, (64, 96)), out)  # a new resolution gets its own buffer once
    assert fitter._resized is not buffer and fitter._resized.shape == (48, 32, 3)


def test_fit_writes_into_a_ring_slot_view() -> None:
    slots = np.zeros((3, 32, 32, 3), np.uint8)
    frame = np.full((40, 60, 3), (1, 2, 3), np.uint8)
    FrameFitter(32).fit(frame, slots[1])
    assert (slots[1] == np.array([3, 2, 1], np.uint8)).all()
    assert not slots[0].any() and not slots[2].any()


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((40, 60), np.uint8, "grayscale"),
        ((40, 60, 1), np.uint8, "grayscale"),
        ((40, 60, 4), np.uint8, "BGRA"),
        ((40, 60, 3), np.float32, "uint8"),
        ((2, 40, 60, 3), np.uint8, "shape"),
    ],
)
def test_bad_frames_are_refused_with_a_clear_error(shape: tuple[int, ...], dtype: type, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FrameFitter(32).fit(np.zeros(shape, dtype), np.empty((32, 32, 3), np.uint8))


def test_wrong_output_buffer_is_refused() -> None:
    with pytest.raises(ValueError, match="out must be"):
        FrameFitter(32).fit(np.zeros((40, 60, 3), np.uint8), np.empty((16, 16, 3), np.uint8))


def test_normalisation_equals_a_hand_computation() -> None:
    rng = np.random.default_rng(2)
    clips = rng.integers(0, 256, size=(2, 3, 8, 8, 3), dtype=np.uint8)  # (N, T, H, W, 3)
    x = normalize_clips(torch.from_numpy(clips))
    assert x.shape == (2, 3, 3, 8, 8) and x.dtype == torch.float32 and x.is_contiguous()
    expected = (clips.astype(np.float64) - np.array(MEAN_RGB)) / np.array(STD_RGB)  # (N, T, H, W, 3)
    expected = expected.transpose(0, 4, 1, 2, 3)  # (N, 3, T, H, W)
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-6, atol=1e-5)
    # channel 0 is red: a pure-red pixel normalises to the red statistics
    red = torch.zeros((1, 1, 1, 1, 3), dtype=torch.uint8)
    red[..., 0] = 255
    values = normalize_clips(red).flatten().tolist()
    assert values == pytest.approx(
        [(255 - MEAN_RGB[0]) / STD_RGB[0], -MEAN_RGB[1] / STD_RGB[1], -MEAN_RGB[2] / STD_RGB[2]]
    )


def test_normalisation_can_cast_and_refuses_bad_input() -> None:
    clips = torch.zeros((1, 2, 4, 4, 3), dtype=torch.uint8)
    assert normalize_clips(clips, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="uint8"):
        normalize_clips(clips.float())
    with pytest.raises(ValueError, match=r"\(N, T, H, W, 3\)"):
        normalize_clips(clips[0])


@pytest.mark.gpu
def test_normalisation_runs_on_the_device_of_its_input() -> None:
    clips = torch.randint(0, 256, (2, 4, 32, 32, 3), dtype=torch.uint8)
    on_gpu = normalize_clips(clips.cuda())
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), normalize_clips(clips), rtol=1e-6, atol=1e-5)
