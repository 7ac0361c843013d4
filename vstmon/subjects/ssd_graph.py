"""TF Object Detection API SSD frozen graphs -> the text graph description OpenCV's DNN module runs them with.

``cv2.dnn.readNetFromTensorflow(graph, description)`` takes the weights from the binary frozen graph (its
``Const`` nodes, found by name) and the layers from a text ``GraphDef`` that keeps only what OpenCV can run:
the feature extractor and the box predictor heads, followed by OpenCV's own SSD layers (``PriorBox`` per head,
``DetectionOutput``) in place of TensorFlow's anchor generator, box decoder and NMS loops. OpenCV documents
that description (samples/dnn/tf_text_graph_ssd.py); this module builds it without TensorFlow, reading the
facts it needs from the frozen graph itself rather than from the training config:

* the number of classes and anchors per head, from the shapes of the box predictors' 1x1 convolutions;
* the anchors (aspect ratios and scales of every head), from the constants of the graph's
  ``MultipleGridAnchorGenerator`` (``Sqrt_k`` takes a head's aspect ratios, its ``RealDiv`` the scales);
  graphs without them fall back to the documented SSD(Lite)-MobileNet defaults (min scale 0.2, max 0.95,
  aspect ratios 1, 2, 1/2, 3, 1/3, three boxes in the lowest layer);
* the box coder's scale factors (``Postprocessor/Decode/truediv*/y``; default 10, 10, 5, 5), the score
  converter (sigmoid or softmax) and the network input size (the fixed-shape resizer; default 300x300).

The binary graph is read with a small protocol-buffer wire-format reader (only the ``GraphDef`` fields used
here), so neither TensorFlow nor the protobuf package is needed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vstmon.errors import DetectorError
from vstmon.paths import default_cache_dir  # re-exported: callers import it from here

__all__ = [
    "GENERATOR_VERSION",
    "GraphNode",
    "SsdDescription",
    "SsdSpec",
    "TensorValue",
    "default_cache_dir",
    "describe_ssd",
    "load_ssd_description",
    "parse_graph_def",
    "ssd_text_graph",
]

GENERATOR_VERSION = 1  # bump when the generated text changes: it is part of the cache key

# TensorFlow DataType enum (tensorflow/core/framework/types.proto): the names the text format uses.
_DTYPE_NAMES = {
    1: "DT_FLOAT", 2: "DT_DOUBLE", 3: "DT_INT32", 4: "DT_UINT8", 5: "DT_INT16", 6: "DT_INT8", 7: "DT_STRING",
    9: "DT_INT64", 10: "DT_BOOL", 14: "DT_BFLOAT16", 17: "DT_UINT16", 19: "DT_HALF",
}  # fmt: skip
_DTYPE_NUMPY = {
    1: "<f4",
    2: "<f8",
    3: "<i4",
    4: "u1",
    5: "<i2",
    6: "i1",
    9: "<i8",
    10: "?",
    17: "<u2",
    19: "<f2",
}

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


# ---------------------------------------------------------------------------------------------------------
# protocol-buffer wire format (the GraphDef subset)
# ---------------------------------------------------------------------------------------------------------
class _WireError(ValueError):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value): an int for varints, the raw bytes for the other wire types."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        value: int | memoryview
        if wire_type == 0:
            value, pos = _varint(buf, pos)
        elif wire_type == 2:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise _WireError("field runs past the end of its message")
            value, pos = buf[pos : pos + size], pos + size
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            if pos + size > end:
                raise _WireError("field runs past the end of its message")
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise _WireError(f"unsupported wire type {wire_type}")
        if number == 0:
            raise _WireError("field number 0")
        yield number, wire_type, value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _bytes(value: int | memoryview) -> bytes:
    if isinstance(value, int):
        raise _WireError("expected a length-delimited field")
    return bytes(value)


def _packed(value: int | memoryview, wire_type: int, kind: str) -> list[float] | list[int]:
    """A repeated scalar field: packed (one length-delimited run) or one element."""
    if kind in ("f", "d"):
        raw = _bytes(value)
        return np.frombuffer(raw, dtype="<f4" if kind == "f" else "<f8").tolist()
    if wire_type == 0:
        return [_signed64(value)]  # type: ignore[arg-type]
    buf = value if isinstance(value, memoryview) else memoryview(b"")
    out, pos = [], 0
    while pos < len(buf):
        item, pos = _varint(buf, pos)
        out.append(_signed64(item))
    return out


@dataclass
class TensorValue:
    """A ``TensorProto``: dtype, shape and the values (from ``tensor_content`` or the typed lists)."""

    dtype: int
    shape: tuple[int, ...]
    content: bytes = b""
    float_val: list[float] = field(default_factory=list)
    int_val: list[int] = field(default_factory=list)

    def values(self) -> np.ndarray:
        """The tensor as a flat float64 array (a single listed value is broadcast, as TF does)."""
        count = math.prod(self.shape) if self.shape else 1
        if self.content:
            numpy_type = _DTYPE_NUMPY.get(self.dtype)
            if numpy_type is None:
                raise _WireError(f"tensor dtype {self.dtype} is not supported")
            return np.frombuffer(self.content, dtype=numpy_type).astype(np.float64)
        listed = self.float_val or self.int_val
        if len(listed) == 1 and count > 1:
            listed = listed * count
        return np.asarray(listed, dtype=np.float64)


def _parse_shape(buf: memoryview) -> tuple[int, ...] | None:
    dims: list[int] = []
    for number, _, value in _fields(buf):
        if number == 2:  # dim { size, name }
            size = 0
            for sub_number, _, sub_value in _fields(value):  # type: ignore[arg-type]
                if sub_number == 1:
                    size = _signed64(sub_value)  # type: ignore[arg-type]
            dims.append(size)
        elif number == 3 and value:  # unknown_rank
            return None
    return tuple(dims)


def _parse_tensor(buf: memoryview) -> TensorValue:
    tensor = TensorValue(dtype=0, shape=())
    for number, wire_type, value in _fields(buf):
        if number == 1:
            tensor.dtype = int(value)  # type: ignore[arg-type]
        elif number == 2:
            tensor.shape = _parse_shape(value) or ()  # type: ignore[arg-type]
        elif number == 4:
            tensor.content = _bytes(value)
        elif number == 5:
            tensor.float_val += _packed(value, wire_type, "f")  # type: ignore[arg-type]
        elif number == 6:
            tensor.float_val += _packed(value, wire_type, "d")  # type: ignore[arg-type]
        elif number in (7, 10, 11):  # int_val, int64_val, bool_val
            tensor.int_val += _packed(value, wire_type, "i")  # type: ignore[arg-type]
    return tensor


# An attribute value: (kind, value) with kind one of s, i, f, b, type, shape, tensor, list, unknown. A list is
# a dict kind -> values. Only the kinds a kept node can carry are written back (see _attr_text).
AttrValue = tuple[str, object]


def _parse_attr(buf: memoryview) -> AttrValue:
    for number, _, value in _fields(buf):
        if number == 2:
            return "s", _bytes(value)
        if number == 3:
            return "i", _signed64(value)  # type: ignore[arg-type]
        if number == 4:
            return "f", float(np.frombuffer(_bytes(value), dtype="<f4")[0])
        if number == 5:
            return "b", bool(value)
        if number == 6:
            return "type", int(value)  # type: ignore[arg-type]
        if number == 7:
            return "shape", _parse_shape(value)  # type: ignore[arg-type]
        if number == 8:
            return "tensor", _parse_tensor(value)  # type: ignore[arg-type]
        if number == 1:
            items: dict[str, list[object]] = {}
            for sub_number, sub_type, sub_value in _fields(value):  # type: ignore[arg-type]
                if sub_number == 2:
                    items.setdefault("s", []).append(_bytes(sub_value))
                elif sub_number == 3:
                    items.setdefault("i", []).extend(_packed(sub_value, sub_type, "i"))
                elif sub_number == 4:
                    items.setdefault("f", []).extend(_packed(sub_value, sub_type, "f"))
                elif sub_number == 5:
                    items.setdefault("b", []).extend(bool(v) for v in _packed(sub_value, sub_type, "i"))
                elif sub_number == 6:
                    items.setdefault("type", []).extend(_packed(sub_value, sub_type, "i"))
                elif sub_number == 7:
                    items.setdefault("shape", []).append(_parse_shape(sub_value))  # type: ignore[arg-type]
            return "list", items
    return "unknown", None


@dataclass
class GraphNode:
    """A ``NodeDef``: name, op, inputs (as written: ``name``, ``name:1`` or ``^control``) and attributes."""

    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attrs: dict[str, AttrValue] = field(default_factory=dict)


def parse_graph_def(data: bytes) -> list[GraphNode]:
    """The nodes of a binary ``GraphDef`` (raises ValueError on bytes that are not one)."""
    nodes: list[GraphNode] = []
    for number, _, value in _fields(memoryview(data)):
        if number != 1:  # versions, library: not needed
            continue
        node = GraphNode("", "")
        for node_field, _, node_value in _fields(value):  # type: ignore[arg-type]
            if node_field == 1:
                node.name = _bytes(node_value).decode()
            elif node_field == 2:
                node.op = _bytes(node_value).decode()
            elif node_field == 3:
                node.inputs.append(_bytes(node_value).decode())
            elif node_field == 5:  # map<string, AttrValue> entry
                key, attr = "", ("unknown", None)
                for entry_field, _, entry_value in _fields(node_value):  # type: ignore[arg-type]
                    if entry_field == 1:
                        key = _bytes(entry_value).decode()
                    elif entry_field == 2:
                        attr = _parse_attr(entry_value)  # type: ignore[arg-type]
                node.attrs[key] = attr
        if not node.name or not node.op:
            raise _WireError("a node without a name or op")
        nodes.append(node)
    return nodes


# ---------------------------------------------------------------------------------------------------------
# what the SSD graph says about itself
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SsdSpec:
    """The facts about an SSD graph that OpenCV's SSD layers need."""

    input_name: str  # the Placeholder (``image_tensor``)
    input_size_px: tuple[int, int]  # (height, width) of the network input
    num_classes: int  # without the background class (1 for a person-only graph, 90 for COCO)
    anchors_per_layer: tuple[int, ...]
    anchor_widths: tuple[tuple[float, ...], ...]  # per head, normalised to the input's shorter side
    anchor_heights: tuple[tuple[float, ...], ...]
    anchors_from_graph: bool  # False: the documented SSD-MobileNet defaults were used
    variances: tuple[float, float, float, float]  # 1 / box coder scale factors (x, y, w, h)
    score_converter: str  # "sigmoid" or "softmax"
    logit_scale: float
    preprocess: tuple[str, ...]  # the kept preprocessing nodes, in order (e.g. Preprocessor/mul, .../sub)


