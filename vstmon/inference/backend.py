"""``Backend``: what the engine runs its batches on, as the engine sees it; ``build_backends``: the backends a
config asks for.

Two kinds: ``runner.Runner`` (the model on one local device: precision, staging, compile, attention kernel,
out-of-memory splits) and ``triton.TritonRunner`` (the model on a Triton server, over gRPC). The engine knows
only this interface; what is particular to one kind is in its ``stats()``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from vstmon.types import Clip

__all__ = ["Backend", "build_backends"]


class Backend(Protocol):
    name: str  # the device (``cuda:0``) or the server (``triton:host:8001/vstmon``), for logs and metrics
    remote: bool  # the model runs elsewhere (a server answers for it)
    clip_shape: tuple[int, ...] | None  # (T, H, W, 3) every clip must have (None: the first clip's)
    max_batch: int  # clips per batch now (a local backend lowers it after an out-of-memory error)

    def warm_up(self) -> None:
        """Whatever must happen before the daemon says READY (compile, pick kernels, ask the server)."""
        ...

    def stage(self, clips: Sequence[Clip]) -> Any:
        """Copy the clips' frames into the backend's host buffer; the batch as ``run`` takes it."""
        ...

    def run(self, host: Any) -> np.ndarray | None:
        """fp32 softmax probabilities (N, C) of a staged batch (NaN rows: clips that failed alone); None when no
        clip of it could be run."""
        ...

    def infer(self, frames: np.ndarray) -> np.ndarray:
        """uint8 clips (N, T, H, W, 3) run on the caller's thread -> probabilities (N, C) (tools and tests)."""
        ...

    def stats(self) -> dict[str, Any]:
        """The backend's own figures (``kind`` and whatever that kind has)."""
        ...

    def close(self) -> None: ...


def build_backends(config: Any, model: Any) -> list[Backend]:
    """The backends a daemon ``config`` asks for: one ``Runner`` per device of ``model.device`` (each with its own
    copy of ``model``), or one ``TritonRunner`` (``inference.backend: triton``; ``model`` unused)."""
    inference = config.inference
    clip_shape = (config.clip.frames, config.clip.size_px, config.clip.size_px, 3)
    if inference.backend == "triton":
        from vstmon.inference.triton import TritonRunner

        return [TritonRunner(inference.triton, inference.max_batch, clip_shape)]
    from vstmon.inference.runner import Runner
    from vstmon.model.devices import resolve_devices

    options: dict[str, Any] = {}
    if (
        inference.compile == "tensorrt"
    ):  # keyed by the checkpoint's hash, cached beside it (before .to(device))
        from vstmon.inference.tensorrt import tensorrt_options

        options["engine"] = tensorrt_options(config.model.checkpoint, model)
    devices = resolve_devices(config.model.device)  # one list, duplicates dropped (cuda and cuda:0 are one)
    # every replica is copied from the model as given (on the CPU), before the first runner moves its own copy:
    # a copy of a model already on cuda:0 would pass through cuda:0's memory (and its cap)
    replicas = [model] + [copy.deepcopy(model) for _ in devices[1:]]
    backends: list[Backend] = []
    for device, replica in zip(devices, replicas, strict=True):
        backends.append(
            Runner(
                replica,
                device,
                config.model.precision,
                inference.max_batch,
                gpu_memory_fraction=inference.gpu_memory_fraction,
                compile=inference.compile,
                clip_shape=clip_shape,
                **options,
            )
        )
    return backends
