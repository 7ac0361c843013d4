"""The device half of the official preprocessing: uint8 clips -> normalised float input, torch only.

Kept apart from ``preprocess`` (the host half, OpenCV) so that whatever runs the model (the local runner, the
Triton server of ``vstmon serve``) needs torch alone.
"""

from __future__ import annotations

import torch

__all__ = ["MEAN_RGB", "STD_RGB", "clips_to_float", "normalize_clips"]

MEAN_RGB: tuple[float, float, float] = (123.675, 116.28, 103.53)  # on 0-255 values, R G B
STD_RGB: tuple[float, float, float] = (58.395, 57.12, 57.375)
_STATS: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def _stats(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    key = (device, dtype)
    if key not in _STATS:
        mean = torch.tensor(MEAN_RGB, dtype=dtype, device=device).view(1, 3, 1, 1, 1)
        std = torch.tensor(STD_RGB, dtype=dtype, device=device).view(1, 3, 1, 1, 1)
        _STATS[key] = (mean, std)
    return _STATS[key]


def _check(x_uint8: torch.Tensor) -> None:
    if not isinstance(x_uint8, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor, got {type(x_uint8).__name__}")
    if x_uint8.dtype != torch.uint8:
        raise ValueError(f"expected uint8 clips, got {x_uint8.dtype}")
    if x_uint8.dim() != 5 or x_uint8.shape[-1] != 3:
        raise ValueError(f"expected (N, T, H, W, 3) clips, got shape {tuple(x_uint8.shape)}")


def normalize_clips(x_uint8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, T, H, W, 3) RGB clips -> normalised (N, 3, T, H, W) ``dtype`` on the same device.

    Computed on ``x_uint8``'s device, so only uint8 crosses the host-device link.
    """
    _check(x_uint8)
    mean, std = _stats(x_uint8.device, torch.float32)
    x = x_uint8.permute(0, 4, 1, 2, 3).to(
        torch.float32, memory_format=torch.contiguous_format
    )  # (N, 3, T, H, W)
    x.sub_(mean).div_(std)
    return x if dtype == torch.float32 else x.to(dtype)


def clips_to_float(x_uint8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, T, H, W, 3) RGB clips -> raw (N, 3, T, H, W) ``dtype`` values 0-255, in one pass: the input of
    a model whose patch embedding does the normalisation (``vstmon.model.inference.fold_input_normalization``)."""
    _check(x_uint8)
    return x_uint8.permute(0, 4, 1, 2, 3).to(dtype, memory_format=torch.contiguous_format)  # (N, 3, T, H, W)