def _base(name: str) -> str:
    """The node an input refers to (``name:1`` -> ``name``)."""
    return name.lstrip("^").split(":", 1)[0]


class _Graph:
    def __init__(self, nodes: list[GraphNode]) -> None:
        self.nodes = nodes
        self.by_name = {node.name: node for node in nodes}
        self.consumers: dict[str, list[GraphNode]] = {}
        for node in nodes:
            for inp in node.inputs:
                self.consumers.setdefault(_base(inp), []).append(node)

    def resolve(self, name: str) -> str:
        """Follow Identity nodes back to the node that produces the value."""
        seen = 0
        while (node := self.by_name.get(_base(name))) is not None and node.op == "Identity" and node.inputs:
            name = node.inputs[0]
            seen += 1
            if seen > 1000:
                break
        return _base(name)

    def const(self, name: str) -> np.ndarray | None:
        node = self.by_name.get(self.resolve(name))
        if node is None or node.op != "Const":
            return None
        kind, value = node.attrs.get("value", ("unknown", None))
        return value.values() if kind == "tensor" and isinstance(value, TensorValue) else None

    def const_shape(self, name: str) -> tuple[int, ...] | None:
        node = self.by_name.get(self.resolve(name))
        if node is None or node.op != "Const":
            return None
        kind, value = node.attrs.get("value", ("unknown", None))
        return value.shape if kind == "tensor" and isinstance(value, TensorValue) else None


