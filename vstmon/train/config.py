"""``vstmon train`` settings: a ``train.yaml`` (optional) validated with pydantic, command-line flags on top.

Defaults follow the official Video Swin Kinetics recipe where it applies to fine-tuning (AdamW, backbone at a
tenth of the head's learning rate, weight decay 0.02 with none on norms and the relative-position tables,
linear warm-up then cosine, the preset's stochastic depth, head dropout 0.5); the batch defaults are sized for one
consumer GPU (batch 2 x 4 accumulated steps), and on a small dataset ``accumulate`` and ``epochs``, where nobody
set them, adapt to make enough optimiser steps (``vstmon.train.budget``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from vstmon.config import StrictModel, check_crop_size
from vstmon.config.arch_names import check_arch

__all__ = ["ArchOverrides", "TrainConfig"]


class ArchOverrides(StrictModel):
    """Changes to the preset's shape, for training small models from scratch (tests, tiny devices)."""

    embed_dim: int | None = Field(None, ge=8, le=1024)
    depths: tuple[int, ...] | None = Field(None, min_length=1, max_length=8)
    num_heads: tuple[int, ...] | None = Field(None, min_length=1, max_length=8)
    window_size: tuple[int, int, int] | None = None
    patch_size: tuple[int, int, int] | None = None

    @model_validator(mode="after")
    def _stages_agree(self) -> ArchOverrides:
        if self.depths is not None and self.num_heads is not None and len(self.depths) != len(self.num_heads):
            raise ValueError(
                f"depths has {len(self.depths)} stages but num_heads has {len(self.num_heads)}; give one per stage"
            )
        return self

    def changes(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class TrainConfig(StrictModel):
    """Everything ``vstmon train`` needs besides DATA_DIR and OUT_DIR (which only the command line gives).

    Set or default: ``vstmon train`` validates this from the keys train.yaml gives and the flags given, nothing
    else, so ``is_set(name)`` (pydantic's ``model_fields_set``) says whether the user chose a value. Some defaults
    adapt to the dataset where the user did not (``accumulate``, ``epochs``: ``vstmon.train.budget``); a value
    the user set is never changed.
    """

    arch: str = Field(
        "auto",
        description="auto (from --checkpoint; swin_t without one) | swin_t | swin_s | swin_b | swin_l (+_sthv2)",
    )
    model: ArchOverrides | None = Field(
        None, description="shape changes to the preset (training from scratch)"
    )
    checkpoint: Path | None = Field(None, description="weights to start from; the head is replaced")
    epochs: int = Field(30, ge=1, le=10_000, description="passes over the data (default: more on small data)")
    batch: int = Field(2, ge=1, le=1024, description="clips per forward pass")
    accumulate: int = Field(
        4, ge=1, le=1024, description="forward passes per optimiser step (default: fewer on small data)"
    )
    frames: int = Field(32, ge=2, le=512, description="frames per clip (T)")
    frame_interval: int = Field(2, ge=1, le=64, description="source frames between sampled frames")
    size_px: int = Field(224, ge=32, le=1024, description="crop size; a multiple of 32")
    lr: float = Field(1e-3, gt=0, le=1.0, description="learning rate of the head (peak, after warm-up)")
    backbone_lr_mult: float = Field(0.1, ge=0, le=10, description="backbone learning rate = lr x this")
    weight_decay: float = Field(0.02, ge=0, le=1)
    warmup_epochs: float = Field(2.5, ge=0, le=1000, description="linear warm-up (capped at 25% of the run)")
    drop_path: float | None = Field(None, ge=0, lt=1, description="stochastic depth; null = the preset's")
    head_dropout: float = Field(0.5, ge=0, lt=1)
    frozen_stages: int = Field(
        -1, ge=-1, le=8, description="-1 none; 0 patch embedding; N: it and stages < N"
    )
    flip: bool = Field(True, description="random horizontal flip (turn off for left/right-sensitive classes)")
    min_crop_area: float = Field(0.08, gt=0, le=1, description="random resized crop: smallest area kept")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    grad_checkpointing: bool | None = Field(None, description="null = on for CUDA, off on CPU")
    clip_grad_norm: float | None = Field(None, gt=0)
    val_fraction: float = Field(0.2, ge=0, lt=1)
    min_videos_per_class: int = Field(2, ge=1)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda|cuda:\d{1,3})$")
    workers: int | None = Field(
        None, ge=0, le=64, description="decoding processes; null = min(4, CPUs) on CUDA, 0 on CPU"
    )

    @field_validator("size_px")
    @classmethod
    def _multiple_of_32(cls, value: int) -> int:
        return check_crop_size(value)

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        return check_arch(value)

    @model_validator(mode="after")
    def _auto_with_model_needs_a_preset(self) -> TrainConfig:
        if self.arch == "auto" and self.model is not None and self.checkpoint is not None:
            raise ValueError("model: changes a preset's shape; name the preset in arch (not auto)")
        return self

    def is_set(self, name: str) -> bool:
        """Whether train.yaml or a flag gave ``name`` (else it holds its default, which may adapt)."""
        return name in self.model_fields_set

    @property
    def preset(self) -> str:
        """The preset to build without a checkpoint: ``arch``, with ``auto`` meaning swin_t (as in the daemon)."""
        return "swin_t" if self.arch == "auto" else self.arch

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues (everything but where it runs)."""
        data = self.model_dump(mode="json", exclude={"device", "workers"})
        return data
