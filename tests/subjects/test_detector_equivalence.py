"""The torch person detector gives the boxes OpenCV's DNN module gives on the same frozen graph (the test oracle,
tests/helpers/opencv_ssd.py), on real footage: vtest.avi (a walkway, small people), bikes.mp4 (street, cuts),
carphone (one man filling the frame: the largest anchors). Batched equals one by one; the padding arithmetic
equals TensorFlow's.

Measured on every third frame of the three videos (389 frames, 1341 boxes at score 0.3, 1061 at 0.5): every box
matched one to one, smallest IoU 0.99999, largest score difference 5.4e-6.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers.opencv_ssd import OpenCvSsd
from tests.helpers.videos import video_frames
from vstmon.subjects.detector import PersonDetector, greedy_nms
from vstmon.subjects.ssd_torch import ConvUnit, feature_sizes, tf_same_padding

SCORE = 0.3
MIN_IOU = 0.98  # the bar; measured 0.99999
MAX_SCORE_DIFF = 0.01  # measured 5.4e-6


def squeezed_frames(path: Path, every: int, limit: int, start: int = 0) -> list[np.ndarray]:
    """Every ``every``-th frame from ``start``, squeezed to 300x300 as the daemon's source does (aspect ratio not kept)."""
    frames = []
    for index, frame, _ in video_frames(path):
        if len(frames) == limit:
            break
        if index >= start and (index - start) % every == 0:
            frames.append(cv2.resize(frame, (300, 300), interpolation=cv2.INTER_LINEAR))
    assert frames, f"no frames read from {path}"
    return frames


@pytest.fixture(scope="module")
def footage(vtest_avi: Path, bikes_mp4: Path, carphone_mp4: Path) -> dict[str, list[np.ndarray]]:
    return {
        "vtest": squeezed_frames(vtest_avi, every=40, limit=20),
        "bikes": squeezed_frames(bikes_mp4, every=5, limit=10, start=100),  # the stretch with riders in view
        "carphone": squeezed_frames(carphone_mp4, every=10, limit=10),
    }


@pytest.fixture(scope="module")
def oracle(pedestrian_pb: Path) -> OpenCvSsd:
    return OpenCvSsd(pedestrian_pb, score_threshold=SCORE)


@pytest.fixture(scope="module")
def detector(pedestrian_pb: Path) -> PersonDetector:
    return PersonDetector(pedestrian_pb, score_threshold=SCORE)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def compare(expected: np.ndarray, found: np.ndarray, where: str) -> tuple[float, float]:
    """Match one to one (each expected box takes the unmatched found box it overlaps most); every box of either
    side above the threshold by more than the score tolerance must be matched. (smallest IoU, largest score diff)"""
    taken: set[int] = set()
    worst_iou, worst_diff = 1.0, 0.0
    for row in expected:
        best_iou, best_j = max(
            ((iou(row, found[j]), j) for j in range(len(found)) if j not in taken), default=(0, -1)
        )
        if best_iou < MIN_IOU:
            assert row[4] < SCORE + MAX_SCORE_DIFF, f"{where}: OpenCV's box {row} has no match in {found}"
            continue
        taken.add(best_j)
        worst_iou, worst_diff = (
            min(worst_iou, best_iou),
            max(worst_diff, abs(float(row[4] - found[best_j][4]))),
        )
    for j, row in enumerate(found):
        assert j in taken or row[4] < SCORE + MAX_SCORE_DIFF, f"{where}: torch's box {row} is not OpenCV's"
    return worst_iou, worst_diff


# -- the acceptance: same boxes as OpenCV on real footage ---------------------------------------------------------
@pytest.mark.parametrize("video", ["vtest", "bikes", "carphone"])
def test_torch_gives_the_boxes_opencv_gives(
    video: str, footage: dict[str, list[np.ndarray]], oracle: OpenCvSsd, detector: PersonDetector
) -> None:
    boxes = 0
    for index, frame in enumerate(footage[video]):
        expected, found = oracle.detect(frame), detector.detect(frame)
        worst_iou, worst_diff = compare(expected, found, f"{video} frame {index}")
        assert worst_iou >= MIN_IOU and worst_diff <= MAX_SCORE_DIFF
        boxes += len(expected)
    assert boxes >= {"vtest": 60, "bikes": 8, "carphone": 10}[video]  # the footage has people in it


def test_batched_equals_one_by_one(footage: dict[str, list[np.ndarray]], detector: PersonDetector) -> None:
    frames = footage["vtest"][:6] + footage["carphone"][:2]  # people small and large, one forward
    batched = detector.detect_batch(np.stack(frames))
    assert len(batched) == len(frames)
    for index, (frame, together) in enumerate(zip(frames, batched, strict=True)):
        alone = detector.detect(frame)
        assert together.shape == alone.shape and together.dtype == np.float32, f"frame {index}"
        np.testing.assert_allclose(together, alone, atol=1e-5, err_msg=f"frame {index}")


