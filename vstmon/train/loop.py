"""The training loop: model set-up, optimiser and schedule, mixed precision, accumulation, checkpoints.

``Trainer`` owns one model on one device and steps it through epochs of micro-batches; it knows nothing of
files or flags (``vstmon.train.command`` wires it). Every optimiser step sees ``accumulate`` micro-batches and
their loss is the summed cross-entropy divided by the step's sample count, so ``accumulate`` K of ``batch`` B
gives the gradient of one batch of K x B (to float rounding). The learning rate is a pure function of the step
(linear warm-up from 0, then cosine to 0), and the dropout / stochastic-depth generator is re-seeded from
(seed, epoch) at the start of every epoch, so a run resumed from an epoch's ``last.pth`` continues exactly as the
uninterrupted run would have.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vstmon.errors import ConfigError
from vstmon.model import build_model
from vstmon.model.checkpoint import load_model
from vstmon.model.devices import resolve_dtype
from vstmon.model.normalize import normalize_clips
from vstmon.model.presets import PRESETS, SwinConfig, get_preset
from vstmon.model.swin3d import DropPath, I3DHead, VideoSwin
from vstmon.train.config import TrainConfig

__all__ = [
    "EpochResult",
    "Trainer",
    "build_training_model",
    "lr_factor",
    "param_groups",
    "predict",
    "resolve_precision",
    "set_grad_checkpointing",
    "training_device",
]

_NO_DECAY = ("relative_position_bias_table", "norm")  # official: no weight decay on these (decay_mult 0)
WARMUP_CAP = 0.25  # warm-up never takes more than this share of the run


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """Autocast dtype for training: ``auto`` is bf16 on GPUs with native bf16 (compute capability 8+), fp16
    (with loss scaling) on older GPUs, fp32 on CPU."""
    return resolve_dtype(precision, device)


def _shape(cfg: TrainConfig) -> SwinConfig:
    preset = get_preset(cfg.preset)
    return preset.with_(**cfg.model.changes()) if cfg.model is not None else preset


def set_drop_path(model: VideoSwin, rate: float) -> None:
    """Stochastic depth rising linearly from 0 to ``rate`` over the blocks (the official rule)."""
    paths = [m for m in model.modules() if isinstance(m, DropPath)]
    for drop, p in zip(paths, np.linspace(0, rate, len(paths)).tolist(), strict=True):
        drop.drop_prob = float(p)


def set_grad_checkpointing(model: VideoSwin, enabled: bool) -> None:
    """Recompute each block's activations in the backward pass instead of keeping them (training only)."""
    for layer in model.backbone.layers:
        layer.use_checkpoint = enabled


def _frozen_modules(model: VideoSwin, frozen_stages: int) -> list[nn.Module]:
    if frozen_stages < 0:
        return []
    return [model.backbone.patch_embed, *list(model.backbone.layers)[:frozen_stages]]


def _preset_drop_path(shape: SwinConfig) -> float:
    """The official stochastic-depth rate of the preset with this width and depth (0.1 when none matches)."""
    for preset in PRESETS.values():
        if (preset.embed_dim, preset.depths) == (shape.embed_dim, shape.depths):
            return preset.drop_path_rate
    return 0.1


def build_training_model(cfg: TrainConfig, num_classes: int) -> VideoSwin:
    """The model to train: the checkpoint's backbone (head replaced, ``num_classes`` outputs) or, without a
    checkpoint, fresh weights (seeded by ``cfg.seed``) of the preset with ``cfg.model``'s changes."""
    torch.manual_seed(cfg.seed)
    if cfg.checkpoint is not None:
        arch: str | SwinConfig = cfg.arch if cfg.model is None else _shape(cfg)
        model = load_model(cfg.checkpoint, arch)
        model.cls_head = I3DHead(model.cls_head.fc_cls.in_features, num_classes, cfg.head_dropout)
        preset_rate = _preset_drop_path(model.config)
    else:
        shape = _shape(cfg)
        model = build_model(shape.with_(head_dropout=cfg.head_dropout), num_classes)
        preset_rate = shape.drop_path_rate
    set_drop_path(model, preset_rate if cfg.drop_path is None else cfg.drop_path)
    for module in _frozen_modules(model, cfg.frozen_stages):
        for parameter in module.parameters():
            parameter.requires_grad_(False)
    return model


def param_groups(model: VideoSwin, lr: float, backbone_lr_mult: float, weight_decay: float) -> list[dict]:
    """AdamW groups: (backbone | head) x (decay | no decay); frozen parameters are left out."""
    groups: dict[tuple[bool, bool], list[Tensor]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        key = (name.startswith("backbone."), any(part in name for part in _NO_DECAY))
        groups.setdefault(key, []).append(parameter)
    return [
        {
            "params": params,
            "lr": lr * (backbone_lr_mult if backbone else 1.0),
            "initial_lr": lr * (backbone_lr_mult if backbone else 1.0),
            "weight_decay": 0.0 if no_decay else weight_decay,
        }
        for (backbone, no_decay), params in sorted(groups.items())
    ]


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Share of the peak learning rate at optimiser step ``step`` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    rest = max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / rest)))


