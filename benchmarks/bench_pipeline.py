"""End-to-end pipeline throughput against model-only throughput, in the same run, and clip latency.

N file streams (made here, MJPG) are read as fast as possible (lossless, non-realtime) by an in-process
``Daemon``: source -> ring -> worker (detectors, sampler, cut) -> engine (batches across streams) -> state ->
ZeroMQ PUB. Figures printed (nothing asserted):

- end-to-end clips/s: labels published / wall time from the sources' start to the last stream's end;
- model-only clips/s: ``Engine.infer`` (the same copy + normalise + autocast forward + softmax) on batches of the
  same size as the daemon's mean batch (rounded) and of ``max_batch``, same process, same threads;
- ratio end-to-end / model-only (target >= 0.9: the pipeline keeps the model busy);
- clip submitted -> label published latency, p50 and p99.

``--subjects DETECTOR.pb`` turns person tracking on for every stream (``--detect-fps`` detections per second of
stream time): the detector's cost per detection does not depend on what the frames show, so the synthetic
videos measure its effect on the pipeline as well as footage of people would.

Example (CPU, small model)::

    python benchmarks/bench_pipeline.py --streams 4 --seconds 20 --frames 8 --size 64 --arch tiny
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.videos import make_video
from vstmon.config import parse_config
from vstmon.inference.engine import Engine
from vstmon.log import configure_logging
from vstmon.model import LoadedModel, build_model
from vstmon.model.presets import PRESETS, SwinConfig
from vstmon.service.daemon import Daemon

__all__ = ["main", "untrained_model"]

_TINY = SwinConfig(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=(8, 7, 7))


def untrained_model(arch: str, threads: int | None) -> tuple[torch.nn.Module, list[str]]:
    """Quiet logs, set the thread counts, and build an untrained 400-class model (``tiny`` or a preset)."""
    configure_logging("warning", "console")
    if threads:
        torch.set_num_threads(threads)
    cv2.setNumThreads(1)  # the decoders and the model share the cores; OpenCV's own pool would add to it
    model = build_model(_TINY if arch == "tiny" else PRESETS[arch], 400).eval()
    return model, [f"class_{i}" for i in range(400)]


def _model_only(engine: Engine, batch: int, shape: tuple[int, ...], seconds: float) -> float:
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, size=(batch, *shape), dtype=np.uint8)
    engine.backend.infer(clips)  # warm-up
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or done == 0:
        engine.backend.infer(clips)
        done += batch
    return done / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0, help="video length per stream (stream time)")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--interval", type=int, default=1, help="frame_interval")
    parser.add_argument("--hop", type=float, default=0.5, help="hop_s")
    parser.add_argument("--size", type=int, default=64, help="size_px")
    parser.add_argument("--arch", default="tiny", help="tiny or a preset (swin_t, ...)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--max-wait-ms", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--subjects", type=Path, default=None, metavar="DETECTOR", help="person detector graph"
    )
    parser.add_argument(
        "--detect-fps", type=float, default=None, help="subjects.detect_fps (default: config's)"
    )
    args = parser.parse_args(argv)

    model, labels = untrained_model(args.arch, args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        width = int(args.size * 4 / 3) // 2 * 2
        streams = []
        n_frames = int(args.seconds * args.fps)
        for i in range(args.streams):
            path = Path(tmp) / f"s{i}.avi"
            make_video(path, n_frames, args.fps, (width, args.size), codec="MJPG", start_index=i * 7)
            streams.append({"name": f"s{i}", "url": str(path)})
        config = parse_config(
            {
                "model": {"device": args.device, "precision": args.precision},
                "clip": {
                    "frames": args.frames,
                    "frame_interval": args.interval,
                    "size_px": args.size,
                    "hop_s": args.hop,
                },
                "inference": {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms},
                "streams": streams,
                "reset": {"scene_change": {"enabled": True}},
                "publish": {"endpoints": [f"ipc://{tmp}/pub.sock"], "control": None, "heartbeat_s": 1.0},
                "log": {"level": "warning"},
                "workers": {"processes": 0},  # the streams in this process: the figures read their pipelines
                "subjects": {"detector": str(args.subjects) if args.subjects else None}
                | ({"detect_fps": args.detect_fps} if args.detect_fps else {}),
            }
        )
        daemon = Daemon(config, LoadedModel(model, labels, "bench", untrained=True))
        daemon.start(start_sources=False)
        try:
            start = time.perf_counter()
            daemon.start_sources()
            deadline = start + 3600
            while time.perf_counter() < deadline:
                states = [s.source_state for s in daemon.streams.values()]
                resets_done = all(
                    s.state is not None and s.state.snapshot()["segment"] >= 2
                    for s in daemon.streams.values()
                )
                if all(str(st) in ("ended", "failed") for st in states) and resets_done:
                    break
                time.sleep(0.05)
            wall_s = time.perf_counter() - start
            clips = sum(s.state.clips_total for s in daemon.streams.values() if s.state is not None)
            latency = daemon.latency.percentiles_s()
            batch_sizes = dict(sorted(daemon.batch_sizes.items()))
            engine = daemon.pool.engines[0] if daemon.pool is not None else None
            busy_s = sum(e.busy_s for e in daemon.pool.engines) if daemon.pool is not None else 0.0
            trackers = [
                s.pipeline.subjects for s in daemon.streams.values() if s.worker and s.pipeline.subjects
            ]
            detections = sum(t.detections for t in trackers)
            detect_s = sum(t.detect_s for t in trackers)
        finally:
            daemon.stop()
        assert engine is not None
        batches = sum(batch_sizes.values())
        mean_batch = clips / batches if batches else 0.0
        shape = (args.frames, args.size, args.size, 3)
        e2e = clips / wall_s
        print(
            f"streams {args.streams}, {n_frames} frames each at {args.fps} fps, clip {shape}, arch {args.arch}, "
            f"device {engine.name}, dtype {engine.backend.dtype}, torch threads {torch.get_num_threads()}"
        )
        if args.subjects:
            print(
                f"subjects on: {detections} detections ({config.subjects.detect_fps:g}/s of stream time per "
                f"stream), {1000 * detect_s / max(1, detections):.1f} ms each on average (wall, in the workers)"
            )
        print(
            f"end-to-end: {clips} clips in {wall_s:.2f} s = {e2e:.2f} clips/s; batch sizes {batch_sizes} "
            f"(mean {mean_batch:.2f}); engine busy {busy_s / wall_s:.0%} of the wall time"
        )
        sizes = sorted({max(1, round(mean_batch)), args.max_batch})
        for size in sizes:
            model_only = _model_only(engine, size, shape, seconds=max(3.0, min(10.0, wall_s / 3)))
            print(
                f"model-only at batch {size}: {model_only:.2f} clips/s -> ratio end-to-end / model-only "
                f"{e2e / model_only:.2f}"
            )
        print(
            f"clip submitted -> label published latency: p50 {latency['p50'] * 1000:.1f} ms, "
            f"p99 {latency['p99'] * 1000:.1f} ms over {latency['count']} clips"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
