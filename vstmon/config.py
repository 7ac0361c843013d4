"""The typed configuration tree: ``load_config(path) -> Config``.

Unknown keys are rejected; every error names its YAML key path (``streams[1].url: ...``), one line per key.
Every numeric field has lower and upper bounds; NaN and infinities are refused everywhere.
``${VAR}`` (or ``${VAR:-default}``) in any string is replaced from the environment, so secrets such
as camera passwords stay out of the file.

The file itself is read defensively: at most ``MAX_FILE_BYTES``, UTF-8 only, no duplicate keys, and the
YAML node graph is measured before anything is built from it, so a "billion laughs" file (aliases of
aliases) or a recursive alias is refused at once instead of exhausting memory. Anchors, aliases and ``<<``
merge keys stay allowed within ``MAX_EXPANDED_NODES``; top-level keys starting with ``x-`` are ignored, so
settings shared by many cameras can live there (``x-camera: &camera {transport: udp}``, then
``- <<: *camera``).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from vstmon.errors import ConfigError

__all__ = [
    "EXTENSION_PREFIX",
    "MAX_EXPANDED_NODES",
    "MAX_FILE_BYTES",
    "ClipConfig",
    "Config",
    "CurveConfig",
    "InferenceConfig",
    "LogConfig",
    "MetricsConfig",
    "ModelConfig",
    "PublishConfig",
    "ReconnectConfig",
    "ResetConfig",
    "SceneChangeConfig",
    "ServiceConfig",
    "SmoothingConfig",
    "StreamConfig",
    "StrictModel",
    "SubjectsConfig",
    "ViewConfig",
    "check_crop_size",
    "check_endpoint",
    "load_config",
    "load_yaml_model",
    "parse_config",
    "validate_model",
]

MAX_FILE_BYTES = 1 << 20  # a config file larger than 1 MiB is refused unread
MAX_EXPANDED_NODES = 100_000  # YAML nodes after every alias is expanded (1,000 streams use about 40,000)
MAX_EXPANDED_CHARS = 8 << 20  # characters of scalar text after every alias is expanded
EXTENSION_PREFIX = "x-"  # top-level keys with this prefix are ignored: a place for anchors
MAX_DEPTH = 32  # nesting levels of mappings and sequences (a valid config uses 4)

_ENV_RE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d{1,3}|mps)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TCP_HOST_RE = re.compile(r"^(\*|\[[0-9A-Fa-f:.%\w-]+\]|[\w.%-]+)$")
_NUMBER_LIKE_RE = re.compile(r"^[-+]?[0-9][0-9._eE^*+-]{0,23}$")
_IPC_PATH_MAX_BYTES = 107  # sun_path holds 108 bytes including the terminating NUL


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


StrictModel = _Strict  # the base of every settings tree (config.yaml here, train.yaml in vstmon.train)
_M = TypeVar("_M", bound=BaseModel)


def check_crop_size(size_px: int) -> int:
    """A crop size the model can take: a multiple of 32 (4-pixel patches, then three 2x merges)."""
    if size_px % 32:
        raise ValueError(f"size_px must be a multiple of 32 (patch 4 x 3 merges), got {size_px}")
    return size_px


def _fail(loc: tuple[int | str, ...], message: str, value: Any) -> ValidationError:
    """A ValidationError at ``loc`` below the field being validated (raise it from a validator)."""
    return ValidationError.from_exception_data(
        "Config",
        [
            InitErrorDetails(
                type=PydanticCustomError("vstmon", "{message}", {"message": message}), loc=loc, input=value
            )
        ],
    )


def check_endpoint(endpoint: str) -> str | None:
    """What is wrong with a ZeroMQ bind endpoint, or None when it is well-formed.

    ``tcp://HOST:PORT`` (HOST ``*``, an address, ``[IPv6]``, a host or interface name; PORT 1-65535 or ``*``
    for any free port), ``ipc://PATH`` (at most 107 bytes) or ``inproc://NAME``.
    """
    if not isinstance(endpoint, str):
        return "must be a string"
    scheme, sep, rest = endpoint.partition("://")
    if not sep or scheme not in ("tcp", "ipc", "inproc"):
        return f"endpoint {endpoint!r} must start with tcp://, ipc:// or inproc://"
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host:
            return (
                f"endpoint {endpoint!r} must be tcp://HOST:PORT (e.g. tcp://*:5556 or tcp://127.0.0.1:5556)"
            )
        if not _TCP_HOST_RE.match(host):
            return f"endpoint {endpoint!r}: {host!r} is not a host name, address, [IPv6 address] or *"
        if port == "*":
            return None
        if not port.isdecimal():
            return f"endpoint {endpoint!r}: port {port!r} must be a number 1-65535 or *"
        if not 1 <= int(port) <= 65535:
            return f"endpoint {endpoint!r}: port {int(port)} is out of range (1-65535)"
        return None
    if not rest:
        return f"endpoint {endpoint!r} names no {'path' if scheme == 'ipc' else 'name'}"
    if scheme == "ipc" and len(rest.encode()) > _IPC_PATH_MAX_BYTES:
        return f"ipc path is {len(rest.encode())} bytes; Unix sockets allow at most {_IPC_PATH_MAX_BYTES}"
    return None


# ---------------------------------------------------------------------------------------------------------
# the schema: every field has a description (it becomes config.yaml's comment) and numbers have bounds
# ---------------------------------------------------------------------------------------------------------
class ModelConfig(_Strict):
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
        if value == "auto":
            return value
        from vstmon.model.presets import PRESETS  # lazy: the package imports torch

        if value not in PRESETS:
            raise ValueError(f"unknown arch {value!r}; use auto or one of {', '.join(sorted(PRESETS))}")
        return value

    @field_validator("device", mode="before")
    @classmethod
    def _check_device(cls, value: Any) -> Any:
        devices = value if isinstance(value, list) else [value]
        if not devices:
            raise ValueError("the device list is empty")
        if len(devices) > 64:
            raise ValueError(f"{len(devices)} devices; at most 64")
        for device in devices:
            if not isinstance(device, str) or not _DEVICE_RE.match(device):
                raise ValueError(f"unknown device {device!r} (use auto, cpu, cuda, cuda:N, mps or a list)")
        return value


class ClipConfig(_Strict):
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


class TritonServerConfig(_Strict):
    """The Triton inference server that runs the model when ``backend: triton`` (``vstmon serve`` starts one)."""

    url: str = Field(
        "127.0.0.1:8001", max_length=255, description="the server's gRPC address, HOST:PORT (no scheme)"
    )
    model: str = Field(
        "vstmon", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="the model's name on the server"
    )
    timeout_s: float = Field(
        10.0, gt=0, le=600, description="seconds one batch may take on the server, round trip included"
    )
    retry_initial_s: float = Field(
        0.5, ge=0.01, le=3600, description="seconds before the first retry once the server stops answering"
    )
    retry_max_s: float = Field(
        10.0, ge=0.01, le=86_400, description="seconds: the retry delay doubles up to here"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        host, colon, port = value.rpartition(":")
        if "://" in value or not colon or not host or not _TCP_HOST_RE.match(host):
            raise ValueError(f"{value!r} must be HOST:PORT, e.g. 127.0.0.1:8001 or triton.example:8001")
        if not port.isdecimal() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{value!r}: port {port!r} must be a number 1-65535")
        return value


class InferenceConfig(_Strict):
    """Batching across streams, and the device's resources."""

    backend: Literal["local", "triton"] = Field(
        "local",
        description="local = the model runs in this process on model.device; triton = batches go to the "
        "Triton server of inference.triton (the model section then only names the labels)",
    )
    triton: TritonServerConfig = Field(
        default_factory=TritonServerConfig, description="the Triton server (backend: triton; `vstmon serve`)"
    )

    max_batch: int = Field(8, ge=1, le=256, description="clips per forward pass, gathered across streams")
    max_wait_ms: float = Field(
        20.0,
        ge=0,
        le=10_000,
        description="ms to wait after the first ready clip for others to join the batch",
    )
    gpu_memory_fraction: float | None = Field(
        None, gt=0, le=1, description="cap this process's share of GPU memory (0..1]; null = no cap"
    )
    compile: bool | Literal["tensorrt"] = Field(
        False,
        description="true = torch.compile the model, every batch size before READY (Swin-T on an H100: ~70 s "
        "more start-up, +20% clips/s at batch 16); tensorrt = a TensorRT engine (torch-tensorrt), built at the "
        "first start per GPU, shape, precision and weights (minutes) and cached next to the checkpoint (else in "
        "the cache directory); a failed build falls back to torch.compile, a failed compile to eager",
    )
    threads: int | None = Field(
        None, ge=1, le=1024, description="torch CPU threads; null = torch's choice (one per core)"
    )


