"""A TF Object Detection API SSDLite-MobileNetV2 frozen graph (.pb) -> :class:`SsdLiteMobileNetV2` with its
weights: the config from what the graph says about itself (:func:`describe_ssd`), every convolution's weights
from its ``Const`` by TF scope name (:func:`tf_scopes`), batch norms folded in, then a strict load.

The graph's topology is checked where the module fixes it, so that a graph of another layout is refused by name
instead of running with wrong weights: the strides of every convolution, which blocks add their input, and
which maps the heads read. Shapes are checked by the strict load.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from vstmon.errors import DetectorError
from vstmon.subjects.ssd_spec import SsdSpec, describe_ssd
from vstmon.subjects.ssd_torch import (
    EXTRA_LAYERS,
    TAP_BLOCK,
    ConvUnit,
    SsdLiteConfig,
    SsdLiteMobileNetV2,
)
from vstmon.subjects.tf_graph import FrozenGraph

__all__ = ["LoadedSsd", "config_from_spec", "load_ssd", "read_graph", "tf_scopes"]

_BACKBONE = "FeatureExtractor/MobilenetV2/"
_DEFAULT_EPSILON = 1e-3  # TF slim's batch norm default, when the FusedBatchNorm node has none


def read_graph(path: Path) -> FrozenGraph:
    """The frozen graph at ``path`` (DetectorError naming the file when it is missing or not a GraphDef)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DetectorError(f"detector model {path}: no such file") from None
    except OSError as error:
        raise DetectorError(f"detector model {path}: cannot read it ({error.strerror or error})") from None
    if not data:
        raise DetectorError(f"detector model {path}: the file is empty")
    try:
        graph = FrozenGraph.parse(data)
    except ValueError as error:
        raise DetectorError(f"detector model {path}: not a TensorFlow frozen graph (.pb): {error}") from None
    if not graph.nodes:
        raise DetectorError(f"detector model {path}: not a TensorFlow frozen graph (.pb): no nodes")
    return graph


def config_from_spec(spec: SsdSpec) -> SsdLiteConfig:
    """The module config of a described graph (ValueError for a graph the module cannot run)."""
    height_px, width_px = spec.input_size_px
    if height_px != width_px:
        raise ValueError(f"its input is {width_px}x{height_px}; only square inputs are supported")
    x_var, y_var, w_var, h_var = spec.variances
    return SsdLiteConfig(
        num_classes=spec.num_classes,
        anchor_widths=spec.anchor_widths,
        anchor_heights=spec.anchor_heights,
        input_size_px=height_px,
        box_scales=(1.0 / y_var, 1.0 / x_var, 1.0 / h_var, 1.0 / w_var),
        score_converter=spec.score_converter,
        logit_scale=spec.logit_scale,
        input_scale=spec.input_scale,
        input_shift=spec.input_shift,
    )


def tf_scopes(model: SsdLiteMobileNetV2) -> dict[str, str]:
    """Every :class:`ConvUnit` of the module (its name in ``named_modules``) -> its TF variable scope."""
    scopes = {"stem": _BACKBONE + "Conv", "last": _BACKBONE + "Conv_1"}
    for index, block in enumerate(model.blocks):
        block_scope = _BACKBONE + ("expanded_conv" if index == 0 else f"expanded_conv_{index}")
        for part in ("expand", "depthwise", "project"):
            if getattr(block, part) is not None:
                scopes[f"blocks.{index}.{part}"] = f"{block_scope}/{part}"
    for index, ((reduce_ch, out_ch), extra) in enumerate(zip(EXTRA_LAYERS, model.extras, strict=True)):
        assert extra.reduce.conv.out_channels == reduce_ch
        layer = index + 2  # TF names the extra layers after the backbone's two maps
        scopes[f"extras.{index}.reduce"] = f"{_BACKBONE}layer_19_1_Conv2d_{layer}_1x1_{reduce_ch}"
        scopes[f"extras.{index}.depthwise"] = (
            f"{_BACKBONE}layer_19_2_Conv2d_{layer}_3x3_s2_{out_ch}_depthwise"
        )
        scopes[f"extras.{index}.expand"] = f"{_BACKBONE}layer_19_2_Conv2d_{layer}_3x3_s2_{out_ch}"
    for index in range(len(model.heads)):
        for part, tf_part in (("box_depthwise", "BoxEncodingPredictor_depthwise"), ("box", "BoxEncodingPredictor"),
                              ("class_depthwise", "ClassPredictor_depthwise"), ("classes", "ClassPredictor")):  # fmt: skip
            scopes[f"heads.{index}.{part}"] = f"BoxPredictor_{index}/{tf_part}"
    return scopes


def _need(graph: FrozenGraph, name: str) -> np.ndarray:
    value = graph.const(name)
    if value is None:
        raise ValueError(f"no constant {name} in the graph (not an SSDLite-MobileNetV2 graph?)")
    return value


def _conv_node(graph: FrozenGraph, scope: str, unit: ConvUnit) -> object:
    name = f"{scope}/depthwise" if unit.depthwise else f"{scope}/Conv2D"
    node = graph.by_name.get(name)
    if node is None:
        raise ValueError(f"no node {name} in the graph (not an SSDLite-MobileNetV2 graph?)")
    return node


