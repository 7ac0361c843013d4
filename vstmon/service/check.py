"""``vstmon check --config config.yaml``: validate the config, load the checkpoint and labels, print a summary.

Catches, without starting anything, what would stop the daemon: the schema (key paths, bounds, the arch
name, endpoint syntax and port ranges), devices that are not there (``cuda`` without CUDA), checkpoint, labels,
detector and key files that cannot be read (``service/preflight.py``), and (unless ``--no-model``) a checkpoint
or label list that does not fit; and what the daemon would refuse at once without stopping: stream URLs with an
unsupported scheme or naming a file that does not exist (the daemon fails those streams and runs the others).
Exit 0 when everything is usable; otherwise the errors, one line per key, and exit 78 (EX_CONFIG), raised
as ``VstmonError`` to the CLI. The summary shows the RESOLVED device and precision (``cpu, fp32``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from vstmon.config import Config, load_config
from vstmon.errors import CheckpointError, LabelsError
from vstmon.log import redact_url
from vstmon.service.preflight import ResolvedDevice, preflight

if TYPE_CHECKING:
    pass

__all__ = ["add_arguments", "run"]

_DTYPE_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="the YAML config file to check")
    parser.add_argument(
        "--no-model", action="store_true", help="only validate the config and files, do not load the model"
    )


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
