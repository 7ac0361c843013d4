"""Small pieces of running a batch that every backend or tool shares: the SDPA kernel in use, out-of-memory
errors, and copying clips into a staging buffer (no state here)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from vstmon.types import Clip

__all__ = ["attention_context", "copy_clips", "is_out_of_memory", "sdpa_backend"]


def sdpa_backend(name: str) -> Any:
    """The ``torch.nn.attention.SDPBackend`` of a kernel name: flash, cudnn, efficient or math."""
    from torch.nn.attention import SDPBackend

    return {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]


def attention_context(name: str | None) -> Any:
    """A context that runs ``scaled_dot_product_attention`` with kernel ``name`` only (None: torch's choice)."""
    if name is None:
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel([sdpa_backend(name)])


def is_out_of_memory(error: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(error, oom_type):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def copy_clips(clips: Sequence[Clip], buffer: np.ndarray, shape: tuple[int, ...]) -> None:
    """Copy each clip's frames into the rows of ``buffer`` (the staging of a runner), checking their shape."""
    for i, clip in enumerate(clips):
        if tuple(clip.frames.shape) != shape:
            raise ValueError(
                f"stream {clip.stream}: clip shape {tuple(clip.frames.shape)} differs from {shape}"
            )
        np.copyto(buffer[i], clip.frames)
