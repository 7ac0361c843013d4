"""What a TF Object Detection API SSD frozen graph says about itself: heads, anchors, box coder, score converter,
input size and preprocessing, read from the graph rather than from a training config.

* the number of classes and anchors per head, from the shapes of the box predictors' 1x1 convolutions;
* the anchors (aspect ratios and scales of every head), from the constants of the graph's
  ``MultipleGridAnchorGenerator`` (``Sqrt_k`` takes a head's aspect ratios, its ``RealDiv`` the scales);
  graphs without them fall back to the documented SSD(Lite)-MobileNet defaults (min scale 0.2, max 0.95,
  aspect ratios 1, 2, 1/2, 3, 1/3, three boxes in the lowest layer);
* the box coder's scale factors (``Postprocessor/Decode/truediv*/y``; default 10, 10, 5, 5), the score
  converter (sigmoid or softmax), the network input size (the fixed-shape resizer; default 300x300) and the
  input scaling (``Preprocessor/mul`` and ``Preprocessor/sub``: 0..255 -> -1..1).

Both the torch detector (:mod:`vstmon.subjects.ssd_torch`) and the OpenCV oracle of the tests use this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vstmon.subjects.tf_graph import FrozenGraph

__all__ = ["SsdSpec", "describe_ssd", "head_names"]


@dataclass(frozen=True)
class SsdSpec:
    """The facts about an SSD graph that its post-processing needs."""

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
    preprocess: tuple[str, ...]  # the preprocessing nodes, in order (e.g. Preprocessor/mul, .../sub)
    input_scale: float  # network input = pixel (0..255, RGB) * input_scale + input_shift
    input_shift: float


def head_names(layer: int) -> tuple[str, str]:
    """The class and box predictor outputs of head ``layer``."""
    return (
        f"BoxPredictor_{layer}/ClassPredictor/BiasAdd",
        f"BoxPredictor_{layer}/BoxEncodingPredictor/BiasAdd",
    )


def _conv_weights_shape(graph: FrozenGraph, bias_add: str) -> tuple[int, ...] | None:
    node = graph.by_name[bias_add]
    conv = graph.by_name.get(graph.resolve(node.input[0])) if node.input else None
    if conv is None or conv.op != "Conv2D" or len(conv.input) < 2:
        return None
    return graph.const_shape(conv.input[1])


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


def _graph_anchors(graph: FrozenGraph, num_layers: int) -> tuple[list[list[float]], list[list[float]]] | None:
    """Anchor sizes from the MultipleGridAnchorGenerator constants, or None when the graph lacks them.

    TF's grid anchor generator computes, per head, ``heights = scales / sqrt(aspect_ratios) * base[0]`` and
    ``widths = scales * sqrt(aspect_ratios) * base[1]``; the frozen graph keeps ``aspect_ratios`` as the input
    of ``Sqrt`` (``Sqrt_k`` for head k) and ``scales`` as the other input of the ``RealDiv`` that divides by it.
    """
    prefix = "MultipleGridAnchorGenerator/"
    # base_anchor_size ([1, 1] in the zoo's configs) is sliced by MultipleGridAnchorGenerator/strided_slice
    sliced = graph.by_name.get(prefix + "strided_slice")
    base = graph.const(sliced.input[0]) if sliced is not None and sliced.input else None
    base_h, base_w = (
        (float(base.flat[0]), float(base.flat[1])) if base is not None and base.size == 2 else (1.0, 1.0)
    )
    widths, heights = [], []
    for layer in range(num_layers):
        sqrt_node = graph.by_name.get(prefix + ("Sqrt" if layer == 0 else f"Sqrt_{layer}"))
        if sqrt_node is None or sqrt_node.op != "Sqrt":
            return None
        ratios = graph.const(sqrt_node.input[0])
        divs = [n for n in graph.consumers.get(sqrt_node.name, []) if n.op == "RealDiv"]
        scales = graph.const(divs[0].input[0]) if len(divs) == 1 else None
        if ratios is None or scales is None or ratios.shape != scales.shape or np.any(ratios <= 0):
            return None
        widths.append((scales * np.sqrt(ratios) * base_w).ravel().tolist())
        heights.append((scales / np.sqrt(ratios) * base_h).ravel().tolist())
    return widths, heights


def _scalar(graph: FrozenGraph, name: str) -> float | None:
    value = graph.const(name)
    return float(value.flat[0]) if value is not None and value.size == 1 else None


def describe_ssd(graph: FrozenGraph) -> SsdSpec:
    """Read an SSD graph's heads, anchors and coder (ValueError with the reason when it is not one)."""
    placeholders = [node for node in graph.nodes if node.op == "Placeholder"]
    if len(placeholders) != 1:
        raise ValueError(f"expected one input Placeholder (image_tensor), found {len(placeholders)}")
    num_layers = 0
    while all(name in graph.by_name for name in head_names(num_layers)):
        num_layers += 1
    if num_layers == 0:
        raise ValueError(
            "not a TF Object Detection API SSD graph with convolutional box predictors "
            "(no BoxPredictor_0/ClassPredictor/BiasAdd node)"
        )
    anchors, class_channels = [], []
    for layer in range(num_layers):
        class_head, box_head = head_names(layer)
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

    factors = [_scalar(graph, f"Postprocessor/Decode/truediv{suffix}/y") for suffix in ("", "_1", "_2", "_3")]
    if all(f is not None and f > 0 for f in factors):
        y_scale, x_scale, h_scale, w_scale = (float(f) for f in factors)  # type: ignore[arg-type]
    else:
        y_scale, x_scale, h_scale, w_scale = 10.0, 10.0, 5.0, 5.0
    converter = graph.by_name.get("Postprocessor/convert_scores")
    score_converter = "softmax" if converter is not None and converter.op == "Softmax" else "sigmoid"
    logit = _scalar(graph, "Postprocessor/scale_logits/y")
    logit_scale = logit if logit is not None and logit > 0 else 1.0

    size = graph.const("Preprocessor/map/while/ResizeImage/stack")
    if size is not None and size.size == 2 and size.min() > 0:
        input_size = (int(size.flat[0]), int(size.flat[1]))
    else:
        input_size = (300, 300)
    preprocess = tuple(name for name in ("Preprocessor/mul", "Preprocessor/sub") if name in graph.by_name)
    scale = _scalar(graph, "Preprocessor/mul/x")
    shift = _scalar(graph, "Preprocessor/sub/y")
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
        input_scale=scale if "Preprocessor/mul" in preprocess and scale is not None else 1.0,
        input_shift=-shift if "Preprocessor/sub" in preprocess and shift is not None else 0.0,
    )
