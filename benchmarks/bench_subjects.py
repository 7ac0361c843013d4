"""Subjects benchmark: the person detector's and the tracker's CPU cost per stream, and the tracker's ids.

    .venv/bin/python benchmarks/bench_subjects.py [--model PATH] [--frames 40] [--threads 1 2] [--paced-s 10]
                                                  [--batches 1 4 16] [--no-opencv] [--no-detector] [--no-tracker]

Frames are real footage with people (opencv-doc's vtest.avi, tests/helpers/assets.py), scaled up to 854x480 and
1920x1080 beforehand, as a camera would deliver them. For each thread count (torch's and OpenCV's):

1. per frame, the work the daemon does for one detection: the resize of the full frame to the network's square
   input (INTER_LINEAR, aspect ratio not kept) and ``PersonDetector.detect`` (torch, on the CPU); wall ms (median,
   p90) and process CPU ms (all threads), over ``--frames`` frames after a warm-up; the same for the same graph on
   OpenCV's DNN module (the path the torch detector replaced, now the tests' oracle: tests/helpers/opencv_ssd.py);
2. the CPU share of one core at the default rate (``subjects.detect_fps``, or ``--rate``): computed (CPU ms per
   frame x rate / 1000), and measured by running the detector paced at that rate for ``--paced-s`` seconds
   (process CPU time / wall time);
3. batched across streams: ``PersonDetector.detect_batch`` on ``--batches`` frames already squeezed to 300x300 in
   one forward; wall ms per batch and CPU ms per detection.

Tracker (``vstmon.subjects.tracker``): the detector at the daemon's score threshold (0.3) on the frames of the
whole vtest.avi (10 fps) that a stream detecting 5/s (every 2nd frame) or 2/s (every 5th) would see, then per
rate: ``Tracker.update`` wall ms per step (median, p90, max; detections from memory, so the tracker alone), the
distinct confirmed ids over the video, and the six people annotated in tests/subjects/test_tracker.py: id switches, frames
on a track, people on one id throughout.

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
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.helpers.assets import ASSETS, asset_dir  # noqa: E402
from tests.helpers.opencv_ssd import OpenCvSsd  # noqa: E402
from tests.helpers.tracking import PEOPLE_PX, follow, switches  # noqa: E402
from vstmon.config import SubjectsConfig  # noqa: E402
from vstmon.subjects.detector import PersonDetector  # noqa: E402
from vstmon.subjects.tracker import Track, Tracker  # noqa: E402

SIZES_PX = {"480p": (854, 480), "1080p": (1920, 1080)}
RATE_HZ = SubjectsConfig().detect_fps  # the default detection rate per stream (--rate overrides it)
TRACKER_SCORE = 0.3  # the detector's score threshold in the daemon (the tracker's low band is 0.3-0.5)
TRACKER_RATES = {"5/s": 2, "2/s": 5}  # detections per second -> every n-th vtest.avi frame (10 fps)


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
        raise SystemExit(f"no frames from {path}: run `python -m tests.helpers.assets fetch` first")
    return frames


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


Detector = PersonDetector | OpenCvSsd


def detect_once(detector: Detector, frame: np.ndarray, square: np.ndarray) -> int:
    """What the daemon does per detection: squeeze the frame to the network input, detect."""
    size = detector.input_size_px
    cv2.resize(frame, (size, size), dst=square, interpolation=cv2.INTER_LINEAR)
    return len(detector.detect(square))


def per_frame(detector: Detector, frames: list[np.ndarray]) -> dict[str, float]:
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


def paced(detector: Detector, frames: list[np.ndarray], seconds: float) -> float:
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


def batched(detector: PersonDetector, frames: list[np.ndarray], batch: int) -> dict[str, float]:
    """detect_batch on ``batch`` squeezed frames at a time: wall ms per batch, CPU ms per detection."""
    size = detector.input_size_px
    squares = [cv2.resize(f, (size, size), interpolation=cv2.INTER_LINEAR) for f in frames]
    batches = [
        np.stack([squares[(i + k) % len(squares)] for k in range(batch)])
        for i in range(0, len(squares), batch)
    ]
    detector.detect_batch(batches[0])  # warm-up
    wall_ms = []
    cpu_start_s = time.process_time()
    for images in batches:
        start_s = time.perf_counter()
        detector.detect_batch(images)
        wall_ms.append((time.perf_counter() - start_s) * 1e3)
    cpu_ms = (time.process_time() - cpu_start_s) * 1e3 / (len(batches) * batch)
    return {"wall_median_ms": statistics.median(wall_ms), "cpu_ms_per_detection": cpu_ms}


def report(name: str, detector: Detector, source: list[np.ndarray], threads: int, paced_s: float) -> None:
    for label, (width, height) in SIZES_PX.items():
        frames = [cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in source]
        stats = per_frame(detector, frames)
        share = stats["cpu_ms"] * RATE_HZ / 1e3
        line = (
            f"{name} {label} {width}x{height}, {threads} thread(s): wall median {stats['wall_median_ms']:.1f}"
            f" ms, p90 {stats['wall_p90_ms']:.1f} ms (resize {stats['resize_median_ms']:.2f} ms); CPU "
            f"{stats['cpu_ms']:.1f} ms/frame -> {share * 100:.0f}% of one core at {RATE_HZ:g}/s"
        )
        if paced_s > 0:
            line += f" (measured paced: {paced(detector, frames, paced_s) * 100:.0f}%)"
        print(line + f"; {stats['people_per_frame']:.1f} people/frame", flush=True)


def vtest_detections(detector: PersonDetector) -> tuple[dict[int, np.ndarray], float]:
    """frame index -> detections for every frame a TRACKER_RATES stream sees; and the video's fps."""
    path = asset_dir() / ASSETS["vtest.avi"].name
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS)
    found: dict[int, np.ndarray] = {}
    index = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if any(index % every == 0 for every in TRACKER_RATES.values()):
            found[index] = detector.detect(frame)
        index += 1
    capture.release()
    if not found:
        raise SystemExit(f"no frames from {path}: run `python -m tests.helpers.assets fetch` first")
    return found, fps


