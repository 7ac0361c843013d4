"""The Video Swin Transformer: presets, network, checkpoint loading and labels.

Public API: ``build_model(arch_or_config, num_classes)`` (untrained; ``build_untrained_model`` draws the weights
from a fixed seed) and
``load_model(checkpoint, arch="auto", num_classes=None)`` (weights from a file), both returning a model whose
forward maps a normalised float tensor (N, 3, T, H, W) to logits (N, classes).
``load_model_and_labels(config)`` loads what ``config.model`` names (checkpoint or untrained weights) with its
labels, as the daemon, ``check`` and ``classify`` use it.

The names are imported on first use (PEP 562): importing ``vstmon.model.presets``, ``labels`` or ``fetch`` (the
``weights`` command, the config's arch check) must not import torch, which takes seconds.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "UNTRAINED_SEED": "bundle",
    "LoadedModel": "bundle",
    "build_untrained_model": "bundle",
    "load_model_and_labels": "bundle",
    "load_checkpoint_state": "checkpoint",
    "load_model": "checkpoint",
    "load_labels": "labels",
    "PRESETS": "presets",
    "SwinConfig": "presets",
    "get_preset": "presets",
    "SwinTransformer3D": "swin3d",
    "VideoSwin": "swin3d",
    "build_model": "swin3d",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