class ReconnectConfig(_Strict):
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
            raise _fail(
                ("max_delay_s",),
                f"max_delay_s ({self.max_delay_s}) must be >= initial_delay_s ({self.initial_delay_s})",
                self.max_delay_s,
            )
        return self


class StreamConfig(_Strict):
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


class SceneChangeConfig(_Strict):
    """Hard cuts (colour-histogram distance of small frames) start a new segment."""

    enabled: bool = Field(True, description="detect hard cuts")
    threshold: float = Field(0.5, gt=0, le=1, description="histogram distance (0..1] that counts as a cut")
    size_px: int = Field(32, ge=8, le=256, description="pixels: frames are compared at this downscaled size")
    min_segment_s: float = Field(
        1.0, ge=0, le=3600, description="seconds: no automatic reset sooner than this after another"
    )


class ResetConfig(_Strict):
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


class SubjectsConfig(_Strict):
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
    threads: int = Field(1, ge=1, le=64, description="OpenCV threads per detection (process-wide setting)")
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

    @model_validator(mode="after")
    def _absent_after_lost(self) -> SubjectsConfig:
        if self.absent_s < self.lost_s:
            raise _fail(("absent_s",), f"must be >= lost_s ({self.lost_s})", self.absent_s)
        return self


class SmoothingConfig(_Strict):
    """Smoothing of scores over the clips of the current segment."""

    method: Literal["mean", "ema"] = Field("mean", description="mean | ema")
    window_clips: int = Field(5, ge=1, le=1000, description="mean: average over this many recent clips")
    ema_alpha: float = Field(0.5, gt=0, le=1, description="ema: weight of the newest clip (0..1]")


