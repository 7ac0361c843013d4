"""Inference through a Triton server (``vstmon serve``) against the local backend, in the same run.

1. Per request: one batch of b uint8 clips through ``TritonRunner.infer`` (gRPC round trip, Triton's queue, the
   server's forward) against ``Runner.infer`` on the same tiny model in this process (the forward alone): the
   difference is what the wire and the server add, per batch and per clip.
2. Daemons: 1, 2 and 4 in-process daemons, one looping file stream each, read as fast as the model allows, for
   ``--seconds`` (non-realtime: as fast as inference allows): labels/s over all daemons and label latency (clip submitted -> label published, p50/p99), with
   ``inference.backend: local`` (one model copy per daemon) and ``triton`` (one server for all).

Needs the serve environment (``.venv-serve``; see requirements-serve.txt). Prints figures; asserts nothing.

    .venv/bin/python benchmarks/bench_triton.py --daemons 1,2,4 --seconds 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.daemon import FRAMES, SIZE_PX, daemon_config, tiny_checkpoint, write_mjpg
from tests.helpers.triton_server import Server, serve_python
from vstmon.config import TritonServerConfig, parse_config
from vstmon.inference.runner import Runner
from vstmon.inference.triton import TritonRunner
from vstmon.log import configure_logging
from vstmon.model.bundle import load_model_and_labels
from vstmon.service.daemon import Daemon

__all__ = ["main"]


def _median_ms(call, repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        call()
        times.append((time.perf_counter() - begin) * 1000.0)
    return statistics.median(times)


def per_request(server: Server, checkpoint: Path, labels: Path, batches: list[int], repeats: int) -> None:
    config = parse_config(daemon_config(checkpoint, labels, [{"name": "x", "url": "x.avi"}]))
    local = Runner(load_model_and_labels(config, warn=False).model, "cpu", "fp32", max(batches))
    remote = TritonRunner(
        TritonServerConfig(url=server.url, timeout_s=60), max(batches), (FRAMES, SIZE_PX, SIZE_PX, 3)
    )
    rng = np.random.default_rng(0)
    print(f"{'batch':>5} {'local forward ms':>16} {'triton round trip ms':>20} {'added ms/clip':>13}")
    for b in batches:
        clips = rng.integers(0, 256, (b, FRAMES, SIZE_PX, SIZE_PX, 3), dtype=np.uint8)
        local_ms = _median_ms(lambda clips=clips: local.infer(clips), repeats)
        remote_ms = _median_ms(lambda clips=clips: remote.infer(clips), repeats)
        print(f"{b:5d} {local_ms:16.1f} {remote_ms:20.1f} {(remote_ms - local_ms) / b:13.1f}")
    remote.close()


def daemons(
    server: Server, checkpoint: Path, labels: Path, tmp: Path, counts: list[int], seconds: float
) -> None:
    print(f"\n{'backend':>7} {'daemons':>7} {'labels/s':>8} {'latency p50 ms':>14} {'p99 ms':>7}")
    for backend in ("local", "triton"):
        for n in counts:
            started: list[Daemon] = []
            try:
                for i in range(n):
                    video = tmp / f"d{i}.avi"
                    if not video.exists():
                        write_mjpg(
                            video, [("moving", range(1200))]
                        )  # long: loops (at most 1/s) never pace it
                    inference = {"threads": 1, "max_wait_ms": 5}  # one stream per daemon: nothing to wait for
                    if backend == "triton":
                        inference |= {"backend": "triton", "triton": {"url": server.url, "timeout_s": 60}}
                    data = daemon_config(checkpoint, labels, [{"name": f"d{i}", "url": str(video), "loop": True, "realtime": False}],
                                         inference=inference)  # fmt: skip
                    daemon = Daemon(parse_config(data))
                    daemon.start()
                    started.append(daemon)
                time.sleep(2.0)  # past start-up
                begin = [d.latency.percentiles_s().get("count", 0) for d in started]
                time.sleep(seconds)
                latency = [d.latency.percentiles_s() for d in started]
                labels_s = (
                    sum(lat.get("count", 0) - b for lat, b in zip(latency, begin, strict=True)) / seconds
                )
                p50 = statistics.mean(lat.get("p50", float("nan")) for lat in latency) * 1000
                p99 = max(lat.get("p99", float("nan")) for lat in latency) * 1000
                print(f"{backend:>7} {n:7d} {labels_s:8.1f} {p50:14.0f} {p99:7.0f}", flush=True)
            finally:
                for daemon in started:
                    daemon.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--daemons", default="1,2,4", help="daemon counts")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per daemon count")
    p.add_argument("--batches", default="1,8", help="batch sizes of the per-request comparison")
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    if serve_python() is None:
        print("no serve environment: python3 -m venv .venv-serve && .venv-serve/bin/pip install -r "
              "requirements-serve.txt", file=sys.stderr)  # fmt: skip
        return 2
    configure_logging("warning", "console")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        checkpoint, labels = tiny_checkpoint(tmp)
        server = Server(tmp, checkpoint, labels, log_level="warning").start()
        try:
            per_request(server, checkpoint, labels, [int(b) for b in args.batches.split(",")], args.repeats)
            daemons(server, checkpoint, labels, tmp, [int(n) for n in args.daemons.split(",")], args.seconds)
        finally:
            server.stop()
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
