"""Ingest benchmark: Source (decode + fit + ring push) against a bare cv2.VideoCapture loop, and RTSP latency.

    .venv/bin/python benchmarks/bench_ingest.py [--seconds-of-video 12] [--repeats 3] [--latency-s 30]

1. Throughput per stream on 720p and 1080p H.264 files (made here with Debian's ffmpeg/libx264): a bare
   ``cv2.VideoCapture.read`` loop and a ``Source`` (non-realtime, reading into a live ring, fitting each frame to
   the model crop) on the same file in the same run, alternated; frames/s, the ratio (target >= 0.9), process
   CPU time per frame (decoder threads included).
2. Memory per stream: the ring's ``nbytes`` (fixed, whatever the source resolution).
3. End-to-end latency from the RTSP server's clock to the ring: tests/helpers/rtsp_server.py ``--mode clock`` encodes
   the server's ``time.time()`` (ms) into each frame; the Source reads the stream into a ring while a slow
   consumer (2 s of "work" per wake-up, longer than the 32-slot ring holds: the ring drops) reads what is left; latency = capture wall time - encoded time,
   p50/p99 for the first and last thirds of the run (target: < 200 ms and no growth).
Prints figures only; asserts nothing.
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

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.helpers.rtsp_fixtures import RtspServer, gst_rtsp_missing  # noqa: E402
from vstmon.config import StreamConfig  # noqa: E402
from vstmon.ingest.ring import RingBuffer  # noqa: E402
from vstmon.ingest.source import Source  # noqa: E402
from vstmon.log import configure_logging  # noqa: E402
from vstmon.types import SourceState, StreamEvent  # noqa: E402

FFMPEG = "/usr/bin/ffmpeg"
SIZE_PX = 224
CLOCK_SIZE_PX = 480  # server frame side in clock mode
CLOCK_GRID = 8


def make_clip(path: Path, width: int, height: int, seconds: float, bitrate: str) -> Path:
    if not path.exists():
        subprocess.run(
            [FFMPEG, "-y", "-loglevel", "error", "-f", "lavfi", "-i",
             f"testsrc2=size={width}x{height}:rate=25", "-t", str(seconds), "-c:v", "libx264",
             "-preset", "veryfast", "-b:v", bitrate, "-pix_fmt", "yuv420p", "-g", "25", str(path)],
            check=True,
        )  # fmt: skip
    return path


def bare_read(path: Path) -> tuple[int, float, float]:
    """(frames, wall_s, cpu_s) of a plain read loop (default decoder threads, like the Source for files)."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000])
    frame = None
    frames = 0
    while True:
        ok, frame = capture.read(frame)
        if not ok:
            break
        frames += 1
    capture.release()
    return frames, time.perf_counter() - wall0, time.process_time() - cpu0


def source_read(path: Path) -> tuple[int, float, float, int]:
    """(frames, wall_s, cpu_s, ring_nbytes) of a Source reading the file into a live ring, as fast as it can."""
    ring = RingBuffer(64, SIZE_PX, SIZE_PX)
    done = threading.Event()

    def on_event(event: StreamEvent) -> None:
        if event.state in (SourceState.ENDED, SourceState.FAILED):
            done.set()

    cfg = StreamConfig(name="bench", url=str(path), realtime=False)
    source = Source(cfg, ring, SIZE_PX, on_event)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    source.start()
    done.wait(600)
    wall_s, cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
    source.stop()
    source.join(10)
    return int(source.stats()["frames_read"]), wall_s, cpu_s, ring.nbytes


def throughput(clips: dict[str, Path], repeats: int) -> None:
    print(f"\n== throughput per stream (fit to {SIZE_PX}x{SIZE_PX}, best of {repeats}, alternated) ==")
    print(
        f"{'clip':<8} {'bare fps':>9} {'source fps':>11} {'ratio':>6} {'bare CPU ms/f':>14} {'source CPU ms/f':>16}"
    )
    for name, path in clips.items():
        bare, src = [], []
        for _ in range(repeats):
            bare.append(bare_read(path))
            src.append(source_read(path))
        b = max(bare, key=lambda r: r[0] / r[1])
        s = max(src, key=lambda r: r[0] / r[1])
        assert b[0] == s[0], f"frame counts differ: bare {b[0]}, source {s[0]}"
        b_fps, s_fps = b[0] / b[1], s[0] / s[1]
        b_cpu = min(r[2] / r[0] for r in bare) * 1000
        s_cpu = min(r[2] / r[0] for r in src) * 1000
        print(f"{name:<8} {b_fps:9.0f} {s_fps:11.0f} {s_fps / b_fps:6.2f} {b_cpu:14.2f} {s_cpu:16.2f}")
        med = statistics.median(r[0] / r[1] for r in src) / statistics.median(r[0] / r[1] for r in bare)
        print(f"{'':<8} (median ratio {med:.2f}; {b[0]} frames)")


