"""Video Swin Transformer (Liu et al., 2021) in torch + einops, numerically equal to the official model.

Module and parameter names follow the official ``SwinTransformer3D`` (SwinTransformer/Video-Swin-Transformer)
and mmaction's I3D head, so ``VideoSwin.state_dict()`` keys are exactly an official checkpoint's
(``backbone.*``, ``cls_head.fc_cls.*``). Official behaviours copied on purpose (each one moves the outputs):

* a window no larger than the token grid shrinks to the grid, and the shift in that dimension becomes 0;
* a shrunken window uses the top-left N x N block of the full window's relative-position index;
* the shifted-window mask is 0 / -100 over the padded grid, three regions per dimension;
* the token grid is zero-padded after ``norm1``;
* patch merging concatenates (h even, w even), (h odd, w even), (h even, w odd), (h odd, w odd);
* GELU is the exact erf form; the head averages over T, H and W.

Layouts: a video is ``(B, C, D, H, W)`` at the module boundaries and channels-last ``(B, D, H, W, C)`` inside
the stages; windows are ``(B, nW, N, C)`` with ``N = Wd * Wh * Ww``. No I/O and no logging here.

Attention is one call per block (``WindowAttention3D``): ``scaled_dot_product_attention`` with the
relative-position bias, plus the shift mask in shifted blocks, as one additive float mask, or ``flex_attention``
with both as a score modifier (``use_flex_attention``). The shift masks come in at most 8 window classes
(``ShiftedWindows``), computed once per padded grid and cached by each stage.

Under ``torch.compile`` no cache is touched: the shifted-window gathers and masks come from
``VideoSwin.prepare(clip_shape, device)``, called once before compiling (or are computed inside the graph), so
that the traced forward has no graph break and only the batch dimension varies.

Inference helpers (``cast_for_inference``, ``fold_input_normalization``) are in ``vstmon.model.inference``.

Over 500 lines: the whole network, readable top to bottom in one sitting (window maths, attention, blocks,
stages, head), as the model files it follows are.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, TypeVar, overload

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vstmon.model.presets import PRESETS, SwinConfig, get_preset

__all__ = [
    "STAGE_NAMES",
    "BasicLayer",
    "DropPath",
    "I3DHead",
    "Mlp",
    "PatchEmbed3D",
    "PatchMerging",
    "ShiftedWindows",
    "SwinTransformer3D",
    "SwinTransformerBlock3D",
    "VideoSwin",
    "WindowAttention3D",
    "build_model",
    "class_shift_masks",
    "effective_window_and_shift",
    "padded_grid",
    "relative_position_index",
    "shift_attention_mask",
    "shifted_windows",
    "use_flex_attention",
    "window_classes",
    "window_partition",
    "window_reverse",
]

Size3 = tuple[int, int, int]
_T = TypeVar("_T")

#: Names of the per-stage outputs returned by ``SwinTransformer3D.forward_stages`` (the fixtures' names).
STAGE_NAMES = ("layers.0", "layers.1", "layers.2", "layers.3", "backbone")

_MASK_VALUE = -100.0  # the official value for "other region" (not -inf)
_CACHE_ENTRIES = 4  # eval caches keep at most this many shapes per module


# --------------------------------------------------------------------------------------------------------------
# The window math: small pure functions.
# --------------------------------------------------------------------------------------------------------------


def effective_window_and_shift(grid: Size3, window: Size3, shift: Size3) -> tuple[Size3, Size3]:
    """Window and shift actually used on a token grid ``(D, H, W)`` (the official rule).

    In every dimension where the grid is no larger than the window, the window shrinks to the grid and the
    shift becomes 0; elsewhere both stay as given.
    """
    win = tuple(g if g <= w else w for g, w in zip(grid, window, strict=True))
    sft = tuple(0 if g <= w else s for g, w, s in zip(grid, window, shift, strict=True))
    return win, sft  # type: ignore[return-value]


def padded_grid(grid: Size3, window: Size3) -> Size3:
    """The grid rounded up to whole windows in every dimension."""
    return tuple(math.ceil(g / w) * w for g, w in zip(grid, window, strict=True))  # type: ignore[return-value]


def relative_position_index(window: Size3) -> Tensor:
    """Index into the relative-position bias table for every token pair of a full window: int64 (N, N).

    Entry ``[i, j]`` encodes the offset ``coord_i - coord_j`` (tokens ordered d, h, w) as
    ``(dd + Wd - 1) * (2Wh - 1) * (2Ww - 1) + (dh + Wh - 1) * (2Ww - 1) + (dw + Ww - 1)``.
    """
    wd, wh, ww = window
    cpu = torch.device("cpu")  # always real numbers, even when a model is built under a meta-device context
    coords = torch.stack(
        torch.meshgrid(
            torch.arange(wd, device=cpu),
            torch.arange(wh, device=cpu),
            torch.arange(ww, device=cpu),
            indexing="ij",
        )
    )  # (3, Wd, Wh, Ww)
    coords = rearrange(coords, "k d h w -> (d h w) k")  # (N, 3)
    rel = coords[:, None, :] - coords[None, :, :]  # (N, N, 3)
    rel = rel + torch.tensor([wd - 1, wh - 1, ww - 1], device=cpu)
    strides = torch.tensor([(2 * wh - 1) * (2 * ww - 1), 2 * ww - 1, 1], device=cpu)
    return (rel * strides).sum(-1)  # (N, N)


def window_partition(x: Tensor, window: Size3) -> Tensor:
    """Split a channels-last grid into windows: (B, D, H, W, C) -> (B, nW, N, C); sizes must divide."""
    wd, wh, ww = window
    return rearrange(
        x, "b (nd wd) (nh wh) (nw ww) c -> b (nd nh nw) (wd wh ww) c", wd=wd, wh=wh, ww=ww
    )  # (B, nW, N, C)


def window_reverse(windows: Tensor, window: Size3, grid: Size3) -> Tensor:
    """Inverse of ``window_partition``: (B, nW, N, C) -> (B, D, H, W, C) for the (padded) ``grid``."""
    wd, wh, ww = window
    nd, nh, nw = (g // w for g, w in zip(grid, window, strict=True))
    return rearrange(
        windows,
        "b (nd nh nw) (wd wh ww) c -> b (nd wd) (nh wh) (nw ww) c",
        nd=nd,
        nh=nh,
        nw=nw,
        wd=wd,
        wh=wh,
        ww=ww,
    )  # (B, D, H, W, C)


def shift_attention_mask(
    grid: Size3, window: Size3, shift: Size3, device: torch.device | None = None
) -> Tensor:
    """Additive attention mask of the shifted windows on a padded ``grid``: float32 (nW, N, N), 0 or -100.

    Each dimension is split in three regions ``[0, G - w)``, ``[G - w, G - s)``, ``[G - s, G)``; two tokens of a
    (rolled) window may attend to each other only when they come from the same region in every dimension.
    A dimension with shift 0 is a single region (as in the official slicing, where ``slice(-0, None)`` is all).
    """
    labels = torch.zeros(grid, dtype=torch.float32, device=device)  # (Dp, Hp, Wp) region id per token
    for axis, (g, w, s) in enumerate(zip(grid, window, shift, strict=True)):
        region = torch.zeros(g, dtype=torch.float32, device=device)  # (G,)
        if s > 0:
            region[g - w : g - s] = 1.0
            region[g - s :] = 2.0
        view = [1, 1, 1]
        view[axis] = g
        labels = labels * 3.0 + region.view(view)
    ids = window_partition(labels[None, ..., None], window)[0, ..., 0]  # (nW, N)
    different = ids[:, None, :] != ids[:, :, None]  # (nW, N, N)
    return torch.zeros(different.shape, dtype=torch.float32, device=device).masked_fill_(
        different, _MASK_VALUE
    )


class ShiftedWindows(NamedTuple):
    """What a shifted block needs on one padded grid, computed once per grid (``shifted_windows``).

    ``token_index`` does roll + window partition in one gather and ``token_inverse`` undoes both in one more.
    Only windows on the last row of windows along a shifted dimension straddle two regions, so the shift mask of
    a window depends only on which shifted dimensions it is last along: its *class* (at most 8). The masks are
    kept per class, (K, N, N); ``BasicLayer.forward`` gathers them per window once per forward
    (``window_masks``, transient: a stage's shifted blocks share it, nothing of that size is cached).
    """

    token_index: Tensor  # (nW * N,) int64: flat (d h w) grid position of every token of the rolled windows
    token_inverse: Tensor  # (Dp * Hp * Wp,) int64: where each grid position sits in ``token_index``
    window_class: Tensor  # (nW,) int64 in [0, K): each window's shift-mask class, window_partition order
    class_masks: Tensor  # (K, N, N) float32, K = 2 ** (shifted dimensions): 0 / -100 per class
    window_masks: Tensor | None = None  # (nW, N, N) = class_masks[window_class] in the activations' dtype


def window_classes(grid: Size3, window: Size3, shift: Size3, device: torch.device | None = None) -> Tensor:
    """The shift-mask class of every window of a padded ``grid`` (window_partition order): int64 (nW,).

    Bit ``i`` of a class is set when the window is the last one along the ``i``-th shifted dimension.
    """
    counts_per_dim = [g // w for g, w in zip(grid, window, strict=True)]
    kind = torch.zeros(counts_per_dim, dtype=torch.int64, device=device)  # (nd, nh, nw)
    bit = 0
    for axis, (n, s) in enumerate(zip(counts_per_dim, shift, strict=True)):
        if s > 0:
            last = (torch.arange(n, device=device) == n - 1).to(torch.int64)  # (n,)
            view = [1, 1, 1]
            view[axis] = n
            kind = kind + last.view(view) * (1 << bit)
            bit += 1
    return kind.flatten()  # (nW,)


def class_shift_masks(window: Size3, shift: Size3, device: torch.device | None = None) -> Tensor:
    """The shift mask of each window class (see ``window_classes``): float32 (K, N, N), 0 or -100.

    Along a shifted dimension, the last window holds the regions ``[G - w, G - s)`` and ``[G - s, G)`` (its
    first ``w - s`` and last ``s`` tokens); every other window lies inside region ``[0, G - w)``. Equal to
    ``shift_attention_mask(grid, ...)[i]`` for a window ``i`` of that class, whatever the grid.
    """
    axes = [axis for axis, s in enumerate(shift) if s > 0]
    masks = []
    for code in range(2 ** len(axes)):
        labels = torch.zeros(window, dtype=torch.int64, device=device)  # (Wd, Wh, Ww) region id per token
        for bit, axis in enumerate(axes):
            if code >> bit & 1:
                w, s = window[axis], shift[axis]
                region = (torch.arange(w, device=device) >= w - s).to(torch.int64)  # (w,) 0 then 1
                view = [1, 1, 1]
                view[axis] = w
                labels = labels * 2 + region.view(view)
        ids = labels.flatten()  # (N,)
        different = ids[:, None] != ids[None, :]  # (N, N)
        masks.append(
            torch.zeros(different.shape, dtype=torch.float32, device=device).masked_fill_(
                different, _MASK_VALUE
            )
        )
    return torch.stack(masks)  # (K, N, N)


def shifted_windows(
    grid: Size3, window: Size3, shift: Size3, device: torch.device | None = None
) -> ShiftedWindows:
    """The gathers and shift masks of a padded ``grid`` (see ``ShiftedWindows``); no data-dependent shapes."""
    # token p of the rolled grid is token p + shift of the grid (torch.roll by -shift)
    position = torch.arange(math.prod(grid), device=device).view(grid)  # (Dp, Hp, Wp)
    rolled = torch.roll(position, shifts=tuple(-s for s in shift), dims=(0, 1, 2))  # (Dp, Hp, Wp)
    token_index = window_partition(rolled[None, ..., None], window)[0, ..., 0].flatten()  # (nW * N,)
    return ShiftedWindows(
        token_index,
        torch.argsort(token_index),
        window_classes(grid, window, shift, device),
        class_shift_masks(window, shift, device),
    )


def _remember(cache: dict[tuple, _T], key: tuple, value: _T) -> _T:
    if len(cache) >= _CACHE_ENTRIES:
        cache.clear()
    cache[key] = value
    return value


# --------------------------------------------------------------------------------------------------------------
# Modules (names as in the official code, so state-dict keys match).
# --------------------------------------------------------------------------------------------------------------


class DropPath(nn.Module):
    """Stochastic depth per sample (training only; identity in eval or with ``drop_prob == 0``)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # (B, 1, ..., 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """fc1 -> exact GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact erf form, as the official model
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside 3D windows with a learned relative-position bias: one attention call.

    Plain blocks: q, k, v are views (B * nW, heads, N, head_dim) of the qkv projection, and the bias
    (heads, N, N) is broadcast over every window. Shifted blocks: the bias and each window's shift mask are
    added into one (nW, heads, N, N) mask, and the windows and heads share SDPA's head axis, (B, nW * heads, N,
    head_dim) (one copy of qkv), so the mask is broadcast over the batch. That mask is built in every forward
    (two ops; one fused kernel when compiled) in the attention dtype and lives for one block: it does not grow
    with the batch. Swin-T on 32 x 224 x 224 clips (window 8 x 7 x 7, N = 392): 59.0 M elements in stage 1
    (128 windows x 3 heads), 29.5 M in stage 2, 14.8 M in stage 3, 7.4 M in stage 4: 118 MB at most in bf16.

    ``flex = True`` (``use_flex_attention``) computes the same thing with ``flex_attention``: the bias and the
    shift mask are added to the scores as a ``score_mod`` and never materialised. It is meant for compiled
    forwards on a GPU (eager, it falls back to a slow reference implementation) and has no attention dropout.
    """

    def __init__(
        self,
        dim: int,
        window_size: Size3,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.window_size = tuple(window_size)
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim**-0.5
        wd, wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1), num_heads)
        )  # ((2Wd-1)(2Wh-1)(2Ww-1), heads)
        self.register_buffer(
            "relative_position_index", relative_position_index(self.window_size), persistent=False
        )
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = float(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.flex = False  # attention through flex_attention (see the class docstring)

    def relative_position_bias(self, num_tokens: int) -> Tensor:
        """Bias for a window of ``num_tokens`` tokens: (heads, N, N), from the top-left N x N of the index.

        Gathered from the table in every forward (one small gather): no cache to go stale when weights change.
        """
        index = self.relative_position_index[:num_tokens, :num_tokens]  # (N, N)
        # indexing the transposed table gives (heads, N, N) contiguous: what the masks built from it need
        return self.relative_position_bias_table.t()[:, index]  # (heads, N, N)

    def forward(self, windows: Tensor, shifted: ShiftedWindows | None = None) -> Tensor:
        """(B, nW, N, C) windows -> (B, nW, N, C). ``shifted`` (shifted blocks only) holds the shift masks."""
        b, nw, n, _ = windows.shape
        qkv = self.qkv(windows)  # (B, nW, N, 3C)
        bias = self.relative_position_bias(n).to(qkv.dtype)  # (heads, N, N)
        if self.flex:
            return self._project(self._flex(qkv, bias, shifted))
        drop_p = self.attn_drop if self.training else 0.0
        if shifted is None:
            q, k, v = rearrange(
                qkv, "b w n (three h d) -> three (b w) h n d", three=3, h=self.num_heads
            ).unbind(0)  # each (B*nW, heads, N, head_dim), views
            mask = bias.expand(b * nw, -1, -1, -1)  # (B*nW, heads, N, N), a stride-0 view
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop_p, scale=self.scale)
            out = rearrange(out, "(b w) h n d -> b w h n d", b=b)  # (B, nW, heads, N, head_dim), a view
        else:
            shift = shifted.window_masks
            if shift is None:  # a block run on its own
                shift = shifted.class_masks[shifted.window_class]  # (nW, N, N)
            mask = rearrange(
                bias[None] + shift.to(qkv.dtype)[:, None], "w h i j -> (w h) i j"
            )  # (nW*heads, N, N): the one large op of the mask
            q, k, v = rearrange(
                qkv, "b w n (three h d) -> three b (w h) n d", three=3, h=self.num_heads
            ).unbind(0)  # each (B, nW*heads, N, head_dim): one copy of qkv
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask.expand(b, -1, -1, -1), dropout_p=drop_p, scale=self.scale
            )  # (B, nW*heads, N, head_dim)
            out = rearrange(out, "b (w h) n d -> b w h n d", h=self.num_heads)  # (B, nW, heads, N, head_dim)
        return self._project(out)

    def _project(self, heads: Tensor) -> Tensor:
        """(B, nW, heads, N, head_dim) -> (B, nW, N, C): merge the heads, then the output projection.

        Under ``torch.export`` (ONNX, TensorRT) the merge is folded into the projection as one einsum: a reshape
        of the transposed tensor with a symbolic batch decomposes into an invalid view there, which stopped the
        ONNX export. Elsewhere it stays reshape + Linear: the einsum measured up to 1.8x slower on a CPU."""
        if torch.compiler.is_exporting():
            weight = self.proj.weight.view(self.dim, self.num_heads, -1)  # (C, heads, head_dim)
            out = torch.einsum("bwhnd,chd->bwnc", heads, weight)  # (B, nW, N, C)
            return self.proj_drop(out if self.proj.bias is None else out + self.proj.bias)
        return self.proj_drop(self.proj(rearrange(heads, "b w h n d -> b w n (h d)")))  # (B, nW, N, C)

    def _flex(self, qkv: Tensor, bias: Tensor, shifted: ShiftedWindows | None) -> Tensor:
        """The attention of ``forward`` through ``flex_attention``: (B, nW, N, 3C) -> (B, nW, heads, N, head_dim)."""
        from torch.nn.attention.flex_attention import flex_attention

        b, nw = qkv.shape[:2]
        q, k, v = rearrange(qkv, "b w n (three h d) -> three (b w) h n d", three=3, h=self.num_heads).unbind(
            0
        )  # each (B*nW, heads, N, head_dim), views
        if shifted is None:

            def score_mod(score: Tensor, bw: Tensor, h: Tensor, i: Tensor, j: Tensor) -> Tensor:
                return score + bias[h, i, j]

        else:
            window_class, class_masks = shifted.window_class, shifted.class_masks

            def score_mod(score: Tensor, bw: Tensor, h: Tensor, i: Tensor, j: Tensor) -> Tensor:
                return score + bias[h, i, j] + class_masks[window_class[bw % nw], i, j]

        out = flex_attention(q, k, v, score_mod=score_mod, scale=self.scale)  # (B*nW, heads, N, head_dim)
        return rearrange(out, "(b w) h n d -> b w h n d", b=b)  # (B, nW, heads, N, head_dim)


class SwinTransformerBlock3D(nn.Module):
    """norm1 -> (shifted) window attention -> residual; norm2 -> MLP -> residual."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: Size3 = (8, 7, 7),
        shift_size: Size3 = (0, 0, 0),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.window_size = tuple(window_size)
        self.shift_size = tuple(shift_size)
        self.norm1 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.attn = WindowAttention3D(dim, self.window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def _attention(self, x: Tensor, shifted: ShiftedWindows | None) -> Tensor:
        """Windowed attention of an already normalised (B, D, H, W, C) grid. ``shifted``: the stage's gathers
        and masks for this grid (computed here when the block runs on its own)."""
        _, d, h, w, _ = x.shape
        window, shift = effective_window_and_shift((d, h, w), self.window_size, self.shift_size)
        dp, hp, wp = padded_grid((d, h, w), window)
        padded = (dp, hp, wp) != (d, h, w)
        if padded:  # zeros after norm1, as the official model
            x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h, 0, dp - d))  # (B, Dp, Hp, Wp, C)
        if any(s > 0 for s in shift):
            if shifted is None:  # a block used on its own; BasicLayer passes its cached ones
                shifted = shifted_windows((dp, hp, wp), window, shift, x.device)
            # roll by -shift and partition in one gather; undo both in one more
            flat = rearrange(x, "b d h w c -> b (d h w) c")  # (B, Dp*Hp*Wp, C)
            windows = rearrange(
                flat.index_select(1, shifted.token_index), "b (w n) c -> b w n c", n=math.prod(window)
            )  # (B, nW, N, C)
            windows = rearrange(self.attn(windows, shifted), "b w n c -> b (w n) c")  # (B, nW*N, C)
            x = rearrange(
                windows.index_select(1, shifted.token_inverse), "b (d h w) c -> b d h w c", d=dp, h=hp, w=wp
            )  # (B, Dp, Hp, Wp, C)
        else:
            windows = self.attn(window_partition(x, window))  # (B, nW, N, C)
            x = window_reverse(windows, window, (dp, hp, wp))  # (B, Dp, Hp, Wp, C)
        if padded:
            x = x[:, :d, :h, :w, :]  # (B, D, H, W, C)
        return x

    def forward(self, x: Tensor, shifted: ShiftedWindows | None = None) -> Tensor:
        """(B, D, H, W, C) -> same shape. ``shifted``: the layer's shift gathers, used only if this block shifts."""
        x = x + self.drop_path(self._attention(self.norm1(x), shifted))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 spatial merge: (B, D, H, W, C) -> (B, D, ceil(H/2), ceil(W/2), 2C)."""

    def __init__(self, dim: int, layer_norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim, eps=layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        _, _, h, w, _ = x.shape
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))  # (B, D, H+1?, W+1?, C)
        # official order: (h even, w even), (h odd, w even), (h even, w odd), (h odd, w odd)
        x = rearrange(x, "b d (h dh) (w dw) c -> b d h w (dw dh c)", dh=2, dw=2)  # (B, D, H/2, W/2, 4C)
        return self.reduction(self.norm(x))


class BasicLayer(nn.Module):
    """One stage: ``depth`` blocks alternating plain and shifted windows, then optional patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: Size3 = (8, 7, 7),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: list[float] | float = 0.0,
        layer_norm_eps: float = 1e-5,
        downsample: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.window_size = tuple(window_size)
        self.shift_size = tuple(w // 2 for w in self.window_size)
        self.depth = depth
        self.use_checkpoint = use_checkpoint
        rates = drop_path if isinstance(drop_path, list) else [drop_path] * depth
        self.blocks = nn.ModuleList(
            SwinTransformerBlock3D(
                dim,
                num_heads,
                self.window_size,
                (0, 0, 0) if i % 2 == 0 else self.shift_size,
                mlp_ratio,
                qkv_bias,
                qk_scale,
                drop,
                attn_drop,
                rates[i],
                layer_norm_eps,
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim, layer_norm_eps) if downsample else None
        # eager forwards: key (padded grid, window, shift, device, inference mode), at most _CACHE_ENTRIES
        # entries, kept for the module's life; compiled forwards read ``_prepared`` (token grid -> value) only
        self._shifted_cache: dict[tuple, ShiftedWindows] = {}
        self._prepared: dict[Size3, ShiftedWindows] = {}

    def prepare(self, grid: Size3, device: torch.device) -> None:
        """Compute the shifted-window gathers of a (D, H, W) token grid ahead, for a compiled forward (which
        reads them without a cache key). Made outside inference mode, so that training can use them too."""
        window, shift = effective_window_and_shift(grid, self.window_size, self.shift_size)
        if any(s > 0 for s in shift):
            with torch.inference_mode(False), torch.no_grad():
                value = shifted_windows(padded_grid(grid, window), window, shift, device)
            self._prepared[tuple(grid)] = value

    def shifted_windows(self, grid: Size3, device: torch.device) -> ShiftedWindows | None:
        """This stage's shifted-window gathers and masks on a (D, H, W) token grid, or None when nothing shifts.

        Compiled: the prepared value, or (not prepared) one computed inside the graph; eager: cached."""
        window, shift = effective_window_and_shift(grid, self.window_size, self.shift_size)
        if not any(s > 0 for s in shift):
            return None
        padded = padded_grid(grid, window)
        if torch.compiler.is_compiling():
            prepared = self._prepared.get(tuple(grid))
            return prepared if prepared is not None else shifted_windows(padded, window, shift, device)
        key = (padded, window, shift, device, torch.is_inference_mode_enabled())
        hit = self._shifted_cache.get(key)
        if hit is not None:
            return hit
        return _remember(self._shifted_cache, key, shifted_windows(padded, window, shift, device))

    def forward(self, x: Tensor) -> Tensor:
        """(B, D, H, W, C) -> (B, D, H, W, C), or merged (B, D, H/2, W/2, 2C) when the stage downsamples."""
        shifted = self.shifted_windows(tuple(x.shape[1:4]), x.device)
        if shifted is not None:  # each window's shift mask, gathered once for all of this stage's blocks
            shifted = shifted._replace(window_masks=shifted.class_masks.to(x.dtype)[shifted.window_class])
        checkpointing = self.use_checkpoint and self.training and torch.is_grad_enabled()
        for blk in self.blocks:
            x = checkpoint(blk, x, shifted, use_reentrant=False) if checkpointing else blk(x, shifted)
        return x if self.downsample is None else self.downsample(x)


class PatchEmbed3D(nn.Module):
    """Video to patch tokens: pad to whole patches, Conv3d (kernel = stride = patch), optional LayerNorm.

    With ``input_mean``/``input_std`` set (``vstmon.model.inference.fold_input_normalization``), the input is
    the raw clip (0-255 floats) and the normalisation ``(x - mean) / std`` is folded into the convolution's weight
    and bias at every forward (a few tiny ops instead of passes over the clip; see ``_folded``); padding then
    uses the mean, the value that normalises to the official zero. Both buffers are non-persistent: the state
    dict is unchanged.
    """

    def __init__(
        self,
        patch_size: Size3 = (2, 4, 4),
        in_chans: int = 3,
        embed_dim: int = 96,
        patch_norm: bool = True,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps) if patch_norm else None
        self.input_mean: Tensor | None  # (C_in,) float32, set only for a raw (unnormalised) input
        self.input_std: Tensor | None
        self.register_buffer("input_mean", None, persistent=False)
        self.register_buffer("input_std", None, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, T, H, W) -> channels-last tokens (B, D, H', W', C), in the weights' dtype."""
        if self.input_mean is not None and self.input_std is not None:
            x = self._folded(x.float(), self.input_mean, self.input_std)  # (B, C, D, H', W')
        else:
            x = self.proj(self._pad(x.to(self.proj.weight.dtype)))  # (B, C, D, H', W')
        x = rearrange(x, "b c d h w -> b d h w c")  # (B, D, H', W', C)
        return x if self.norm is None else self.norm(x)

    def _pad(self, x: Tensor, value: Tensor | None = None) -> Tensor:
        """Pad (B, C_in, T, H, W) at the end of T, H and W to whole patches, with zeros or ``value`` (C_in,)."""
        _, _, t, h, w = x.shape
        pt, ph, pw = self.patch_size
        pads = ((-w) % pw, (-h) % ph, (-t) % pt)
        if not any(pads):
            return x
        x = F.pad(x, (0, pads[0], 0, pads[1], 0, pads[2]))  # (B, C_in, T', H', W')
        if value is not None:
            fill = value.to(x.dtype).view(1, -1, 1, 1, 1)  # (1, C_in, 1, 1, 1)
            x[:, :, t:] = fill
            x[:, :, :, h:] = fill
            x[:, :, :, :, w:] = fill
        return x

    def _folded(self, x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """The convolution of a raw fp32 clip with the normalisation folded in: W' = W / std, b' = b - sum(W' *
        mean), computed in fp32 even when the weights are half (the raw values are large and the sum cancels:
        half W' and b' would lose the small difference), and padded with the mean (normalises to 0). The result
        is cast to the weights' dtype. The embedding is ~0.3 % of Swin-T's FLOPs: fp32 here costs nothing."""
        weight = self.proj.weight.float() / std.view(1, -1, 1, 1, 1)  # (C, C_in, Pt, Ph, Pw)
        bias = -torch.einsum("ocdhw,c->o", weight, mean)  # (C,)
        if self.proj.bias is not None:
            bias = bias + self.proj.bias.float()
        out = F.conv3d(self._pad(x, mean), weight, bias, stride=self.patch_size)  # (B, C, D, H', W') fp32
        return out.to(self.proj.weight.dtype)


class SwinTransformer3D(nn.Module):
    """The Video Swin backbone: patch embedding, four stages, final LayerNorm."""

    def __init__(self, cfg: SwinConfig) -> None:
        super().__init__()
        self.config = cfg
        self.num_layers = len(cfg.depths)
        self.embed_dim = cfg.embed_dim
        self.patch_size = tuple(cfg.patch_size)
        self.window_size = tuple(cfg.window_size)
        self.num_features = cfg.num_features
        self.patch_embed = PatchEmbed3D(
            self.patch_size, cfg.in_chans, cfg.embed_dim, cfg.patch_norm, cfg.layer_norm_eps
        )
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        # stochastic depth rate per block, increasing linearly to drop_path_rate
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        start = 0
        for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads, strict=True)):
            self.layers.append(
                BasicLayer(
                    dim=cfg.embed_dim * 2**i,
                    depth=depth,
                    num_heads=heads,
                    window_size=self.window_size,
                    mlp_ratio=cfg.mlp_ratio,
                    qkv_bias=cfg.qkv_bias,
                    qk_scale=cfg.qk_scale,
                    drop=cfg.drop_rate,
                    attn_drop=cfg.attn_drop_rate,
                    drop_path=rates[start : start + depth],
                    layer_norm_eps=cfg.layer_norm_eps,
                    downsample=i < self.num_layers - 1,
                    use_checkpoint=cfg.use_checkpoint,
                )
            )
            start += depth
        self.norm = nn.LayerNorm(self.num_features, eps=cfg.layer_norm_eps)
        self.apply(_init_weights)
        for layer in self.layers:
            for blk in layer.blocks:
                nn.init.trunc_normal_(blk.attn.relative_position_bias_table, std=0.02)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 5:
            raise ValueError(
                f"Video Swin expects a 5-D float tensor (N, {self.config.in_chans}, T, H, W); "
                f"got {x.ndim}-D with shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.config.in_chans:
            raise ValueError(
                f"Video Swin expects {self.config.in_chans} channels in dimension 1 of (N, C, T, H, W); "
                f"got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"Video Swin expects a floating-point tensor; got {x.dtype}")

    def token_grids(self, clip_shape: Size3) -> list[Size3]:
        """The (D, H, W) token grid each stage sees for clips of ``clip_shape`` = (T, H, W) frames/pixels."""
        grid = tuple(-(-n // p) for n, p in zip(clip_shape, self.patch_size, strict=True))  # whole patches
        grids: list[Size3] = []
        for layer in self.layers:
            grids.append(grid)
            if layer.downsample is not None:
                grid = (grid[0], -(-grid[1] // 2), -(-grid[2] // 2))
        return grids

    def prepare(self, clip_shape: Size3, device: torch.device) -> None:
        """Compute per-shape constants for clips of ``clip_shape`` (T, H, W) ahead (see the module docstring)."""
        for layer, grid in zip(self.layers, self.token_grids(clip_shape), strict=True):
            layer.prepare(grid, device)

    def forward_stages(self, x: Tensor) -> dict[str, Tensor]:
        """Every stage output in (N, C, D, H, W), keyed by ``STAGE_NAMES``.

        ``layers.0`` to ``layers.2`` are after patch merging, ``layers.3`` before the final norm, ``backbone``
        after it.
        """
        self._check_input(x)
        x = self.pos_drop(self.patch_embed(x))  # (B, D, H, W, C)
        out: dict[str, Tensor] = {}
        for i, layer in enumerate(self.layers):
            x = layer(x)
            out[f"layers.{i}"] = rearrange(x, "b d h w c -> b c d h w")
        out["backbone"] = rearrange(self.norm(x), "b d h w c -> b c d h w")
        return out

    @overload
    def forward(self, x: Tensor, return_stages: Literal[False] = False) -> Tensor: ...
    @overload
    def forward(self, x: Tensor, return_stages: Literal[True]) -> dict[str, Tensor]: ...

    def forward(self, x: Tensor, return_stages: bool = False) -> Tensor | dict[str, Tensor]:
        """(N, C_in, T, H, W) -> (N, C, D, H', W') after the final norm (or the per-stage dict)."""
        if return_stages:
            return self.forward_stages(x)
        self._check_input(x)
        x = self.pos_drop(self.patch_embed(x))  # (B, D, H, W, C)
        for layer in self.layers:
            x = layer(x)
        return rearrange(self.norm(x), "b d h w c -> b c d h w")  # (B, C, D, H, W)


class I3DHead(nn.Module):
    """mmaction's I3D head: mean over T, H, W -> dropout -> ``fc_cls``."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc_cls = nn.Linear(in_channels, num_classes)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.zeros_(self.fc_cls.bias)

    def forward(self, features: Tensor) -> Tensor:
        """(N, C, D, H, W) -> (N, classes)."""
        pooled = features.mean(dim=(2, 3, 4)).to(self.fc_cls.weight.dtype)  # (N, C); fp32 under cast weights
        return self.fc_cls(self.dropout(pooled))  # (N, classes)


class VideoSwin(nn.Module):
    """Backbone plus classification head; state-dict keys are the official ``backbone.*``/``cls_head.*``."""

    def __init__(self, cfg: SwinConfig) -> None:
        super().__init__()
        self.config = cfg
        self.backbone = SwinTransformer3D(cfg)
        self.cls_head = I3DHead(cfg.num_features, cfg.num_classes, cfg.head_dropout)

    def prepare(self, clip_shape: Size3, device: torch.device | str) -> None:
        """Before ``torch.compile``: compute the constants of clips of ``clip_shape`` = (T, H, W) on ``device``,
        so that the compiled forward has no graph break (see the module docstring)."""
        self.backbone.prepare(tuple(clip_shape), torch.device(device))

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, 3, T, H, W) -> backbone output (N, C, D, H', W') after the final norm."""
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, T, H, W), already normalised -> logits (N, classes)."""
        return self.cls_head(self.backbone(x))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def use_flex_attention(model: nn.Module, enabled: bool = True) -> None:
    """Switch every window attention of ``model`` to ``flex_attention`` (or back to SDPA). For compiled
    inference on a GPU; see ``WindowAttention3D``."""
    for module in model.modules():
        if isinstance(module, WindowAttention3D):
            module.flex = enabled


def build_model(arch_or_config: str | SwinConfig, num_classes: int | None = None) -> VideoSwin:
    """An untrained ``VideoSwin`` in eval mode from a preset name (see ``PRESETS``) or a ``SwinConfig``.

    ``num_classes`` overrides the configuration's head size.
    """
    if isinstance(arch_or_config, SwinConfig):
        cfg = arch_or_config
    elif isinstance(arch_or_config, str):
        cfg = get_preset(arch_or_config)
    else:
        raise TypeError(
            f"build_model needs a preset name ({', '.join(sorted(PRESETS))}) or a SwinConfig; "
            f"got {type(arch_or_config).__name__}"
        )
    if num_classes is not None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1; got {num_classes}")
        cfg = cfg.with_(num_classes=num_classes)
    return VideoSwin(cfg).eval()