class CurveConfig(_Strict):
    """ZeroMQ CURVE (encryption and client keys) for the PUB and control sockets; off while both are null."""

    secret_key: Path | None = Field(
        None,
        description="the daemon's secret key file (NAME.key_secret from `vstmon keys generate DIR`, mode 0600); "
        "null = CURVE off",
    )
    allowed_keys: Path | None = Field(
        None,
        description="directory of the public key files (NAME.key) of the clients allowed to connect; the only "
        "ones that can subscribe or send control commands; required with secret_key",
    )

    @property
    def enabled(self) -> bool:
        return self.secret_key is not None

    @field_validator("secret_key")
    @classmethod
    def _check_secret_key(cls, value: Path | None) -> Path | None:
        if value is not None:
            from vstmon.keys import read_secret_certificate

            read_secret_certificate(value)  # ValueError naming the file and the problem
        return value

    @field_validator("allowed_keys")
    @classmethod
    def _check_allowed_keys(cls, value: Path | None) -> Path | None:
        if value is not None:
            from vstmon.keys import read_allowed_keys

            read_allowed_keys(value)
        return value

    @model_validator(mode="after")
    def _both_or_neither(self) -> CurveConfig:
        if self.secret_key is not None and self.allowed_keys is None:
            raise _fail(
                ("allowed_keys",),
                "required with secret_key: a directory of the clients' public key files (NAME.key)",
                None,
            )
        if self.secret_key is None and self.allowed_keys is not None:
            raise _fail(
                ("secret_key",),
                "required with allowed_keys: the daemon's secret key file (`vstmon keys generate DIR` makes one)",
                None,
            )
        return self