def _head_names(graph: _Graph, layer: int) -> tuple[str, str]:
    return (
        f"BoxPredictor_{layer}/ClassPredictor/BiasAdd",
        f"BoxPredictor_{layer}/BoxEncodingPredictor/BiasAdd",
    )


def _conv_weights_shape(graph: _Graph, bias_add: str) -> tuple[int, ...] | None:
    node = graph.by_name[bias_add]
    conv = graph.by_name.get(graph.resolve(node.inputs[0]))
    if conv is None or conv.op != "Conv2D" or len(conv.inputs) < 2:
        return None
    return graph.const_shape(conv.inputs[1])


def _default_anchors(num_layers: int) -> tuple[list[list[float]], list[list[float]]]:
    """SSD anchor generator defaults (TF OD API ``ssd_anchor_generator`` in the SSD(Lite)-MobileNet configs)."""
    min_scale, max_scale = 0.2, 0.95
    ratios = [1.0, 2.0, 0.5, 3.0, 1.0 / 3.0]
    steps = max(num_layers - 1, 1)
    scales = [min_scale + (max_scale - min_scale) * i / steps for i in range(num_layers)] + [1.0]
    widths, heights = [], []
    for layer in range(num_layers):
        if layer == 0:  # reduce_boxes_in_lowest_layer
            layer_scales, layer_ratios = [0.1, min_scale, min_scale], [1.0, 2.0, 0.5]
        else:
            layer_scales = [scales[layer]] * len(ratios) + [math.sqrt(scales[layer] * scales[layer + 1])]
            layer_ratios = [*ratios, 1.0]
        widths.append([s * math.sqrt(r) for s, r in zip(layer_scales, layer_ratios, strict=True)])
        heights.append([s / math.sqrt(r) for s, r in zip(layer_scales, layer_ratios, strict=True)])
    return widths, heights


