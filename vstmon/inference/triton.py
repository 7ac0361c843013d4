"""The Triton runner: the engine's runner for ``inference.backend: triton``.

It takes the place of ``runner.Runner`` in an ``engine.Engine``: the batcher, the thread, fairness and the reset
protocol stay as they are, and each batch goes to a Triton Inference Server (``vstmon serve``, or any Triton
serving the same model contract) over gRPC, as uint8 clips (normalisation happens on the server, so a Swin-T clip
is 4.8 MB on the wire, not 19 MB of float32).

The model contract (``serve.py`` hosts it): input ``clips`` uint8 (N, T, H, W, 3) RGB; outputs ``probs`` fp32
(N, C) softmax probabilities and ``model_id`` (N, 1) bytes, the id of the checkpoint that answered.

When the server does not answer (down, unreachable, or slower than ``timeout_s``), the batch is dropped and
counted, and the runner is *down*: batches that come before the next retry are dropped at once without a request,
and the retry delay doubles from ``retry_initial_s`` up to ``retry_max_s``. Nothing is queued meanwhile (the
batcher keeps one pending clip per clip stream), the daemon keeps capturing, tracking and resetting, and the first
answer after an outage brings the runner back up. Each change is one log line; ``stats()`` and the metrics say
whether the server is up, and count requests, errors and dropped clips.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from vstmon.config import TritonServerConfig
from vstmon.errors import ConfigError
from vstmon.inference.kernels import copy_clips
from vstmon.log import get_logger
from vstmon.types import Clip

__all__ = ["TritonRunner", "import_client"]

_log = get_logger("triton")
_PROBE_TIMEOUT_S = (
    5.0  # the start-up probe: the daemon starts (and retries later) when the server is not there
)


def import_client() -> Any:
    """``tritonclient.grpc``, or a clear error naming the package to install."""
    try:
        import tritonclient.grpc as grpcclient
    except ImportError as error:
        raise ConfigError(
            "inference.backend: triton needs the Triton client: pip install 'tritonclient[grpc]' "
            f"(or pip install 'vstmon[triton]'); import failed: {error}"
        ) from None
    return grpcclient


class TritonRunner:
    """A runner whose forward is a request to a Triton server (see the module docstring)."""

    remote = True

    def __init__(
        self,
        config: TritonServerConfig,
        max_batch: int,
        clip_shape: Sequence[int],
        name: str | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._grpc = import_client()
        self.config = config
        self.name = name or f"triton:{config.url}/{config.model}"
        self.max_batch = int(max_batch)
        self.clip_shape = tuple(int(n) for n in clip_shape)
        if len(self.clip_shape) != 4 or self.clip_shape[-1] != 3:
            raise ValueError(f"clip_shape must be (T, H, W, 3), got {self.clip_shape}")
        self.host = np.zeros((self.max_batch, *self.clip_shape), np.uint8)  # staging, allocated once
        self._client = self._grpc.InferenceServerClient(config.url)
        self._outputs = [
            self._grpc.InferRequestedOutput("probs"),
            self._grpc.InferRequestedOutput("model_id"),
        ]
        self.model_id: str | None = None  # the checkpoint id the server reports
        self.up: bool | None = None  # None until the first answer or failure
        self._down_since_s = 0.0
        self._retry_delay_s = config.retry_initial_s
        self._next_try_mono_s = 0.0
        # counters (the engine thread writes them; stats reads them)
        self.requests = 0
        self.request_errors = 0
        self.clips_dropped_server_down = 0
        self.last_request_s = 0.0
        self.last_error = ""

    # -- the backend interface the engine uses ------------------------------------------------------------------
    def warm_up(self) -> None:
        """Ask the server once (a batch of one blank clip) for its model id and class count; a server that does
        not answer is logged, not fatal: the runner retries with the first real batch."""
        try:
            probs, model_id = self._request(self.host[:1], _PROBE_TIMEOUT_S)
        except Exception as error:
            self._failed(error)
            return
        self._answered(model_id)
        _log.info("inference server ready", server=self.name, model_id=model_id, classes=int(probs.shape[1]))

    def stage(self, clips: Sequence[Clip]) -> np.ndarray:
        """Copy the clips' frames into the staging buffer; returns its view of ``len(clips)`` rows."""
        copy_clips(clips, self.host, self.clip_shape)
        return self.host[: len(clips)]

    def run(self, host: np.ndarray) -> np.ndarray | None:
        """Send the batch; its probabilities (N, C), or None when the server did not answer (or is down and the
        next retry is not due: then no request is made). Dropped clips are counted."""
        n = int(host.shape[0])
        if self.up is False and time.monotonic() < self._next_try_mono_s:
            self.clips_dropped_server_down += n
            return None
        try:
            probs, model_id = self._request(host, self.config.timeout_s)
        except Exception as error:
            self._failed(error)
            self.clips_dropped_server_down += n
            return None
        self._answered(model_id)
        return probs

    def infer(self, frames: np.ndarray) -> np.ndarray:
        """One synchronous request (raises if the server does not answer). For tools and tests."""
        probs, model_id = self._request(np.ascontiguousarray(frames, dtype=np.uint8), self.config.timeout_s)
        self._answered(model_id)
        return probs

    def stats(self) -> dict[str, Any]:
        return {
            "kind": "triton",
            "max_batch": self.max_batch,
            "server": self.config.url,
            "model": self.config.model,
            "model_id": self.model_id,
            "up": self.up,
            "down_for_s": round(time.monotonic() - self._down_since_s, 1) if self.up is False else 0.0,
            "requests": self.requests,
            "request_errors": self.request_errors,
            "clips_dropped_server_down": self.clips_dropped_server_down,
            "last_request_s": self.last_request_s,
            "last_error": self.last_error,
        }

    def close(self) -> None:
        self._client.close()

    # -- the request and the up/down state -----------------------------------------------------------------------
    def _request(self, clips: np.ndarray, timeout_s: float) -> tuple[np.ndarray, str]:
        request = self._grpc.InferInput("clips", list(clips.shape), "UINT8")
        request.set_data_from_numpy(clips)
        self.requests += 1
        begin_s = time.monotonic()
        result = self._client.infer(
            self.config.model, [request], outputs=self._outputs, client_timeout=timeout_s
        )
        self.last_request_s = time.monotonic() - begin_s
        probs = result.as_numpy("probs")
        ids = result.as_numpy("model_id")
        if probs is None or probs.ndim != 2 or probs.shape[0] != clips.shape[0]:
            raise ValueError(
                f"the server's model {self.config.model!r} answered {None if probs is None else probs.shape} "
                f"for {clips.shape[0]} clips: not the vstmon model contract (probs N x C)"
            )
        model_id = ids.reshape(-1)[0] if ids is not None and ids.size else b""
        return probs.astype(np.float32, copy=False), (
            model_id.decode() if isinstance(model_id, bytes) else str(model_id)
        )

    def _answered(self, model_id: str) -> None:
        if self.up is False:
            _log.info(
                "inference server answers again; clips flow",
                server=self.name,
                down_s=round(time.monotonic() - self._down_since_s, 1),
                clips_dropped=self.clips_dropped_server_down,
            )
        if model_id and model_id != self.model_id:
            if self.model_id is not None:
                _log.warning("the server's model changed", server=self.name, was=self.model_id, now=model_id)
            self.model_id = model_id
        self.up = True
        self._retry_delay_s = self.config.retry_initial_s

    def _failed(self, error: BaseException) -> None:
        self.request_errors += 1
        self.last_error = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        now = time.monotonic()
        if self.up is not False:
            self._down_since_s = now
            _log.warning(
                "inference server not answering: clips are dropped and counted until it does",
                server=self.name,
                error=self.last_error,
                retry_in_s=self._retry_delay_s,
            )
        else:
            self._retry_delay_s = min(self._retry_delay_s * 2.0, self.config.retry_max_s)
        self.up = False
        self._next_try_mono_s = now + self._retry_delay_s