def test_rgb_frames_and_tensors_give_the_same_boxes(
    footage: dict[str, list[np.ndarray]], detector: PersonDetector
) -> None:
    bgr = np.stack(footage["vtest"][:2])  # (2, 300, 300, 3)
    expected = detector.detect_batch(bgr)
    rgb = torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1]))
    for got, want in zip(detector.detect_batch(rgb, channels="rgb"), expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_a_bad_batch_is_refused(detector: PersonDetector) -> None:
    with pytest.raises(ValueError, match=r"\(N, 300, 300, 3\) uint8 frames; got shape \(2, 200, 300, 3\)"):
        detector.detect_batch(np.zeros((2, 200, 300, 3), np.uint8))
    with pytest.raises(ValueError, match="dtype float32"):
        detector.detect_batch(np.zeros((1, 300, 300, 3), np.float32))
    with pytest.raises(ValueError, match="got shape \\(0, 300, 300, 3\\)"):
        detector.detect_batch(np.zeros((0, 300, 300, 3), np.uint8))
    with pytest.raises(ValueError, match="channels must be 'bgr' or 'rgb'"):
        detector.detect_batch(np.zeros((1, 300, 300, 3), np.uint8), channels="yuv")


# -- the arithmetic under it ---------------------------------------------------------------------------------------
def reference_same_conv(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
    """TensorFlow's SAME depthwise convolution, by its definition: x (C, H, W), w (C, k, k) -> (C, ceil(H/s), ...)."""
    channels, height, width = x.shape
    kernel = w.shape[-1]
    out_h, out_w = -(-height // stride), -(-width // stride)
    pad_h = max((out_h - 1) * stride + kernel - height, 0)
    pad_w = max((out_w - 1) * stride + kernel - width, 0)
    padded = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)))
    out = np.zeros((channels, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            window = padded[:, i * stride : i * stride + kernel, j * stride : j * stride + kernel]
            out[:, i, j] = (window * w).sum(axis=(1, 2))
    return out


@pytest.mark.parametrize("size_px", [1, 2, 3, 4, 5, 19, 38])
@pytest.mark.parametrize("stride", [1, 2])
def test_convolutions_pad_as_tensorflow_does(size_px: int, stride: int) -> None:
    rng = np.random.default_rng(size_px * 10 + stride)
    unit = ConvUnit(4, 4, 3, stride, depthwise=True, relu6=False)
    weights = rng.normal(size=(4, 3, 3)).astype(np.float32)
    with torch.no_grad():
        unit.conv.weight.copy_(torch.from_numpy(weights[:, None]))
        unit.conv.bias.zero_()
        x = rng.normal(size=(4, size_px, size_px)).astype(np.float32)
        got = unit(torch.from_numpy(x)[None])[0].numpy()
    np.testing.assert_allclose(got, reference_same_conv(x, weights, stride), atol=1e-5)


def test_same_padding_puts_the_odd_pixel_after() -> None:
    assert tf_same_padding(300, 3, 2) == (0, 1)  # the stem: TF pads only the bottom/right
    assert tf_same_padding(75, 3, 2) == (1, 1)
    assert tf_same_padding(1, 3, 1) == (1, 1)  # the last head: a 1x1 map, only the centre tap counts
    assert tf_same_padding(10, 1, 1) == (0, 0)
    assert feature_sizes(300) == (19, 10, 5, 3, 2, 1)


def test_the_network_has_the_graphs_anchors(detector: PersonDetector) -> None:
    assert detector.network.num_anchors == 19 * 19 * 3 + (100 + 25 + 9 + 4 + 1) * 6 == 1917
    centres = detector.network.anchors[: 19 * 19 * 3 : 3, :2]  # head 0: rows then columns, (cy, cx)
    assert centres[0].tolist() == pytest.approx([0.5 / 19, 0.5 / 19])
    assert centres[1].tolist() == pytest.approx([0.5 / 19, 1.5 / 19])
    assert F.relu(detector.network.anchors[:, 2:]).min() > 0  # every anchor has a size


def test_suppression_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 0.9], [0, 0, 0.5, 0.5], [0.6, 0.6, 1, 1]], np.float32)
    scores = np.array([0.6, 0.9, 0.8, 0.8], np.float32)
    kept = greedy_nms(boxes, scores, iou_threshold=0.45, top_k=100)
    assert kept.tolist() == [1, 2, 3]  # box 0 overlaps box 1 by 0.9; ties keep the input order
    assert greedy_nms(boxes, scores, 0.45, top_k=2).tolist() == [1, 2]  # only the two best enter
    assert greedy_nms(boxes[:0], scores[:0], 0.45, 100).tolist() == []


# -- on a GPU box ---------------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_on_cuda_the_boxes_equal_the_cpus(
    pedestrian_pb: Path,
    footage: dict[str, list[np.ndarray]],
    detector: PersonDetector,
) -> None:
    on_gpu = PersonDetector(pedestrian_pb, score_threshold=SCORE, device="cuda")
    frames = np.stack(footage["vtest"][:8] + footage["carphone"][:4])
    on_device = torch.from_numpy(frames).to("cuda")  # frames already on the GPU stay there
    for index, (gpu, gpu_tensor, cpu) in enumerate(
        zip(
            on_gpu.detect_batch(frames),
            on_gpu.detect_batch(on_device),
            detector.detect_batch(frames),
            strict=True,
        )
    ):
        compare(cpu, gpu, f"frame {index}")
        np.testing.assert_array_equal(gpu, gpu_tensor)