class PublishConfig(_Strict):
    """The ZeroMQ PUB socket(s) for labels and events, and the REP control socket."""

    endpoints: list[str] = Field(
        default_factory=lambda: ["tcp://*:5556"],
        min_length=1,
        max_length=64,
        description="ZeroMQ PUB bind endpoints: tcp://HOST:PORT, ipc://PATH or inproc://NAME",
    )
    control: str | None = Field(
        "tcp://127.0.0.1:5557", description="REP control socket (keep it local); null disables control"
    )
    top_k: int = Field(5, ge=1, le=1000, description="labels per message")
    heartbeat_s: float = Field(
        5.0, ge=0.1, le=3600, description="seconds between status messages (per stream and overall)"
    )
    sndhwm: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="messages queued per subscriber before dropping (a PUB never blocks)",
    )
    curve: CurveConfig = Field(
        default_factory=CurveConfig,
        description="CURVE for the PUB and control sockets: only clients with an allowed key connect",
    )

    @field_validator("endpoints")
    @classmethod
    def _check_endpoints(cls, value: list[str]) -> list[str]:
        seen: dict[str, int] = {}
        for index, endpoint in enumerate(value):
            problem = check_endpoint(endpoint)
            if problem is None and endpoint in seen and not endpoint.endswith(":*"):
                problem = f"endpoint {endpoint!r} repeats endpoints[{seen[endpoint]}]"
            if problem is not None:
                raise _fail((index,), problem, endpoint)
            seen[endpoint] = index
        return value

    @field_validator("control")
    @classmethod
    def _check_control(cls, value: str | None) -> str | None:
        if value is not None and (problem := check_endpoint(value)) is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _control_is_not_a_pub_endpoint(self) -> PublishConfig:
        # (a port of "*" is a fresh port the OS picks at each bind: never the same address twice)
        if self.control is not None and not self.control.endswith(":*") and self.control in self.endpoints:
            raise _fail(("control",), f"{self.control!r} is also in publish.endpoints", self.control)
        return self


class MetricsConfig(_Strict):
    """The Prometheus endpoint."""

    port: int | None = Field(
        None, ge=1, le=65535, description="serve Prometheus /metrics on this port; null = off"
    )
    host: str = Field(
        "127.0.0.1", min_length=1, max_length=253, description="address the metrics server binds"
    )


class ViewConfig(_Strict):
    """The operator's live page (read-only HTML, JSON and JPEG over HTTP); off unless ``port`` is set."""

    port: int | None = Field(
        None, ge=0, le=65535, description="serve the live page on this port; null = off (0 = any free port)"
    )
    host: str = Field(
        "127.0.0.1",
        min_length=1,
        max_length=253,
        description="address the page binds (keep it local, or proxy it)",
    )
    fps: float = Field(
        4.0, ge=0.2, le=30, description="frames/s: most a stream's picture is re-encoded for viewers"
    )
    jpeg_quality: int = Field(80, ge=20, le=100, description="JPEG quality of the pictures")
    timeline_s: float = Field(
        600.0, ge=10, le=86_400, description="seconds of labels kept per stream for the timeline"
    )
    max_clients: int = Field(16, ge=1, le=256, description="requests served at once; more get 503")


class ServiceConfig(_Strict):
    """Running under a supervisor: shutdown, health and what systemd is told."""

    shutdown_timeout_s: float = Field(
        15.0,
        ge=1,
        le=600,
        description="seconds a stop may take in all (below the unit's TimeoutStopSec=20); then threads are left",
    )
    progress_timeout_s: float = Field(
        120.0,
        ge=1,
        le=86_400,
        description="seconds an engine with work (or a worker with frames) may go without progress before the "
        "watchdog pings stop (above the slowest batch: Swin-T on a CPU takes ~2 s a clip)",
    )
    drop_log_s: float = Field(
        60.0,
        ge=1,
        le=86_400,
        description="seconds between log lines about sustained clip drops (at most one)",
    )