def _graph_anchors(graph: _Graph, num_layers: int) -> tuple[list[list[float]], list[list[float]]] | None:
    """Anchor sizes from the MultipleGridAnchorGenerator constants, or None when the graph lacks them.

    TF's grid anchor generator computes, per head, ``heights = scales / sqrt(aspect_ratios) * base[0]`` and
    ``widths = scales * sqrt(aspect_ratios) * base[1]``; the frozen graph keeps ``aspect_ratios`` as the input
    of ``Sqrt`` (``Sqrt_k`` for head k) and ``scales`` as the other input of the ``RealDiv`` that divides by it.
    """
    prefix = "MultipleGridAnchorGenerator/"
    # base_anchor_size ([1, 1] in the zoo's configs) is sliced by MultipleGridAnchorGenerator/strided_slice
    sliced = graph.by_name.get(prefix + "strided_slice")
    base = graph.const(sliced.inputs[0]) if sliced is not None and sliced.inputs else None
    base_h, base_w = (float(base[0]), float(base[1])) if base is not None and base.size == 2 else (1.0, 1.0)
    widths, heights = [], []
    for layer in range(num_layers):
        sqrt_node = graph.by_name.get(prefix + ("Sqrt" if layer == 0 else f"Sqrt_{layer}"))
        if sqrt_node is None or sqrt_node.op != "Sqrt":
            return None
        ratios = graph.const(sqrt_node.inputs[0])
        divs = [n for n in graph.consumers.get(sqrt_node.name, []) if n.op == "RealDiv"]
        scales = graph.const(divs[0].inputs[0]) if len(divs) == 1 else None
        if ratios is None or scales is None or ratios.shape != scales.shape or np.any(ratios <= 0):
            return None
        widths.append((scales * np.sqrt(ratios) * base_w).tolist())
        heights.append((scales / np.sqrt(ratios) * base_h).tolist())
    return widths, heights


