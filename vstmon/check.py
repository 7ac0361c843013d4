"""``vstmon check --config config.yaml``: validate the config, load the checkpoint and labels, print a summary.

Catches, without starting anything, what would stop the daemon: the schema (key paths, bounds, the arch
name, endpoint syntax and port ranges), devices that are not there (``cuda`` without CUDA), checkpoint and
labels files that cannot be read, and (unless ``--no-model``) a checkpoint or label list that does not fit.
Exit 0 when everything is usable; otherwise the errors, one line per key, and exit 78 (EX_CONFIG), raised
as ``VstmonError`` to the CLI. The summary shows the RESOLVED device and precision (``cpu, fp32``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vstmon.config import Config, load_config
from vstmon.errors import CheckpointError, ConfigError, LabelsError
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


def _file_problem(path: Path, what: str) -> str | None:
    """Why ``path`` cannot be read as a file, or None."""
    if not path.exists():
        return f"{path} does not exist{what}"
    if not path.is_file():
        return f"{path} is not a file"
    try:
        with path.open("rb") as file:
            file.read(1)
    except OSError as error:
        return f"{path} cannot be read: {error.strerror or error}"
    return None


def preflight(config: Config, source: str = "<config>") -> list[ResolvedDevice]:
    """Check what can be checked without starting: devices, precision, checkpoint and labels files.

    Returns the resolved devices and precisions; raises ConfigError with one line per problem
    (``SOURCE: model.device: ...``).
    """
    from vstmon.model.labels import PACKAGED_LABELS
    from vstmon.runner import resolve_devices, resolve_dtype

    problems: list[str] = []
    resolved: list[ResolvedDevice] = []
    model = config.model
    for device in resolve_devices(model.device):
        problem = _device_problem(device)
        if problem is not None:
            problems.append(f"{source}: model.device: {problem}")
            continue
        import torch

        if (
            model.precision == "bf16"
            and device.type == "cuda"
            and torch.cuda.get_device_capability(device) < (8, 0)
        ):
            problems.append(
                f"{source}: model.precision: {device} has no native bf16 (compute capability below 8.0); "
                "use fp16 or auto"
            )
            continue
        dtype = resolve_dtype(model.precision, device)
        resolved.append(
            ResolvedDevice(device, _DTYPE_NAMES.get(str(dtype).removeprefix("torch."), str(dtype)))
        )
    if model.checkpoint is not None:
        hint = " (download one with `vstmon weights fetch NAME`, or set model.checkpoint: null)"
        problem = _file_problem(Path(model.checkpoint), hint)
        if problem is not None:
            problems.append(f"{source}: model.checkpoint: {problem}")
    if model.labels not in PACKAGED_LABELS:
        hint = f" (and it is not a packaged list: {', '.join(PACKAGED_LABELS)})"
        problem = _file_problem(Path(model.labels), hint)
        if problem is not None:
            problems.append(f"{source}: model.labels: {problem}")
    detector = config.subjects.detector
    if detector is not None:
        hint = " (download it with `vstmon weights fetch ssdlite_mobilenet_v2_pedestrian`, or set it to null)"
        problem = _file_problem(Path(detector), hint)
        if problem is not None:
            problems.append(f"{source}: subjects.detector: {problem}")
        from vstmon.subjects.detector import detector_device

        problem = _device_problem(detector_device(config.subjects.device))
        if problem is not None:
            problems.append(f"{source}: subjects.device: {problem}")
    problems += _decode_problems(config, source)
    if problems:
        raise ConfigError("\n".join(problems))
    return resolved


def _decode_problems(config: Config, source: str) -> list[str]:
    """``decode: nvdec`` (global or per stream) on a machine or a source that cannot have it: one line for what
    the machine lacks per key that asked (``ingest.decode`` once, each ``streams[i].decode``), one per source
    that NVDEC cannot read."""
    from vstmon.config import stream_decode
    from vstmon.ingest.capture import CaptureError, parse_source
    from vstmon.ingest.decode import NVDEC_KINDS, probe_nvdec

    asking = [
        (index, stream)
        for index, stream in enumerate(config.streams)
        if stream_decode(config, stream) == "nvdec"
    ]
    if not asking:
        return []
    missing = probe_nvdec(config.ingest.gpu).missing
    lines: list[str] = []
    for index, stream in asking:
        key = f"streams[{index}].decode" if stream.decode else "ingest.decode"
        if missing:
            line = f"{source}: {key}: nvdec, but {'; '.join(missing)}"
            if line not in lines:
                lines.append(line)
        try:
            kind = parse_source(stream.url).kind
        except CaptureError:
            continue  # the source says what is wrong with its URL when it opens
        if kind not in NVDEC_KINDS:
            lines.append(
                f"{source}: {key}: nvdec, but stream {stream.name} is a {kind} source; NVDEC reads files and "
                "rtsp:// streams (set its decode: cpu or auto)"
            )
    return lines


def _describe_devices(devices: list[ResolvedDevice]) -> str:
    precisions = {d.precision for d in devices}
    if len(precisions) == 1:
        return f"{', '.join(str(d.device) for d in devices)}, precision {precisions.pop()}"
    return "; ".join(f"{d.device}, precision {d.precision}" for d in devices)


def _server_line(config: Config, classes: int) -> str:
    """``inference.backend: triton``: whether the server answers (the daemon starts either way)."""
    from vstmon.triton_runner import TritonRunner

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
    from vstmon.model.bundle import load_model_and_labels

    source = str(args.config)
    config = load_config(args.config)
    devices = preflight(config, source)
    lines = [f"config {source}: ok"]
    if not args.no_model:
        try:
            loaded = load_model_and_labels(config, warn=False)
        except CheckpointError as error:
            message = str(error).removeprefix("model.checkpoint: ")
            raise CheckpointError(f"{source}: model.checkpoint: {message}") from None
        except LabelsError as error:
            raise LabelsError(f"{source}: model.labels: {error}") from None
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
            from vstmon.subjects.detector import PersonDetector, detector_device

            detector = PersonDetector(
                Path(subjects.detector),
                subjects.score_threshold,
                subjects.person_class_id,
                device=detector_device(subjects.device),
            )
            what += f" ({detector.num_classes} class(es), {detector.input_size_px} px input, torch on {detector.device})"
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
