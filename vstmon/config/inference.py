"""The ``inference`` section: batching across streams, the device's resources, and the Triton server of
``backend: triton``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from vstmon.config.base import StrictModel, is_tcp_host

__all__ = ["InferenceConfig", "TritonServerConfig"]


class TritonServerConfig(StrictModel):
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
        if "://" in value or not colon or not host or not is_tcp_host(host):
            raise ValueError(f"{value!r} must be HOST:PORT, e.g. 127.0.0.1:8001 or triton.example:8001")
        if not port.isdecimal() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{value!r}: port {port!r} must be a number 1-65535")
        return value


class InferenceConfig(StrictModel):
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
