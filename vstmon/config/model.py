"""The ``model`` section (which network, which weights, which device) and the ``clip`` section (what the
network sees: frames, sampling, crop size). Names and ranges only: whether the files exist is ``vstmon.service.preflight``'s
question.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from vstmon.config.arch_names import check_arch
from vstmon.config.base import StrictModel, check_crop_size

__all__ = ["ClipConfig", "ModelConfig"]

DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d{1,3}|mps)$")


class ModelConfig(StrictModel):
    """Which network, which weights, which device."""

    arch: str = Field(
        "auto",
        description="swin_t | swin_s | swin_b | swin_l, suffix _sthv2 for the SSv2 window | auto (from the "
        "checkpoint)",
    )
    checkpoint: Path | None = Field(
        None,
        description="checkpoint file (relative to the working directory); null = untrained weights (warned)",
    )
    labels: str = Field(
        "kinetics400",
        min_length=1,
        description="kinetics400 | sthv2 | path to a file with one class name per line",
    )
    device: str | list[str] = Field(
        "auto",
        description="auto (cuda if present, else cpu) | cpu | cuda | cuda:N | a list such as [cuda:0, cuda:1]",
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto (bf16/fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16"
    )
    num_classes: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="classes of the head; only needed for untrained weights or bare backbones",
    )

    @field_validator("arch")
    @classmethod
    def _check_arch(cls, value: str) -> str:
        return check_arch(value)

    @field_validator("device", mode="before")
    @classmethod
    def _check_device(cls, value: Any) -> Any:
        devices = value if isinstance(value, list) else [value]
        if not devices:
            raise ValueError("the device list is empty")
        if len(devices) > 64:
            raise ValueError(f"{len(devices)} devices; at most 64")
        for device in devices:
            if not isinstance(device, str) or not DEVICE_RE.match(device):
                raise ValueError(f"unknown device {device!r} (use auto, cpu, cuda, cuda:N, mps or a list)")
        return value


class ClipConfig(StrictModel):
    """How clips are cut from each stream."""

    frames: int = Field(
        32, ge=2, le=256, description="frames per clip (T), as the official models were trained"
    )
    frame_interval: int = Field(
        2, ge=1, le=64, description="take every N-th source frame (32x2 sampling by default)"
    )
    sample_fps: float | None = Field(
        None,
        gt=0,
        le=1000,
        description="frames/s: sample by time at this rate instead (for sources far from 25-30 fps); null = off",
    )
    size_px: int = Field(
        224, ge=32, le=1024, description="pixels: short side resize and centre crop; a multiple of 32"
    )
    hop_s: float = Field(1.0, ge=0.01, le=3600, description="seconds of stream time between clip starts")

    @field_validator("size_px")
    @classmethod
    def _multiple_of_32(cls, value: int) -> int:
        return check_crop_size(value)
