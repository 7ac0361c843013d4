"""The model as the daemon, ``check`` and ``classify`` use it: ``load_model_and_labels(config) -> LoadedModel``.

A checkpoint (strict load) or, for ``model.checkpoint: null``, untrained weights (``arch: auto`` means
``swin_t`` then), together with the label list sized to the model's head and the id published in labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from vstmon.config import Config
from vstmon.errors import CheckpointError
from vstmon.log import get_logger
from vstmon.model.checkpoint import load_model
from vstmon.model.labels import load_labels
from vstmon.model.swin3d import build_model

__all__ = ["LoadedModel", "load_model_and_labels"]

_log = get_logger("model")


@dataclass
class LoadedModel:
    """The model (eval mode, on CPU), its label list and the id published in ``label`` messages."""

    model: nn.Module
    labels: list[str]
    model_id: str
    untrained: bool


def load_model_and_labels(config: Config, warn: bool = True) -> LoadedModel:
    """Load ``config.model``: a checkpoint (strict) or, for ``checkpoint: null``, untrained weights (warned)."""
    mc = config.model
    if mc.checkpoint is None:
        arch = "swin_t" if mc.arch == "auto" else mc.arch
        num_classes = mc.num_classes
        labels = list(load_labels(mc.labels, num_classes))
        model = build_model(arch, num_classes or len(labels))
        if warn:
            _log.warning(
                "model.checkpoint is null: running with UNTRAINED weights; every label is meaningless "
                "and label messages carry untrained=true",
                arch=arch,
            )
        return LoadedModel(model.eval(), labels, f"untrained:{arch}", True)
    path = Path(mc.checkpoint)
    if not path.is_file():
        raise CheckpointError(
            f"model.checkpoint: {path} does not exist. Download an official checkpoint with "
            "`vstmon weights fetch` (`vstmon weights list` shows the names), point model.checkpoint at it, "
            "or set model.checkpoint: null to run with untrained weights."
        )
    model = load_model(path, arch=mc.arch, num_classes=mc.num_classes)
    num_classes = _num_classes(model)
    labels = list(load_labels(mc.labels, num_classes))
    model_id = str(getattr(model, "checkpoint_id", None) or path.name)
    return LoadedModel(model.eval(), labels, model_id, False)


def _num_classes(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    value = getattr(cfg, "num_classes", None)
    return int(value) if value else None
