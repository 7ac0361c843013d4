"""``vstmon train DATA_DIR --out OUT_DIR``: fine-tune (or train a small model from scratch) on labelled videos.

OUT_DIR receives, each written whole (through a temporary file) so an interrupted run never leaves a torn file:

- ``best.pth``: the official checkpoint layout (``state_dict`` with ``backbone.*`` / ``cls_head.fc_cls.*``, and
  ``meta``: classes, clip shape, epoch, validation top-1): ``vstmon classify --checkpoint`` and the daemon's
  ``model.checkpoint`` take it as it is;
- ``last.pth``: the same plus the optimiser and loss-scaler state, the step, the run's settings (``--resume``);
- ``labels.txt`` (one class per line, index order), ``split.json`` (which videos train and which validate),
  ``metrics.jsonl`` (one line per epoch), ``confusion.txt`` / ``confusion.png`` (validation at the best epoch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vstmon import __version__
from vstmon.config import load_yaml_model, validate_model
from vstmon.errors import VstmonError
from vstmon.model.checkpoint import describe_config
from vstmon.train.budget import few_steps_warning, fit_to_dataset, steps_per_epoch
from vstmon.train.clips import ClipSpec, EpochBatches, EvalClips, TrainClips, make_loader
from vstmon.train.config import TrainConfig
from vstmon.train.data import Video, load_dataset, report_skipped, stratified_split
from vstmon.train.loop import Trainer, build_training_model, resolve_precision, training_device
from vstmon.train.metrics import Scores, confusion_png, confusion_text, score

__all__ = ["add_arguments", "run", "train"]

# flag -> TrainConfig field (flags given on the command line override train.yaml)
_FLAGS = {
    "checkpoint": "checkpoint",
    "arch": "arch",
    "epochs": "epochs",
    "batch": "batch",
    "accumulate": "accumulate",
    "frames": "frames",
    "frame_interval": "frame_interval",
    "size": "size_px",
    "lr": "lr",
    "precision": "precision",
    "grad_checkpointing": "grad_checkpointing",
    "flip": "flip",
    "val_fraction": "val_fraction",
    "seed": "seed",
    "device": "device",
    "workers": "workers",
}


class ResumeError(VstmonError):
    """``--resume`` cannot continue the run in OUT_DIR as it stands."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data", type=Path, metavar="DATA_DIR", help="one folder per class, or a .csv/.jsonl list"
    )
    parser.add_argument("--out", type=Path, required=True, metavar="OUT_DIR", help="where the run is written")
    parser.add_argument("--config", type=Path, help="train.yaml with any TrainConfig setting (flags win)")
    parser.add_argument("--checkpoint", type=Path, help="weights to start from (the head is replaced)")
    parser.add_argument(
        "--arch",
        help="auto (default: from the checkpoint; swin_t without one) | swin_t | swin_s | swin_b | swin_l",
    )
    parser.add_argument("--epochs", type=int, help="passes over the data (default 30; more on small data)")
    parser.add_argument("--batch", type=int, help="clips per forward pass (default 2)")
    parser.add_argument(
        "--accumulate", type=int, help="forward passes per optimiser step (default 4; fewer on small data)"
    )
    parser.add_argument("--frames", type=int, help="frames per clip")
    parser.add_argument("--frame-interval", type=int, help="source frames between sampled frames")
    parser.add_argument("--size", type=int, help="crop size in pixels (a multiple of 32)")
    parser.add_argument("--lr", type=float, help="peak learning rate of the head (the backbone gets a tenth)")
    parser.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"))
    parser.add_argument(
        "--grad-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: on for CUDA",
    )
    parser.add_argument(
        "--flip", action=argparse.BooleanOptionalAction, default=None, help="random flips (default on)"
    )
    parser.add_argument("--val-fraction", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--workers", type=int, help="decoding processes (default: 4 on CUDA, 0 on CPU)")
    parser.add_argument("--resume", action="store_true", help="continue the run in OUT_DIR from its last.pth")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _settings(args: argparse.Namespace) -> TrainConfig:
    """train.yaml (validated on its own, so its errors carry its lines), then the flags over it, validated again."""
    base: dict[str, Any] = {}
    if args.config is not None:
        base = load_yaml_model(TrainConfig, args.config).model_dump(exclude_unset=True)
    for flag, field in _FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            base[field] = str(value) if isinstance(value, Path) else value
    return validate_model(TrainConfig, base, "train settings (train.yaml and flags)")


def _save(obj: object, path: Path) -> None:
    part = path.with_name(path.name + ".part")
    torch.save(obj, part)
    os.replace(part, path)


def _write_text(path: Path, text: str) -> None:
    part = path.with_name(path.name + ".part")
    part.write_text(text, encoding="utf-8")
    os.replace(part, path)


def _videos(items: list[dict[str, Any]]) -> list[Video]:
    return [
        Video(Path(v["path"]), int(v["label"]), int(v["first"]), int(v["frames"]), float(v["fps"]))
        for v in items
    ]


def _prepare_split(
    cfg: TrainConfig, data: Path, out: Path, resume: bool, say: Any
) -> tuple[list[str], list[Video], list[Video]]:
    split_file = out / "split.json"
    if resume:
        split = json.loads(split_file.read_text(encoding="utf-8"))
        return split["classes"], _videos(split["train"]), _videos(split["val"])
    dataset = load_dataset(data, min_per_class=cfg.min_videos_per_class)
    report_skipped(dataset.skipped, say)
    train, val = stratified_split(dataset.videos, cfg.val_fraction, cfg.seed)
    _write_text(
        split_file,
        json.dumps(
            {
                "classes": dataset.classes,
                "train": [v.as_json() for v in train],
                "val": [v.as_json() for v in val],
                "skipped": [[str(p), why] for p, why in dataset.skipped],
            },
            indent=1,
        ),
    )
    _write_text(out / "labels.txt", "".join(f"{c}\n" for c in dataset.classes))
    return dataset.classes, train, val


def _load_last(out: Path) -> dict[str, Any]:
    """The state in ``out/last.pth`` that ``--resume`` continues."""
    last = out / "last.pth"
    if not last.is_file() or not (out / "split.json").is_file():
        raise ResumeError(f"{out}: nothing to resume (no last.pth and split.json from an earlier run)")
    return torch.load(last, map_location="cpu", weights_only=True)


def _check_same_settings(cfg: TrainConfig, state: dict[str, Any], out: Path) -> None:
    """``--resume`` continues a run only with the settings it ran with (after adapting to the dataset)."""
    before = state["settings"]
    now = cfg.fingerprint()
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        detail = ", ".join(f"{k} ({before.get(k)!r} -> {now.get(k)!r})" for k in changed)
        raise ResumeError(f"{out}: --resume continues a run with the same settings; changed: {detail}")


def _meta(
    cfg: TrainConfig, classes: list[str], model: Any, epoch: int, val_top1: float | None
) -> dict[str, Any]:
    return {
        "trained_by": f"vstmon {__version__} train",
        "classes": list(classes),
        "arch": describe_config(model.config),
        "clip": {"frames": cfg.frames, "frame_interval": cfg.frame_interval, "size_px": cfg.size_px},
        "epoch": epoch,
        "val_top1": val_top1,
    }


def _progress(total: int, epoch: int, epochs: int, quiet: bool) -> Any:
    return tqdm(
        total=total,
        desc=f"epoch {epoch}/{epochs}",
        unit="clip",
        file=sys.stderr,
        disable=quiet or not sys.stderr.isatty(),
        dynamic_ncols=True,
        leave=False,
    )


def train(
    cfg: TrainConfig, data: Path, out: Path, *, resume: bool = False, quiet: bool = False
) -> dict[str, Any]:
    """Run (or continue) a training run; returns the last epoch's metrics line."""

    def say(line: str) -> None:
        print(line, flush=True)

    def warn(line: str) -> None:
        print(f"vstmon: warning: {line}", file=sys.stderr, flush=True)

    out.mkdir(parents=True, exist_ok=True)
    state = _load_last(out) if resume else None
    if not resume and (out / "last.pth").exists():
        raise ResumeError(
            f"{out} already holds a run (last.pth): add --resume to continue it, or choose another --out"
        )
    device = training_device(cfg.device)
    dtype = resolve_precision(cfg.precision, device)
    classes, train_videos, val_videos = _prepare_split(cfg, data, out, resume, say)
    cfg, notes = fit_to_dataset(cfg, len(train_videos))  # the defaults nobody set, sized to the data
    for note in notes:
        say(note)
    if state is not None:
        _check_same_settings(cfg, state, out)
    few_steps = few_steps_warning(cfg, len(train_videos))
    if few_steps is not None:
        warn(few_steps)
    spec = ClipSpec(cfg.frames, cfg.frame_interval, cfg.size_px)
    workers = (
        cfg.workers
        if cfg.workers is not None
        else (min(4, os.cpu_count() or 1) if device.type == "cuda" else 0)
    )
    batches = EpochBatches(len(train_videos), cfg.batch, cfg.seed)
    train_loader = make_loader(
        TrainClips(train_videos, spec, cfg.seed, cfg.flip, cfg.min_crop_area),
        workers,
        device,
        batch_sampler=batches,
    )
    val_loader = (
        make_loader(EvalClips(val_videos, spec), workers, device, batch_size=cfg.batch)
        if val_videos
        else None
    )

    model = build_training_model(cfg, len(classes))
    per_epoch = steps_per_epoch(len(train_videos), cfg.batch, cfg.accumulate)  # = len(batches) / accumulate
    checkpointing = cfg.grad_checkpointing if cfg.grad_checkpointing is not None else device.type == "cuda"
    trainer = Trainer(model, cfg, device, dtype, per_epoch, checkpointing)
    start, best, best_loss = 0, -1.0, float("inf")
    metrics_file = out / "metrics.jsonl"
    if state is not None:
        model.load_state_dict(state["state_dict"])
        trainer.load_state(state)
        start, best = int(state["epoch"]), float(state["best_top1"])
        best_loss = float(state.get("best_loss", float("inf")))
        kept = (
            [line for line in metrics_file.read_text().splitlines() if json.loads(line)["epoch"] <= start]
            if metrics_file.exists()
            else []
        )
        _write_text(metrics_file, "".join(f"{line}\n" for line in kept))
        say(f"resuming {out} after epoch {start} of {cfg.epochs}")
    elif metrics_file.exists():
        metrics_file.unlink()
    say(
        f"training {len(classes)} classes on {len(train_videos)} videos (validating on {len(val_videos)}), "
        f"{describe_config(model.config)}, {device} {str(dtype).removeprefix('torch.')}, "
        f"grad checkpointing {'on' if checkpointing else 'off'}, batch {cfg.batch} x {cfg.accumulate}, "
        f"{cfg.epochs} epochs of {per_epoch} optimiser steps, {workers} decoding worker(s)"
    )
    line: dict[str, Any] = {}
    for epoch in range(start + 1, cfg.epochs + 1):
        started = time.monotonic()
        batches.set_epoch(epoch)
        with _progress(len(train_videos), epoch, cfg.epochs, quiet) as bar:

            def on_step(clips: int, loss: float, bar: Any = bar) -> None:
                bar.update(clips)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

            result = trainer.train_epoch(train_loader, epoch, on_step)
        scores: Scores | None = None
        if val_loader is not None:
            scores = score(*trainer.predict(val_loader))
        top1 = scores.top1 if scores is not None else result.top1
        loss = scores.loss if scores is not None else result.loss
        # a few validation videos give few distinct top-1 values: among equals, the lower loss is better
        is_best = (top1, -loss) > (best, -best_loss)
        line = {
            "epoch": epoch,
            "train_loss": round(result.loss, 5),
            "train_top1": round(result.top1, 4),
            "val_top1": None if scores is None else round(scores.top1, 4),
            "val_top5": None if scores is None else round(scores.top5, 4),
            "val_loss": None if scores is None else round(scores.loss, 5),
            "lr": result.lr,
            "step": trainer.step,
            "time_s": round(time.monotonic() - started, 2),
            "best": is_best,
        }
        if is_best:
            best, best_loss = top1, loss
            _save(
                {
                    "state_dict": model.state_dict(),
                    "meta": _meta(cfg, classes, model, epoch, line["val_top1"]),
                },
                out / "best.pth",
            )
            if scores is not None:
                _write_text(out / "confusion.txt", confusion_text(scores, classes))
                confusion_png(
                    scores,
                    classes,
                    out / "confusion.png",
                    f"epoch {epoch}: top-1 {scores.top1:.1%} on {scores.videos} videos",
                )
        with metrics_file.open("a", encoding="utf-8") as file:
            file.write(json.dumps(line) + "\n")
        _save(
            {
                "state_dict": model.state_dict(),
                "meta": _meta(cfg, classes, model, epoch, line["val_top1"]),
                **trainer.state(),
                "epoch": epoch,
                "best_top1": best,
                "best_loss": best_loss,
                "settings": cfg.fingerprint(),
            },
            out / "last.pth",
        )
        val = "" if scores is None else f" | val top-1 {scores.top1:.1%} top-5 {scores.top5:.1%}"
        say(
            f"epoch {epoch}/{cfg.epochs}: train loss {result.loss:.4f} top-1 {result.top1:.1%}{val} | "
            f"lr {result.lr:.2e} | {line['time_s']:.1f} s{' | best' if is_best else ''}"
        )
    if (out / "confusion.txt").exists():
        say((out / "confusion.txt").read_text().rstrip())
    say(f"best.pth: epoch with val top-1 {best:.1%}; written to {out}")
    return line


def run(args: argparse.Namespace) -> int:
    train(_settings(args), args.data, args.out, resume=args.resume, quiet=args.quiet)
    return 0