def describe_ssd(nodes: list[GraphNode]) -> SsdSpec:
    """Read an SSD graph's heads, anchors and coder (raises DetectorError's message text as ValueError)."""
    graph = _Graph(nodes)
    placeholders = [node for node in nodes if node.op == "Placeholder"]
    if len(placeholders) != 1:
        raise ValueError(f"expected one input Placeholder (image_tensor), found {len(placeholders)}")
    num_layers = 0
    while all(name in graph.by_name for name in _head_names(graph, num_layers)):
        num_layers += 1
    if num_layers == 0:
        raise ValueError(
            "not a TF Object Detection API SSD graph with convolutional box predictors "
            "(no BoxPredictor_0/ClassPredictor/BiasAdd node)"
        )
    anchors, class_channels = [], []
    for layer in range(num_layers):
        class_head, box_head = _head_names(graph, layer)
        class_shape = _conv_weights_shape(graph, class_head)
        box_shape = _conv_weights_shape(graph, box_head)
        if not class_shape or not box_shape or box_shape[-1] % 4:
            raise ValueError(f"cannot read the weight shapes of box predictor {layer}")
        anchors.append(box_shape[-1] // 4)
        class_channels.append(class_shape[-1])
    num_classes_set = {channels // count - 1 for channels, count in zip(class_channels, anchors, strict=True)}
    if len(num_classes_set) != 1 or any(c % a for c, a in zip(class_channels, anchors, strict=True)):
        raise ValueError(
            f"box predictors disagree on the number of classes: {class_channels} for {anchors} anchors"
        )
    num_classes = num_classes_set.pop()
    if num_classes < 1:
        raise ValueError("the class predictor has no class besides the background")

    found = _graph_anchors(graph, num_layers)
    widths, heights = found if found is not None else _default_anchors(num_layers)
    if [len(w) for w in widths] != anchors:
        source = "graph's anchor generator" if found is not None else "default SSD anchor settings"
        raise ValueError(
            f"the {source} gives {[len(w) for w in widths]} anchors per head but the box predictors have {anchors}"
        )

    scale_factors = [
        graph.const(f"Postprocessor/Decode/truediv{suffix}/y") for suffix in ("", "_1", "_2", "_3")
    ]
    if all(f is not None and f.size == 1 and f[0] > 0 for f in scale_factors):
        y_scale, x_scale, h_scale, w_scale = (float(f[0]) for f in scale_factors)  # type: ignore[index]
    else:
        y_scale, x_scale, h_scale, w_scale = 10.0, 10.0, 5.0, 5.0
    converter = graph.by_name.get("Postprocessor/convert_scores")
    score_converter = "softmax" if converter is not None and converter.op == "Softmax" else "sigmoid"
    logit = graph.const("Postprocessor/scale_logits/y")
    logit_scale = float(logit[0]) if logit is not None and logit.size == 1 and logit[0] > 0 else 1.0

    size = graph.const("Preprocessor/map/while/ResizeImage/stack")
    if size is not None and size.size == 2 and size.min() > 0:
        input_size = (int(size[0]), int(size[1]))
    else:
        input_size = (300, 300)
    preprocess = tuple(name for name in ("Preprocessor/mul", "Preprocessor/sub") if name in graph.by_name)
    return SsdSpec(
        input_name=placeholders[0].name,
        input_size_px=input_size,
        num_classes=num_classes,
        anchors_per_layer=tuple(anchors),
        anchor_widths=tuple(tuple(w) for w in widths),
        anchor_heights=tuple(tuple(h) for h in heights),
        anchors_from_graph=found is not None,
        variances=(1.0 / x_scale, 1.0 / y_scale, 1.0 / w_scale, 1.0 / h_scale),
        score_converter=score_converter,
        logit_scale=logit_scale,
        preprocess=preprocess,
    )


# ---------------------------------------------------------------------------------------------------------
# the text graph
# ---------------------------------------------------------------------------------------------------------
def _quote(raw: bytes | str) -> str:
    """A protobuf text-format string literal."""
    data = raw.encode() if isinstance(raw, str) else raw
    out = []
    for byte in data:
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _float(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"non-finite attribute value {value}")
    return str(np.float32(value))


def _dtype(value: int) -> str:
    return _DTYPE_NAMES.get(value, str(value))


def _shape_text(dims: tuple[int, ...] | None) -> str:
    if dims is None:
        return "unknown_rank: true"
    return " ".join(f"dim {{ size: {size} }}" for size in dims)


def _attr_text(kind: str, value: object) -> str | None:
    """The body of an ``AttrValue`` in text format, or None for kinds not written back."""
    if kind == "s":
        return f"s: {_quote(value)}"  # type: ignore[arg-type]
    if kind == "i":
        return f"i: {int(value)}"  # type: ignore[call-overload]
    if kind == "f":
        return f"f: {_float(value)}"  # type: ignore[arg-type]
    if kind == "b":
        return f"b: {'true' if value else 'false'}"
    if kind == "type":
        return f"type: {_dtype(value)}"  # type: ignore[arg-type]
    if kind == "shape":
        return f"shape {{ {_shape_text(value)} }}"  # type: ignore[arg-type]
    if kind == "tensor" and isinstance(value, TensorValue):
        if value.content:
            return None  # weights stay in the binary graph
        parts = [f"dtype: {_dtype(value.dtype)}", f"tensor_shape {{ {_shape_text(value.shape)} }}"]
        parts += [f"float_val: {_float(v)}" for v in value.float_val]
        parts += [f"int_val: {int(v)}" for v in value.int_val]
        return "tensor { " + " ".join(parts) + " }"
    if kind == "list" and isinstance(value, dict):
        parts = []
        for item_kind, items in value.items():
            for item in items:
                text = _attr_text(item_kind, item)
                if text is not None:
                    parts.append(text)
        return "list { " + " ".join(parts) + " }"
    return None


def _tensor_attr(values: list[float] | list[int]) -> AttrValue:
    if all(isinstance(v, int) for v in values):
        return "tensor", TensorValue(dtype=3, shape=(len(values),), int_val=[int(v) for v in values])
    return "tensor", TensorValue(dtype=1, shape=(len(values),), float_val=[float(v) for v in values])


def _node_text(node: GraphNode) -> str:
    lines = ["node {", f"  name: {_quote(node.name)}", f"  op: {_quote(node.op)}"]
    lines += [f"  input: {_quote(inp)}" for inp in node.inputs]
    for key in sorted(node.attrs):
        text = _attr_text(*node.attrs[key])
        if text is not None:
            lines.append(f"  attr {{ key: {_quote(key)} value {{ {text} }} }}")
    lines.append("}")
    return "\n".join(lines)


def _image_entry(graph: _Graph, node: GraphNode, placeholder: str) -> bool:
    """True for the nodes between the input and the kept preprocessing (cast, TF's resize loop)."""
    if node.name.startswith("Preprocessor/map") or node.name.startswith("Preprocessor/ResizeImage"):
        return True
    return node.op in ("Cast", "ToFloat") and any(graph.resolve(i) == placeholder for i in node.inputs)


def ssd_text_graph(
    nodes: list[GraphNode],
    spec: SsdSpec,
    *,
    nms_iou: float,
    confidence_threshold: float,
    keep_top_k: int = 100,
) -> str:
    """The text graph description of an SSD graph for ``cv2.dnn.readNetFromTensorflow(pb, description)``.

    Its output (``detection_out``) is OpenCV's DetectionOutput: ``(1, 1, N, 7)`` rows ``[image, class, score,
    x0, y0, x1, y1]`` with coordinates normalised to the input, class 0 the background.
    """
    if spec.logit_scale != 1.0:
        raise ValueError(f"logit scale {spec.logit_scale} is not supported (only 1)")
    graph = _Graph(nodes)
    placeholder = spec.input_name
    heads = [name for layer in range(len(spec.anchors_per_layer)) for name in _head_names(graph, layer)]

    # Walk back from the heads: keep what OpenCV runs, refer to Consts by name (their values come from the
    # binary graph), and cut the input path where TF's preprocessing loop starts.
    kept: dict[str, GraphNode] = {}
    order: list[str] = []
    visiting: set[str] = set()

    def rewrite_inputs(node: GraphNode) -> list[str]:
        data, consts = [], []
        entry = False
        for inp in node.inputs:
            if inp.startswith("^"):
                continue  # control dependency
            name = graph.resolve(inp)
            source = graph.by_name.get(name)
            if source is None:
                raise ValueError(f"node {node.name} reads {inp}, which is not in the graph")
            if source.op == "Const":
                consts.append(name)
            elif source.op == "Placeholder" or _image_entry(graph, source, placeholder):
                entry = True
            else:
                suffix = inp.split(":", 1)[1] if ":" in inp and _base(inp) == name else ""
                data.append(name + (":" + suffix if suffix and suffix != "0" else ""))
        if entry:
            data.insert(0, placeholder)
        if node.op in ("Mul", "Sub", "Add", "AddV2") and not data:
            raise ValueError(f"node {node.name} has only constant inputs")
        return data + consts  # OpenCV's importer wants the data inputs first, then the constants

    def visit(name: str) -> None:
        if name in kept or name in visiting:
            return
        node = graph.by_name[name]
        if node.op == "Placeholder":
            return
        if node.op not in _KEEP_OPS:
            raise ValueError(f"node {name} has op {node.op}, which OpenCV's SSD import does not run")
        visiting.add(name)
        inputs = rewrite_inputs(node)
        for inp in inputs:
            source = graph.by_name[_base(inp)]
            if source.op not in ("Const", "Placeholder"):
                visit(source.name)
        visiting.discard(name)
        attrs = {k: v for k, v in node.attrs.items() if k not in _DROP_ATTRS}
        kept[name] = GraphNode(name, node.op, inputs, attrs)
        order.append(name)

    for head in heads:
        visit(head)
    for layer in range(
        len(spec.anchors_per_layer)
    ):  # TF encodes boxes (y, x, h, w); OpenCV wants (x, y, w, h)
        _, box_head = _head_names(graph, layer)
        conv = kept[graph.resolve(kept[box_head].inputs[0])]
        conv.attrs["loc_pred_transposed"] = ("b", True)

    source_placeholder = graph.by_name[placeholder]
    height_px, width_px = spec.input_size_px
    out = [
        GraphNode(
            placeholder,
            "Placeholder",
            attrs={
                "dtype": source_placeholder.attrs.get("dtype", ("type", 1)),
                "shape": ("shape", (-1, height_px, width_px, 3)),
            },
        )
    ]
    out += [kept[name] for name in order]

    def const(name: str, values: list[float] | list[int]) -> str:
        out.append(GraphNode(name, "Const", attrs={"value": _tensor_attr(values)}))
        return name

    flatten_axis = const("vstmon/concat/axis_flatten", [-1])
    num_layers = len(spec.anchors_per_layer)
    for label in ("ClassPredictor", "BoxEncodingPredictor"):
        flats = []
        for layer in range(num_layers):
            head = f"BoxPredictor_{layer}/{label}/BiasAdd"
            out.append(GraphNode(head + "/Flatten", "Flatten", [head]))
            flats.append(head + "/Flatten")
        out.append(GraphNode(f"vstmon/{label}/concat", "ConcatV2", [*flats, flatten_axis]))

    min_side_px = min(height_px, width_px)
    priors = []
    for layer in range(num_layers):
        name = f"vstmon/PriorBox_{layer}"
        attrs: dict[str, AttrValue] = {
            "flip": ("b", False),
            "clip": ("b", False),
            "width": _tensor_attr([w * min_side_px for w in spec.anchor_widths[layer]]),
            "height": _tensor_attr([h * min_side_px for h in spec.anchor_heights[layer]]),
            "variance": _tensor_attr(list(spec.variances)),
        }
        out.append(GraphNode(name, "PriorBox", [f"BoxPredictor_{layer}/BoxEncodingPredictor/BiasAdd", placeholder],
                             attrs))  # fmt: skip
        priors.append(name)
    out.append(GraphNode("vstmon/PriorBox/concat", "ConcatV2", [*priors, flatten_axis]))

    scores_shape = const("vstmon/ClassPredictor/concat3d/shape", [0, -1, spec.num_classes + 1])
    out.append(
        GraphNode("vstmon/ClassPredictor/concat3d", "Reshape", ["vstmon/ClassPredictor/concat", scores_shape])
    )
    if spec.score_converter == "softmax":
        converter = GraphNode(
            "vstmon/scores", "Softmax", ["vstmon/ClassPredictor/concat3d"], {"axis": ("i", -1)}
        )
    else:
        converter = GraphNode("vstmon/scores", "Sigmoid", ["vstmon/ClassPredictor/concat3d"])
    out.append(converter)
    out.append(GraphNode("vstmon/scores/Flatten", "Flatten", ["vstmon/scores"]))
    out.append(
        GraphNode(
            "detection_out",
            "DetectionOutput",
            ["vstmon/BoxEncodingPredictor/concat", "vstmon/scores/Flatten", "vstmon/PriorBox/concat"],
            {
                "num_classes": ("i", spec.num_classes + 1),
                "share_location": ("b", True),
                "background_label_id": ("i", 0),
                "nms_threshold": ("f", float(nms_iou)),
                "confidence_threshold": ("f", float(confidence_threshold)),
                "top_k": ("i", int(keep_top_k)),
                "keep_top_k": ("i", int(keep_top_k)),
                "code_type": ("s", b"CENTER_SIZE"),
            },
        )
    )
    return "\n".join(_node_text(node) for node in out) + "\n"


# ---------------------------------------------------------------------------------------------------------
# loading, with a cache of generated descriptions
# ---------------------------------------------------------------------------------------------------------
_HEADER = "# vstmon-ssd-description "


@dataclass(frozen=True)
class SsdDescription:
    """A frozen SSD graph's bytes, its generated text description, and what the graph says about itself."""

    graph_bytes: bytes
    text: str
    spec: SsdSpec
    cache_path: Path | None  # where the description was read from or written to (None: memory only)
    from_cache: bool


def _spec_to_json(spec: SsdSpec) -> str:
    return json.dumps(spec.__dict__, separators=(",", ":"))


def _spec_from_json(text: str) -> SsdSpec:
    raw = json.loads(text)
    for key in ("input_size_px", "anchors_per_layer", "variances", "preprocess"):
        raw[key] = tuple(raw[key])
    for key in ("anchor_widths", "anchor_heights"):
        raw[key] = tuple(tuple(row) for row in raw[key])
    return SsdSpec(**raw)


def load_ssd_description(
    model_path: str | Path,
    *,
    nms_iou: float,
    confidence_threshold: float,
    keep_top_k: int = 100,
    cache_dir: str | Path | None = None,
) -> SsdDescription:
    """Read a frozen SSD graph and its description: from the cache when there, else generated (and cached).

    The cache key is the graph's SHA-256, the generator version and the DetectionOutput settings; a cache
    folder that cannot be written only costs the generation (about 0.2 s) on every load.
    """
    path = Path(model_path)
    try:
        graph_bytes = path.read_bytes()
    except FileNotFoundError:
        raise DetectorError(f"detector model {path}: no such file") from None
    except OSError as error:
        raise DetectorError(f"detector model {path}: cannot read it ({error.strerror or error})") from None
    if not graph_bytes:
        raise DetectorError(f"detector model {path}: the file is empty")
    settings = {"v": GENERATOR_VERSION, "nms": round(float(nms_iou), 6),
                "conf": round(float(confidence_threshold), 6), "top": int(keep_top_k)}  # fmt: skip
    key = hashlib.sha256(graph_bytes + json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = folder / "detector" / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', path.stem)}-{key}.pbtxt"
    try:
        text = cached.read_text(encoding="utf-8")
        if text.startswith(_HEADER):
            spec = _spec_from_json(text[len(_HEADER) : text.index("\n")])
            return SsdDescription(graph_bytes, text, spec, cached, from_cache=True)
    except (OSError, ValueError, TypeError, KeyError):
        pass  # absent or unreadable: generate it again

    try:
        nodes = parse_graph_def(graph_bytes)
    except (ValueError, UnicodeDecodeError, IndexError) as error:
        raise DetectorError(f"detector model {path}: not a TensorFlow frozen graph (.pb): {error}") from None
    if not nodes:
        raise DetectorError(f"detector model {path}: not a TensorFlow frozen graph (.pb): no nodes")
    try:
        spec = describe_ssd(nodes)
        body = ssd_text_graph(
            nodes, spec, nms_iou=nms_iou, confidence_threshold=confidence_threshold, keep_top_k=keep_top_k
        )
    except (ValueError, KeyError, IndexError) as error:
        raise DetectorError(f"detector model {path}: {error}") from None
    text = f"{_HEADER}{_spec_to_json(spec)}\n{body}"
    written: Path | None = cached
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=cached.parent, delete=False,
                                         prefix=cached.name, suffix=".tmp") as tmp:  # fmt: skip
            tmp.write(text)
        os.replace(tmp.name, cached)
    except OSError:
        written = None  # read-only cache: keep the description in memory only
    return SsdDescription(graph_bytes, text, spec, written, from_cache=False)
