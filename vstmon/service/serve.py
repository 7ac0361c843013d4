"""``vstmon serve --config serve.yaml``: a Triton Inference Server hosting the vstmon model, for daemons with
``inference.backend: triton``.

The server is NVIDIA's real ``tritonserver`` (shipped in the ``nvidia-pytriton`` wheel), started and fed through
PyTriton: Triton's dynamic batcher gathers the requests of every connected daemon into batches (up to
``serve.max_batch``, waiting at most ``serve.max_queue_delay_ms``, preferring ``serve.preferred_batch_sizes``),
and ``serve.instances`` copies of the model take batches in parallel. The model is loaded exactly as the daemon
loads it (the ``model`` section: checkpoint, arch, labels, device, precision), and runs as the local runner runs
it (``runner.Runner``: uint8 in, normalised on the device, autocast, fp32 softmax out).

The model contract (``triton_runner`` is its client): input ``clips`` uint8 (N, T, H, W, 3) with T, H, W from the
``clip`` section; outputs ``probs`` fp32 (N, C) and ``model_id`` bytes (N, 1), the checkpoint's id, so that
labels say which model produced them.

``nvidia-pytriton`` pins ``numpy<2``; give the server its own virtual environment (``pip install
'vstmon[serve]'`` there; README, "Scale-out"). Its Python stub must load the running interpreter's libpython:
``LD_LIBRARY_PATH`` gets the interpreter's library folder before the server starts. SIGTERM or SIGINT stop it.
"""

from __future__ import annotations

import argparse
import copy
import os
import signal
import sysconfig
import threading
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field, model_validator

from vstmon.config import ClipConfig, LocatedModel, LogConfig, ModelConfig, StrictModel, load_yaml_model
from vstmon.config.base import fail_at
from vstmon.errors import CheckpointError, ConfigError, LabelsError
from vstmon.log import configure_logging, get_logger
from vstmon.service.preflight import model_file_problems

__all__ = ["ServeConfig", "add_arguments", "run"]

_log = get_logger("serve")


class ServeSection(StrictModel):
    """The server: ports, batching, model instances."""

    host: str = Field("127.0.0.1", max_length=255, description="address the gRPC and HTTP ports bind to")
    grpc_port: int = Field(
        8001, ge=1, le=65535, description="gRPC port (what daemons' inference.triton.url names)"
    )
    http_port: int = Field(8000, ge=1, le=65535, description="HTTP port (health: /v2/health/ready)")
    metrics_port: int = Field(8002, ge=1, le=65535, description="Prometheus metrics port of the server")
    model_name: str = Field(
        "vstmon",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="the model's name (daemons' inference.triton.model)",
    )
    max_batch: int = Field(16, ge=1, le=256, description="clips per forward pass, gathered across daemons")
    preferred_batch_sizes: list[Annotated[int, Field(ge=1, le=256)]] | None = Field(
        None,
        max_length=32,
        description="batch sizes the batcher waits for (e.g. [4, 8, 16]), each at most max_batch; "
        "null = as large as ready",
    )
    max_queue_delay_ms: float = Field(
        5.0, ge=0, le=10_000, description="ms a request may wait for others to join its batch"
    )
    instances: int = Field(1, ge=1, le=16, description="model copies taking batches in parallel")

    @model_validator(mode="after")
    def _preferred_fit_the_batch(self) -> ServeSection:
        for index, size in enumerate(self.preferred_batch_sizes or []):
            if size > self.max_batch:
                raise fail_at(
                    ("preferred_batch_sizes", index), f"must be at most max_batch ({self.max_batch})", size
                )
        return self


