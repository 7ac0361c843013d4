"""The typed configuration tree: ``load_config(path) -> Config``.

Unknown keys are rejected; every error names its YAML key path (``streams[1].url: ...``).
``${VAR}`` (or ``${VAR:-default}``) in any string is replaced from the environment, so secrets such
as camera passwords stay out of the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vstmon.errors import ConfigError

__all__ = [
    "ClipConfig",
    "Config",
    "InferenceConfig",
    "LogConfig",
    "ModelConfig",
    "PublishConfig",
    "ReconnectConfig",
    "ResetConfig",
    "SceneChangeConfig",
    "SmoothingConfig",
    "StreamConfig",
    "load_config",
    "parse_config",
]

_ENV_RE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


PositiveFloat = Annotated[float, Field(gt=0)]


class ModelConfig(_Strict):
    """Which network, which weights, which device."""

    arch: str = Field("auto", description="swin_t|swin_s|swin_b|swin_l (optionally _sthv2) or auto")
    checkpoint: Path | None = Field(None, description="checkpoint file; null = untrained weights (warned)")
    labels: str = Field("kinetics400", description="kinetics400, sthv2 or a path to a one-name-per-line file")
    device: str | list[str] = Field("auto", description="auto|cpu|cuda|cuda:N or a list of devices")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    num_classes: int | None = Field(
        None, ge=1, description="only needed for untrained weights or bare backbones"
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str | list[str]) -> str | list[str]:
        devices = [value] if isinstance(value, str) else value
        if not devices:
            raise ValueError("device list is empty")
        for device in devices:
            if not _DEVICE_RE.match(device):
                raise ValueError(f"unknown device {device!r} (use auto, cpu, cuda, cuda:N or a list)")
        return value


class ClipConfig(_Strict):
    """How clips are cut from each stream."""

    frames: int = Field(32, ge=2, le=256, description="frames per clip (T)")
    frame_interval: int = Field(2, ge=1, le=64, description="take every N-th source frame")
    sample_fps: PositiveFloat | None = Field(None, description="sample by time at this rate instead")
    size_px: int = Field(224, ge=32, le=1024, description="short side resize and centre crop, pixels")
    hop_s: PositiveFloat = Field(1.0, description="a new clip every hop_s seconds of stream time")

    @field_validator("size_px")
    @classmethod
    def _multiple_of_32(cls, value: int) -> int:
        if value % 32:
            raise ValueError(f"size_px must be a multiple of 32 (patch 4 x 3 merges), got {value}")
        return value


class InferenceConfig(_Strict):
    max_batch: int = Field(8, ge=1, le=256)
    max_wait_ms: float = Field(20.0, ge=0, le=10_000)
    gpu_memory_fraction: float | None = Field(None, gt=0, le=1)
    compile: bool = False
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")


class ReconnectConfig(_Strict):
    initial_delay_s: PositiveFloat = 0.5
    max_delay_s: PositiveFloat = 30.0
    max_attempts: int | None = Field(None, ge=1, description="null = retry forever")
    jitter: float = Field(0.2, ge=0, le=1, description="fraction of the delay added at random")

    @model_validator(mode="after")
    def _order(self) -> ReconnectConfig:
        if self.max_delay_s < self.initial_delay_s:
            raise ValueError("max_delay_s must be >= initial_delay_s")
        return self


class StreamConfig(_Strict):
    """One video source."""

    name: str
    url: str = Field(description="rtsp(s)/http(s) URL, file path, webcam index or /dev/videoN, or testsrc")
    loop: bool = False
    realtime: bool | None = Field(None, description="files: pace at the file's fps (default: false)")
    transport: Literal["tcp", "udp"] = "tcp"
    width: int | None = Field(None, ge=16)
    height: int | None = Field(None, ge=16)
    fps: PositiveFloat | None = None
    open_timeout_s: PositiveFloat = 5.0
    read_timeout_s: PositiveFloat = 3.0
    stall_timeout_s: PositiveFloat = 5.0
    buffer_s: PositiveFloat | None = Field(
        None, description="ring buffer length; default fits one clip + 1 s"
    )
    reconnect: ReconnectConfig = ReconnectConfig()

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
        return str(value) if isinstance(value, int) else value


class SceneChangeConfig(_Strict):
    enabled: bool = True
    threshold: float = Field(0.5, gt=0, le=1, description="histogram distance (0..1) that counts as a cut")
    size_px: int = Field(32, ge=8, le=256, description="frames are compared at this downscaled size")
    min_segment_s: float = Field(1.0, ge=0, description="no automatic reset sooner than this after another")


class ResetConfig(_Strict):
    scene_change: SceneChangeConfig = SceneChangeConfig()
    idle_s: PositiveFloat | None = Field(None, description="reset after this long without motion")
    idle_motion_threshold: float = Field(
        2.0, ge=0, description="mean abs pixel difference that counts as motion"
    )
    on_reconnect: bool = True


class SmoothingConfig(_Strict):
    method: Literal["mean", "ema"] = "mean"
    window_clips: int = Field(5, ge=1, le=1000)
    ema_alpha: float = Field(0.5, gt=0, le=1)


class PublishConfig(_Strict):
    endpoints: list[str] = Field(default_factory=lambda: ["tcp://*:5556"], min_length=1)
    control: str | None = Field("tcp://127.0.0.1:5557", description="REP socket; null disables control")
    top_k: int = Field(5, ge=1, le=1000)
    heartbeat_s: PositiveFloat = 5.0
    sndhwm: int = Field(1000, ge=1)

    @field_validator("endpoints")
    @classmethod
    def _check_endpoints(cls, value: list[str]) -> list[str]:
        for endpoint in value:
            if not endpoint.startswith(("tcp://", "ipc://", "inproc://")):
                raise ValueError(f"endpoint {endpoint!r} must start with tcp://, ipc:// or inproc://")
        return value


class MetricsConfig(_Strict):
    port: int | None = Field(None, ge=1, le=65535, description="Prometheus /metrics port; null disables")
    host: str = "127.0.0.1"


class LogConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Config(_Strict):
    model: ModelConfig = ModelConfig()
    clip: ClipConfig = ClipConfig()
    inference: InferenceConfig = InferenceConfig()
    streams: list[StreamConfig] = Field(default_factory=list)
    reset: ResetConfig = ResetConfig()
    smoothing: SmoothingConfig = SmoothingConfig()
    publish: PublishConfig = PublishConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()

    @model_validator(mode="after")
    def _unique_stream_names(self) -> Config:
        seen: set[str] = set()
        for stream in self.streams:
            if stream.name in seen:
                raise ValueError(f"duplicate stream name {stream.name!r}")
            seen.add(stream.name)
        return self


def _expand_env(node: Any, path: str) -> Any:
    if isinstance(node, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group("name"), match.group("default")
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{path or '<root>'}: environment variable {name} is not set")

        return _ENV_RE.sub(substitute, node)
    if isinstance(node, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, f"{path}[{i}]") for i, v in enumerate(node)]
    return node


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {_key_path(item['loc'])}: {message}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<config>") -> Config:
    """Validate an already-parsed YAML/JSON tree (``None`` = all defaults)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration in {source}: the top level must be a mapping")
    try:
        return Config.model_validate(_expand_env(data, ""))
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, source)) from None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML config file; relative checkpoint/label paths stay relative to the CWD."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    return parse_config(data, str(path))
