"""Per-subject mode: clips/s and label latency with 1, 4 and 8 subject slots, on one stream and across 4 streams,
and the fixed memory per stream at ``max_subjects`` 4 and 8.

Real footage of people (opencv-doc's vtest.avi, 10 fps, 2-7 people in view; ``python -m tests.helpers.assets fetch``),
read as fast as the pipeline allows (lossless) by an in-process ``Daemon`` with the person detector (5/s) and a
tiny untrained model on CPU (the model's cost is not the point here: the per-subject machinery is). Streams beyond
the first start later in the video, so they see other people. Figures per configuration:

- subject clips labelled per second of wall time, and per second of video;
- people with a slot, on average over the detection steps; people who waited for one;
- clip submitted -> label published latency, p50 / p99;
- memory of per-subject mode per stream (crop rings + clip arrays), computed at the run's clip size and at the
  defaults (32 x 224).

    python benchmarks/bench_per_subject.py [--seconds 30] [--slots 1 4 8] [--streams 1 4]

Prints figures only; asserts nothing. The machine's other load shows in the figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_pipeline import untrained_model
from tests.helpers.assets import ASSETS, asset_dir
from vstmon.config import Config, parse_config
from vstmon.model import LoadedModel
from vstmon.service.daemon import Daemon
from vstmon.stream.build import ring_capacity_frames

VTEST_FPS = 10.0


def write_excerpt(source: Path, out: Path, first: int, count: int) -> Path:
    """Frames [first, first + count) of vtest.avi as a lossless FFV1 file (decode cost like a camera's)."""
    capture = cv2.VideoCapture(str(source))
    capture.set(cv2.CAP_PROP_POS_FRAMES, first)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"FFV1"), VTEST_FPS, (768, 576))
    for _ in range(count):
        ok, frame = capture.read()
        if not ok:
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = capture.read()
        writer.write(frame)
    writer.release()
    capture.release()
    return out


def memory_per_stream_bytes(config: Config, fps: float) -> int:
    """Crop rings + clip arrays of per-subject mode for one stream (as ``SubjectClipStreams.nbytes``)."""
    clip, subjects = config.clip, config.subjects
    slots = ring_capacity_frames(config, config.streams[0], fps)
    ring = slots * (clip.size_px * clip.size_px * 3 + 8 + 3 * 8 + 8)  # frames + index, times, epoch
    arrays = 2 * clip.frames * clip.size_px * clip.size_px * 3
    return subjects.max_subjects * (ring + arrays)


def run(args: argparse.Namespace, streams: int, slots: int, files: list[Path], model, labels) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = {
            "model": {"device": "cpu"},
            "clip": {"frames": args.frames, "frame_interval": 1, "size_px": args.size, "hop_s": args.hop},
            "inference": {"max_batch": args.max_batch, "max_wait_ms": 20},
            "streams": [{"name": f"s{i}", "url": str(files[i])} for i in range(streams)],
            "subjects": {
                "detector": str(args.detector),
                "mode": "per_subject",
                "max_subjects": slots,
                "detect_fps": 5.0,
                "confirm_s": 0.5,
            },
            "reset": {"scene_change": {"enabled": False}},
            "publish": {"endpoints": [f"ipc://{tmp}/pub.sock"], "control": None, "heartbeat_s": 1.0},
            "log": {"level": "warning"},
            "workers": {"processes": 0},  # the streams in this process: the figures read their pipelines
        }
        config = parse_config(data)
        daemon = Daemon(config, LoadedModel(model, labels, "bench", untrained=True))
        daemon.start(start_sources=False)
        held_sum = waiting_sum = steps = 0
        try:
            start = time.perf_counter()
            daemon.start_sources()
            while True:
                done = all(
                    str(s.source_state) in ("ended", "failed") for s in daemon.streams.values()
                ) and all(
                    s.state is not None and s.state.snapshot()["segment"] >= 2
                    for s in daemon.streams.values()
                )
                if done or time.perf_counter() - start > 3600:
                    break
                for s in daemon.streams.values():
                    subjects = s.pipeline.subjects if s.pipeline is not None else None
                    if subjects is not None and subjects.slots is not None:
                        held_sum += sum(x is not None for x in subjects.slots.subjects)
                        waiting_sum += subjects.slots.waiting
                        steps += 1
                time.sleep(0.2)
            wall_s = time.perf_counter() - start
            clips = sum(s.subject_clips for s in daemon.streams.values())
            latency = daemon.latency.percentiles_s()
            per_stream = [
                s.pipeline.per_subject.nbytes for s in daemon.streams.values() if s.pipeline.per_subject
            ]
        finally:
            daemon.stop()
        video_s = streams * args.seconds
        print(
            f"{streams} stream(s) x {slots} slot(s): {clips} subject clips in {wall_s:.1f} s = "
            f"{clips / wall_s:.1f} clips/s ({clips / video_s:.2f} per second of video); people with a slot "
            f"{held_sum / max(1, steps):.1f} on average, waiting {waiting_sum / max(1, steps):.1f}; latency p50 "
            f"{latency['p50'] * 1000:.0f} ms, p99 {latency['p99'] * 1000:.0f} ms; memory "
            f"{per_stream[0] / 2**20:.1f} MiB per stream",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="video per stream")
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--hop", type=float, default=0.5)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--detector", type=Path, default=asset_dir() / ASSETS["ssdlite_mobilenet_v2_pedestrian.pb"].name
    )
    args = parser.parse_args(argv)
    source = asset_dir() / ASSETS["vtest.avi"].name
    model, labels = untrained_model("tiny", args.threads)
    count = round(args.seconds * VTEST_FPS)
    with tempfile.TemporaryDirectory() as tmp:
        files = [
            write_excerpt(source, Path(tmp) / f"v{i}.avi", (i * 170) % 795, count)
            for i in range(max(args.streams))
        ]
        print(
            f"vtest.avi excerpts of {args.seconds:g} s; clips {args.frames}x{args.size}, hop {args.hop} s, tiny model"
        )
        for streams in args.streams:
            for slots in args.slots:
                run(args, streams, slots, files, model, labels)
    for slots in (4, 8):
        config = parse_config(
            {
                "streams": [{"name": "cam", "url": "rtsp://x/1"}],
                "subjects": {"mode": "per_subject", "max_subjects": slots},
            }
        )
        print(
            f"memory of per-subject mode per stream at the defaults (32 x 224, 25 fps), max_subjects {slots}: "
            f"{memory_per_stream_bytes(config, 25.0) / 2**20:.1f} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
