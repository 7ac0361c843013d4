"""The test oracle of the torch person detector: the same frozen SSD graph run by OpenCV's DNN module, as the
runtime did before the detector moved to torch.

``cv2.dnn.readNetFromTensorflow(graph, description)`` takes the weights from the binary frozen graph (its
``Const`` nodes, found by name) and the layers from a text ``GraphDef`` that keeps only what OpenCV can run: the
feature extractor and the box predictor heads, followed by OpenCV's own SSD layers (``PriorBox`` per head,
``DetectionOutput``) in place of TensorFlow's anchor generator, box decoder and NMS loops. OpenCV documents that
description (its samples/dnn/tf_text_graph_ssd.py); :func:`ssd_text_graph` builds it from the graph read by
:mod:`vstmon.subjects.tf_graph` and the facts of :func:`vstmon.subjects.ssd_spec.describe_ssd`, and protobuf's
``text_format`` writes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
from google.protobuf import text_format

from vstmon.subjects.ssd_spec import SsdSpec, describe_ssd, head_names
from vstmon.subjects.tf_graph import FrozenGraph, graph_def_class

__all__ = ["OpenCvSsd", "ssd_text_graph"]

# Ops OpenCV's TF importer runs in an SSD feature extractor and box predictor (the sample's list).
_KEEP_OPS = frozenset(
    {
        "Conv2D", "BiasAdd", "Add", "AddV2", "Relu", "Relu6", "Placeholder", "FusedBatchNorm",
        "FusedBatchNormV3", "DepthwiseConv2dNative", "ConcatV2", "Mul", "Sub", "MaxPool", "AvgPool",
        "ResizeNearestNeighbor", "Pad", "Mean",
    }
)  # fmt: skip
# Attributes the importer does not read (and is_training, which would turn a batch norm into MVN).
_DROP_ATTRS = frozenset({"T", "Tshape", "N", "Tidx", "Tdim", "use_cudnn_on_gpu", "Index", "Tperm", "is_training",
                         "Tpaddings", "_output_shapes", "_class"})  # fmt: skip


def _base(name: str) -> str:
    return name.lstrip("^").split(":", 1)[0]


def _image_entry(graph: FrozenGraph, node: Any, placeholder: str) -> bool:
    """True for the nodes between the input and the kept preprocessing (cast, TF's resize loop)."""
    if node.name.startswith(("Preprocessor/map", "Preprocessor/ResizeImage")):
        return True
    return node.op in ("Cast", "ToFloat") and any(graph.resolve(i) == placeholder for i in node.input)


def _tensor(attr: Any, values: list[float] | list[int]) -> None:
    tensor = attr.tensor
    tensor.tensor_shape.dim.add(size=len(values))
    if all(isinstance(v, int) for v in values):
        tensor.dtype = 3  # DT_INT32
        tensor.int_val.extend(int(v) for v in values)
    else:
        tensor.dtype = 1  # DT_FLOAT
        tensor.float_val.extend(float(v) for v in values)


def _pads_a_single_pixel(graph: FrozenGraph, spec: SsdSpec, node: Any) -> bool:
    """A 3x3 stride-1 ``SAME`` depthwise convolution of the last head, which reads a 1x1 map (SSD's last)."""
    last = len(spec.anchors_per_layer) - 1
    return (
        node.op == "DepthwiseConv2dNative"
        and node.name.startswith(f"BoxPredictor_{last}/")
        and node.attr["padding"].s == b"SAME"
        and list(node.attr["strides"].list.i) == [1, 1, 1, 1]
    )


def _centre_tap_mul(graph: FrozenGraph, node: Any, kept: dict[str, Any], order: list[str]) -> None:
    """Rewrite a 3x3 stride-1 ``SAME`` depthwise convolution of a 1x1 map as what TensorFlow computes there: one
    zero of padding on each side leaves only the centre tap, so the output is the input times that tap, per channel.

    Spelled out because OpenCV 5.0's DNN module (opencv-python-headless 5.0.0.93) computes that convolution
    wrongly, classic and new engine alike, and with an explicit ``Pad`` too (which it folds back into the
    convolution): on a one-node GraphDef of random weights and unit-variance inputs its output was off by 2-5,
    while 2x2 and larger maps agreed with TensorFlow's definition to 1e-6. Without this, OpenCV's boxes for a
    person filling the frame (carphone) differed from the torch detector's by up to 0.10 in IoU, all from the last
    head; with it they agree to 1e-5. The torch module's padding is checked against TensorFlow's definition
    directly (tests/test_detector_equivalence.py, ``test_convolutions_pad_as_tensorflow_does``).
    """
    weights = graph.const(node.input[1])  # (3, 3, C, 1)
    if weights is None or weights.shape[:2] != (3, 3) or weights.shape[3] != 1:
        raise ValueError(f"{node.name}: expected 3x3 depthwise weights with multiplier 1")
    taps = node.name + "/vstmon_centre_tap"
    const = type(node)(name=taps, op="Const")
    const.attr["value"].tensor.dtype = 1  # DT_FLOAT
    const.attr["value"].tensor.tensor_shape.dim.add(size=weights.shape[2])
    const.attr["value"].tensor.float_val.extend(weights[1, 1, :, 0].astype(np.float32).tolist())
    data = node.input[0]
    del node.input[:]
    node.input.extend([data, taps])
    node.op = "Mul"
    node.attr.clear()
    order.insert(order.index(node.name), taps)
    kept[taps] = const


def ssd_text_graph(graph: FrozenGraph, spec: SsdSpec, *, nms_iou: float, confidence_threshold: float,
                   keep_top_k: int = 100) -> str:  # fmt: skip
    """The text graph description of an SSD graph for ``cv2.dnn.readNetFromTensorflow(pb, description)``.

    Its output (``detection_out``) is OpenCV's DetectionOutput: ``(1, 1, N, 7)`` rows ``[image, class, score,
    x0, y0, x1, y1]`` with coordinates normalised to the input, class 0 the background.
    """
    if spec.logit_scale != 1.0:
        raise ValueError(f"logit scale {spec.logit_scale} is not supported (only 1)")
    placeholder = spec.input_name
    num_layers = len(spec.anchors_per_layer)
    out = graph_def_class()()

    # Walk back from the heads: keep what OpenCV runs, refer to Consts by name (their values come from the
    # binary graph), and cut the input path where TF's preprocessing loop starts.
    kept: dict[str, Any] = {}
    order: list[str] = []

    def rewrite_inputs(node: Any) -> list[str]:
        data, consts, entry = [], [], False
        for inp in node.input:
            if inp.startswith("^"):
                continue  # control dependency
            name = graph.resolve(inp)
            source = graph.by_name[name]
            if source.op == "Const":
                consts.append(name)
            elif source.op == "Placeholder" or _image_entry(graph, source, placeholder):
                entry = True
            else:
                suffix = inp.split(":", 1)[1] if ":" in inp and _base(inp) == name else ""
                data.append(name + (":" + suffix if suffix and suffix != "0" else ""))
        return ([placeholder] if entry else []) + data + consts  # data inputs first, then the constants

    def visit(name: str) -> None:
        node = graph.by_name[name]
        if name in kept or node.op == "Placeholder":
            return
        if node.op not in _KEEP_OPS:
            raise ValueError(f"node {name} has op {node.op}, which OpenCV's SSD import does not run")
        inputs = rewrite_inputs(node)
        for inp in inputs:
            if graph.by_name[_base(inp)].op not in ("Const", "Placeholder"):
                visit(_base(inp))
        copy = type(node)(name=node.name, op=node.op, input=inputs)
        for key, value in node.attr.items():
            if key not in _DROP_ATTRS:
                copy.attr[key].CopyFrom(value)
        kept[name] = copy
        order.append(name)

    for layer in range(num_layers):
        for head in head_names(layer):
            visit(head)
    for layer in range(num_layers):  # TF encodes boxes (y, x, h, w); OpenCV wants (x, y, w, h)
        conv = kept[graph.resolve(kept[head_names(layer)[1]].input[0])]
        conv.attr["loc_pred_transposed"].b = True

    for node in list(kept.values()):
        if _pads_a_single_pixel(graph, spec, node):
            _centre_tap_mul(graph, node, kept, order)

    height_px, width_px = spec.input_size_px
    entry = out.node.add(name=placeholder, op="Placeholder")
    entry.attr["dtype"].type = 1  # DT_FLOAT
    for size in (-1, height_px, width_px, 3):
        entry.attr["shape"].shape.dim.add(size=size)
    out.node.extend(kept[name] for name in order)

    def add(name: str, op: str, inputs: list[str], **attrs: Any) -> str:
        node = out.node.add(name=name, op=op, input=inputs)
        for key, value in attrs.items():
            if isinstance(value, list):
                _tensor(node.attr[key], value)
            elif isinstance(value, bool):
                node.attr[key].b = value
            elif isinstance(value, int):
                node.attr[key].i = value
            elif isinstance(value, float):
                node.attr[key].f = value
            else:
                node.attr[key].s = value.encode()
        return name

    axis = add("vstmon/concat/axis_flatten", "Const", [], value=[-1])
    for label in ("ClassPredictor", "BoxEncodingPredictor"):
        flats = [add(f"BoxPredictor_{k}/{label}/BiasAdd/Flatten", "Flatten", [f"BoxPredictor_{k}/{label}/BiasAdd"])
                 for k in range(num_layers)]  # fmt: skip
        add(f"vstmon/{label}/concat", "ConcatV2", [*flats, axis])
    side_px = min(height_px, width_px)
    priors = [
        add(f"vstmon/PriorBox_{k}", "PriorBox", [f"BoxPredictor_{k}/BoxEncodingPredictor/BiasAdd", placeholder],
            flip=False, clip=False, width=[w * side_px for w in spec.anchor_widths[k]],
            height=[h * side_px for h in spec.anchor_heights[k]], variance=list(spec.variances))
        for k in range(num_layers)
    ]  # fmt: skip
    add("vstmon/PriorBox/concat", "ConcatV2", [*priors, axis])
    shape = add("vstmon/ClassPredictor/concat3d/shape", "Const", [], value=[0, -1, spec.num_classes + 1])
    add("vstmon/ClassPredictor/concat3d", "Reshape", ["vstmon/ClassPredictor/concat", shape])
    if spec.score_converter == "softmax":
        add("vstmon/scores", "Softmax", ["vstmon/ClassPredictor/concat3d"], axis=-1)
    else:
        add("vstmon/scores", "Sigmoid", ["vstmon/ClassPredictor/concat3d"])
    add("vstmon/scores/Flatten", "Flatten", ["vstmon/scores"])
    add("detection_out", "DetectionOutput",
        ["vstmon/BoxEncodingPredictor/concat", "vstmon/scores/Flatten", "vstmon/PriorBox/concat"],
        num_classes=spec.num_classes + 1, share_location=True, background_label_id=0, nms_threshold=float(nms_iou),
        confidence_threshold=float(confidence_threshold), top_k=int(keep_top_k), keep_top_k=int(keep_top_k),
        code_type="CENTER_SIZE")  # fmt: skip
    return text_format.MessageToString(out)


class OpenCvSsd:
    """A person detector on OpenCV's DNN module (CPU), with the runtime detector's ``detect`` contract: (K, 5)
    float32 rows [x0, y0, x1, y1, score] normalised, persons only, score >= threshold, best first."""

    def __init__(self, model_path: Path, score_threshold: float = 0.5, nms_iou: float = 0.45,
                 person_class_id: int = 1) -> None:  # fmt: skip
        data = Path(model_path).read_bytes()
        graph = FrozenGraph.parse(data)
        self.spec = describe_ssd(graph)
        self.score_threshold, self.person_class_id = score_threshold, person_class_id
        self.text = ssd_text_graph(graph, self.spec, nms_iou=nms_iou, confidence_threshold=score_threshold)
        buffers = (np.frombuffer(data, dtype=np.uint8), np.frombuffer(self.text.encode(), dtype=np.uint8))
        engine = getattr(cv2.dnn, "ENGINE_CLASSIC", None)  # OpenCV 5's classic engine; OpenCV 4 has only it
        self.net = (
            cv2.dnn.readNetFromTensorflow(*buffers)
            if engine is None
            else cv2.dnn.readNetFromTensorflow(*buffers, engine)
        )
        self.input_size_px = self.spec.input_size_px[0]

    def detect(self, image_bgr: np.ndarray) -> np.ndarray:
        size = self.input_size_px
        if image_bgr.shape[:2] != (size, size):
            image_bgr = cv2.resize(image_bgr, (size, size), interpolation=cv2.INTER_LINEAR)
        blob = image_bgr.transpose(2, 0, 1)[None, ::-1].astype(np.float32)  # (1, 3, S, S) RGB 0..255
        self.net.setInput(np.ascontiguousarray(blob))
        rows = self.net.forward().reshape(-1, 7)  # [image, class, score, x0, y0, x1, y1]
        found = rows[(rows[:, 1] == self.person_class_id) & (rows[:, 2] >= self.score_threshold)]
        boxes = np.empty((len(found), 5), dtype=np.float32)
        np.clip(found[:, 3:7], 0.0, 1.0, out=boxes[:, :4])
        boxes[:, 4] = found[:, 2]
        boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
        return boxes[np.argsort(-boxes[:, 4], kind="stable")]
