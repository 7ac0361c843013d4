"""Class-name lists: the packaged Kinetics-400 and Something-Something v2 lists, or a custom file.

A list is one name per line, UTF-8, in the order of the classifier head's outputs.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from vstmon.errors import LabelsError

__all__ = ["PACKAGED_LABELS", "load_labels", "parse_labels"]

# spec -> file under vstmon/model/labels/ (package data)
PACKAGED_LABELS: dict[str, str] = {
    "kinetics400": "kinetics400.txt",
    "sthv2": "sthv2.txt",
}


def parse_labels(text: str, source: str) -> list[str]:
    """Names from ``text`` (one per line); blank lines and duplicates are errors naming ``source`` and the line."""
    names: list[str] = []
    first_line: dict[str, int] = {}
    problems: list[str] = []
    lines = text.splitlines()
    for number, raw in enumerate(lines, start=1):
        name = raw.strip()
        if not name:
            problems.append(f"line {number} is blank")
            continue
        if name in first_line:
            problems.append(f"line {number}: {name!r} repeats line {first_line[name]}")
            continue
        first_line[name] = number
        names.append(name)
    if problems:
        shown = problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else [])
        raise LabelsError(f"labels file {source}: " + "; ".join(shown) + " (one class name per line)")
    if not names:
        raise LabelsError(f"labels file {source} holds no class names (one class name per line)")
    return names


def _read_packaged(file_name: str) -> str:
    return resources.files("vstmon.model").joinpath("labels", file_name).read_text(encoding="utf-8")


def load_labels(spec: str | Path, num_classes: int | None = None) -> list[str]:
    """The class names for ``spec``: ``kinetics400``, ``sthv2`` (packaged) or a path to a UTF-8 file.

    When ``num_classes`` is given (the head's size), the list must have exactly that many names.
    """
    key = str(spec)
    if key in PACKAGED_LABELS:
        source = f"{key} (packaged)"
        names = parse_labels(_read_packaged(PACKAGED_LABELS[key]), source)
    else:
        path = Path(spec)
        if not path.is_file():
            raise LabelsError(
                f"labels {key!r}: not a packaged list ({', '.join(PACKAGED_LABELS)}) and no such file"
                + (" (it is a directory)" if path.is_dir() else "")
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise LabelsError(
                f"labels file {path} is not UTF-8 text (byte {error.start}: {error.reason})"
            ) from None
        except OSError as error:
            raise LabelsError(f"labels file {path} cannot be read: {error.strerror}") from None
        source = str(path)
        names = parse_labels(text.removeprefix("\ufeff"), source)
    if num_classes is not None and len(names) != num_classes:
        raise LabelsError(
            f"labels {source} has {len(names)} names but the model's head has {num_classes} classes; "
            "use the label list that matches the checkpoint"
        )
    return names
