"""Subjects benchmark: the person detector's CPU cost per stream (the tracker is to be added beside it).

    .venv/bin/python benchmarks/bench_subjects.py [--model PATH] [--frames 40] [--threads 1 2] [--paced-s 10]

Frames are real footage with people (opencv-doc's vtest.avi, tests/assets.py), scaled up to 854x480 and
1920x1080 beforehand, as a camera would deliver them. For each input size and OpenCV thread count:

1. per frame, the work the daemon does for one detection: the resize of the full frame to the network's square
   input (INTER_LINEAR, aspect ratio not kept) and ``PersonDetector.detect``; wall ms (median, p90) and process
   CPU ms (all threads), over ``--frames`` frames after a warm-up;
2. the CPU share of one core at the default rate of 5 detections/s: computed (CPU ms per frame x 5 / 1000), and
   measured by running the detector paced at 5 Hz for ``--paced-s`` seconds (process CPU time / wall time).

Prints figures only; asserts nothing. The machine's other load shows in the figures: run it on a quiet box.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.assets import ASSETS, asset_dir  # noqa: E402
from vstmon.subjects.detector import PersonDetector  # noqa: E402

SIZES_PX = {"480p": (854, 480), "1080p": (1920, 1080)}
RATE_HZ = 5.0  # the default detection rate per stream


def default_model() -> Path:
    fetched = REPO_ROOT / "checkpoints" / "ssdlite_mobilenet_v2_pedestrian.pb"
    return fetched if fetched.exists() else asset_dir() / "ssdlite_mobilenet_v2_pedestrian.pb"


def read_frames(count: int) -> list[np.ndarray]:
    path = asset_dir() / ASSETS["vtest.avi"].name
    capture = cv2.VideoCapture(str(path))
    frames: list[np.ndarray] = []
    index = 0
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        if index % 10 == 0:  # one frame a second: different people, different places
            frames.append(frame)
        index += 1
    capture.release()
    if not frames:
        raise SystemExit(f"no frames from {path}: run `python -m tests.assets fetch` first")
    return frames


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def detect_once(detector: PersonDetector, frame: np.ndarray, square: np.ndarray) -> int:
    """What the daemon does per detection: squeeze the frame to the network input, detect."""
    size = detector.input_size_px
    cv2.resize(frame, (size, size), dst=square, interpolation=cv2.INTER_LINEAR)
    return len(detector.detect(square))


def per_frame(detector: PersonDetector, frames: list[np.ndarray]) -> dict[str, float]:
    size = detector.input_size_px
    square = np.empty((size, size, 3), dtype=np.uint8)
    for frame in frames[:3]:  # warm-up
        detect_once(detector, frame, square)
    wall_ms, resize_ms, found = [], [], 0
    cpu_start_s = time.process_time()
    for frame in frames:
        start_s = time.perf_counter()
        cv2.resize(frame, (size, size), dst=square, interpolation=cv2.INTER_LINEAR)
        resized_s = time.perf_counter()
        found += len(detector.detect(square))
        end_s = time.perf_counter()
        wall_ms.append((end_s - start_s) * 1e3)
        resize_ms.append((resized_s - start_s) * 1e3)
    cpu_ms = (time.process_time() - cpu_start_s) * 1e3 / len(frames)
    return {
        "wall_median_ms": statistics.median(wall_ms),
        "wall_p90_ms": percentile(wall_ms, 90),
        "resize_median_ms": statistics.median(resize_ms),
        "cpu_ms": cpu_ms,
        "people_per_frame": found / len(frames),
    }


def paced(detector: PersonDetector, frames: list[np.ndarray], seconds: float) -> float:
    """Process CPU share of one core while detecting at RATE_HZ (waits on an event, not sleeps)."""
    size = detector.input_size_px
    square = np.empty((size, size, 3), dtype=np.uint8)
    tick = threading.Event()  # never set: wait() is the pacing clock
    period_s = 1.0 / RATE_HZ
    start_wall_s, start_cpu_s = time.perf_counter(), time.process_time()
    next_s, index = start_wall_s, 0
    while (now_s := time.perf_counter()) - start_wall_s < seconds:
        if now_s < next_s:
            tick.wait(next_s - now_s)
            continue
        detect_once(detector, frames[index % len(frames)], square)
        index += 1
        next_s += period_s
    return (time.process_time() - start_cpu_s) / (time.perf_counter() - start_wall_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="frozen SSD graph (default: the pedestrian one)"
    )
    parser.add_argument("--frames", type=int, default=40, help="frames timed per configuration")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="OpenCV thread counts")
    parser.add_argument("--paced-s", type=float, default=10.0, help="seconds of paced detection (0: skip)")
    args = parser.parse_args()
    model = args.model or default_model()
    source = read_frames(args.frames)
    print(f"OpenCV {cv2.__version__}, model {model.name}, {len(source)} vtest.avi frames; rate {RATE_HZ:g}/s")
    for threads in args.threads:
        detector = PersonDetector(model, threads=threads)
        for label, (width, height) in SIZES_PX.items():
            frames = [cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in source]
            stats = per_frame(detector, frames)
            share = stats["cpu_ms"] * RATE_HZ / 1e3
            line = (
                f"detector {label} {width}x{height}, {threads} thread(s): wall median {stats['wall_median_ms']:.1f}"
                f" ms, p90 {stats['wall_p90_ms']:.1f} ms (resize {stats['resize_median_ms']:.2f} ms); CPU "
                f"{stats['cpu_ms']:.1f} ms/frame -> {share * 100:.0f}% of one core at {RATE_HZ:g}/s"
            )
            if args.paced_s > 0:
                line += f" (measured paced: {paced(detector, frames, args.paced_s) * 100:.0f}%)"
            print(line + f"; {stats['people_per_frame']:.1f} people/frame", flush=True)
    # tracker: per-frame update cost on these detections (added with vstmon/subjects' tracker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
