"""The clip shape ``vstmon classify`` runs with, key by key (frames, frame interval, size): a flag's, else the
config file's own ``clip`` key, else the shape a ``vstmon train`` checkpoint records in its ``meta``, else the
default."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vstmon.config import ClipConfig, Config
from vstmon.errors import CheckpointError, VstmonError
from vstmon.log import get_logger
from vstmon.model.checkpoint import read_meta

__all__ = ["CLIP_FLAGS", "trained_clip", "with_clip_flags", "with_trained_clip"]

_log = get_logger("vstmon.offline.classify")
CLIP_FLAGS = {"frames": "frames", "frame_interval": "frame_interval", "size": "size_px"}  # flag -> clip key


def trained_clip(checkpoint: Path | None) -> dict[str, int]:
    """The clip shape (``frames``, ``frame_interval``, ``size_px``) that a ``vstmon train`` checkpoint records in
    its ``meta``; {} for a checkpoint that records none (the official ones) and for untrained weights."""
    if checkpoint is None:
        return {}
    recorded = read_meta(checkpoint).get("clip")
    if not isinstance(recorded, dict):
        return {}
    return {key: recorded[key] for key in ("frames", "frame_interval", "size_px") if key in recorded}


def _flag_of(key: str) -> str:
    """The ``classify`` flag that sets ``clip.<key>``."""
    return "--" + next((flag for flag, k in CLIP_FLAGS.items() if k == key), key).replace("_", "-")


def with_clip_flags(config: Config, args: argparse.Namespace) -> Config:
    """``config`` with ``--frames``, ``--frame-interval`` and ``--size`` put over its clip section (they then count
    as set: ``with_trained_clip`` leaves them alone). A bad value is a one-line error naming the flag."""
    flags = {key: getattr(args, flag) for flag, key in CLIP_FLAGS.items() if getattr(args, flag) is not None}
    if not flags:
        return config
    clip = _clip_with(config.clip, flags, _flag_of, VstmonError)
    return config.model_copy(update={"clip": clip})


def with_trained_clip(config: Config) -> Config:
    """``config`` with the clip shape its checkpoint was trained on (``trained_clip``) in every clip key that
    neither the config file nor a flag set; logged when it changes anything. (With ``inference.backend: triton``
    the server holds the model: its shape is the config's.)"""
    clip = config.clip
    checkpoint = config.model.checkpoint if config.inference.backend != "triton" else None
    trained = {k: v for k, v in trained_clip(checkpoint).items() if k not in clip.model_fields_set}
    if not trained:
        return config
    clip = _clip_with(clip, trained, lambda key: f"checkpoint {checkpoint}: meta.clip.{key}", CheckpointError)
    _log.info("clip shape as the checkpoint was trained", **{f"clip.{k}": v for k, v in trained.items()})
    return config.model_copy(update={"clip": clip})


def _clip_with(
    clip: ClipConfig, values: dict[str, Any], name: Callable[[str], str], error: type[VstmonError]
) -> ClipConfig:
    """``clip`` with ``values`` set, validated; the first problem as ``error`` naming its source (``name(key)``)."""
    try:
        return ClipConfig.model_validate(clip.model_dump(exclude_unset=True) | values)
    except ValidationError as problem:
        item = problem.errors(include_url=False)[0]
        key = str(item["loc"][0]) if item["loc"] else "clip"
        raise error(f"{name(key)}: {str(item['msg']).removeprefix('Value error, ')}") from None
