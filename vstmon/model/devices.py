"""Which torch devices a config means, and the precision each runs at. Shared by the engine, the person
detector and the checks before start (no model is loaded here)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["auto_half_dtype", "resolve_devices", "resolve_dtype"]

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_devices(spec: str | Sequence[str]) -> list[torch.device]:
    """``auto`` -> cuda if available else cpu; ``cuda`` -> cuda:0; a list -> each of them (order kept)."""
    items = [spec] if isinstance(spec, str) else list(spec)
    devices: list[torch.device] = []
    for item in items:
        if item == "auto":
            device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        elif item == "cuda":
            device = torch.device("cuda:0")
        else:
            device = torch.device(item)
        if device not in devices:
            devices.append(device)
    return devices


def auto_half_dtype(capability: tuple[int, int]) -> torch.dtype:
    """The half precision a GPU of this compute capability runs natively: bf16 from 8.0 (Ampere, Jetson Orin),
    fp16 before (T4, V100, Jetson Xavier; their bf16 is emulated and slow)."""
    return torch.bfloat16 if capability >= (8, 0) else torch.float16


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` = on CUDA, bf16 or fp16 by the capability of ``device`` itself (``auto_half_dtype``; not
    ``torch.cuda.is_bf16_supported()``, which counts emulation and asks the current device); fp32 elsewhere."""
    if precision == "auto":
        if device.type == "cuda":
            return auto_half_dtype(torch.cuda.get_device_capability(device))
        return torch.float32
    try:
        return _DTYPES[precision]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r} (auto, fp32, fp16 or bf16)") from None
