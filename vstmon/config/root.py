"""The whole ``config.yaml``: ``Config``, one field per section, and the checks that span streams (unique
names, one RTSP transport).
"""

from __future__ import annotations

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from vstmon.config.base import LocatedModel
from vstmon.config.inference import InferenceConfig
from vstmon.config.model import ClipConfig, ModelConfig
from vstmon.config.publish import PublishConfig
from vstmon.config.segments import ResetConfig, SmoothingConfig
from vstmon.config.service import LogConfig, MetricsConfig, ServiceConfig, ViewConfig, WorkersConfig
from vstmon.config.streams import IngestConfig, StreamConfig
from vstmon.config.subjects import SubjectsConfig

__all__ = ["Config"]


class Config(LocatedModel):
    """The whole file."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="the network and its weights")
    clip: ClipConfig = Field(default_factory=ClipConfig, description="how clips are cut from each stream")
    inference: InferenceConfig = Field(default_factory=InferenceConfig, description="batching and resources")
    streams: list[StreamConfig] = Field(
        default_factory=list,
        max_length=1000,
        description="the video sources; the daemon and `vstmon check` need at least one",
    )
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="how streams are decoded")
    reset: ResetConfig = Field(default_factory=ResetConfig, description="automatic segment resets")
    subjects: SubjectsConfig = Field(
        default_factory=SubjectsConfig, description="people in view: detection, tracking, subject changes"
    )
    smoothing: SmoothingConfig = Field(default_factory=SmoothingConfig, description="score smoothing")
    publish: PublishConfig = Field(default_factory=PublishConfig, description="ZeroMQ output and control")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus metrics")
    view: ViewConfig = Field(default_factory=ViewConfig, description="the operator's live page")
    workers: WorkersConfig = Field(
        default_factory=WorkersConfig, description="worker processes hosting the streams (crash isolation)"
    )
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
