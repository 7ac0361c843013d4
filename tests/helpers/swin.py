"""A tiny Video Swin for fast tests of the network, and random clips for it."""

from __future__ import annotations

import torch

from vstmon.model import SwinConfig, VideoSwin, build_model

# Small enough to run in milliseconds, large enough that every stage pads, shifts and merges.
TINY = SwinConfig(
    embed_dim=8,
    depths=(2, 2, 2, 2),
    num_heads=(1, 2, 2, 4),
    window_size=(2, 3, 3),
    drop_path_rate=0.0,
    num_classes=5,
)
TINY_CLIP = (2, 3, 8, 40, 40)  # tokens 4x10x10: windows pad to 4x12x12 and shift in every dimension


def tiny_model(seed: int = 0, **changes: object) -> VideoSwin:
    torch.manual_seed(seed)
    return build_model(TINY.with_(**changes))


def clip(shape: tuple[int, ...] = TINY_CLIP, seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))
