"""One item of the ``streams`` list (a video source) and its ``reconnect`` backoff. Whether a URL can be
opened at all (its scheme, a file that exists) is ``vstmon.service.preflight``'s question, answered by the daemon's own rule.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from vstmon.config.base import StrictModel, fail_at

__all__ = ["IngestConfig", "ReconnectConfig", "StreamConfig", "stream_decode"]


class ReconnectConfig(StrictModel):
    """Exponential backoff between attempts to (re)open a source."""

    initial_delay_s: float = Field(0.5, ge=0.01, le=3600, description="seconds before the first retry")
    max_delay_s: float = Field(
        30.0, ge=0.01, le=86_400, description="seconds: the backoff stops growing here"
    )
    max_attempts: int | None = Field(
        None, ge=1, le=1_000_000, description="give up after this many failed attempts; null = retry forever"
    )
    jitter: float = Field(0.2, ge=0, le=1, description="fraction of the delay added at random")

    @model_validator(mode="after")
    def _order(self) -> ReconnectConfig:
        if self.max_delay_s < self.initial_delay_s:
            raise fail_at(
                ("max_delay_s",),
                f"max_delay_s ({self.max_delay_s}) must be >= initial_delay_s ({self.initial_delay_s})",
                self.max_delay_s,
            )
        return self


_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class StreamConfig(StrictModel):
    """One video source."""

    name: str = Field(description="unique; 1-64 of A-Z a-z 0-9 _ . - (it is used in topics)")
    url: str = Field(
        min_length=1,
        max_length=4096,
        description="rtsp(s):// or http(s):// URL, file path, webcam index or /dev/videoN, "
        "or testsrc://?width=640&height=480&fps=25",
    )
    loop: bool = Field(False, description="files: start again at the end")
    realtime: bool | None = Field(
        None, description="files: pace at the file's fps like a camera; null = false (as fast as the model)"
    )
    transport: Literal["tcp", "udp"] = Field(
        "tcp",
        description="RTSP transport: tcp | udp (one for all RTSP streams: FFmpeg's option is process-wide)",
    )
    width: int | None = Field(
        None, ge=16, le=8192, description="pixels: webcam capture width; null = its default"
    )
    height: int | None = Field(
        None, ge=16, le=8192, description="pixels: webcam capture height; null = its default"
    )
    fps: float | None = Field(
        None, gt=0, le=1000, description="frames/s asked of a webcam; null = its default"
    )
    open_timeout_s: float = Field(5.0, ge=0.1, le=600, description="seconds an open may take")
    read_timeout_s: float = Field(3.0, ge=0.1, le=600, description="seconds one read may block")
    stall_timeout_s: float = Field(
        5.0, ge=0.1, le=3600, description="seconds without a new frame before the source reconnects"
    )
    frozen_timeout_s: float | None = Field(
        30.0,
        ge=0.1,
        le=86_400,
        description="live sources: the same picture for this many seconds counts as a stall; null = off",
    )
    max_time_jump_s: float = Field(
        5.0,
        ge=0.1,
        le=86_400,
        description="seconds: a jump of the stream clock between consecutive frames beyond this, or any "
        "backwards jump, is a discontinuity (reset and re-based clock)",
    )
    buffer_s: float | None = Field(
        None,
        gt=0,
        le=300,
        description="seconds of frames the ring buffer holds (preallocated); null = one clip span + 1 s",
    )
    reconnect: ReconnectConfig = Field(
        default_factory=ReconnectConfig, description="backoff between reconnect attempts"
    )
    subjects: bool = Field(
        True, description="track the people in view on this stream (when subjects.detector is set)"
    )
    decode: Literal["auto", "cpu", "nvdec"] | None = Field(
        None, description="auto | cpu | nvdec: the decoder of this stream; null = ingest.decode"
    )
    decoder_threads: int | None = Field(
        None,
        ge=1,
        le=64,
        description="FFmpeg decoder threads of this stream; null = 1 for live sources, and for files when the "
        "daemon has several streams (N streams must not take N times the cores), else FFmpeg's choice",
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                f"stream name {value!r} must be 1-64 of A-Z a-z 0-9 _ . - (it is used in topics)"
            )
        return value

    @field_validator("url", mode="before")
    @classmethod
    def _url_to_str(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class IngestConfig(StrictModel):
    """How streams are decoded (vstmon/ingest/decode.py)."""

    decode: Literal["auto", "cpu", "nvdec"] = Field(
        "cpu",
        description="cpu: OpenCV/FFmpeg | nvdec: NVIDIA's hardware decoder (PyNvVideoCodec, a CUDA GPU; exit 78 "
        "without them) | auto: NVDEC for files and RTSP when the GPU, the package and the codec allow, else cpu; "
        "streams[].decode overrides it",
    )
    gpu: int = Field(0, ge=0, le=63, description="the CUDA device whose NVDEC decodes (cuda:N)")


def stream_decode(ingest: IngestConfig, stream: StreamConfig) -> str:
    """The decode setting of one stream: its own, else ``ingest.decode``."""
    return stream.decode or ingest.decode