def track(found: dict[int, np.ndarray], every: int, fps: float) -> dict[str, float]:
    """Feeds every n-th frame's detections to a Tracker: update cost, ids, the annotated people."""
    tracker = Tracker()
    update_ms: list[float] = []
    steps: dict[int, tuple[list[Track], list[Track]]] = {}
    confirmed: set[int] = set()
    for index in range(0, max(found) + 1, every):
        start_s = time.perf_counter()
        visible = tracker.update(found[index], index / fps)
        update_ms.append((time.perf_counter() - start_s) * 1e3)
        confirmed.update(t.track_id for t in visible if t.confirmed)
        steps[index] = (visible, tracker.tracks)
    sequences = [follow(steps, annotated) for annotated in PEOPLE_PX.values()]
    return {
        "median_ms": statistics.median(update_ms),
        "p90_ms": percentile(update_ms, 90),
        "max_ms": max(update_ms),
        "steps": len(update_ms),
        "boxes_per_step": sum(len(found[i]) for i in steps) / len(steps),
        "ids": len(confirmed),
        "switches": sum(switches(s) for s in sequences),
        "covered": sum(i is not None for s in sequences for i in s),
        "annotated": sum(len(s) for s in sequences),
        "one_id": sum(len({i for i in s if i is not None}) == 1 for s in sequences),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="frozen SSD graph (default: the pedestrian one)"
    )
    parser.add_argument("--frames", type=int, default=40, help="frames timed per configuration")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="thread counts (torch's and OpenCV's)"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16], help="detect_batch sizes")
    parser.add_argument("--paced-s", type=float, default=10.0, help="seconds of paced detection (0: skip)")
    parser.add_argument("--no-opencv", action="store_true", help="skip OpenCV's DNN on the same graph")
    parser.add_argument("--no-detector", action="store_true", help="skip the detector's cost")
    parser.add_argument("--no-tracker", action="store_true", help="skip the tracker")
    parser.add_argument(
        "--rate", type=float, default=None, help="detections/s (default: subjects.detect_fps)"
    )
    args = parser.parse_args()
    global RATE_HZ
    RATE_HZ = args.rate or RATE_HZ
    model = args.model or default_model()
    source = [] if args.no_detector else read_frames(args.frames)
    print(
        f"torch {torch.__version__}, OpenCV {cv2.__version__}, model {model.name}; detector: {len(source)} "
        f"vtest.avi frames, {RATE_HZ:g}/s"
    )
    detector = PersonDetector(model)
    oracle = None if args.no_opencv else OpenCvSsd(model)
    for threads in [] if args.no_detector else args.threads:
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
        report("torch detector", detector, source, threads, args.paced_s)
        if oracle is not None:
            report("OpenCV DNN (oracle)", oracle, source, threads, args.paced_s)
        for batch in args.batches:
            stats = batched(detector, source, batch)
            print(
                f"torch detect_batch({batch}), {threads} thread(s): wall median {stats['wall_median_ms']:.1f} ms per "
                f"batch, CPU {stats['cpu_ms_per_detection']:.1f} ms per detection",
                flush=True,
            )
    if not args.no_tracker:
        found, fps = vtest_detections(PersonDetector(model, score_threshold=TRACKER_SCORE))
        people = len(PEOPLE_PX)
        for label, every in TRACKER_RATES.items():
            stats = track(found, every, fps)
            share = stats["median_ms"] * fps / every / 1e3
            print(
                f"tracker at {label} on the whole vtest.avi ({stats['steps']} steps, {stats['boxes_per_step']:.1f}"
                f" boxes/step at score >= {TRACKER_SCORE}): update median {stats['median_ms']:.2f} ms, p90 "
                f"{stats['p90_ms']:.2f} ms, max {stats['max_ms']:.2f} ms (median {share * 100:.2f}% of one core); "
                f"{stats['ids']} confirmed ids; annotated "
                f"people: {stats['switches']} id switches, {stats['covered']}/{stats['annotated']} frames on a "
                f"track, {stats['one_id']}/{people} on one id throughout",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
