"""PersonDetector (torch SSDLite-MobileNetV2) on real footage with the real person-only graph (tests/helpers/assets.py).

Detection quality is checked against people annotated by hand (by looking at the frames) on seven frames of
opencv-doc's vtest.avi: a detection matches an unmatched annotated person when their IoU is at least 0.3
(boxes of people 60-120 px tall drawn by eye, and people walking in pairs, do not support a stricter match).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.helpers.videos import video_frames
from vstmon.errors import DetectorError
from vstmon.subjects.detector import PersonDetector
from vstmon.subjects.ssd_spec import describe_ssd
from vstmon.subjects.tf_graph import FrozenGraph

MATCH_IOU = 0.3
VTEST_SIZE_PX = (768, 576)  # width, height
# vtest.avi frame index -> every person in view, (x0, y0, x1, y1) in pixels of the 768x576 frame, annotated by
# eye on 1.5x and 4x enlargements with a 10-20 px grid. Includes people partly hidden (behind the sign post,
# cut by the frame's edge), people walking in close pairs and a far-away one 38 px tall.
PEOPLE_PX: dict[int, list[tuple[int, int, int, int]]] = {
    40: [(376, 177, 399, 257), (398, 184, 425, 262), (438, 191, 459, 271), (565, 235, 605, 332),
         (600, 230, 634, 325), (737, 280, 768, 395)],
    150: [(72, 91, 88, 129), (639, 110, 657, 165), (659, 113, 679, 167), (713, 112, 727, 175),
          (388, 194, 416, 279), (433, 194, 462, 272), (441, 178, 474, 254), (590, 229, 623, 315)],
    260: [(37, 177, 61, 243), (162, 147, 188, 217), (320, 213, 363, 303), (483, 180, 510, 250),
          (531, 243, 570, 340), (621, 127, 641, 193), (641, 130, 661, 195)],
    370: [(319, 173, 367, 247), (489, 172, 519, 241), (500, 255, 537, 352), (592, 203, 630, 297),
          (735, 257, 768, 353)],
    480: [(405, 217, 432, 288), (463, 239, 507, 337), (577, 250, 610, 341), (610, 270, 643, 388)],
    700: [(185, 167, 212, 237), (280, 210, 308, 293), (365, 172, 397, 255), (403, 153, 425, 223),
          (475, 137, 495, 200), (520, 165, 543, 235), (102, 287, 142, 393), (690, 220, 730, 308)],
    780: [(239, 168, 261, 241), (320, 172, 350, 241), (310, 200, 347, 275), (350, 260, 393, 365),
          (567, 247, 602, 347), (612, 203, 643, 297), (665, 137, 687, 200)],
}  # fmt: skip


def read_frames(path: Path, wanted: set[int] | None = None, every: int = 1) -> dict[int, np.ndarray]:
    frames: dict[int, np.ndarray] = {}
    for index, frame, _ in video_frames(path):
        if (wanted is None and index % every == 0) or (wanted is not None and index in wanted):
            frames[index] = frame
    assert frames, f"no frames read from {path}"
    return frames


def iou(a: np.ndarray | tuple[float, ...], b: np.ndarray | tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def match(detections: np.ndarray, people: list[tuple[int, int, int, int]]) -> int:
    """Greedy matching in score order: each detection takes the unmatched person it overlaps most."""
    boxes_px = detections[:, :4] * np.array(VTEST_SIZE_PX * 2, dtype=np.float32)
    taken: set[int] = set()
    for box in boxes_px:
        scored = [(iou(box, person), j) for j, person in enumerate(people) if j not in taken]
        best_iou, best_j = max(scored, default=(0.0, -1))
        if best_iou >= MATCH_IOU:
            taken.add(best_j)
    return len(taken)


@pytest.fixture(scope="module")
def detector(pedestrian_pb: Path) -> PersonDetector:
    return PersonDetector(pedestrian_pb, score_threshold=0.3)


@pytest.fixture(scope="module")
def annotated(vtest_avi: Path) -> dict[int, np.ndarray]:
    frames = read_frames(vtest_avi, set(PEOPLE_PX))
    assert set(frames) == set(PEOPLE_PX)
    assert frames[40].shape == (576, 768, 3)
    return frames


def score(detector: PersonDetector, frames: dict[int, np.ndarray]) -> tuple[float, float, str]:
    matched = found = annotated = 0
    per_frame = []
    for index, people in PEOPLE_PX.items():
        detections = detector.detect(frames[index])
        hits = match(detections, people)
        matched, found, annotated = matched + hits, found + len(detections), annotated + len(people)
        per_frame.append(f"frame {index}: {hits} of {len(people)} people, {len(detections)} boxes")
    return matched / annotated, matched / max(found, 1), "; ".join(per_frame)


# -- quality on real footage -------------------------------------------------------------------------------------
def test_recall_and_precision_on_annotated_vtest_frames(
    detector: PersonDetector, annotated: dict[int, np.ndarray]
) -> None:
    # measured (OpenCV 4.11, 4.14 and 5.0 alike, and the torch detector): recall 33/45 = 0.73, precision 33/35 = 0.94
    # at score 0.3
    recall, precision, detail = score(detector, annotated)
    assert recall >= 0.65, detail
    assert precision >= 0.85, detail


def test_default_threshold_keeps_precision(
    pedestrian_pb: Path,
    annotated: dict[int, np.ndarray],
) -> None:
    # measured at the default 0.5: recall 24/45 = 0.53, precision 24/26 = 0.92 (fewer, surer boxes)
    strict = PersonDetector(pedestrian_pb)
    recall, precision, detail = score(strict, annotated)
    assert precision >= 0.85, detail
    assert recall >= 0.4, detail


def test_a_video_without_people_gives_no_detection(detector: PersonDetector, tree_avi: Path) -> None:
    frames = read_frames(tree_avi, every=2)  # a tree in the wind, 68 frames
    found = {index: detector.detect(frame) for index, frame in frames.items()}
    assert {index: len(boxes) for index, boxes in found.items() if len(boxes)} == {}


def test_a_frame_without_people_gives_no_detection(detector: PersonDetector) -> None:
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    grey = np.full((300, 300, 3), 128, dtype=np.uint8)
    assert detector.detect(noise).shape == (0, 5)
    assert detector.detect(grey).shape == (0, 5)


def test_carphone_gives_one_person_in_every_frame(detector: PersonDetector, carphone_mp4: Path) -> None:
    frames = read_frames(carphone_mp4, every=4)  # 176x144, one man talking in a car
    for index, frame in frames.items():
        boxes = detector.detect(frame)
        assert len(boxes) == 1, f"frame {index}: {boxes}"
        x0, y0, x1, y1, confidence = boxes[0]
        assert confidence >= 0.5
        assert x0 < 0.5 < x1 and y0 < 0.5 < y1  # he sits in the middle of the picture
        assert (x1 - x0) * (y1 - y0) > 0.3  # and fills a good part of it


# -- the output contract -----------------------------------------------------------------------------------------
def test_output_rows_are_normalised_sorted_float32(
    detector: PersonDetector, annotated: dict[int, np.ndarray]
) -> None:
    boxes = detector.detect(annotated[700])
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 5
    assert len(boxes) >= 5
    assert np.all(boxes[:, :4] >= 0.0) and np.all(boxes[:, :4] <= 1.0)
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    assert np.all(np.diff(boxes[:, 4]) <= 0)  # score descending
    assert np.all(boxes[:, 4] >= detector.score_threshold)


def test_a_frame_already_at_the_input_size_is_used_as_is(
    detector: PersonDetector, annotated: dict[int, np.ndarray]
) -> None:
    assert detector.input_size_px == 300
    frame = annotated[260]
    squeezed = cv2.resize(frame, (300, 300), interpolation=cv2.INTER_LINEAR)  # aspect ratio not kept
    from_full = detector.detect(frame)
    from_square = detector.detect(squeezed)
    np.testing.assert_array_equal(from_full, from_square)  # same normalised boxes: the squeeze cancels out
    again = detector.detect(squeezed)
    np.testing.assert_array_equal(again, from_square)  # the reused buffers carry nothing over
    assert squeezed.flags.writeable and np.array_equal(
        squeezed, cv2.resize(frame, (300, 300))
    )  # input untouched


def test_a_bad_image_is_refused(detector: PersonDetector) -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 BGR image; got shape \(300, 300\)"):
        detector.detect(np.zeros((300, 300), dtype=np.uint8))
    with pytest.raises(ValueError, match="dtype float32"):
        detector.detect(np.zeros((300, 300, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape \\(300, 300, 4\\)"):
        detector.detect(np.zeros((300, 300, 4), dtype=np.uint8))


# -- the graph and what it says about itself ---------------------------------------------------------------------
def test_the_pedestrian_graph_describes_itself(pedestrian_pb: Path) -> None:
    spec = describe_ssd(FrozenGraph.parse(pedestrian_pb.read_bytes()))
    assert spec.num_classes == 1  # person only: class 1
    assert spec.input_size_px == (300, 300) and spec.input_name == "image_tensor"
    assert spec.anchors_per_layer == (3, 6, 6, 6, 6, 6)
    assert spec.anchors_from_graph
    assert spec.variances == pytest.approx((0.1, 0.1, 0.2, 0.2))
    assert spec.score_converter == "sigmoid" and spec.preprocess == ("Preprocessor/mul", "Preprocessor/sub")
    assert spec.input_scale == pytest.approx(2 / 255) and spec.input_shift == pytest.approx(
        -1.0
    )  # 0..255 -> -1..1
    # the anchors the graph carries are the SSDLite-MobileNetV2 config's: scales 0.2..0.95 over 6 heads
    assert spec.anchor_widths[0] == pytest.approx((0.1, 0.2 * 2**0.5, 0.2 * 0.5**0.5), rel=1e-5)
    assert spec.anchor_widths[1][0] == pytest.approx(0.35, rel=1e-5)
    assert spec.anchor_heights[5][0] == pytest.approx(0.95, rel=1e-5)
    assert spec.anchor_widths[5][5] == pytest.approx((0.95 * 1.0) ** 0.5, rel=1e-5)


def test_without_the_anchor_generator_the_documented_defaults_are_used(pedestrian_pb: Path) -> None:
    graph = FrozenGraph.parse(pedestrian_pb.read_bytes())
    from_graph = describe_ssd(graph)
    del graph.graph_def.node[:]
    graph.graph_def.node.extend(
        n for n in graph.nodes if not n.name.startswith("MultipleGridAnchorGenerator/")
    )
    stripped = describe_ssd(FrozenGraph(graph.graph_def))
    assert not stripped.anchors_from_graph
    for ours, theirs in zip(stripped.anchor_widths, from_graph.anchor_widths, strict=True):
        assert ours == pytest.approx(theirs, rel=2e-4)  # the graph stores 1/3 as 0.3333


def test_detectors_of_one_graph_share_the_network(pedestrian_pb: Path, detector: PersonDetector) -> None:
    other = PersonDetector(
        pedestrian_pb, score_threshold=0.6
    )  # one per stream worker: not another 18 MB copy
    assert other.network is detector.network
    assert other.score_threshold == 0.6 and detector.score_threshold == 0.3


# -- bad model files and settings --------------------------------------------------------------------------------
def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (sizes below 128 bytes)."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def _node(name: str, op: str, *inputs: str) -> bytes:
    body = _field(1, name.encode()) + _field(2, op.encode())
    body += b"".join(_field(3, i.encode()) for i in inputs)
    return _field(1, body)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (bytes(range(256)) * 8, "not a TensorFlow frozen graph"),
        (b'{"model": "not a graph"}\n', "not a TensorFlow frozen graph"),
        (_node("image_tensor", "Placeholder") + _node("conv", "Conv2D", "image_tensor", "w"),
         "not a TF Object Detection API SSD graph"),
        (_node("a", "Placeholder") + _node("b", "Placeholder"), "expected one input Placeholder"),
    ],
    ids=["empty", "binary-garbage", "json", "graph-without-ssd-heads", "two-inputs"],
)  # fmt: skip
def test_a_bad_model_file_gives_a_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model.pb"
    path.write_bytes(content)
    with pytest.raises(DetectorError, match=message) as info:
        PersonDetector(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_a_truncated_graph_gives_a_clear_error(pedestrian_pb: Path, tmp_path: Path) -> None:
    path = tmp_path / "truncated.pb"
    path.write_bytes(pedestrian_pb.read_bytes()[:5_000_000])
    with pytest.raises(DetectorError, match=r"truncated\.pb: not a TensorFlow frozen graph"):
        PersonDetector(path)


def test_a_missing_model_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "nowhere.pb"
    with pytest.raises(DetectorError, match=f"detector model {path}: no such file"):
        PersonDetector(path)


def test_a_person_class_the_graph_does_not_have(pedestrian_pb: Path) -> None:
    with pytest.raises(DetectorError, match=r"person class 2 is not one of its classes 1\.\.1"):
        PersonDetector(pedestrian_pb, person_class_id=2)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"score_threshold": 0.0}, "score threshold"),
        ({"nms_iou": 1.5}, "NMS IoU"),
        ({"max_detections": 0}, "max detections"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, option: dict[str, float], message: str) -> None:
    with pytest.raises(DetectorError, match=message):
        PersonDetector(tmp_path / "unused.pb", **option)  # type: ignore[arg-type]


def _edited(graph_path: Path, folder: Path, node_name: str, edit: Callable[[Any], None]) -> Path:
    """A copy of the real graph with one node changed (the protobuf messages of vstmon.subjects.tf_graph)."""
    graph = FrozenGraph.parse(graph_path.read_bytes())
    edit(graph.by_name[node_name])
    path = folder / "edited.pb"
    path.write_bytes(graph.graph_def.SerializeToString())
    return path


def test_a_graph_with_another_stride_is_refused_naming_the_node(pedestrian_pb: Path, tmp_path: Path) -> None:
    name = "FeatureExtractor/MobilenetV2/expanded_conv_1/depthwise/depthwise"

    def stride_one(node: Any) -> None:
        del node.attr["strides"].list.i[:]
        node.attr["strides"].list.i.extend([1, 1, 1, 1])

    with pytest.raises(
        DetectorError, match=f"{name} has strides \\[1, 1, 1, 1\\]; SSDLite-MobileNetV2 has stride 2"
    ):
        PersonDetector(_edited(pedestrian_pb, tmp_path, name, stride_one))


def test_weights_of_another_shape_are_refused_naming_the_tensor(pedestrian_pb: Path, tmp_path: Path) -> None:
    def narrower(node: Any) -> None:  # Conv_1: 320 -> 1280 channels becomes 320 -> 640
        tensor = node.attr["value"].tensor
        tensor.tensor_shape.dim[3].size = 640
        tensor.tensor_content = tensor.tensor_content[: 320 * 640 * 4]

    path = _edited(pedestrian_pb, tmp_path, "FeatureExtractor/MobilenetV2/Conv_1/weights", narrower)
    expected = (
        r"Conv_1/weights has shape \(1, 1, 320, 640\); SSDLite-MobileNetV2 has \(1, 1, 320, 1280\) there"
    )
    with pytest.raises(DetectorError, match=expected) as info:
        PersonDetector(path)
    assert "\n" not in str(info.value)