class LogConfig(_Strict):
    """Logging to stderr (the journal under systemd)."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="debug | info | warning | error"
    )
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto (console on a TTY, JSON otherwise) | json | console"
    )


class Config(_Strict):
    """The whole file."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="the network and its weights")
    clip: ClipConfig = Field(default_factory=ClipConfig, description="how clips are cut from each stream")
    inference: InferenceConfig = Field(default_factory=InferenceConfig, description="batching and resources")
    streams: list[StreamConfig] = Field(
        default_factory=list,
        max_length=1000,
        description="the video sources; the daemon and `vstmon check` need at least one",
    )
    reset: ResetConfig = Field(default_factory=ResetConfig, description="automatic segment resets")
    subjects: SubjectsConfig = Field(
        default_factory=SubjectsConfig, description="people in view: detection, tracking, subject changes"
    )
    smoothing: SmoothingConfig = Field(default_factory=SmoothingConfig, description="score smoothing")
    publish: PublishConfig = Field(default_factory=PublishConfig, description="ZeroMQ output and control")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus metrics")
    view: ViewConfig = Field(default_factory=ViewConfig, description="the operator's live page")
    service: ServiceConfig = Field(default_factory=ServiceConfig, description="shutdown, watchdog, health")
    log: LogConfig = Field(default_factory=LogConfig, description="logging")

    @field_validator("streams")
    @classmethod
    def _check_streams(cls, value: list[StreamConfig], info: ValidationInfo) -> list[StreamConfig]:
        if not value and (info.context or {}).get("require_streams"):
            raise ValueError("at least one stream is required (a list of {name, url} entries)")
        first: dict[str, int] = {}
        errors: list[InitErrorDetails] = []
        for index, stream in enumerate(value):
            if stream.name in first:
                message = f"duplicate stream name {stream.name!r} (streams[{first[stream.name]}] has it too)"
                errors.append(
                    InitErrorDetails(
                        type=PydanticCustomError("vstmon", "{message}", {"message": message}),
                        loc=(index, "name"),
                        input=stream.name,
                    )
                )
            else:
                first[stream.name] = index
        # OpenCV's FFmpeg backend takes the RTSP transport from one process-wide setting (see ingest/capture.py)
        rtsp = [
            (i, s) for i, s in enumerate(value) if s.url.strip().lower().startswith(("rtsp://", "rtsps://"))
        ]
        for index, stream in rtsp[1:]:
            if stream.transport != rtsp[0][1].transport:
                message = (
                    f"{stream.transport!r} differs from streams[{rtsp[0][0]}].transport "
                    f"{rtsp[0][1].transport!r}: all RTSP streams of one daemon use the same transport "
                    "(OpenCV's FFmpeg capture options are process-wide)"
                )
                errors.append(
                    InitErrorDetails(
                        type=PydanticCustomError("vstmon", "{message}", {"message": message}),
                        loc=(index, "transport"),
                        input=stream.transport,
                    )
                )
        if errors:
            raise ValidationError.from_exception_data("Config", errors)
        return value