def warmup_steps(warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    return min(round(warmup_epochs * steps_per_epoch), int(total_steps * WARMUP_CAP))


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager[object]:
    """The forward pass's mixed precision (nothing for fp32)."""
    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def predict(
    model: nn.Module, views: Iterable[tuple[Tensor, Tensor]], device: torch.device, dtype: torch.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities averaged over each video's views, and the true labels.

    ``views``: batches of uint8 (B, V, T, S, S, 3) clips and labels (B,); the model should be in eval mode.
    """
    probs, truth = [], []
    for clips, labels in views:
        b, v = clips.shape[:2]
        x = normalize_clips(clips.flatten(0, 1).to(device, non_blocking=True))
        with autocast(device, dtype):
            logits = model(x)
        probs.append(logits.float().softmax(-1).view(b, v, -1).mean(1).cpu().numpy())
        truth.append(labels.numpy())
    return np.concatenate(probs), np.concatenate(truth)


def training_device(spec: str) -> torch.device:
    """``auto`` -> cuda:0 when there is one, else cpu; a CUDA device that is not here is a ConfigError."""
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device("cuda:0" if spec == "cuda" else spec)
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        raise ConfigError(
            f"device {spec}: no such CUDA device here (CUDA available: {torch.cuda.is_available()})"
        )
    return device


@dataclass
class EpochResult:
    loss: float
    top1: float
    samples: int
    lr: float


def _groups(
    batches: Iterable[tuple[Tensor, Tensor]], accumulate: int
) -> Iterator[list[tuple[Tensor, Tensor]]]:
    group: list[tuple[Tensor, Tensor]] = []
    for item in batches:
        group.append(item)
        if len(group) == accumulate:
            yield group
            group = []
    if group:
        yield group


class Trainer:
    """Steps ``model`` on ``device`` with AdamW; ``dtype`` below fp32 runs the forward pass under autocast
    (fp16 with a ``GradScaler``)."""

    def __init__(
        self,
        model: VideoSwin,
        cfg: TrainConfig,
        device: torch.device,
        dtype: torch.dtype,
        steps_per_epoch: int,
        grad_checkpointing: bool,
    ) -> None:
        self.model = model.to(device)
        self.cfg = cfg
        self.device = device
        self.dtype = dtype
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = steps_per_epoch * cfg.epochs
        self.warmup_steps = warmup_steps(cfg.warmup_epochs, steps_per_epoch, self.total_steps)
        set_grad_checkpointing(model, grad_checkpointing)
        self.frozen = _frozen_modules(model, cfg.frozen_stages)
        # a pretrained backbone moves slower than the new head; weights from scratch all learn at lr
        backbone_mult = cfg.backbone_lr_mult if cfg.checkpoint is not None else 1.0
        self.optimizer = torch.optim.AdamW(
            param_groups(model, cfg.lr, backbone_mult, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999)
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.step = 0  # optimiser steps taken

    def autocast(self) -> AbstractContextManager[object]:
        return autocast(self.device, self.dtype)

    def _set_lr(self) -> float:
        factor = lr_factor(self.step, self.total_steps, self.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return max(group["lr"] for group in self.optimizer.param_groups)  # the head's

    def train_mode(self) -> None:
        self.model.train()
        for module in self.frozen:  # frozen stages keep eval behaviour (no dropout, no drop path)
            module.eval()

    def train_epoch(
        self,
        batches: Iterable[tuple[Tensor, Tensor]],
        epoch: int,
        on_step: Callable[[int, float], None] | None = None,
    ) -> EpochResult:
        """One pass over ``batches`` (uint8 (B, T, S, S, 3) clips, labels), ``accumulate`` per step."""
        torch.manual_seed(int(np.random.default_rng([self.cfg.seed, epoch, 2**32]).integers(2**62)))
        self.train_mode()
        loss_sum, correct, samples, lr = 0.0, 0, 0, 0.0
        for group in _groups(batches, self.cfg.accumulate):
            group_samples = sum(len(labels) for _, labels in group)
            lr = self._set_lr()
            self.optimizer.zero_grad(set_to_none=True)
            for clips, labels in group:
                labels = labels.to(self.device, non_blocking=True)
                x = normalize_clips(clips.to(self.device, non_blocking=True))
                with self.autocast():
                    logits = self.model(x)
                loss = F.cross_entropy(logits.float(), labels, reduction="sum")
                self.scaler.scale(loss / group_samples).backward()
                loss_sum += loss.item()
                correct += int((logits.argmax(1) == labels).sum())
                samples += len(labels)
                if on_step is not None:
                    on_step(len(labels), loss.item() / len(labels))  # clips done, their mean loss
            if self.cfg.clip_grad_norm is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step += 1
        return EpochResult(loss_sum / max(1, samples), correct / max(1, samples), samples, lr)

    def predict(self, views: Iterable[tuple[Tensor, Tensor]]) -> tuple[np.ndarray, np.ndarray]:
        self.model.eval()
        return predict(self.model, views, self.device, self.dtype)

    # -- state for resuming ------------------------------------------------------------------------------
    def state(self) -> dict[str, object]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
        }

    def load_state(self, state: dict[str, object]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])  # type: ignore[arg-type]
        self.step = int(state["step"])  # type: ignore[arg-type]
