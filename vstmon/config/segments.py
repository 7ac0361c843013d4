"""What happens within a stream's segment: the ``reset`` section (when a new segment starts besides control
commands: hard cuts, idle, reconnects) and the ``smoothing`` section (how scores are averaged over the
segment's clips).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vstmon.config.base import StrictModel

__all__ = ["ResetConfig", "SceneChangeConfig", "SmoothingConfig"]


class SceneChangeConfig(StrictModel):
    """Hard cuts (colour-histogram distance of small frames) start a new segment."""

    enabled: bool = Field(True, description="detect hard cuts")
    threshold: float = Field(0.5, gt=0, le=1, description="histogram distance (0..1] that counts as a cut")
    size_px: int = Field(32, ge=8, le=256, description="pixels: frames are compared at this downscaled size")
    min_segment_s: float = Field(
        1.0, ge=0, le=3600, description="seconds: no automatic reset sooner than this after another"
    )


class ResetConfig(StrictModel):
    """When a stream starts a new segment (besides control commands)."""

    scene_change: SceneChangeConfig = Field(
        default_factory=SceneChangeConfig, description="reset on a hard cut"
    )
    idle_s: float | None = Field(
        None, ge=0.1, le=86_400, description="reset after this many seconds without motion; null = never"
    )
    idle_motion_threshold: float = Field(
        2.0, ge=0, le=255, description="mean absolute pixel difference (0-255) that counts as motion"
    )
    on_reconnect: bool = Field(True, description="a reconnect starts a new segment")


class SmoothingConfig(StrictModel):
    """Smoothing of scores over the clips of the current segment."""

    method: Literal["mean", "ema"] = Field("mean", description="mean | ema")
    window_clips: int = Field(5, ge=1, le=1000, description="mean: average over this many recent clips")
    ema_alpha: float = Field(0.5, gt=0, le=1, description="ema: weight of the newest clip (0..1]")
