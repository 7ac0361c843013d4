"""Inference engines (TensorRT) built once per GPU, shape, precision and weights, and cached on disk.

A first build takes minutes; every later start loads the cached file in seconds. The file's name carries a
digest of everything that makes an engine valid (``EngineKey``): the GPU's name and compute capability, the
batch range and clip shape, the precision, the torch and builder versions, and the weights' SHA-256. A JSON
sidecar holds that key in clear and the engine file's own SHA-256, and is written last (``os.replace``, after
the engine), so that:

- a file of another key is never used (its name differs, and the sidecar's key is compared as well);
- a corrupt engine (truncated, overwritten, unreadable by the loader) or one without its sidecar is rebuilt;
- a crash in the middle of a write leaves only a temporary file, never a half-written engine under the name.

Where: next to the checkpoint when that folder is writable, else ``<cache dir>/engines`` (``paths``; the shipped
systemd unit makes the install read-only and gives ``$CACHE_DIRECTORY``). A folder where nothing can be written
only costs a build at every start (logged once).

The builder is anything with ``EngineBuilder``'s methods: ``tensorrt_engine.TensorRTBuilder`` in production,
a plain Python stand-in in the tests. This module imports no GPU library.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from vstmon.log import get_logger
from vstmon.model.checkpoint import file_sha256
from vstmon.paths import default_cache_dir

__all__ = [
    "EngineBuilder",
    "EngineKey",
    "EngineOptions",
    "engine_cache_dir",
    "engine_path",
    "load_or_build",
    "weights_sha256",
]

_log = get_logger("inference_cache")

_FORMAT = 1  # of the sidecar; a new format invalidates every cached engine


class EngineBuilder(Protocol):
    """Builds an engine from a model, saves it to a file and loads it back (see ``tensorrt_engine``)."""

    backend: str  # "tensorrt"

    def version(self) -> str:
        """The builder's version (part of the key); raises ImportError when the builder is not installed."""
        ...

    def build(self, model: nn.Module, example: torch.Tensor, max_batch: int) -> Callable[[torch.Tensor], Any]:
        """An engine for inputs like ``example`` (N, 3, T, H, W) with N from 1 to ``max_batch``."""
        ...

    def save(self, engine: Any, path: Path, example: torch.Tensor, max_batch: int) -> None: ...

    def load(self, path: Path, device: torch.device) -> Callable[[torch.Tensor], Any]: ...


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. Two keys that differ in any field never share a file."""

    backend: str  # "tensorrt"
    gpu: str  # torch.cuda.get_device_name ("NVIDIA H100 80GB HBM3"), "cpu" for a stand-in on the CPU
    compute_capability: str  # "9.0" ("" on the CPU)
    max_batch: int  # the engine takes batches of 1 to max_batch clips
    clip_shape: tuple[int, int, int]  # (T, H, W) frames, pixels
    precision: str  # "bf16", "fp16", "fp32", "fp8"
    torch_version: str
    builder_version: str  # torch_tensorrt.__version__
    weights_sha256: str  # of the checkpoint file (or of the state dict: ``weights_sha256``)

    def digest(self) -> str:
        """16 hex characters of the SHA-256 of the key's fields (canonical JSON)."""
        text = json.dumps(self.fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def fields(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "clip_shape": list(self.clip_shape), "format": _FORMAT}

    @classmethod
    def for_device(
        cls,
        builder_version: str,
        device: torch.device,
        max_batch: int,
        clip_shape: tuple[int, int, int],
        precision: str,
        weights: str,
        backend: str = "tensorrt",
    ) -> EngineKey:
        """The key of an engine for ``device`` (its GPU name and capability read from CUDA)."""
        if device.type == "cuda":
            gpu = torch.cuda.get_device_name(device)
            capability = "{}.{}".format(*torch.cuda.get_device_capability(device))
        else:
            gpu, capability = device.type, ""
        return cls(backend, gpu, capability, int(max_batch), tuple(int(n) for n in clip_shape),  # type: ignore[arg-type]
                   precision, torch.__version__, builder_version, weights)  # fmt: skip


@dataclass(frozen=True)
class EngineOptions:
    """What a runner needs for ``compile: tensorrt``: the builder, where to cache, and the weights' id."""

    builder: EngineBuilder
    folder: Path | None  # None: no cache (a build at every start)
    weights_sha256: str
    stem: str = "model"  # file names start with it (the checkpoint's stem)
    fallback: str = "inductor"  # after a failed build: "inductor" (torch.compile) or "eager"


def engine_cache_dir(checkpoint: str | Path | None) -> Path:
    """The checkpoint's folder when this process may write there, else ``<cache dir>/engines``."""
    if checkpoint is not None:
        folder = Path(checkpoint).resolve().parent
        if os.access(folder, os.W_OK | os.X_OK):
            return folder
    return default_cache_dir() / "engines"


def engine_path(folder: Path, stem: str, key: EngineKey) -> Path:
    """``<folder>/<stem>.<backend>-<digest>.engine``; the sidecar is that path plus ``.json``."""
    return folder / f"{stem}.{key.backend}-{key.digest()}.engine"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes, values): the weights' id when no file holds them
    (untrained weights)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def _valid(path: Path, key: EngineKey) -> str | None:
    """None when ``path`` holds an engine of ``key`` whose bytes match its sidecar; else why not."""
    if not path.is_file():
        return "absent"
    try:
        meta = json.loads(_sidecar(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return f"no readable sidecar ({type(error).__name__})"
    if not isinstance(meta, dict) or meta.get("key") != key.fields():
        return "built for another key"
    if meta.get("bytes") != path.stat().st_size or meta.get("sha256") != file_sha256(path):
        return "its bytes differ from those recorded when it was built"
    return None


def _remove(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            _log.warning("cannot remove a stale engine file", path=str(p), error=str(error))


def load_or_build(
    options: EngineOptions,
    key: EngineKey,
    model: nn.Module,
    example: torch.Tensor,
    device: torch.device,
) -> tuple[Callable[[torch.Tensor], Any], bool]:
    """The engine of ``key``: loaded from the cache when valid, else built (and cached). Returns (engine, built).

    Errors of the build itself propagate (the caller falls back); errors of the cache only cost a rebuild
    (unreadable cached file) or the caching (folder not writable), each logged once.
    """
    builder = options.builder
    path = engine_path(options.folder, options.stem, key) if options.folder is not None else None
    if path is not None:
        reason = _valid(path, key)
        if reason is None:
            try:
                return builder.load(path, device), False
            except Exception as error:  # a file the loader cannot read: rebuild it
                reason = f"the loader failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        if reason != "absent":
            _log.warning("cached engine not used; building a new one", path=str(path), reason=reason)
            _remove(path, _sidecar(path))
    engine = builder.build(model, example, key.max_batch)
    if path is not None:
        _store(builder, engine, path, key, example)
    return engine, True


def _store(builder: EngineBuilder, engine: Any, path: Path, key: EngineKey, example: torch.Tensor) -> None:
    """Save ``engine`` under ``path`` atomically: engine first, sidecar last (its presence commits the entry)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp_meta = _sidecar(tmp)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        builder.save(engine, tmp, example, key.max_batch)
        meta = {"key": key.fields(), "bytes": tmp.stat().st_size, "sha256": file_sha256(tmp)}
        tmp_meta.write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
        os.replace(tmp_meta, _sidecar(path))
        _log.info("engine cached", path=str(path), bytes=meta["bytes"])
    except Exception as error:  # a read-only folder, a full disk, a save the builder cannot do
        _log.warning(
            "engine built but not cached; the next start builds it again",
            path=str(path),
            error=f"{type(error).__name__}: {error}",
        )
        _remove(path, _sidecar(path))
    finally:
        _remove(tmp, tmp_meta)
