"""What can be checked before anything starts, in one place: the devices and precision a config asks for, and
every file (or device path) it names. The schema does no I/O (``vstmon.config``); this is where the files are
looked at, for ``vstmon run`` (and each reload), ``check``, ``classify`` and ``serve``.

Each ``*_problems`` function returns ``FileProblem``s (a key path and what is wrong); ``raise_problems`` turns them
into one ConfigError, a line each, in the README's form ``config.yaml: model.checkpoint: ... (line 3)``:

- ``preflight``: the devices and precision, ``key_file_problems`` (the CURVE key files: readable, the right kind,
  a secret key other users cannot read), ``model_file_problems`` (checkpoint and label files),
  ``detector_problems``; for ``vstmon check`` also ``stream_url_problems`` (by the daemon's own rule,
  ``vstmon.ingest.urls.parse_source``: the daemon keeps running with such a stream failed, ``check`` says so);
- ``vstmon serve``: ``model_file_problems`` for serve.yaml's model section.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vstmon.config import Config, KeyLocations
from vstmon.config.base import LocatedModel
from vstmon.config.model import ModelConfig
from vstmon.config.publish import PublishConfig
from vstmon.config.streams import StreamConfig, stream_decode
from vstmon.config.subjects import SubjectsConfig
from vstmon.errors import ConfigError
from vstmon.ingest.urls import CaptureError, parse_source
from vstmon.model.labels import PACKAGED_LABELS
from vstmon.wire.keys import read_allowed_keys, read_secret_certificate

if TYPE_CHECKING:
    import torch

__all__ = [
    "FileProblem",
    "ResolvedDevice",
    "decode_problems",
    "detector_problems",
    "file_problem",
    "key_file_problems",
    "model_file_problems",
    "preflight",
    "raise_problems",
    "stream_url_problems",
]

_DTYPE_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class ResolvedDevice:
    """A device the config resolves to, and the precision the engine will run it at."""

    device: torch.device
    precision: str  # fp32 | fp16 | bf16


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


def _device_problem(device: torch.device) -> str | None:
    import torch

    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = "built without CUDA" if torch.version.cuda is None else "no CUDA device or driver found"
            return f"{device} was asked for, but torch sees no CUDA device ({built}); use cpu or auto"
        count = torch.cuda.device_count()
        index = 0 if device.index is None else device.index
        if index >= count:
            return f"{device} was asked for, but only {count} CUDA device(s) exist (cuda:0-cuda:{count - 1})"
    elif device.type == "mps" and not torch.backends.mps.is_available():
        return f"{device} was asked for, but this machine has no Apple MPS device; use cpu or auto"
    return None


def preflight(config: Config, source: str | None = None, *, streams: bool = False) -> list[ResolvedDevice]:
    """Check what can be checked without starting: devices, precision, and the files the config names
    (CURVE keys, checkpoint, labels, detector; with ``streams``, the stream URLs the daemon would refuse at once).

    Returns the resolved devices and precisions; raises ConfigError with one line per problem
    (``config.yaml: model.device: ... (line N)``; ``source`` names a config that was not read from a file).
    """
    from vstmon.model.devices import resolve_devices, resolve_dtype

    problems: list[FileProblem] = []
    resolved: list[ResolvedDevice] = []
    model = config.model
    for device in resolve_devices(model.device):
        problem = _device_problem(device)
        if problem is not None:
            problems.append(FileProblem("model.device", problem))
            continue
        import torch

        if (
            model.precision == "bf16"
            and device.type == "cuda"
            and torch.cuda.get_device_capability(device) < (8, 0)
        ):
            problems.append(
                FileProblem(
                    "model.precision",
                    f"{device} has no native bf16 (compute capability below 8.0); use fp16 or auto",
                )
            )
            continue
        dtype = resolve_dtype(model.precision, device)
        resolved.append(
            ResolvedDevice(device, _DTYPE_NAMES.get(str(dtype).removeprefix("torch."), str(dtype)))
        )
    problems += key_file_problems(config.publish)
    problems += model_file_problems(model) + detector_problems(config.subjects)
    if config.subjects.detector is not None:
        from vstmon.subjects.detector import detector_device

        problem = _device_problem(detector_device(config.subjects.device))
        if problem is not None:
            problems.append(FileProblem("subjects.device", problem))
    problems += decode_problems(config)
    if streams:
        problems += stream_url_problems(config.streams)
    if source is not None and source != config.source:
        config = config.model_copy()
        config.locate(KeyLocations(source))
    raise_problems(config, problems)
    return resolved


def decode_problems(config: Config) -> list[FileProblem]:
    """``decode: nvdec`` (global or per stream) on a machine or a source that cannot have it: what the machine
    lacks, once per key that asked (``ingest.decode`` once, each ``streams[i].decode``), and each source NVDEC
    cannot read."""
    from vstmon.ingest.decode import NVDEC_KINDS, probe_nvdec

    asking = [
        (index, stream)
        for index, stream in enumerate(config.streams)
        if stream_decode(config.ingest, stream) == "nvdec"
    ]
    if not asking:
        return []
    missing = probe_nvdec(config.ingest.gpu).missing
    problems: list[FileProblem] = []
    for index, stream in asking:
        key = f"streams[{index}].decode" if stream.decode else "ingest.decode"
        if missing:
            problem = FileProblem(key, f"nvdec, but {'; '.join(missing)}")
            if problem not in problems:
                problems.append(problem)
        try:
            kind = parse_source(stream.url).kind
        except CaptureError:
            continue  # the source says what is wrong with its URL when it opens
        if kind not in NVDEC_KINDS:
            problems.append(
                FileProblem(
                    key,
                    f"nvdec, but stream {stream.name} is a {kind} source; NVDEC reads files and rtsp:// "
                    "streams (set its decode: cpu or auto)",
                )
            )
    return problems
