"""Peak memory of ``vstmon classify``: not growing with the video's length, and what a batch size costs.

Two measurements, each run in fresh child processes (peak RSS = ``ru_maxrss`` of the child):

1. growth (the default): two videos (tests/helpers/videos.py pattern, small resolution), each classified with a tiny
   untrained Video Swin (the model's size is irrelevant here: only growth matters); prints, per video, the
   peak RSS, the RSS sampled while it ran, clips, frames and wall time.
2. ``--batches 1,8``: one short video classified by the real ``vstmon classify`` command once per batch size,
   with the default model (``--model default``: untrained Swin-T, 32 x 224 x 224 clips, exactly what
   ``vstmon classify VIDEO`` runs without a config) or a tiny checkpoint (``--model tiny``); prints, per batch,
   the peak RSS of the whole process and the throughput (clips per second of classification, model load
   excluded) and the CPU time per clip (all threads; steadier than the rate on a shared machine). ``default`` in
   the list means no ``--batch`` flag (the per-device default).

    .venv/bin/python benchmarks/bench_classify_memory.py                  # growth: 30 s vs 30 min
    .venv/bin/python benchmarks/bench_classify_memory.py --long-s 600     # growth: 30 s vs 10 min
    .venv/bin/python benchmarks/bench_classify_memory.py --batches default,8            # Swin-T 32x224
    .venv/bin/python benchmarks/bench_classify_memory.py --batches 1,4,8 --model tiny --video-s 20
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_MIB = 1024 * 1024
_TINY = {"embed_dim": 16, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 2, 4), "num_classes": 400}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(video: Path, hop_s: float, batch: int) -> None:
    """Classify ``video`` in this process with the tiny model and print one JSON object of figures."""
    import cv2
    import torch

    from vstmon.config import parse_config
    from vstmon.model import LoadedModel, SwinConfig, build_untrained_model
    from vstmon.offline.classify import classify_file

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    model = build_untrained_model(SwinConfig(**_TINY))
    labels = [f"class {i}" for i in range(400)]
    samples: list[int] = []
    clips = 0
    rss_before = _rss_bytes()

    def write_line(_line: str) -> None:
        nonlocal clips
        clips += 1
        if clips % 100 == 1:
            samples.append(_rss_bytes())

    config = parse_config(
        {"clip": {"frames": 8, "frame_interval": 2, "size_px": 64, "hop_s": hop_s}}, require_streams=False
    )
    loaded = LoadedModel(model, labels, "tiny", untrained=True)
    result = classify_file(video, config, loaded, write_line, batch=batch)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "clips": result.clips,
                "frames": result.frames_read,
                "seconds": round(result.seconds, 1),
                "ring_bytes": result.ring_nbytes,
                "rss_before_run_bytes": rss_before,
                "rss_samples_bytes": samples,
                "peak_rss_bytes": peak_kib * 1024,
            }
        )
    )


def growth(args: argparse.Namespace) -> None:
    from tests.helpers.videos import make_video

    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for label, seconds in (("short", args.short_s), ("long", args.long_s)):
            n_frames = round(seconds * args.fps)
            path = folder / f"{label}_{n_frames}f_{width}x{height}.mp4"
            started = time.monotonic()
            if not path.exists():
                make_video(path, n_frames, args.fps, size=(width, height), codec="mp4v")
            made_s = time.monotonic() - started
            command = [sys.executable, __file__, "--child", str(path), "--hop-s", str(args.hop_s),
                       "--batch", str(args.batch)]  # fmt: skip
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            figures = json.loads(output.strip().splitlines()[-1])
            rows.append((label, seconds, made_s, figures))
    print(f"classify memory: tiny Video Swin (8 x 64 x 64 clips, hop {args.hop_s} s, batch {args.batch}), "
          f"{width}x{height} mp4v videos at {args.fps} fps, one fresh process each")  # fmt: skip
    print(f"{'video':>6} {'length':>9} {'frames':>7} {'clips':>6} {'run s':>7} {'ring KiB':>9} "
          f"{'peak RSS MiB':>13} {'RSS during run MiB (min..max)':>30}")  # fmt: skip
    for label, seconds, _made_s, f in rows:
        samples = f["rss_samples_bytes"] or [f["peak_rss_bytes"]]
        print(
            f"{label:>6} {seconds:>8.0f}s {f['frames']:>7} {f['clips']:>6} {f['seconds']:>7.1f} "
            f"{f['ring_bytes'] / 1024:>9.1f} {f['peak_rss_bytes'] / _MIB:>13.1f} "
            f"{min(samples) / _MIB:>14.1f} .. {max(samples) / _MIB:.1f}"
        )
    short, long = rows[0][3], rows[1][3]
    print(f"peak RSS long - short: {(long['peak_rss_bytes'] - short['peak_rss_bytes']) / _MIB:+.1f} MiB "
          f"for {long['frames'] / max(short['frames'], 1):.0f}x the frames")  # fmt: skip


def _classify_process(video: Path, config: Path, out: Path, batch: str) -> dict[str, float]:
    """Run ``vstmon classify`` once; its peak RSS, and clips and seconds from its ``classified`` log line."""
    command = [
        sys.executable,
        "-m",
        "vstmon",
        "classify",
        str(video),
        "--config",
        str(config),
        "--out",
        str(out),
    ]
    if batch != "default":
        command += ["--batch", batch]
    with tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        log = stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"vstmon classify --batch {batch} failed ({proc.returncode}):\n{log}")
    figures: dict[str, float] = {"peak_rss_bytes": usage.ru_maxrss * 1024}
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "classified":
            figures.update(
                clips=entry["clips"], seconds=entry["seconds"], cpu_s=entry["cpu_s"], batch=entry["batch"]
            )
    return figures


def batches(args: argparse.Namespace) -> None:
    import torch

    from tests.helpers.videos import make_video
    from vstmon.model import SwinConfig, build_untrained_model

    width, height = (int(v) for v in args.size.split("x"))
    if args.model == "default":
        frames, size_px, what = 32, 224, "untrained Swin-T (the default), 32 x 224 x 224 clips"
    else:
        frames, size_px, what = 8, 64, "tiny Video Swin checkpoint, 8 x 64 x 64 clips"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        video = make_video(
            folder / "video.mp4", round(args.video_s * args.fps), args.fps, size=(width, height)
        )
        checkpoint = "null"
        if args.model == "tiny":
            model = build_untrained_model(SwinConfig(**_TINY))
            torch.save({"state_dict": model.state_dict()}, folder / "tiny.pth")
            checkpoint = str(folder / "tiny.pth")
        config = folder / "config.yaml"
        config.write_text(
            f"model: {{checkpoint: {checkpoint}, device: cpu}}\n"
            f"clip: {{frames: {frames}, frame_interval: 2, size_px: {size_px}, hop_s: {args.hop_s}}}\n"
            f"inference: {{threads: {args.threads}}}\n"
            "log: {level: info, format: json}\n"
        )
        rows = [
            (b, _classify_process(video, config, folder / "out.jsonl", b)) for b in args.batches.split(",")
        ]
    print(f"vstmon classify on CPU, {what}, {args.threads} torch threads; {args.video_s:g} s {width}x{height} "
          f"video, hop {args.hop_s} s; one fresh process per batch size")  # fmt: skip
    print(f"{'--batch':>9} {'used':>5} {'clips':>6} {'run s':>7} {'clips/s':>8} {'CPU ms/clip':>12} "
          f"{'peak RSS MiB':>13}")  # fmt: skip
    for batch, f in rows:
        print(
            f"{batch:>9} {f['batch']:>5} {f['clips']:>6} {f['seconds']:>7.1f} "
            f"{f['clips'] / max(f['seconds'], 1e-9):>8.2f} {f['cpu_s'] / max(f['clips'], 1) * 1000:>12.1f} "
            f"{f['peak_rss_bytes'] / _MIB:>13.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short-s", type=float, default=30.0, help="growth: the short video's length")
    parser.add_argument("--long-s", type=float, default=1800.0, help="growth: the long video's length")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--size", default="160x120", help="WxH of the generated videos")
    parser.add_argument("--hop-s", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=1, help="growth: clips per forward pass")
    parser.add_argument(
        "--dir", type=Path, help="growth: where to keep the videos (default: a temporary folder)"
    )
    parser.add_argument("--batches", help="batch sizes to compare, e.g. default,8 (runs `vstmon classify`)")
    parser.add_argument("--model", choices=["default", "tiny"], default="default", help="with --batches")
    parser.add_argument("--video-s", type=float, default=4.0, help="with --batches: the video's length")
    parser.add_argument("--threads", type=int, default=2, help="with --batches: inference.threads")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.hop_s, args.batch)
    elif args.batches:
        batches(args)
    else:
        growth(args)


if __name__ == "__main__":
    main()
