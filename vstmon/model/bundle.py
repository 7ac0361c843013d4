"""The model as the daemon, ``check`` and ``classify`` use it: ``load_model_and_labels(config) -> LoadedModel``.

A checkpoint (strict load) or, for ``model.checkpoint: null``, untrained weights (``arch: auto`` means
``swin_t`` then), together with the label list sized to the model's head and the id published in labels.

Untrained weights are reproducible: they are drawn from torch's CPU generator seeded with ``UNTRAINED_SEED``
(0), inside ``torch.random.fork_rng`` so the caller's random state is left as it was. Two runs on the same
frames give the same (meaningless) labels. A bare-backbone checkpoint's new head is drawn the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vstmon.config import Config, ModelConfig
from vstmon.errors import CheckpointError
from vstmon.log import get_logger
from vstmon.model.checkpoint import load_model, read_meta
from vstmon.model.labels import load_labels
from vstmon.model.presets import SwinConfig
from vstmon.model.swin3d import VideoSwin, build_model

__all__ = ["UNTRAINED_SEED", "LoadedModel", "build_untrained_model", "load_model_and_labels"]

UNTRAINED_SEED = 0  # the seed of every untrained weight vstmon draws (stated in the README)

_log = get_logger("model")


@dataclass
class LoadedModel:
    """The model (eval mode, on CPU), its label list and the id published in ``label`` messages."""

    model: nn.Module
    labels: list[str]
    model_id: str
    untrained: bool


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Draw from torch's CPU generator seeded with ``seed``; the caller's random state is restored after."""
    with torch.random.fork_rng(devices=[]):  # models are built on the CPU: only its generator is used
        torch.random.default_generator.manual_seed(seed)  # not torch.manual_seed: it would reseed CUDA too
        yield


def build_untrained_model(
    arch: str | SwinConfig, num_classes: int | None = None, seed: int = UNTRAINED_SEED
) -> VideoSwin:
    """``build_model(arch, num_classes)`` with weights drawn from a generator seeded with ``seed``.

    The same arguments always give the same weights; the global random state is not touched.
    """
    with _seeded(seed):
        return build_model(arch, num_classes)


def load_model_and_labels(config: Config, warn: bool = True) -> LoadedModel:
    """Load ``config.model``: a checkpoint (strict) or, for ``checkpoint: null``, untrained weights (warned)."""
    mc = config.model
    if config.inference.backend == "triton":  # the server loads the model; here only the labels are needed
        labels = list(load_labels(mc.labels, mc.num_classes))
        return LoadedModel(None, labels, f"triton:{config.inference.triton.model}", False)  # type: ignore[arg-type]
    return load_model_section(mc, config, warn)


def load_model_section(mc: ModelConfig, config: Config | None = None, warn: bool = True) -> LoadedModel:
    """Load one ``model`` section (the daemon's, or ``vstmon serve``'s); ``config.clip`` (when given) is checked
    against the clip shape a ``vstmon train`` checkpoint records."""
    if mc.checkpoint is None:
        arch = "swin_t" if mc.arch == "auto" else mc.arch
        num_classes = mc.num_classes
        labels = list(load_labels(mc.labels, num_classes))
        model = build_untrained_model(arch, num_classes or len(labels))
        if warn:
            _log.warning(
                "model.checkpoint is null: running with UNTRAINED weights; every label is meaningless "
                "and carries untrained=true",
                arch=arch,
                seed=UNTRAINED_SEED,
            )
        return LoadedModel(model.eval(), labels, f"untrained:{arch}", True)
    path = Path(mc.checkpoint)
    if not path.is_file():
        raise CheckpointError(
            f"model.checkpoint: {path} does not exist. Download an official checkpoint with "
            "`vstmon weights fetch` (`vstmon weights list` shows the names), point model.checkpoint at it, "
            "or set model.checkpoint: null to run with untrained weights."
        )
    with _seeded(UNTRAINED_SEED):  # a bare backbone gets a new head: drawn reproducibly too
        model = load_model(path, arch=mc.arch, num_classes=mc.num_classes)
    num_classes = _num_classes(model)
    labels = list(load_labels(mc.labels, num_classes))
    model_id = str(getattr(model, "checkpoint_id", None) or path.name)
    if warn and config is not None:
        _warn_clip_mismatch(path, config)
    return LoadedModel(model.eval(), labels, model_id, False)


def _warn_clip_mismatch(path: Path, config: Config) -> None:
    """A checkpoint from ``vstmon train`` records the clip shape it learned on; a different one still runs but
    sees motion at another speed or scale, so say so (official checkpoints record nothing: no warning)."""
    trained = read_meta(path).get("clip")
    if not isinstance(trained, dict):
        return
    now = {
        "frames": config.clip.frames,
        "frame_interval": config.clip.frame_interval,
        "size_px": config.clip.size_px,
    }
    differs = {
        k: (trained.get(k), v) for k, v in now.items() if trained.get(k) is not None and trained.get(k) != v
    }
    if differs:
        _log.warning(
            "the checkpoint was trained on other clips than config.clip gives it; set clip.* as trained",
            checkpoint=str(path),
            **{f"clip.{k}": f"trained {a}, configured {b}" for k, (a, b) in differs.items()},
        )


def _num_classes(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    value = getattr(cfg, "num_classes", None)
    return int(value) if value else None
