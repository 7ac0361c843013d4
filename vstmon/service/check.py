"""``vstmon check --config config.yaml``: validate the config, load the checkpoint and labels, print a summary.

Catches, without starting anything, what would stop the daemon: the schema (key paths, bounds, the arch
name, endpoint syntax and port ranges), devices that are not there (``cuda`` without CUDA), checkpoint, labels,
detector and key files that cannot be read (``vstmon.config.files``), and (unless ``--no-model``) a checkpoint
or label list that does not fit; and what the daemon would refuse at once without stopping: stream URLs with an
unsupported scheme or naming a file that does not exist (the daemon fails those streams and runs the others).
Exit 0 when everything is usable; otherwise the errors, one line per key, and exit 78 (EX_CONFIG), raised
as ``VstmonError`` to the CLI. The summary shows the RESOLVED device and precision (``cpu, fp32``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vstmon.config import Config, KeyLocations, load_config
from vstmon.config.files import (
    FileProblem,
    detector_problems,
    model_file_problems,
    raise_problems,
    stream_url_problems,
)
from vstmon.errors import CheckpointError, DetectorError, LabelsError
from vstmon.log import redact_url

if TYPE_CHECKING:
    import torch

__all__ = ["ResolvedDevice", "add_arguments", "preflight", "run"]

_DTYPE_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class ResolvedDevice:
    """A device the config resolves to, and the precision the engine will run it at."""

    device: torch.device
    precision: str  # fp32 | fp16 | bf16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="the YAML config file to check")
    parser.add_argument(
        "--no-model", action="store_true", help="only validate the config and files, do not load the model"
    )


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
    (checkpoint, labels, detector; with ``streams``, the stream URLs the daemon would refuse at once).

    Returns the resolved devices and precisions; raises ConfigError with one line per problem
    (``config.yaml: model.device: ... (line N)``; ``source`` names a config that was not read from a file).
    """
    from vstmon.inference.runner import resolve_devices, resolve_dtype

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
    problems += model_file_problems(model) + detector_problems(config.subjects)
    if streams:
        problems += stream_url_problems(config.streams)
    if source is not None and source != config.source:
        config = config.model_copy()
        config.locate(KeyLocations(source))
    raise_problems(config, problems)
    return resolved


def _describe_devices(devices: list[ResolvedDevice]) -> str:
    precisions = {d.precision for d in devices}
    if len(precisions) == 1:
        return f"{', '.join(str(d.device) for d in devices)}, precision {precisions.pop()}"
    return "; ".join(f"{d.device}, precision {d.precision}" for d in devices)


def _server_line(config: Config, classes: int) -> str:
    """``inference.backend: triton``: whether the server answers (the daemon starts either way)."""
    from vstmon.inference.triton import TritonRunner

    clip = config.clip
    runner = TritonRunner(config.inference.triton, 1, (clip.frames, clip.size_px, clip.size_px, 3))
    try:
        runner.warm_up()
    finally:
        runner.close()
    where = f"inference: Triton server {config.inference.triton.url}, model {config.inference.triton.model}"
    if not runner.up:
        return f"{where}: NOT answering ({runner.last_error}); the daemon starts anyway and retries"
    return f"{where}: answers, model id {runner.model_id} ({classes} labels here)"


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    devices = preflight(config, streams=True)
    lines = [f"config {config.source}: ok"]
    if not args.no_model:
        from vstmon.model.bundle import load_model_and_labels  # torch: only once the config is good

        try:
            loaded = load_model_and_labels(config, warn=False)
        except CheckpointError as error:
            message = str(error).removeprefix("model.checkpoint: ")
            raise config.config_error("model.checkpoint", message, CheckpointError) from None
        except LabelsError as error:
            raise config.config_error("model.labels", str(error), LabelsError) from None
        if loaded.model is None:  # inference.backend: triton
            lines.append(_server_line(config, len(loaded.labels)))
        else:
            params = sum(p.numel() for p in loaded.model.parameters())
            lines.append(
                f"model: {loaded.model_id} ({params / 1e6:.1f} M parameters, {len(loaded.labels)} classes"
                + (", UNTRAINED weights" if loaded.untrained else "")
                + ")"
            )
    subjects = config.subjects
    if subjects.detector is None:
        lines.append("subjects: off (subjects.detector is null)")
    else:
        what = str(subjects.detector)
        if not args.no_model:
            from vstmon.subjects.detector import PersonDetector

            try:
                detector = PersonDetector(
                    Path(subjects.detector), subjects.score_threshold, subjects.person_class_id
                )
            except DetectorError as error:
                raise config.config_error("subjects.detector", str(error), DetectorError) from None
            what += f" ({detector.num_classes} class(es), {detector.input_size_px} px input)"
        streams_on = sum(stream.subjects for stream in config.streams)
        lines.append(
            f"subjects: {what}; {subjects.detect_fps:g} detections/s on {streams_on} stream(s), "
            f"subject = {subjects.select}"
        )
    clip = config.clip
    sampling = f"sample_fps {clip.sample_fps}" if clip.sample_fps else f"every {clip.frame_interval} frame(s)"
    lines.append(f"device: {_describe_devices(devices)}")
    lines.append(f"clips: {clip.frames} frames at {clip.size_px} px, {sampling}, a clip every {clip.hop_s} s")
    lines.append(f"streams ({len(config.streams)}):")
    for stream in config.streams:
        lines.append(f"  {stream.name}: {redact_url(stream.url)}")
    lines.append(
        f"publish: {', '.join(config.publish.endpoints)}; control: {config.publish.control or 'off'}"
    )
    print("\n".join(lines))
    return 0
