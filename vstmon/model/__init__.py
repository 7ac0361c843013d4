"""The Video Swin Transformer: presets, network, checkpoint loading and labels.

Public API: ``build_model(arch_or_config, num_classes)`` (untrained; ``build_untrained_model`` draws the weights
from a fixed seed) and
``load_model(checkpoint, arch="auto", num_classes=None)`` (weights from a file), both returning a model whose
forward maps a normalised float tensor (N, 3, T, H, W) to logits (N, classes).
``load_model_and_labels(config)`` loads what ``config.model`` names (checkpoint or untrained weights) with its
labels, as the daemon, ``check`` and ``classify`` use it.
"""

from vstmon.model.bundle import UNTRAINED_SEED, LoadedModel, build_untrained_model, load_model_and_labels
from vstmon.model.checkpoint import load_checkpoint_state, load_model
from vstmon.model.labels import load_labels
from vstmon.model.presets import PRESETS, SwinConfig, get_preset
from vstmon.model.swin3d import SwinTransformer3D, VideoSwin, build_model

__all__ = [
    "PRESETS",
    "UNTRAINED_SEED",
    "LoadedModel",
    "SwinConfig",
    "SwinTransformer3D",
    "VideoSwin",
    "build_model",
    "build_untrained_model",
    "get_preset",
    "load_checkpoint_state",
    "load_labels",
    "load_model",
    "load_model_and_labels",
]