def memory() -> None:
    print("\n== memory per stream (ring buffer, fixed) ==")
    for frames in (32, 89, 160):
        ring = RingBuffer(frames, SIZE_PX, SIZE_PX)
        print(
            f"{frames:4d} slots x {SIZE_PX}x{SIZE_PX}x3: {ring.nbytes:>12,d} bytes ({ring.nbytes / 2**20:.1f} MiB)"
        )
    print(
        "  (89 slots = one 32x2 clip + 1 s at 25 fps, the default buffer; same for 720p, 1080p or 4K input)"
    )


def decode_clock_ms(frame_rgb: np.ndarray) -> int:
    """Read the 64-bit millisecond clock that rtsp_server.py --mode clock draws, from a fitted crop."""
    scale = frame_rgb.shape[0] / CLOCK_SIZE_PX
    cell = CLOCK_SIZE_PX // (CLOCK_GRID + 2)
    margin = (CLOCK_SIZE_PX - cell * CLOCK_GRID) // 2
    value = 0
    for bit in range(CLOCK_GRID * CLOCK_GRID):
        row, col = divmod(bit, CLOCK_GRID)
        y = round((margin + (row + 0.5) * cell) * scale)
        x = round((margin + (col + 0.5) * cell) * scale)
        value = (value << 1) | int(frame_rgb[y, x, 1] > 127)
    return value


def latency(duration_s: float, work_s: float) -> None:
    print(
        f"\n== end-to-end latency: server clock -> ring ({duration_s:.0f} s, consumer works {work_s} s per wake) =="
    )
    missing = gst_rtsp_missing()
    if missing:
        print(f"skipped: {missing}")
        return
    server = RtspServer(["--mode", "clock", "--size", str(CLOCK_SIZE_PX), "--fps", "25"], 0).start()
    ring = RingBuffer(32, SIZE_PX, SIZE_PX)
    cfg = StreamConfig(name="clock", url=server.url)
    source = Source(cfg, ring, SIZE_PX, lambda event: None)
    samples: list[
        tuple[float, float]
    ] = []  # (run time s, latency ms) of every frame the consumer still found
    staleness_ms: list[
        tuple[float, float]
    ] = []  # (run time s, age of the newest frame when the consumer looks)
    bad = 0
    stop = threading.Event()
    try:
        source.start()
        if not ring.wait_for(0, 15.0):
            print("no frame from the clock server within 15 s")
            return
        start_s = time.monotonic()
        next_seq = ring.head_seq
        while time.monotonic() - start_s < duration_s:
            stop.wait(work_s)  # the slow consumer's "inference"
            head = ring.head_seq
            now_wall_s = time.time()
            for seq in range(max(next_seq, ring.oldest_seq), head):
                try:
                    meta = ring.meta(seq)
                    sent_ms = decode_clock_ms(ring.frame(seq))
                except LookupError:
                    continue
                lat_ms = meta.capture_wall_s * 1000 - sent_ms
                if not -1000 < lat_ms < 60_000:
                    bad += 1
                    continue
                samples.append((meta.capture_mono_s - start_s, lat_ms))
                if seq == head - 1:
                    staleness_ms.append((time.monotonic() - start_s, now_wall_s * 1000 - sent_ms))
            next_seq = head
            ring.release(head)
        stats = source.stats()
    finally:
        source.stop()
        source.join(10)
        server.stop()
    if len(samples) < 10:
        print(f"too few samples ({len(samples)}, {bad} undecodable)")
        return

    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(np.asarray(values), q))

    third = duration_s / 3
    for label, lo, hi in (("first third", 0, third), ("last third", 2 * third, duration_s + 1)):
        part = [lat for t, lat in samples if lo <= t < hi]
        if part:
            print(
                f"{label:<12} server->ring p50 {pct(part, 50):6.1f} ms  p99 {pct(part, 99):6.1f} ms  ({len(part)} frames)"
            )
    ages = [a for _, a in staleness_ms]
    print(
        f"newest frame's age when the slow consumer looks: p50 {pct(ages, 50):.1f} ms, max {max(ages):.1f} ms"
    )
    print(
        f"frames read {stats['frames_read']}, dropped by the ring (consumer too slow) {stats['frames_dropped']}, "
        f"fps_in {stats['fps_in']}, undecodable {bad}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds-of-video", type=float, default=12.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-s", type=float, default=30.0)
    parser.add_argument("--work-s", type=float, default=2.0, help="slow consumer's work per wake-up")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vstmon_bench_ingest")
    args = parser.parse_args()
    configure_logging("warning", "console")
    cv2.setNumThreads(1)  # resize on the reader thread only, as measured in shared/ENVIRONMENT.md
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"OpenCV {cv2.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    clips = {
        "720p": make_clip(args.workdir / "h264_720p.mp4", 1280, 720, args.seconds_of_video, "2500k"),
        "1080p": make_clip(args.workdir / "h264_1080p.mp4", 1920, 1080, args.seconds_of_video, "5000k"),
    }
    throughput(clips, args.repeats)
    memory()
    latency(args.latency_s, args.work_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
