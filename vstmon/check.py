"""``vstmon check --config config.yaml``: validate the config, load the checkpoint and labels, print a summary.

Exit 0 when everything loads; exit 2 with the clear error otherwise (raised as ``VstmonError`` to the CLI).
"""

from __future__ import annotations

import argparse

from vstmon.config import load_config
from vstmon.log import redact_url

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="the YAML config file to check")
    parser.add_argument(
        "--no-model", action="store_true", help="only validate the config, do not load the model"
    )


def run(args: argparse.Namespace) -> int:
    from vstmon.model.bundle import load_model_and_labels

    config = load_config(args.config)
    lines = [f"config {args.config}: ok"]
    if not args.no_model:
        loaded = load_model_and_labels(config, warn=False)
        params = sum(p.numel() for p in loaded.model.parameters())
        lines.append(
            f"model: {loaded.model_id} ({params / 1e6:.1f} M parameters, {len(loaded.labels)} classes"
            + (", UNTRAINED weights" if loaded.untrained else "")
            + ")"
        )
    devices = config.model.device if isinstance(config.model.device, list) else [config.model.device]
    clip = config.clip
    sampling = f"sample_fps {clip.sample_fps}" if clip.sample_fps else f"every {clip.frame_interval} frame(s)"
    lines.append(f"device: {', '.join(devices)}, precision {config.model.precision}")
    lines.append(f"clips: {clip.frames} frames at {clip.size_px} px, {sampling}, a clip every {clip.hop_s} s")
    lines.append(f"streams ({len(config.streams)}):")
    for stream in config.streams:
        lines.append(f"  {stream.name}: {redact_url(stream.url)}")
    lines.append(
        f"publish: {', '.join(config.publish.endpoints)}; control: {config.publish.control or 'off'}"
    )
    print("\n".join(lines))
    return 0
