"""The attention that ``vstmon.model.swin3d`` used before issue 22, kept as the reference the new one must equal.

Shifted windows were gathered in groups that share a shift mask (at most 8 per grid) and attention ran once per
group, the group's mask broadcast (``F.scaled_dot_product_attention`` per group, then a ``cat``). The model now
makes one attention call per block; ``grouped_attention(model)`` puts this older path back on a model for a
``with`` block, so a test (or ``benchmarks/bench_attention.py``) can run both on the same weights.

The code below is the older model's, unchanged but for living outside its classes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vstmon.model.swin3d import (
    Size3,
    SwinTransformerBlock3D,
    WindowAttention3D,
    effective_window_and_shift,
    padded_grid,
    shift_attention_mask,
    window_partition,
    window_reverse,
)

__all__ = ["GroupedCaches", "WindowGroups", "group_shifted_windows", "grouped_attention"]


class WindowGroups(NamedTuple):
    """Windows of a shifted grid grouped by their (identical) shift mask."""

    order: Tensor  # (nW,) int64: window indices (window_partition order of the rolled grid), grouped
    counts: tuple[int, ...]  # windows per group, in ``order``
    masks: Tensor  # (G, N, N) float32: the shift mask of each group (0 / -100)
    token_index: Tensor  # (nW * N,) int64: flat (d h w) grid position of every window token, grouped order
    token_inverse: Tensor  # (Dp * Hp * Wp,) int64: where each grid position sits in ``token_index``


def group_shifted_windows(
    grid: Size3, window: Size3, shift: Size3, device: torch.device | None = None
) -> WindowGroups:
    """Group the windows of a padded ``grid`` by shift mask (see ``WindowGroups``)."""
    counts_per_dim = [g // w for g, w in zip(grid, window, strict=True)]
    kind = torch.zeros(counts_per_dim, dtype=torch.int64, device=device)  # (nd, nh, nw)
    for axis, (n, s) in enumerate(zip(counts_per_dim, shift, strict=True)):
        if s > 0:
            last = (torch.arange(n, device=device) == n - 1).to(torch.int64)  # (n,)
            view = [1, 1, 1]
            view[axis] = n
            kind = kind + last.view(view) * (1 << axis)
    kind = kind.flatten()  # (nW,), in window_partition order
    order = torch.argsort(kind, stable=True)  # (nW,)
    _, counts = torch.unique_consecutive(kind[order], return_counts=True)  # (G,)
    firsts = torch.cumsum(counts, 0) - counts  # (G,) first position of each group in ``order``
    masks = shift_attention_mask(grid, window, shift, device)[order[firsts]]  # (G, N, N)
    position = torch.arange(math.prod(grid), device=device).view(grid)  # (Dp, Hp, Wp)
    rolled = torch.roll(position, shifts=tuple(-s for s in shift), dims=(0, 1, 2))  # (Dp, Hp, Wp)
    token_index = window_partition(rolled[None, ..., None], window)[0, ..., 0][order].flatten()  # (nW * N,)
    return WindowGroups(order, tuple(counts.tolist()), masks, token_index, torch.argsort(token_index))


class GroupedCaches:
    """What the older model cached in eager mode: the gathered bias per block and the groups per grid. Valid
    while the weights do not change (one ``with grouped_attention(...)`` block unless passed to several)."""

    def __init__(self) -> None:
        self.bias: dict[tuple[int, int, torch.dtype], Tensor] = {}
        self.groups: dict[tuple[Size3, Size3, Size3, torch.device], WindowGroups] = {}


def _bias(attn: WindowAttention3D, n: int, dtype: torch.dtype, caches: GroupedCaches) -> Tensor:
    key = (id(attn), n, dtype)
    hit = caches.bias.get(key)
    if hit is None:
        index = attn.relative_position_index[:n, :n]  # (N, N)
        table = attn.relative_position_bias_table
        hit = rearrange(table[index.reshape(-1)], "(i j) h -> h i j", i=n).to(dtype).contiguous()
        caches.bias[key] = hit
    return hit  # (heads, N, N)


def _grouped_window_attention(
    attn: WindowAttention3D, windows: Tensor, groups: WindowGroups | None, caches: GroupedCaches
) -> Tensor:
    b, nw, n, _ = windows.shape
    qkv = rearrange(
        attn.qkv(windows), "b w n (three h d) -> three b w h n d", three=3, h=attn.num_heads
    )  # (3, B, nW, heads, N, head_dim)
    q, k, v = qkv.unbind(0)
    bias = _bias(attn, n, q.dtype, caches)  # (heads, N, N)
    if groups is None:
        masks, counts = bias[None], (nw,)
    else:
        masks, counts = bias[None] + groups.masks.to(q.dtype)[:, None], groups.counts  # (G, heads, N, N)
    outs = []
    start = 0
    for mask, count in zip(masks, counts, strict=True):
        part = [t[:, start : start + count].flatten(0, 1) for t in (q, k, v)]  # (B*cnt, heads, N, head_dim)
        out = F.scaled_dot_product_attention(
            *part, attn_mask=mask.expand(b * count, -1, -1, -1), dropout_p=0.0, scale=attn.scale
        )
        outs.append(rearrange(out, "(b w) h n d -> b w n (h d)", b=b))  # (B, cnt, N, C)
        start += count
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)  # (B, nW, N, C)
    return attn.proj_drop(attn.proj(out))


def _grouped_block_attention(block: SwinTransformerBlock3D, x: Tensor, caches: GroupedCaches) -> Tensor:
    _, d, h, w, _ = x.shape
    window, shift = effective_window_and_shift((d, h, w), block.window_size, block.shift_size)
    dp, hp, wp = padded_grid((d, h, w), window)
    padded = (dp, hp, wp) != (d, h, w)
    if padded:
        x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h, 0, dp - d))  # (B, Dp, Hp, Wp, C)
    if any(s > 0 for s in shift):
        key = ((dp, hp, wp), window, shift, x.device)
        groups = caches.groups.get(key)
        if groups is None:
            groups = caches.groups[key] = group_shifted_windows((dp, hp, wp), window, shift, x.device)
        flat = rearrange(x, "b d h w c -> b (d h w) c")  # (B, Dp*Hp*Wp, C)
        windows = rearrange(
            flat.index_select(1, groups.token_index), "b (w n) c -> b w n c", n=math.prod(window)
        )  # (B, nW, N, C), grouped
        windows = rearrange(
            _grouped_window_attention(block.attn, windows, groups, caches), "b w n c -> b (w n) c"
        )
        x = rearrange(
            windows.index_select(1, groups.token_inverse), "b (d h w) c -> b d h w c", d=dp, h=hp, w=wp
        )  # (B, Dp, Hp, Wp, C)
    else:
        windows = _grouped_window_attention(block.attn, window_partition(x, window), None, caches)
        x = window_reverse(windows, window, (dp, hp, wp))  # (B, Dp, Hp, Wp, C)
    if padded:
        x = x[:, :d, :h, :w, :]
    return x


@contextlib.contextmanager
def grouped_attention(model: nn.Module, caches: GroupedCaches | None = None) -> Iterator[nn.Module]:
    """Within the block, every Swin block of ``model`` runs the older grouped attention (eval, no dropout)."""
    caches = caches or GroupedCaches()
    blocks = [m for m in model.modules() if isinstance(m, SwinTransformerBlock3D)]
    for block in blocks:
        block._attention = lambda x, _shifted=None, _b=block: _grouped_block_attention(_b, x, caches)  # type: ignore[method-assign]
    try:
        yield model
    finally:
        for block in blocks:
            del block._attention
