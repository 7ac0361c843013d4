"""Many camera-paced streams on one box: every stream in the daemon's process (``workers.processes: 0``, the old
way) against worker processes (``auto``), in the same run. Prints one table (nothing asserted).

Each stream is an H.264 file (made here with ffmpeg: a moving test pattern, 25 fps, long enough not to loop during
the measurement) read at its own frame rate, as a camera delivers frames. An in-process ``Daemon`` runs them with
a small model; after a warm-up, for ``--seconds``:

- demand: the clips the hop asks for (streams / hop_s), and labels/s actually published (target: within 5 %);
- the engine: busy fraction (time in forward passes / wall), batches/s, mean batch, forward ms per batch, and
  how often clips were waiting while no batch ran (sampled every 10 ms; the batcher's own ``max_wait_ms`` wait
  counts in it);
- clip ready -> label published latency, p50 and p99 (target p99 < 1 s);
- CPU per stream: the daemon's and its worker processes' CPU time over the window, per stream;
- memory: RSS of the daemon and its workers, and the shared memory of the clip arrays (fixed per stream).

Example (the issue's acceptance on a 2-core machine)::

    python benchmarks/bench_streams.py --streams 8 --size 320x240
    python benchmarks/bench_streams.py --streams 16 --size 160x120
    python benchmarks/bench_streams.py --streams 1,4,8,16,32 --size 320x240 --seconds 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.proc_stats import cpu_s, family, rss_mib
from tests.helpers.videos import FFMPEG
from vstmon.config import parse_config
from vstmon.log import configure_logging
from vstmon.model import LoadedModel, build_model
from vstmon.model.presets import SwinConfig
from vstmon.service.daemon import Daemon

__all__ = ["camera_video", "main", "measure"]

_SMALL = SwinConfig(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=(8, 7, 7))


def camera_video(path: Path, seconds: float, size: str, people: Path | None = None) -> Path:
    """An H.264 25 fps file, ``size`` WxH, ``seconds`` long (what a camera's stream looks like to the decoder):
    a moving test pattern, or ``people`` (a video with people in it) looped and scaled."""
    width, height = size.split("x")
    source = (
        ["-stream_loop", "-1", "-i", str(people), "-vf", f"scale={width}:{height},fps=25"]
        if people is not None
        else ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25"]
    )
    subprocess.run(
        [FFMPEG, "-y", "-loglevel", "error", *source, "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast",
         "-pix_fmt", "yuv420p", "-g", "25", str(path)],
        check=True,
    )  # fmt: skip
    return path


def measure(daemon: Daemon, hop_s: float, warmup_s: float, seconds: float) -> dict[str, Any]:
    """Figures of a started daemon over ``seconds`` after ``warmup_s``: labels/s against the demand (clip
    streams / hop; in per-subject mode the people with a slot, sampled every 0.5 s), the
    engine's busy fraction, batches, forward time and waiting, latency p50/p99, CPU per stream and RSS (the
    daemon's process and its worker processes)."""
    assert daemon.pool is not None
    engine = daemon.pool.engines[0]
    names = daemon.host.names
    threading.Event().wait(warmup_s)  # let every stream reach its first clips
    pids = family()
    cpu0 = sum(cpu_s(p) for p in pids)
    labels0 = sum(daemon.host.snapshot(n).clips for n in names)
    busy0, batches0, clips0 = engine.busy_s, engine.batches, engine.clips
    lat0 = daemon.latency.percentiles_s()["count"]
    waiting = samples = 0
    clip_streams = []  # per 0.5 s: the streams' clip streams (per-subject mode: the people with a slot)
    stop = threading.Event()
    started = time.monotonic()
    while not stop.wait(0.01) and time.monotonic() - started < seconds:
        samples += 1
        waiting += engine.batcher.starving()
        if samples % 50 == 1:
            clip_streams.append(sum(_clip_streams(daemon.host.snapshot(n)) for n in names))
    wall_s = time.monotonic() - started
    used_s = sum(cpu_s(p) for p in pids) - cpu0
    rss = sum(rss_mib(p) for p in pids)
    snapshots = [daemon.host.snapshot(n) for n in names]
    published = sum(s.clips for s in snapshots) - labels0
    busy_s = engine.busy_s - busy0
    batches = engine.batches - batches0
    clips = engine.clips - clips0
    latency = daemon.latency.percentiles_s(since=lat0)
    return {
        "streams": len(names),
        "demand": statistics.mean(clip_streams) / hop_s,
        "labels_s": published / wall_s,
        "busy": busy_s / wall_s,
        "batches_s": batches / wall_s,
        "mean_batch": clips / batches if batches else 0.0,
        "forward_ms": 1000 * busy_s / batches if batches else 0.0,
        "waiting": waiting / max(1, samples),
        "p50_ms": 1000 * latency["p50"],
        "p99_ms": 1000 * latency["p99"],
        "latency_n": latency["count"] - lat0,
        "cpu_per_stream": used_s / wall_s / len(names),
        "rss_mib": rss,
        "frames_dropped": sum(s.frames_dropped for s in snapshots),  # since the start
    }


def _clip_streams(snapshot: Any) -> int:
    """The clip streams of one stream: itself, or in per-subject mode the people with a slot."""
    return 1 if snapshot.subjects is None else len(snapshot.subjects)


def _run(args: argparse.Namespace, streams: int, processes: int | str, video: Path) -> dict[str, Any]:
    model = build_model(_SMALL, 400).eval()
    labels = [f"class_{i}" for i in range(400)]
    loaded = LoadedModel(model, labels, "small:bench", True)
    data = {
        "model": {"device": "cpu", "precision": "fp32"},
        "clip": {
            "frames": args.frames,
            "frame_interval": args.interval,
            "size_px": args.crop,
            "hop_s": args.hop_s,
        },
        "inference": {"max_batch": args.max_batch, "max_wait_ms": 20, "threads": args.threads},
        "streams": [{"name": f"cam{i}", "url": str(video), "realtime": True} for i in range(streams)],
        "reset": {"scene_change": {"enabled": False}},
        "workers": {"processes": processes},
        "publish": {"endpoints": ["tcp://127.0.0.1:*"], "control": None, "heartbeat_s": 1.0},
        "log": {"level": "warning", "format": "console"},
    }
    daemon = Daemon(parse_config(data), loaded)
    daemon.start()
    try:
        figures = measure(daemon, args.hop_s, args.warmup_s, args.seconds)
    finally:
        daemon.stop()
    shm_mib = streams * 2 * args.frames * args.crop * args.crop * 3 / 2**20 if processes != 0 else 0.0
    return {**figures, "processes": processes, "shm_mib": shm_mib}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="8", help="comma-separated stream counts (default 8)")
    parser.add_argument("--size", default="320x240", help="the cameras' picture size, WxH (default 320x240)")
    parser.add_argument(
        "--modes", default="0,auto", help="workers.processes values to compare (default 0,auto)"
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup-s", type=float, default=8.0)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--interval", type=int, default=2)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--hop-s", type=float, default=1.0)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="the engine's torch threads (default 1)")
    args = parser.parse_args(argv)
    configure_logging("warning", "console")
    counts = [int(n) for n in args.streams.split(",")]
    modes: list[int | str] = [m if m == "auto" else int(m) for m in args.modes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        video = camera_video(Path(tmp) / "camera.mp4", args.warmup_s + args.seconds + 30, args.size)
        for streams in counts:
            for mode in modes:
                rows.append(_run(args, streams, mode, video))
                print(_line(rows[-1]), flush=True)
    print()
    print(f"cores {os.cpu_count()}, cameras {args.size} H.264 25 fps, clips {args.frames}x{args.crop} every "
          f"{args.hop_s} s, small Swin, engine threads {args.threads}, max_batch {args.max_batch}")  # fmt: skip
    print("| streams | processes | demand clips/s | labels/s | engine busy | batches/s | mean batch | forward ms "
          "| waiting, no batch | latency p50 / p99 ms | CPU/stream | RSS MiB | shm MiB |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(_line(row))
    return 0


def _line(r: dict[str, Any]) -> str:
    return (
        f"| {r['streams']} | {r['processes']} | {r['demand']:.1f} | {r['labels_s']:.2f} | {r['busy']:.0%} | "
        f"{r['batches_s']:.2f} | {r['mean_batch']:.2f} | {r['forward_ms']:.1f} | {r['waiting']:.0%} | "
        f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f} | {r['cpu_per_stream']:.3f} | {r['rss_mib']:.0f} | "
        f"{r['shm_mib']:.1f} |"
    )


if __name__ == "__main__":
    sys.exit(main())
