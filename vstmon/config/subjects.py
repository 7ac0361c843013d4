"""The ``subjects`` section: people in view (person detector, tracker, the policy that picks the subject)
and per-subject clips.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from vstmon.config.base import StrictModel, fail_at
from vstmon.config.model import DEVICE_RE

__all__ = ["SubjectsConfig"]


class SubjectsConfig(StrictModel):
    """People in view: a person detector, a tracker, and the policy that picks each stream's subject and resets
    the stream's segment when the subject changes (reasons subject_change, absent)."""

    detector: Path | None = Field(
        None,
        description="person detector graph (.pb, SSD; `vstmon weights fetch ssdlite_mobilenet_v2_pedestrian`); "
        "null = no subject tracking",
    )
    person_class_id: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="the person class in the detector's output; null = 1 (both known graphs)",
    )
    score_threshold: float = Field(
        0.3, ge=0.05, le=0.99, description="detections below this score are ignored (0..1)"
    )
    detect_fps: float = Field(
        2.0, ge=0.1, le=30, description="detections per second of stream time, per stream (each costs CPU)"
    )
    threads: int = Field(
        1,
        ge=1,
        le=64,
        description="unused (kept so older configs load): the torch detector uses inference.threads",
    )
    device: str = Field(
        "cpu",
        description="where the person detector runs: cpu | cuda | cuda:N | auto (cuda if present, else cpu)",
    )
    select: Literal["largest", "central", "longest"] = Field(
        "largest",
        description="who becomes the subject: the largest box, the most central, or the one in view longest",
    )
    confirm_s: float = Field(
        1.0,
        ge=0,
        le=600,
        description="seconds a person must stay the best choice before becoming the subject",
    )
    lost_s: float = Field(
        1.5, ge=0, le=3600, description="seconds the subject may be out of view (occlusion) before a change"
    )
    absent_s: float = Field(
        3.0,
        ge=0,
        le=86_400,
        description="seconds the subject may be gone with nobody to take over before the segment closes",
    )
    track_buffer_s: float = Field(
        2.0,
        ge=0.1,
        le=600,
        description="seconds a track without detections is kept (predicted) before it ends",
    )
    mode: Literal["frame", "per_subject"] = Field(
        "frame",
        description="frame: one clip stream per camera, the subject decides resets; per_subject: every person "
        "who counts gets clips of their own (crops around them)",
    )
    max_subjects: int = Field(
        4, ge=1, le=32, description="per_subject: people with their own clips per stream; others wait"
    )
    crop_margin: float = Field(
        0.2,
        ge=0,
        le=2,
        description="per_subject: the crop around a person grows by this fraction of the box on each side",
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not DEVICE_RE.match(value):
            raise ValueError(f"unknown device {value!r} (use auto, cpu, cuda, cuda:N or mps)")
        return value

    @model_validator(mode="after")
    def _absent_after_lost(self) -> SubjectsConfig:
        if self.absent_s < self.lost_s:
            raise fail_at(("absent_s",), f"must be >= lost_s ({self.lost_s})", self.absent_s)
        return self
