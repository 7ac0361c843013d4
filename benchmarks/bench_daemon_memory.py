"""Daemon memory over a long run: RSS must stay flat while streams, resets and subscribers keep going.

N looping file streams (made here, MJPG, each with a hard cut in the middle, so that scene-change resets and
loop resets keep happening) are read as fast as the model allows (non-realtime: hours of stream time pass in
minutes) by an in-process ``Daemon`` with a small untrained Video Swin; a ZeroMQ subscriber reads everything it
publishes. RSS (the daemon's and its worker processes', with ``--processes`` other than 0) is sampled every
``--sample-s`` seconds. Prints the samples, then RSS after the
warm-up against the end, and the growth per hour of wall time and per hour of stream time. Asserts nothing.

    .venv/bin/python benchmarks/bench_daemon_memory.py --minutes 10
    .venv/bin/python benchmarks/bench_daemon_memory.py --minutes 10 --streams 8 --processes auto
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_pipeline import untrained_model
from benchmarks.proc_stats import family, rss_mib
from tests.helpers.videos import make_two_scene_video
from vstmon.config import parse_config
from vstmon.model.bundle import LoadedModel
from vstmon.service.daemon import Daemon
from vstmon.wire.client import Subscriber

__all__ = ["main"]


def _drain(sub: Subscriber, stop: threading.Event, counts: dict[str, int]) -> None:
    while not stop.is_set():
        raw = sub.recv_raw(0.2)
        if raw is not None:
            kind = raw[0].split(".", 1)[0]
            counts[kind] = counts.get(kind, 0) + 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="wall time to run")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--video-s", type=float, default=8.0, help="length of each looping file")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--size", type=int, default=64, help="size_px")
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--sample-s", type=float, default=30.0)
    parser.add_argument("--warmup-s", type=float, default=60.0, help="RSS growth is measured after this")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--processes",
        default="0",
        help="workers.processes: 0 (streams in the daemon, default), auto or a count",
    )
    args = parser.parse_args(argv)

    model, labels = untrained_model("tiny", args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        width = int(args.size * 4 / 3) // 2 * 2
        streams = []
        for i in range(args.streams):
            path = Path(tmp) / f"s{i}.avi"
            n_frames = int(args.video_s * args.fps) + i * 7  # streams of different lengths drift apart
            make_two_scene_video(path, n_frames, args.fps, (width, args.size), codec="MJPG")
            streams.append({"name": f"s{i}", "url": str(path), "loop": True})
        endpoint = f"ipc://{tmp}/pub.sock"
        config = parse_config(
            {
                "model": {"device": "cpu"},
                "clip": {"frames": args.frames, "frame_interval": 1, "size_px": args.size, "hop_s": 0.5},
                "inference": {"max_batch": args.max_batch},
                "streams": streams,
                "publish": {"endpoints": [endpoint], "control": None, "heartbeat_s": 1.0},
                "log": {"level": "warning"},
                "workers": {"processes": args.processes if args.processes == "auto" else int(args.processes)},
            }
        )
        daemon = Daemon(config, LoadedModel(model, labels, "bench", untrained=True))
        daemon.start(start_sources=False)
        sub = Subscriber(endpoint)
        stop = threading.Event()
        counts: dict[str, int] = {}
        drainer = threading.Thread(target=_drain, args=(sub, stop, counts), name="bench-subscriber")
        drainer.start()
        time.sleep(0.5)  # let the subscription reach the publisher
        samples: list[tuple[float, int, int, int]] = []  # (elapsed s, frames, clips, rss bytes)
        try:
            daemon.start_sources()
            start = time.monotonic()
            end = start + args.minutes * 60
            print(f"{'elapsed s':>9} {'frames':>9} {'stream h':>8} {'clips':>8} {'resets':>7} {'RSS MiB':>8}")
            while True:
                now = time.monotonic()
                snapshots = [daemon.host.snapshot(name) for name in daemon.host.names]
                frames = sum(snap.frames_read for snap in snapshots)
                clips = sum(snap.clips for snap in snapshots)
                rss = int(sum(rss_mib(pid) for pid in family()) * 2**20)
                samples.append((now - start, frames, clips, rss))
                print(
                    f"{now - start:9.0f} {frames:9d} {frames / args.fps / 3600:8.2f} {clips:8d} "
                    f"{counts.get('reset', 0):7d} {rss / 2**20:8.1f}",
                    flush=True,
                )
                if now >= end:
                    break
                time.sleep(min(args.sample_s, max(0.0, end - now)))
        finally:
            stop.set()
            drainer.join(5.0)
            sub.close()
            daemon.stop()

    after = [s for s in samples if s[0] >= args.warmup_s] or samples
    first, last = after[0], after[-1]
    wall_h = (last[0] - first[0]) / 3600
    stream_h = (last[1] - first[1]) / args.fps / 3600
    growth_mib = (last[3] - first[3]) / 2**20
    peak_mib = max(s[3] for s in after) / 2**20
    print(
        f"\nafter {args.warmup_s:.0f} s of warm-up: RSS {first[3] / 2**20:.1f} -> {last[3] / 2**20:.1f} MiB "
        f"(peak {peak_mib:.1f}), {growth_mib:+.1f} MiB over {wall_h * 60:.1f} min of wall time = "
        f"{stream_h:.2f} h of stream time ({args.streams} streams, workers.processes {args.processes}); "
        f"messages received {dict(sorted(counts.items()))}"
    )
    if wall_h > 0 and stream_h > 0:
        print(
            f"growth: {growth_mib / wall_h:+.1f} MiB per wall hour, {growth_mib / stream_h:+.2f} MiB per stream hour"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
