"""Every check of a file (or device path) that a config names, in one place; the schema itself does no I/O.

Each function returns ``FileProblem``s (a key path and what is wrong); ``raise_problems`` turns them into one
ConfigError, a line each, in the README's form ``config.yaml: model.checkpoint: ... (line 3)``. Who calls what:

- the loader (``load_config``): ``key_file_problems``, the CURVE key files (readable, the right kind, a secret
  key other users cannot read);
- ``preflight`` (``vstmon run``, ``check``, ``classify``, a reload): ``model_file_problems`` (checkpoint and
  label files) and ``detector_problems``; ``vstmon check`` also ``stream_url_problems`` (the daemon's own rule:
  ``vstmon.ingest.urls.parse_source``; the daemon keeps running with such a stream failed, ``check`` says so);
- ``vstmon serve``: ``model_file_problems`` for serve.yaml's model section.

This is the one module of the package that looks outside it: the readers of key files, URLs and packaged
label lists are imported on use (they import nothing of the config, and none of them imports torch or cv2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vstmon.config.base import LocatedModel
from vstmon.config.model import ModelConfig
from vstmon.config.publish import PublishConfig
from vstmon.config.streams import StreamConfig
from vstmon.config.subjects import SubjectsConfig
from vstmon.errors import ConfigError

__all__ = [
    "FileProblem",
    "detector_problems",
    "file_problem",
    "key_file_problems",
    "model_file_problems",
    "raise_problems",
    "stream_url_problems",
]


@dataclass(frozen=True)
class FileProblem:
    """What is wrong (``message``) with the file that the key ``key`` (``model.checkpoint``) names."""

    key: str
    message: str


def file_problem(path: Path, hint: str = "") -> str | None:
    """Why ``path`` cannot be read as a file, or None; ``hint`` follows "does not exist"."""
    if not path.exists():
        return f"{path} does not exist{hint}"
    if not path.is_file():
        return f"{path} is not a file"
    try:
        with path.open("rb") as file:
            file.read(1)
    except OSError as error:
        return f"{path} cannot be read: {error.strerror or error}"
    return None


def key_file_problems(publish: PublishConfig, prefix: str = "publish") -> list[FileProblem]:
    """The CURVE key files: the secret certificate and the directory of allowed client keys."""
    curve = publish.curve
    if curve.secret_key is None and curve.allowed_keys is None:
        return []
    from vstmon.wire.keys import read_allowed_keys, read_secret_certificate

    problems: list[FileProblem] = []
    for field, path, read in (
        ("secret_key", curve.secret_key, read_secret_certificate),
        ("allowed_keys", curve.allowed_keys, read_allowed_keys),
    ):
        if path is None:
            continue
        try:
            read(path)  # ValueError naming the file and the problem
        except ValueError as error:
            problems.append(FileProblem(f"{prefix}.curve.{field}", str(error)))
    return problems


def model_file_problems(model: ModelConfig, prefix: str = "model") -> list[FileProblem]:
    """The checkpoint file (when set) and the label file (when it is not a packaged list's name)."""
    from vstmon.model.labels import PACKAGED_LABELS

    problems: list[FileProblem] = []
    if model.checkpoint is not None:
        hint = (
            " (download one with `vstmon weights fetch NAME`; or set model.checkpoint: null, or run the daemon "
            "with --allow-untrained, for untrained weights whose labels mean nothing)"
        )
        problem = file_problem(Path(model.checkpoint), hint)
        if problem is not None:
            problems.append(FileProblem(f"{prefix}.checkpoint", problem))
    if model.labels not in PACKAGED_LABELS:
        hint = f" (and it is not a packaged list: {', '.join(PACKAGED_LABELS)})"
        problem = file_problem(Path(model.labels), hint)
        if problem is not None:
            problems.append(FileProblem(f"{prefix}.labels", problem))
    return problems


def detector_problems(subjects: SubjectsConfig, prefix: str = "subjects") -> list[FileProblem]:
    """The person detector's graph file (when subject tracking is on)."""
    if subjects.detector is None:
        return []
    hint = " (download it with `vstmon weights fetch ssdlite_mobilenet_v2_pedestrian`, or set it to null)"
    problem = file_problem(Path(subjects.detector), hint)
    return [] if problem is None else [FileProblem(f"{prefix}.detector", problem)]


def stream_url_problems(streams: Sequence[StreamConfig], prefix: str = "streams") -> list[FileProblem]:
    """Stream URLs the daemon refuses at once (an unsupported scheme, a file that does not exist), by the
    daemon's own rule; the messages show URLs redacted (no credentials)."""
    from vstmon.ingest.urls import CaptureError, parse_source

    problems: list[FileProblem] = []
    for index, stream in enumerate(streams):
        try:
            parse_source(stream.url)
        except CaptureError as error:
            problems.append(FileProblem(f"{prefix}[{index}].url", str(error)))
    return problems


def raise_problems(root: LocatedModel, problems: Sequence[FileProblem]) -> None:
    """One ConfigError naming the file, key and line of each problem (a line each); nothing when none."""
    if problems:
        raise ConfigError("\n".join(root.problem(p.key, p.message) for p in problems))
