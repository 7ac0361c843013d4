"""SSDLite-MobileNetV2 (Sandler et al., 2018; Liu et al., 2016) as a torch module: the TF Object Detection API's
``ssdlite_mobilenet_v2`` network, laid out so that the weights of its frozen graphs load by name
(:mod:`vstmon.subjects.ssd_weights`). No I/O here.

What the network computes, as the TF graph does:

* input: RGB 0..255 at ``input_size_px`` square (the frame squeezed, aspect ratio not kept), scaled to -1..1
  (``pixel * input_scale + input_shift``);
* convolutions pad as TensorFlow's ``SAME`` (a stride-2 layer on an even size pads only after: bottom/right);
  batch norms are folded into the convolutions when the weights are loaded;
* MobileNetV2 (width 1.0): a 3x3/2 stem of 32 channels, 17 inverted-residual blocks, a 1x1 of 1280 channels;
  SSD taps the expansion output of block 13 (576 channels, 19x19 at 300 px) and the last 1x1 (1280, 10x10),
  then four extra layers (1x1 reduce, 3x3/2 depthwise, 1x1 expand: 5x5, 3x3, 2x2, 1x1);
* SSDLite heads on the six maps: a 3x3 depthwise (+ReLU6) then a 1x1 to 4 box codes / C+1 class logits per
  anchor;
* anchors: TF's ``MultipleGridAnchorGenerator`` (centres at (i + 0.5) / size of each map, sizes from the graph);
  boxes decode with TF's ``FasterRcnnBoxCoder`` (scale factors y, x, h, w); scores are the sigmoid (or softmax)
  of the logits, column 0 the background.

The output is per anchor: boxes ``(N, A, 4)`` as ``[x0, y0, x1, y1]`` normalised to the input (not clipped),
and scores ``(N, A, C + 1)``. Thresholds and non-maximum suppression are the caller's (they need a host-side
loop; see :mod:`vstmon.subjects.detector`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = ["SsdLiteConfig", "SsdLiteMobileNetV2", "decode_boxes", "grid_anchors", "tf_same_padding"]

# MobileNetV2's inverted residual settings: (expansion, output channels, blocks, stride of the first block)
MOBILENET_V2_BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)  # fmt: skip
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
TAP_BLOCK = 13  # head 0 reads this block's expansion output (before its stride-2 depthwise)
# SSD extra layers after the backbone: (1x1 reduce channels, output channels), each halving the map
EXTRA_LAYERS: tuple[tuple[int, int], ...] = ((256, 512), (128, 256), (128, 256), (64, 128))


@dataclass(frozen=True)
class SsdLiteConfig:
    """Everything that is not a weight. Defaults: the TF model zoo's SSDLite-MobileNetV2 (person-only)."""

    num_classes: int = 1  # without the background (1: person-only graph; 90: COCO)
    anchor_widths: tuple[tuple[float, ...], ...] = ()  # per head, per anchor, normalised to the input
    anchor_heights: tuple[tuple[float, ...], ...] = ()
    input_size_px: int = 300  # square network input
    box_scales: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)  # box coder (y, x, h, w)
    score_converter: str = "sigmoid"  # or "softmax"
    logit_scale: float = 1.0  # logits are divided by it before the converter
    input_scale: float = 2.0 / 255.0  # network input = pixel * input_scale + input_shift
    input_shift: float = -1.0

    @property
    def anchors_per_layer(self) -> tuple[int, ...]:
        return tuple(len(widths) for widths in self.anchor_widths)