def _unit_tensors(graph: FrozenGraph, scope: str, unit: ConvUnit) -> tuple[np.ndarray, np.ndarray]:
    """(weight (O, I/groups, kh, kw), bias (O,)) of one unit, batch norm folded: TF keeps weights as
    (kh, kw, in, out), depthwise ones as (kh, kw, channels, multiplier)."""
    node = _conv_node(graph, scope, unit)
    strides = list(node.attr["strides"].list.i) if "strides" in node.attr else [1, 1, 1, 1]  # type: ignore[attr-defined]
    if strides != [1, unit.stride, unit.stride, 1]:
        raise ValueError(
            f"{node.name} has strides {strides}; SSDLite-MobileNetV2 has stride {unit.stride} there"
        )  # type: ignore[attr-defined]
    weights_name = f"{scope}/depthwise_weights" if unit.depthwise else f"{scope}/weights"
    raw = _need(graph, weights_name)
    out_ch, in_ch, kh, kw = unit.conv.weight.shape
    wanted = (kh, kw, out_ch, 1) if unit.depthwise else (kh, kw, in_ch, out_ch)
    if raw.shape != wanted:
        raise ValueError(f"{weights_name} has shape {raw.shape}; SSDLite-MobileNetV2 has {wanted} there")
    if unit.depthwise:
        kernel = rearrange(raw, "h w c m -> (c m) 1 h w")
    else:
        kernel = rearrange(raw, "h w i o -> o i h w")
    if f"{scope}/BatchNorm/moving_mean" not in graph.by_name:
        bias = _need(graph, f"{scope}/biases")
        if bias.shape != (out_ch,):
            raise ValueError(f"{scope}/biases has shape {bias.shape}; the convolution has {out_ch} outputs")
        return kernel, bias
    mean = _need(graph, f"{scope}/BatchNorm/moving_mean")
    for part in ("moving_variance", "gamma", "beta"):
        value = graph.const(f"{scope}/BatchNorm/{part}")
        if value is not None and value.shape != mean.shape:
            raise ValueError(
                f"{scope}/BatchNorm/{part} has shape {value.shape}; moving_mean has {mean.shape}"
            )
    if mean.shape != (out_ch,):
        raise ValueError(
            f"{scope}/BatchNorm/moving_mean has shape {mean.shape}; the convolution has {out_ch} outputs"
        )
    variance = _need(graph, f"{scope}/BatchNorm/moving_variance")
    gamma = graph.const(f"{scope}/BatchNorm/gamma")
    beta = graph.const(f"{scope}/BatchNorm/beta")
    norm = graph.by_name.get(f"{scope}/BatchNorm/FusedBatchNorm")
    epsilon = norm.attr["epsilon"].f if norm is not None and "epsilon" in norm.attr else _DEFAULT_EPSILON
    factor = (np.ones_like(mean) if gamma is None else gamma) / np.sqrt(variance + epsilon)  # (O,)
    bias = (np.zeros_like(mean) if beta is None else beta) - mean * factor
    return kernel * factor[:, None, None, None], bias


def _check_topology(graph: FrozenGraph, model: SsdLiteMobileNetV2) -> None:
    """Residual adds and the maps the heads read, as the module has them."""
    for index, block in enumerate(model.blocks):
        name = _BACKBONE + ("expanded_conv" if index == 0 else f"expanded_conv_{index}") + "/add"
        if (name in graph.by_name) != block.residual:
            raise ValueError(
                f"block {index}: the graph {'lacks' if block.residual else 'has'} the residual add {name}"
            )
    tap_names = [f"{_BACKBONE}expanded_conv_{TAP_BLOCK}/expand/Relu6", _BACKBONE + "Conv_1/Relu6"] + [
        f"{_BACKBONE}layer_19_2_Conv2d_{index + 2}_3x3_s2_{out_ch}/Relu6"
        for index, (_, out_ch) in enumerate(EXTRA_LAYERS)
    ]
    for layer, expected in enumerate(tap_names):
        head_input = graph.input_of(f"BoxPredictor_{layer}/BoxEncodingPredictor_depthwise/depthwise")
        if head_input != expected:
            raise ValueError(f"head {layer} reads {head_input}; SSDLite-MobileNetV2 reads {expected}")


def state_dict_from_graph(graph: FrozenGraph, model: SsdLiteMobileNetV2) -> dict[str, torch.Tensor]:
    """The module's weights from the graph (ValueError naming the TF node or constant that does not fit)."""
    modules = dict(model.named_modules())
    state: dict[str, torch.Tensor] = {}
    for name, scope in tf_scopes(model).items():
        unit = modules[name]
        assert isinstance(unit, ConvUnit)
        kernel, bias = _unit_tensors(graph, scope, unit)
        state[f"{name}.conv.weight"] = torch.from_numpy(np.ascontiguousarray(kernel, dtype=np.float32))
        state[f"{name}.conv.bias"] = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
    return state


class LoadedSsd:
    """A loaded detector network and what its graph said about itself."""

    def __init__(self, model: SsdLiteMobileNetV2, spec: SsdSpec) -> None:
        self.model = model
        self.spec = spec


def load_ssd(path: Path, device: torch.device | str = "cpu") -> LoadedSsd:
    """Read the frozen graph at ``path`` into an SSDLite-MobileNetV2 on ``device`` (fp32, eval mode).

    DetectorError (one line, naming the file and what does not fit) for a file that is not such a graph.
    """
    graph = read_graph(path)
    try:
        spec = describe_ssd(graph)
        model = SsdLiteMobileNetV2(config_from_spec(spec))
        _check_topology(graph, model)
        state = state_dict_from_graph(graph, model)
    except (ValueError, KeyError, IndexError) as error:
        raise DetectorError(f"detector model {path}: {error}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        raise DetectorError(
            f"detector model {path}: its weights do not fit SSDLite-MobileNetV2: {detail}"
        ) from None
    return LoadedSsd(model.to(device).eval(), spec)
