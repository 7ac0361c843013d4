"""The TensorRT builder of ``inference.compile: tensorrt`` (``inference_cache.EngineBuilder``), via torch-tensorrt.

torch-tensorrt is optional and imported only here, lazily: without it (or without a GPU it supports) the build
raises, and the runner falls back to ``torch.compile`` or eager with one error line.

The model is exported with ``torch.export`` (batch dimension dynamic, 1 to ``max_batch``; the clip shape fixed)
and compiled by torch-tensorrt's dynamo frontend with explicit typing: the engine runs in the dtypes of the
model it is given, so the runner hands it a model whose weights are already half (``model.inference.
cast_for_inference``: LayerNorms and head fp32). The optimisation profile is tuned at ``max_batch``, the size
the engine runs under load. Engines are saved as an ``ExportedProgram`` (torch-tensorrt's default format).

UNTESTED on a GPU: written against the torch-tensorrt 2.x documentation; only the export step and the
fallback around a failing build are exercised on the CPU (tests/test_inference_cache.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vstmon.inference.engine_cache import EngineOptions, engine_cache_dir, weights_sha256
from vstmon.model.checkpoint import file_sha256

__all__ = ["TensorRTBuilder", "export_for_engine", "tensorrt_options"]


def export_for_engine(model: nn.Module, example: torch.Tensor, max_batch: int) -> Any:
    """``torch.export`` of ``model`` for inputs like ``example`` (N, 3, T, H, W), N from 1 to ``max_batch``.

    Call ``VideoSwin.prepare`` first (the shifted-window gathers are then constants of the graph)."""
    batch = torch.export.Dim("batch", min=1, max=max(2, int(max_batch)))
    # traced with two clips: a batch of 1 would be specialised to a constant (torch.export's 0/1 rule)
    sample = example[:1].expand(2, *example.shape[1:]).contiguous()  # (2, 3, T, H, W)
    with torch.no_grad():
        return torch.export.export(model, (sample,), dynamic_shapes=({0: batch},), strict=False)


def _input_spec(example: torch.Tensor, max_batch: int) -> Any:
    """torch-tensorrt's input: batch 1 to ``max_batch`` (optimised for ``max_batch``), the rest as ``example``."""
    import torch_tensorrt

    rest = tuple(example.shape[1:])
    return torch_tensorrt.Input(
        min_shape=(1, *rest), opt_shape=(max_batch, *rest), max_shape=(max_batch, *rest), dtype=example.dtype
    )


class TensorRTBuilder:
    """Builds, saves and loads torch-tensorrt engines (see the module docstring)."""

    backend = "tensorrt"

    def version(self) -> str:
        import torch_tensorrt

        return str(torch_tensorrt.__version__)

    def build(self, model: nn.Module, example: torch.Tensor, max_batch: int) -> Callable[[torch.Tensor], Any]:
        import torch_tensorrt

        program = export_for_engine(model, example, max_batch)
        return torch_tensorrt.dynamo.compile(
            program, arg_inputs=[_input_spec(example, max_batch)], use_explicit_typing=True, min_block_size=1
        )

    def save(self, engine: Any, path: Path, example: torch.Tensor, max_batch: int) -> None:
        import torch_tensorrt

        # the Input with its min/opt/max shapes keeps the batch dimension dynamic in the saved program
        torch_tensorrt.save(
            engine, str(path), output_format="exported_program", arg_inputs=[_input_spec(example, max_batch)]
        )

    def load(self, path: Path, device: torch.device) -> Callable[[torch.Tensor], Any]:
        import torch_tensorrt

        return torch_tensorrt.load(str(path)).module()


def tensorrt_options(checkpoint: str | Path | None, model: nn.Module) -> EngineOptions:
    """``compile: tensorrt`` for a model loaded from ``checkpoint`` (None: untrained weights): engines cached
    next to the checkpoint (or in the cache directory), keyed by the checkpoint file's SHA-256 (or the weights')."""
    if checkpoint is None:
        return EngineOptions(
            TensorRTBuilder(), engine_cache_dir(None), weights_sha256(model), stem="untrained"
        )
    path = Path(checkpoint)
    return EngineOptions(TensorRTBuilder(), engine_cache_dir(path), file_sha256(path), stem=path.stem)
