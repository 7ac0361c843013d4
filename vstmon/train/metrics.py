"""Classification metrics and their report: top-k accuracy, per-class accuracy, the confusion matrix as text
and as a PNG (drawn with OpenCV, already a dependency: no plotting library on the edge box)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = ["Scores", "confusion_png", "confusion_text", "score"]


@dataclass(frozen=True)
class Scores:
    top1: float
    top5: float
    per_class: list[float | None]  # accuracy per class (None: no video of that class)
    confusion: np.ndarray  # (classes, classes) counts, rows = true class, columns = predicted
    videos: int
    loss: float = float("nan")  # mean cross-entropy of the true class (ranks models of equal top-1)

    def as_json(self, classes: Sequence[str]) -> dict[str, object]:
        return {
            "videos": self.videos,
            "top1": self.top1,
            "top5": self.top5,
            "per_class": {c: a for c, a in zip(classes, self.per_class, strict=True)},
            "confusion": self.confusion.tolist(),
            "loss": self.loss,
        }


def score(probs: np.ndarray, truth: np.ndarray) -> Scores:
    """Scores of (N, classes) probabilities against N true class indices."""
    n, classes = probs.shape
    if n == 0:
        return Scores(float("nan"), float("nan"), [None] * classes, np.zeros((classes, classes), np.int64), 0)
    loss = float(np.mean(-np.log(np.clip(probs[np.arange(n), truth], 1e-12, None))))
    ranked = np.argsort(-probs, axis=1)
    top1 = float(np.mean(ranked[:, 0] == truth))
    top5 = float(np.mean([t in row[: min(5, classes)] for t, row in zip(truth, ranked, strict=True)]))
    confusion = np.zeros((classes, classes), np.int64)
    np.add.at(confusion, (truth, ranked[:, 0]), 1)
    rows = confusion.sum(1)
    per_class = [float(confusion[i, i] / rows[i]) if rows[i] else None for i in range(classes)]
    return Scores(top1, top5, per_class, confusion, n, loss)


def confusion_text(scores: Scores, classes: Sequence[str]) -> str:
    """A table a terminal shows: one row per true class, its counts per predicted class and its accuracy."""
    names = [c if len(c) <= 24 else c[:23] + "~" for c in classes]
    width = max(5, *(len(str(v)) for v in scores.confusion.flat))
    name_w = max(len(n) for n in names)
    header = " " * name_w + " | " + " ".join(f"{i:>{width}}" for i in range(len(names))) + " | accuracy"
    lines = [
        f"top-1 {scores.top1:.1%}  top-5 {scores.top5:.1%}  ({scores.videos} videos)",
        header,
        "-" * len(header),
    ]
    for i, name in enumerate(names):
        accuracy = scores.per_class[i]
        cells = " ".join(f"{v:>{width}}" for v in scores.confusion[i])
        lines.append(f"{name:>{name_w}} | {cells} | {'-' if accuracy is None else f'{accuracy:.1%}'}")
    lines.append("columns: predicted class " + ", ".join(f"{i}={n}" for i, n in enumerate(names)))
    return "\n".join(lines) + "\n"


def confusion_png(scores: Scores, classes: Sequence[str], path: Path, title: str = "") -> None:
    """The confusion matrix as an image: cells shaded by the row's share, counts written in them."""
    n = len(classes)
    cell = max(18, min(60, 900 // max(1, n)))
    names = [c if len(c) <= 28 else c[:27] + "~" for c in classes]
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.3, min(0.5, cell / 80))
    label_w = max(cv2.getTextSize(s, font, scale, 1)[0][0] for s in names) + 12
    top, bottom = 40, label_w
    width, height = label_w + n * cell + 20, top + n * cell + bottom
    image = np.full((height, width, 3), 255, np.uint8)
    rows = scores.confusion.sum(1, keepdims=True).clip(min=1)
    share = scores.confusion / rows
    for i in range(n):
        for j in range(n):
            y, x = top + i * cell, label_w + j * cell
            shade = int(255 * (1 - share[i, j]))
            colour = (255, shade, shade) if i != j else (shade, 255 - (255 - shade) // 3, shade)
            cv2.rectangle(image, (x, y), (x + cell - 1, y + cell - 1), colour, -1)
            cv2.rectangle(image, (x, y), (x + cell - 1, y + cell - 1), (200, 200, 200), 1)
            if scores.confusion[i, j]:
                text = str(scores.confusion[i, j])
                (tw, th), _ = cv2.getTextSize(text, font, scale, 1)
                ink = (255, 255, 255) if share[i, j] > 0.6 else (0, 0, 0)
                cv2.putText(
                    image,
                    text,
                    (x + (cell - tw) // 2, y + (cell + th) // 2),
                    font,
                    scale,
                    ink,
                    1,
                    cv2.LINE_AA,
                )
        (tw, th), _ = cv2.getTextSize(names[i], font, scale, 1)
        cv2.putText(
            image,
            names[i],
            (label_w - tw - 6, top + i * cell + (cell + th) // 2),
            font,
            scale,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    image[top + n * cell : top + n * cell + bottom, label_w : label_w + n * cell] = _upright_columns(
        names, cell, bottom, font, scale
    )
    heading = title or f"true class (rows) x predicted class (columns); top-1 {scores.top1:.1%}"
    cv2.putText(image, heading, (10, 26), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"{path}: could not write the confusion matrix image")


def _upright_columns(names: Sequence[str], cell: int, height: int, font: int, scale: float) -> np.ndarray:
    """Column labels read bottom-up: each name written on its side under its column."""
    strip = np.full((cell * len(names), height, 3), 255, np.uint8)  # names as rows, ending at the right edge
    for j, name in enumerate(names):
        (tw, th), _ = cv2.getTextSize(name, font, scale, 1)
        cv2.putText(
            strip,
            name,
            (height - tw - 6, j * cell + (cell + th) // 2),
            font,
            scale,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)  # first row -> left column, text ends at the top