class ServeConfig(LocatedModel):
    """The whole serve.yaml."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="the network and its weights")
    clip: ClipConfig = Field(default_factory=ClipConfig, description="the clip shape the daemons send")
    serve: ServeSection = Field(default_factory=ServeSection, description="the server")
    log: LogConfig = Field(default_factory=LogConfig, description="logging")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="serve.yaml (model, clip, serve, log)")


class _Model:
    """One instance: the model on its device, run like the local runner; counts batches and their requests."""

    def __init__(self, runner: Any, model_id: str) -> None:
        self._runner = runner
        self._model_id = np.bytes_(model_id.encode())
        self._lock = threading.Lock()  # one batch at a time on this copy
        self.batches = 0

    def __call__(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        clips = [request["clips"] for request in requests]
        sizes = [len(c) for c in clips]
        with self._lock:
            probs = self._runner.run(torch.from_numpy(np.concatenate(clips, axis=0)))
            self.batches += 1
        _log.debug("batch", requests=len(requests), clips=sum(sizes))
        if probs is None or np.isnan(probs).any():
            raise RuntimeError("the batch did not fit in memory even split down to single clips")
        out, start = [], 0
        for n in sizes:
            ids = np.full((n, 1), self._model_id, dtype=object)
            out.append({"probs": probs[start : start + n], "model_id": ids})
            start += n
        return out


def run(args: argparse.Namespace) -> int:
    config = load_yaml_model(ServeConfig, args.config)
    configure_logging(config.log.level, config.log.format)
    # what stops the server before it starts, one line each: the checkpoint and labels files (with their
    # lines in serve.yaml), and the package that runs Triton
    problems = [config.problem(p.key, p.message) for p in model_file_problems(config.model)]
    try:
        from pytriton.model_config import DynamicBatcher, Tensor
        from pytriton.model_config import ModelConfig as TritonModelConfig
        from pytriton.triton import Triton, TritonConfig
    except ImportError as error:
        problems.append(
            f"vstmon serve needs nvidia-pytriton (pip install 'vstmon[serve]' in its own environment): {error}"
        )
    if problems:
        raise ConfigError("\n".join(problems))
    from vstmon.inference.runner import Runner
    from vstmon.model.bundle import load_model_section

    s, clip = config.serve, config.clip
    try:
        loaded = load_model_section(config.model)
    except CheckpointError as error:
        message = str(error).removeprefix("model.checkpoint: ")
        raise config.config_error("model.checkpoint", message, CheckpointError) from None
    except LabelsError as error:
        raise config.config_error("model.labels", str(error), LabelsError) from None
    shape = (clip.frames, clip.size_px, clip.size_px, 3)
    instances = []
    for i in range(s.instances):
        model = loaded.model if i == 0 else copy.deepcopy(loaded.model)
        runner = Runner(model, config.model.device, config.model.precision, s.max_batch, clip_shape=shape)
        runner.warm_up()
        instances.append(_Model(runner, loaded.model_id))
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (libdir, os.environ.get("LD_LIBRARY_PATH")) if p
    )
    triton_config = TritonConfig(
        grpc_address=s.host, grpc_port=s.grpc_port, http_address=s.host, http_port=s.http_port,
        metrics_port=s.metrics_port, exit_on_error=True,
    )  # fmt: skip
    batcher = DynamicBatcher(
        max_queue_delay_microseconds=int(s.max_queue_delay_ms * 1000),
        preferred_batch_size=s.preferred_batch_sizes,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with Triton(config=triton_config) as triton:
        triton.bind(
            model_name=s.model_name,
            infer_func=instances,
            inputs=[Tensor(name="clips", dtype=np.uint8, shape=shape)],
            outputs=[
                Tensor(name="probs", dtype=np.float32, shape=(len(loaded.labels),)),
                Tensor(name="model_id", dtype=bytes, shape=(1,)),
            ],
            config=TritonModelConfig(max_batch_size=s.max_batch, batcher=batcher),
            strict=True,
        )
        triton.run()
        _log.info(
            "serving",
            model=s.model_name,
            model_id=loaded.model_id,
            grpc=f"{s.host}:{s.grpc_port}",
            http=f"{s.host}:{s.http_port}",
            instances=s.instances,
            max_batch=s.max_batch,
            clip=list(shape),
        )
        while not stop.wait(1.0):
            if not triton.is_alive():
                _log.error("the Triton server process ended")
                return 1
        _log.info("stopping", batches=sum(m.batches for m in instances))
    return 0