# ---------------------------------------------------------------------------------------------------------
# small functions: padding, anchors, box decoding
# ---------------------------------------------------------------------------------------------------------
def tf_same_padding(size_px: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's ``SAME`` padding of one axis: (before, after); an odd total pads one more after."""
    out_px = -(-size_px // stride)
    total = max((out_px - 1) * stride + kernel - size_px, 0)
    return total // 2, total - total // 2


def feature_sizes(input_size_px: int) -> tuple[int, ...]:
    """The side of each of the six maps the heads read (19, 10, 5, 3, 2, 1 at 300 px)."""
    strides_before_tap = [2] + [s for _, _, _, s in MOBILENET_V2_BLOCKS[:5]]  # stem, blocks 0..12
    size = input_size_px
    for stride in strides_before_tap:
        size = -(-size // stride)
    sizes = [size, -(-size // 2)]  # block 13 halves it again before Conv_1
    for _ in EXTRA_LAYERS:
        sizes.append(-(-sizes[-1] // 2))
    return tuple(sizes)


def grid_anchors(
    sizes: tuple[int, ...], widths: tuple[tuple[float, ...], ...], heights: tuple[tuple[float, ...], ...]
) -> torch.Tensor:
    """(A, 4) anchors as (centre y, centre x, height, width), normalised; ordered head, row, column, anchor.

    TF's grid anchor generator: the anchor stride of a map of side S is 1/S and the centres sit at
    (i + 0.5) / S, every anchor size at every cell.
    """
    per_head = []
    for size, head_w, head_h in zip(sizes, widths, heights, strict=True):
        centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size  # (S,)
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")  # (S, S) each
        count = len(head_w)
        grid = torch.stack(
            [
                cy[..., None].expand(size, size, count),
                cx[..., None].expand(size, size, count),
                torch.tensor(head_h, dtype=torch.float64).expand(size, size, count),
                torch.tensor(head_w, dtype=torch.float64).expand(size, size, count),
            ],
            dim=-1,
        )  # (S, S, a, 4)
        per_head.append(rearrange(grid, "h w a k -> (h w a) k"))
    return torch.cat(per_head).float()


def decode_boxes(codes: torch.Tensor, anchors: torch.Tensor, scales: tuple[float, ...]) -> torch.Tensor:
    """TF's FasterRcnnBoxCoder: codes (N, A, 4) as (ty, tx, th, tw), anchors (A, 4) as (cy, cx, h, w) ->
    boxes (N, A, 4) as [x0, y0, x1, y1], normalised, not clipped."""
    y_scale, x_scale, h_scale, w_scale = scales
    cy = codes[..., 0] / y_scale * anchors[:, 2] + anchors[:, 0]  # (N, A)
    cx = codes[..., 1] / x_scale * anchors[:, 3] + anchors[:, 1]
    half_h = torch.exp(codes[..., 2] / h_scale) * anchors[:, 2] / 2
    half_w = torch.exp(codes[..., 3] / w_scale) * anchors[:, 3] / 2
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)


# ---------------------------------------------------------------------------------------------------------
# modules
# ---------------------------------------------------------------------------------------------------------
class ConvUnit(nn.Module):
    """A convolution with TF ``SAME`` padding, its batch norm folded in (a bias), and an optional ReLU6.

    ``depthwise``: one filter per channel (TF ``DepthwiseConv2dNative`` with multiplier 1).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 1,
        stride: int = 1,
        depthwise: bool = False,
        relu6: bool = True,
    ) -> None:
        super().__init__()
        if depthwise and in_ch != out_ch:
            raise ValueError(f"a depthwise unit keeps its channels; got {in_ch} -> {out_ch}")
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=0, groups=in_ch if depthwise else 1)
        self.kernel, self.stride, self.depthwise, self.relu6 = kernel, stride, depthwise, relu6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = tf_same_padding(x.shape[-2], self.kernel, self.stride)
        left, right = tf_same_padding(x.shape[-1], self.kernel, self.stride)
        conv = self.conv
        if top == bottom and left == right:  # symmetric: the convolution pads by itself
            x = F.conv2d(x, conv.weight, conv.bias, self.stride, (top, left), 1, conv.groups)
        else:
            x = F.conv2d(
                F.pad(x, (left, right, top, bottom)), conv.weight, conv.bias, self.stride, 0, 1, conv.groups
            )
        return (
            F.relu6(x, inplace=True) if self.relu6 else x
        )  # in place: the activations are memory-bound on CPU


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (+ReLU6; none at expansion 1), 3x3 depthwise (+ReLU6), 1x1 project
    (linear), plus the input when the shape is kept."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.expand = ConvUnit(in_ch, hidden) if expansion != 1 else None
        self.depthwise = ConvUnit(hidden, hidden, 3, stride, depthwise=True)
        self.project = ConvUnit(hidden, out_ch, relu6=False)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, expansion output): SSD taps the latter of block 13."""
        expanded = self.expand(x) if self.expand is not None else x
        out = self.project(self.depthwise(expanded))
        return (out + x if self.residual else out), expanded


class ExtraLayer(nn.Module):
    """SSDLite extra feature layer: 1x1 reduce, 3x3/2 depthwise, 1x1 expand, each with ReLU6."""

    def __init__(self, in_ch: int, reduce_ch: int, out_ch: int) -> None:
        super().__init__()
        self.reduce = ConvUnit(in_ch, reduce_ch)
        self.depthwise = ConvUnit(reduce_ch, reduce_ch, 3, 2, depthwise=True)
        self.expand = ConvUnit(reduce_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.depthwise(self.reduce(x)))


class Head(nn.Module):
    """SSDLite box predictor of one map: depthwise 3x3 (+ReLU6) then 1x1, for box codes and class logits."""

    def __init__(self, in_ch: int, anchors: int, num_classes: int) -> None:
        super().__init__()
        self.box_depthwise = ConvUnit(in_ch, in_ch, 3, depthwise=True)
        self.box = ConvUnit(in_ch, anchors * 4, relu6=False)
        self.class_depthwise = ConvUnit(in_ch, in_ch, 3, depthwise=True)
        self.classes = ConvUnit(in_ch, anchors * (num_classes + 1), relu6=False)
        self.anchors = anchors

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = rearrange(self.box(self.box_depthwise(x)), "n (a k) h w -> n (h w a) k", k=4)  # (N, HWa, 4)
        logits = rearrange(
            self.classes(self.class_depthwise(x)), "n (a c) h w -> n (h w a) c", a=self.anchors
        )
        return codes, logits  # logits: (N, HWa, C + 1)


class SsdLiteMobileNetV2(nn.Module):
    """The detector network: RGB 0..255 frames in, per-anchor boxes and scores out (module docstring)."""

    def __init__(self, config: SsdLiteConfig) -> None:
        super().__init__()
        if len(config.anchor_widths) != 2 + len(EXTRA_LAYERS) or len(config.anchor_heights) != len(
            config.anchor_widths
        ):
            raise ValueError(
                f"SSDLite-MobileNetV2 has {2 + len(EXTRA_LAYERS)} heads; the anchors give another count"
            )
        self.config = config
        self.stem = ConvUnit(3, STEM_CHANNELS, 3, 2)
        blocks, in_ch = [], STEM_CHANNELS
        for expansion, out_ch, count, stride in MOBILENET_V2_BLOCKS:
            for index in range(count):
                blocks.append(InvertedResidual(in_ch, out_ch, stride if index == 0 else 1, expansion))
                in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.last = ConvUnit(in_ch, LAST_CHANNELS)
        extras, in_ch = [], LAST_CHANNELS
        for reduce_ch, out_ch in EXTRA_LAYERS:
            extras.append(ExtraLayer(in_ch, reduce_ch, out_ch))
            in_ch = out_ch
        self.extras = nn.ModuleList(extras)
        tap_ch = blocks[TAP_BLOCK].depthwise.conv.in_channels
        head_channels = [tap_ch, LAST_CHANNELS] + [out_ch for _, out_ch in EXTRA_LAYERS]
        self.heads = nn.ModuleList(
            Head(ch, anchors, config.num_classes)
            for ch, anchors in zip(head_channels, config.anchors_per_layer, strict=True)
        )
        anchors = grid_anchors(
            feature_sizes(config.input_size_px), config.anchor_widths, config.anchor_heights
        )
        self.register_buffer("anchors", anchors, persistent=False)  # (A, 4): recomputed from the config

    @property
    def num_anchors(self) -> int:
        return int(self.anchors.shape[0])

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The six maps the heads read; images (N, 3, S, S) RGB 0..255."""
        x = self.stem(images * self.config.input_scale + self.config.input_shift)  # (N, 32, S/2, S/2)
        maps = []
        for index, block in enumerate(self.blocks):
            x, expanded = block(x)
            if index == TAP_BLOCK:
                maps.append(expanded)  # (N, 576, 19, 19) at 300 px
        x = self.last(x)  # (N, 1280, 10, 10)
        maps.append(x)
        for extra in self.extras:
            x = extra(x)
            maps.append(x)
        return maps

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (N, 3, S, S) float RGB 0..255 -> boxes (N, A, 4) [x0, y0, x1, y1] normalised, scores
        (N, A, C + 1) (column 0: background)."""
        size = self.config.input_size_px
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(
                f"the detector network wants (N, 3, {size}, {size}) images; got {tuple(images.shape)}"
            )
        codes, logits = zip(
            *(head(x) for head, x in zip(self.heads, self.features(images), strict=True)), strict=True
        )
        codes_all = torch.cat(codes, dim=1)  # (N, A, 4)
        logits_all = torch.cat(logits, dim=1) / self.config.logit_scale  # (N, A, C + 1)
        if self.config.score_converter == "softmax":
            scores = torch.softmax(logits_all, dim=-1)
        else:
            scores = torch.sigmoid(logits_all)
        return decode_boxes(codes_all, self.anchors, self.config.box_scales), scores
