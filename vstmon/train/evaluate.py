"""``vstmon eval DATA_DIR --checkpoint CKPT``: the official test protocol on labelled videos.

Each video is seen as ``--views CLIPSxCROPS`` views (clips evenly spread over the video, crops 1 = centre or
3 = the three-crop test), the softmax probabilities of its views are averaged, and the video's prediction is
their arg-max. Prints top-1 / top-5, the accuracy per class and the confusion matrix; ``--json`` writes them.
Frames, frame interval and crop size default to what ``vstmon train`` recorded in the checkpoint (``meta.clip``),
else to the official 32 x 2 at 224. Labels: ``--labels``, else ``labels.txt`` beside the checkpoint, else the
classes recorded in it; the data's class folders must be among them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from vstmon.errors import ConfigError
from vstmon.model.checkpoint import load_model, read_meta
from vstmon.model.labels import load_labels
from vstmon.train.clips import ClipSpec, EvalClips, make_loader
from vstmon.train.data import load_dataset, report_skipped
from vstmon.train.loop import predict, resolve_precision, training_device
from vstmon.train.metrics import confusion_png, confusion_text, score

__all__ = ["add_arguments", "parse_views", "run"]


def parse_views(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d{1,3})\s*[xX]\s*(\d)\s*", text)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) not in (1, 3):
        raise argparse.ArgumentTypeError(f"{text!r}: expected CLIPSxCROPS with CROPS 1 or 3, e.g. 4x3 or 1x1")
    return int(match.group(1)), int(match.group(2))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data", type=Path, metavar="DATA_DIR", help="one folder per class, or a .csv/.jsonl list"
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="e.g. OUT_DIR/best.pth")
    parser.add_argument("--labels", help="class names file (default: labels.txt beside the checkpoint)")
    parser.add_argument("--arch", default="auto", help="auto (from the checkpoint) or a preset name")
    parser.add_argument(
        "--views", type=parse_views, default=(4, 3), help="CLIPSxCROPS (default 4x3, official)"
    )
    parser.add_argument("--frames", type=int)
    parser.add_argument("--frame-interval", type=int)
    parser.add_argument("--size", type=int)
    parser.add_argument(
        "--batch", type=int, default=1, help="videos per forward pass (each has CLIPSxCROPS views)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default="auto")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes")
    parser.add_argument("--json", type=Path, help="write the scores (and each video's prediction) here")
    parser.add_argument("--confusion-png", type=Path, help="draw the confusion matrix into this PNG")


def _labels(args: argparse.Namespace, meta: dict[str, Any], classes: int) -> list[str]:
    if args.labels:
        return load_labels(args.labels, classes)
    beside = args.checkpoint.parent / "labels.txt"
    if beside.is_file():
        return load_labels(beside, classes)
    recorded = meta.get("classes")
    if isinstance(recorded, list) and len(recorded) == classes:
        return [str(c) for c in recorded]
    raise ConfigError(f"checkpoint {args.checkpoint}: no class names: give --labels (one class per line)")


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    meta = read_meta(args.checkpoint)
    clip = meta.get("clip") if isinstance(meta.get("clip"), dict) else {}
    spec = ClipSpec(
        args.frames or int(clip.get("frames", 32)),
        args.frame_interval or int(clip.get("frame_interval", 2)),
        args.size or int(clip.get("size_px", 224)),
    )
    model = load_model(args.checkpoint, args.arch)
    classes = _labels(args, meta, model.cls_head.fc_cls.out_features)
    dataset = load_dataset(args.data, classes=classes)
    report_skipped(dataset.skipped, lambda line: print(line, file=sys.stderr))
    device = training_device(args.device)
    dtype = resolve_precision(args.precision, device)
    clips, crops = args.views
    loader = make_loader(
        EvalClips(dataset.videos, spec, clips, crops), args.workers, device, batch_size=args.batch
    )
    probs, truth = predict(model.to(device).eval(), loader, device, dtype)
    scores = score(probs, truth)
    print(
        f"{len(dataset.videos)} videos, {clips}x{crops} views of {spec.frames}x{spec.frame_interval} frames at "
        f"{spec.size_px} px: top-1 {scores.top1:.1%}, top-5 {scores.top5:.1%}"
    )
    print(confusion_text(scores, classes).rstrip())
    report = {
        "checkpoint": str(args.checkpoint),
        "views": f"{clips}x{crops}",
        **scores.as_json(classes),
        "videos_detail": [
            {
                "path": str(v.path),
                "label": classes[v.label],
                "predicted": classes[int(p.argmax())],
                "score": float(p.max()),
            }
            for v, p in zip(dataset.videos, probs, strict=True)
        ],
        "skipped": [[str(p), why] for p, why in dataset.skipped],
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=1), encoding="utf-8")
    if args.confusion_png:
        confusion_png(scores, classes, args.confusion_png)
    return report


def run(args: argparse.Namespace) -> int:
    evaluate(args)  # no inference_mode around it: the model's parameters must stay ordinary tensors
    return 0
