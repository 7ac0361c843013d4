"""How many optimiser steps a run makes, and the defaults that adapt so a small dataset gets enough of them.

A run makes ``ceil(ceil(videos / batch) / accumulate) x epochs`` optimiser steps. The defaults (batch 2 x
accumulate 4, 30 epochs) suit hundreds of videos; on a few dozen they make a few dozen steps, far too few to
learn anything: a two-class motion task measured in issue 18 stayed at chance after 24 steps and needed roughly
150-300 (at lr 3e-4 to 1e-3). So, before training, ``fit_to_dataset`` adapts what nobody set (a key missing from
both train.yaml and the flags; ``TrainConfig.is_set``):

- ``accumulate`` falls to the largest value (at most the default) that reaches ``TARGET_STEPS`` in the run's
  epochs, down to 1 (plain steps of ``batch`` clips);
- if that is still short, ``epochs`` rises until the run makes ``TARGET_STEPS``.

What the user set always stands; a run that then makes fewer than ``MIN_STEPS`` steps gets a warning
(``few_steps_warning``) before it starts. ``batch`` is never changed: it is what fits in the device's memory.
"""

from __future__ import annotations

import math

from vstmon.train.config import TrainConfig

__all__ = [
    "MIN_STEPS",
    "TARGET_STEPS",
    "few_steps_warning",
    "fit_to_dataset",
    "optimiser_steps",
    "steps_per_epoch",
]

TARGET_STEPS = 250  # what the adapted defaults aim for (a small task learns in ~150-300 steps)
MIN_STEPS = 200  # fewer than this is warned about before training


def steps_per_epoch(videos: int, batch: int, accumulate: int) -> int:
    """Optimiser steps of one epoch over ``videos`` clips: ``batch`` per forward pass, ``accumulate`` per step."""
    return math.ceil(math.ceil(videos / batch) / accumulate)


def optimiser_steps(videos: int, batch: int, accumulate: int, epochs: int) -> int:
    """Optimiser steps of a whole run."""
    return steps_per_epoch(videos, batch, accumulate) * epochs


def fit_to_dataset(cfg: TrainConfig, videos: int) -> tuple[TrainConfig, list[str]]:
    """``cfg`` with ``accumulate`` and ``epochs`` adapted to ``videos`` training videos where nobody set them
    (module docstring), and one line per change saying what changed and why (empty when nothing did)."""
    changes: dict[str, int] = {}
    accumulate, epochs = cfg.accumulate, cfg.epochs
    if not cfg.is_set("accumulate"):
        while accumulate > 1 and optimiser_steps(videos, cfg.batch, accumulate, epochs) < TARGET_STEPS:
            accumulate -= 1
    if not cfg.is_set("epochs"):
        per_epoch = steps_per_epoch(videos, cfg.batch, accumulate)
        epochs = max(epochs, math.ceil(TARGET_STEPS / per_epoch))
    if accumulate != cfg.accumulate:
        changes["accumulate"] = accumulate
    if epochs != cfg.epochs:
        changes["epochs"] = epochs
    if not changes:
        return cfg, []
    steps = optimiser_steps(videos, cfg.batch, accumulate, epochs)
    detail = ", ".join(f"{key} {getattr(cfg, key)} -> {value}" for key, value in changes.items())
    note = (
        f"{videos} training videos: {detail} (defaults adapted to make {steps} optimiser steps; "
        f"set {' / '.join(f'--{key}' for key in changes)} to choose)"
    )
    return cfg.model_copy(update=changes), [note]


def few_steps_warning(cfg: TrainConfig, videos: int) -> str | None:
    """A warning for a run of fewer than ``MIN_STEPS`` optimiser steps, naming what would give more; else None."""
    steps = optimiser_steps(videos, cfg.batch, cfg.accumulate, cfg.epochs)
    if steps >= MIN_STEPS:
        return None
    return (
        f"only {steps} optimiser steps ({videos} training videos, batch {cfg.batch} x accumulate "
        f"{cfg.accumulate}, {cfg.epochs} epochs): a small dataset needs ~{MIN_STEPS}-300 to learn; "
        "raise --epochs or lower --accumulate/--batch"
    )
