"""Peak memory of ``vstmon classify`` on a short vs a long video: it must not grow with the video's length.

Generates two videos (tests/videos.py pattern, small resolution), then classifies each in a fresh child process
with a tiny untrained Video Swin (the model's size is irrelevant here: only growth matters) and prints, per video,
the peak RSS (``ru_maxrss``), the RSS sampled while it ran, clips, frames and wall time.

    .venv/bin/python benchmarks/bench_classify_memory.py                  # 30 s vs 30 min
    .venv/bin/python benchmarks/bench_classify_memory.py --long-s 600     # 30 s vs 10 min
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


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(video: Path, hop_s: float, batch: int) -> None:
    """Classify ``video`` in this process and print one JSON object of figures."""
    import cv2
    import torch

    from vstmon.classify import classify_video
    from vstmon.model import SwinConfig, build_model

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    torch.manual_seed(0)
    config = SwinConfig(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), num_classes=400)
    model = build_model(config)
    labels = [f"class {i}" for i in range(400)]
    samples: list[int] = []
    clips = 0
    rss_before = _rss_bytes()

    def write_line(_line: str) -> None:
        nonlocal clips
        clips += 1
        if clips % 100 == 1:
            samples.append(_rss_bytes())

    result = classify_video(
        video, model, labels, write_line, frames=8, frame_interval=2, size_px=64, hop_s=hop_s, batch=batch
    )
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short-s", type=float, default=30.0)
    parser.add_argument("--long-s", type=float, default=1800.0)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--size", default="160x120", help="WxH of the generated videos")
    parser.add_argument("--hop-s", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dir", type=Path, help="where to keep the videos (default: a temporary folder)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.hop_s, args.batch)
        return

    from tests.videos import make_video

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
    mib = 1024 * 1024
    print(f"classify memory: tiny Video Swin (8 x 64 x 64 clips, hop {args.hop_s} s, batch {args.batch}), "
          f"{width}x{height} mp4v videos at {args.fps} fps, one fresh process each")  # fmt: skip
    print(f"{'video':>6} {'length':>9} {'frames':>7} {'clips':>6} {'run s':>7} {'ring KiB':>9} "
          f"{'peak RSS MiB':>13} {'RSS during run MiB (min..max)':>30}")  # fmt: skip
    for label, seconds, _made_s, f in rows:
        samples = f["rss_samples_bytes"] or [f["peak_rss_bytes"]]
        print(
            f"{label:>6} {seconds:>8.0f}s {f['frames']:>7} {f['clips']:>6} {f['seconds']:>7.1f} "
            f"{f['ring_bytes'] / 1024:>9.1f} {f['peak_rss_bytes'] / mib:>13.1f} "
            f"{min(samples) / mib:>14.1f} .. {max(samples) / mib:.1f}"
        )
    short, long = rows[0][3], rows[1][3]
    print(f"peak RSS long - short: {(long['peak_rss_bytes'] - short['peak_rss_bytes']) / mib:+.1f} MiB "
          f"for {long['frames'] / max(short['frames'], 1):.0f}x the frames")  # fmt: skip


if __name__ == "__main__":
    main()