# ---------------------------------------------------------------------------------------------------------
# reading the YAML file safely
# ---------------------------------------------------------------------------------------------------------
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps the anchors' names (for messages) after composing the document.

    The pure-Python loader is used on purpose: its composer fails with RecursionError on absurd nesting,
    where the C one can exhaust the C stack.
    """

    anchor_names: dict[int, str]

    def compose_document(self) -> yaml.Node:
        self.get_event()  # DOCUMENT-START
        node = self.compose_node(None, None)  # type: ignore[arg-type]
        self.get_event()  # DOCUMENT-END
        self.anchor_names = {id(n): name for name, n in self.anchors.items()}
        self.anchors = {}
        return node


def _mark(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}"


def _key_text(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else "?"


class _GraphCheck:
    """One memoised walk of the composed node graph, before anything is constructed from it.

    Refuses recursive aliases, nesting deeper than MAX_DEPTH, duplicate mapping keys, and a document whose
    alias expansion exceeds MAX_EXPANDED_NODES nodes or MAX_EXPANDED_CHARS characters. A node shared through
    aliases is measured once (memo by identity), so the walk costs the size of the file, not of its expansion.
    """

    def __init__(self, loader: _Loader, source: str) -> None:
        self._loader = loader
        self._source = source
        self._size: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, expanded chars)
        self._open: set[int] = set()  # nodes on the current walk path (a cycle comes back to one)

    def _error(self, path: str, message: str) -> ConfigError:
        return ConfigError(f"{self._source}: {path or '<root>'}: {message}")

    def measure(self, node: yaml.Node, path: str = "", depth: int = 0) -> tuple[int, int]:
        key = id(node)
        if key in self._size:
            return self._size[key]
        if key in self._open:
            name = self._loader.anchor_names.get(key, "?")
            raise self._error(path, f"alias *{name} refers to a node that contains it (a recursive alias)")
        if depth > MAX_DEPTH:
            raise self._error(path, f"nested more than {MAX_DEPTH} levels deep ({_mark(node)})")
        self._open.add(key)
        nodes, chars = 1, 0
        if isinstance(node, yaml.ScalarNode):
            chars = len(node.value)
            if node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:timestamp"):
                try:  # constructing these can fail (4300-digit int limit, month 13); cached for later
                    self._loader.construct_object(node)
                except (ValueError, OverflowError) as error:
                    raise self._error(path, f"{error} ({_mark(node)})") from None
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                n, c = self.measure(item, f"{path}[{index}]", depth + 1)
                nodes, chars = nodes + n, chars + c
        elif isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], yaml.Node] = {}
            for key_node, value_node in node.value:
                name = _key_text(key_node)
                child = f"{path}.{name}" if path else name
                ident = (key_node.tag, name)
                if isinstance(key_node, yaml.ScalarNode):
                    if ident in seen:
                        raise self._error(
                            child,
                            f"duplicate key ({_mark(key_node)}; first at {_mark(seen[ident])}): "
                            "remove one of them",
                        )
                    seen[ident] = key_node
                if key_node.tag == _MERGE_TAG:
                    child = path  # merged keys land in this mapping
                for part, part_path in ((key_node, child), (value_node, child)):
                    n, c = self.measure(part, part_path, depth + 1)
                    nodes, chars = nodes + n, chars + c
        self._open.discard(key)
        if nodes > MAX_EXPANDED_NODES or chars > MAX_EXPANDED_CHARS:
            raise self._error(
                path,
                f"aliases expand this to more than {MAX_EXPANDED_NODES:,} YAML nodes or "
                f"{MAX_EXPANDED_CHARS >> 20} MiB of text ({_mark(node)}); refused (a 'billion laughs' file?)",
            )
        self._size[key] = (nodes, chars)
        return nodes, chars


def _node_at(root: yaml.Node | None, path: str) -> yaml.Node | None:
    """The node that names a key path such as ``streams[1].url`` (its key; merge keys followed), or None."""
    node, named = root, root
    for match in re.finditer(r"([^.\[\]]+)|\[(\d+)\]", path):
        if node is None:
            return None
        name, index = match.group(1), match.group(2)
        if index is not None:
            if not isinstance(node, yaml.SequenceNode) or int(index) >= len(node.value):
                return None
            node = named = node.value[int(index)]
        else:
            pair = _mapping_pair(node, name)
            if pair is None:
                return None
            named, node = pair
    return named


def _mapping_pair(node: yaml.Node, name: str, depth: int = 0) -> tuple[yaml.Node, yaml.Node] | None:
    if not isinstance(node, yaml.MappingNode) or depth > MAX_DEPTH:
        return None
    merged: list[yaml.Node] = []
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            merged.extend(value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node])
        elif isinstance(key_node, yaml.ScalarNode) and key_node.value == name:
            return key_node, value_node
    for source in merged:
        found = _mapping_pair(source, name, depth + 1)
        if found is not None:
            return found
    return None


def _innermost_path(node: yaml.Node, index: int, path: str = "", seen: set[int] | None = None) -> str | None:
    """The key path of the innermost value whose text spans character ``index`` of the document.

    Each node is looked at once (``seen``), so shared and recursive aliases cost nothing extra.
    """
    seen = set() if seen is None else seen
    if id(node) in seen:
        return None
    seen.add(id(node))
    if not node.start_mark.index <= index < max(node.end_mark.index, node.start_mark.index + 1):
        return None
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _innermost_path(item, index, f"{path}[{i}]", seen)
            if found is not None:
                return found
    elif isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = f"{path}.{_key_text(key_node)}" if path else _key_text(key_node)
            for part in (key_node, value_node):
                found = _innermost_path(part, index, child, seen)
                if found is not None:
                    return found
    return path


def _line_col(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: the config file does not exist") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file: {error.strerror or error}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: the file is larger than {MAX_FILE_BYTES >> 20} MiB; refused unread")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        text = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
        index = len(data[: error.start].decode("utf-8").removeprefix("\ufeff"))
        line, column = _line_col(text, index)
        where = None
        with contextlib.suppress(yaml.YAMLError, RecursionError):
            where = _innermost_path(yaml.compose(text, Loader=_Loader), index)
        raise ConfigError(
            f"{path}: {where or '<root>'}: byte 0x{data[error.start]:02x} at line {line}, column {column} "
            "is not UTF-8; save the file as UTF-8"
        ) from None


def _yaml_problem(error: yaml.YAMLError, text: str) -> str:
    if isinstance(error, yaml.reader.ReaderError):
        line, column = _line_col(text, error.position)
        character = chr(error.character) if isinstance(error.character, int) else error.character
        return f"not valid YAML at line {line}, column {column}: character {character!r} is not allowed"
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"not valid YAML{where}: {getattr(error, 'problem', None) or error}"


def _load_yaml(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """Parse, check the node graph, then construct plain data; returns (data, root node)."""
    try:
        loader = _Loader(text)  # the reader refuses control characters here
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: {_yaml_problem(error, text)}") from None
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as error:
            raise ConfigError(f"{source}: {_yaml_problem(error, text)}") from None
        except RecursionError:
            raise ConfigError(f"{source}: nested too deeply (more than {MAX_DEPTH} levels)") from None
        if root is None:
            return None, None
        _GraphCheck(loader, source).measure(root)
        try:
            return loader.construct_document(root), root
        except yaml.YAMLError as error:
            raise ConfigError(f"{source}: {_yaml_problem(error, text)}") from None
        except (ValueError, TypeError, OverflowError) as error:
            raise ConfigError(f"{source}: a value cannot be read: {error}") from None
    finally:
        loader.dispose()


# ---------------------------------------------------------------------------------------------------------
# validation and error messages
# ---------------------------------------------------------------------------------------------------------
class _EnvError(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


def _expand_env(node: Any, path: str) -> Any:
    if isinstance(node, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group("name"), match.group("default")
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise _EnvError(path, f"environment variable {name} is not set")

        return _ENV_RE.sub(substitute, node)
    if isinstance(node, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, f"{path}[{i}]") for i, v in enumerate(node)]
    return node


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside ``X``, ``X | None``, ``list[X]``, ``Annotated[X, ...]``; else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType, list, Annotated):
        for arg in get_args(annotation):
            found = _inner_model(arg)
            if found is not None:
                return found
    return None


def _key_path(loc: tuple[int | str, ...], unknown_key: bool, root_model: type[BaseModel]) -> str:
    """``('streams', 1, 'reconnect', 'jitter')`` -> ``streams[1].reconnect.jitter``, without pydantic's
    union branch tags (``'str'``, ``'list[str]'``, ``'function-after[...]'``)."""
    out = ""
    model: type[BaseModel] | None = root_model
    for position, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif model is not None and part in model.model_fields:
            out += f".{part}" if out else part
            model = _inner_model(model.model_fields[part].annotation)
        elif unknown_key and position == len(loc) - 1:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def _shown_value(value: Any) -> str:
    """The offending value, for numbers (and strings that spell one) only: other strings may hold secrets."""
    if isinstance(value, str) and _NUMBER_LIKE_RE.match(value):
        return f" (got {value})"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return f" (got {value})"
    text = repr(value)
    return f" (got {text if len(text) <= 24 else text[:20] + '...'})"


def _with_line(message: str, root: yaml.Node | None, path: str) -> str:
    node = _node_at(root, path) if root is not None and path != "<root>" else None
    return f"{message} ({_mark(node)})" if node is not None else message


def _validate(data: Any, source: str, require_streams: bool, root: yaml.Node | None) -> Config:
    return validate_model(Config, data, source, root, context={"require_streams": require_streams})


def validate_model(
    model: type[_M],
    data: Any,
    source: str,
    root: yaml.Node | None = None,
    context: dict[str, Any] | None = None,
) -> _M:
    """``model`` validated from a parsed YAML tree, ``${VAR}`` expanded; x- keys at the top are dropped.

    Raises ConfigError with one line per bad key: ``SOURCE: key.path: message (line N, column M)``.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: <root>: the top level must be a mapping")
    # top-level keys starting with x- are free for anchors shared by several streams (x-camera: &cam {...})
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith(EXTENSION_PREFIX))}
    try:
        expanded = _expand_env(data, "")
    except _EnvError as error:
        path = error.path or "<root>"
        raise ConfigError(f"{source}: {path}: {_with_line(str(error), root, path)}") from None
    try:
        return model.model_validate(expanded, context=context)
    except ValidationError as error:
        lines: dict[str, str] = {}  # key path -> first message (pydantic may report union branches twice)
        for item in error.errors(include_url=False):
            unknown = item["type"] == "extra_forbidden"
            path = _key_path(item["loc"], unknown, model)
            if path in lines:
                continue
            if unknown:
                message = "unknown key"
            elif item["type"] == "missing":
                message = "required key is missing"
            else:
                message = item["msg"].removeprefix("Value error, ") + _shown_value(item.get("input"))
            lines[path] = f"{source}: {path}: {_with_line(message, root, path)}"
        raise ConfigError("\n".join(lines.values())) from None


def parse_config(data: Any, source: str = "<config>", *, require_streams: bool = True) -> Config:
    """Validate an already-parsed YAML/JSON tree (``None`` = all defaults).

    ``require_streams=False`` accepts a config without streams (``vstmon classify`` uses only the model
    and clip sections). Raises ConfigError: one line per bad key, ``SOURCE: key.path: message``.
    """
    return _validate(data, source, require_streams, None)


def load_yaml_model(model: type[_M], path: str | os.PathLike[str]) -> _M:
    """Read a YAML file (with ``load_config``'s limits) into ``model``; ConfigError names the key path."""
    path = Path(path)
    data, root = _load_yaml(_read_text(path), str(path))
    return validate_model(model, data, str(path), root)


def load_config(path: str | os.PathLike[str], *, require_streams: bool = True) -> Config:
    """Read and validate a YAML config file; relative checkpoint/label paths stay relative to the CWD.

    Refuses files over MAX_FILE_BYTES, bytes that are not UTF-8, duplicate keys, recursive aliases and
    alias expansions over MAX_EXPANDED_NODES, each as a ConfigError naming the key path.
    """
    path = Path(path)
    text = _read_text(path)
    data, root = _load_yaml(text, str(path))
    return _validate(data, str(path), require_streams, root)
