"""The live page's cost: CPU of the daemon process with 0, 1 and 5 viewers.

A real ``vstmon`` process (tiny checkpoint, ``--streams`` looping file streams at 25 fps, ``view.fps`` 4) is
measured from ``/proc/PID/stat`` (user + system CPU seconds) over ``--seconds`` per phase. A viewer does what the
page does: ``/api/status`` once a second and each stream's picture ``view.fps`` times a second. Viewers run in
this process, so their own CPU is not counted. Prints CPU % of one core per phase and per viewer, the pictures
the daemon encoded, and the label rate (which must not move).

    .venv/bin/python benchmarks/bench_view.py --streams 4 --seconds 30
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.daemon import daemon_config, tiny_checkpoint, write_mjpg  # noqa: E402
from vstmon.wire.client import Subscriber  # noqa: E402


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _viewer(
    host: str, port: int, streams: list[str], fps: float, stop: threading.Event, counts: list[int]
) -> None:
    connection = http.client.HTTPConnection(host, port, timeout=10)
    next_status = 0.0
    while not stop.is_set():
        started = time.monotonic()
        paths = [f"/api/frame/{s}.jpg" for s in streams]
        if started >= next_status:
            paths.append("/api/status")
            next_status = started + 1.0
        for path in paths:
            connection.request("GET", path)
            connection.getresponse().read()
            counts[0] += 1
        stop.wait(max(0.0, 1.0 / fps - (time.monotonic() - started)))
    connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--fps", type=float, default=4.0, help="view.fps")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_view_"))
    checkpoint, labels = tiny_checkpoint(root)
    names = [f"cam{i}" for i in range(args.streams)]
    video = write_mjpg(root / "loop.avi", [("moving", range(96)), ("static", range(96))], fps=25)
    streams = [{"name": n, "url": str(video), "loop": True, "realtime": True} for n in names]
    data = daemon_config(checkpoint, labels, streams, view={"port": 0, "fps": args.fps})
    data["log"] = {"level": "info", "format": "json"}
    (root / "config.yaml").write_text(yaml.safe_dump(data))
    log = (root / "log.jsonl").open("wb")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    daemon = subprocess.Popen([sys.executable, "-m", "vstmon", "--config", str(root / "config.yaml")],
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)  # fmt: skip
    try:
        url = pub = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (url is None or pub is None):
            for line in (root / "log.jsonl").read_text().splitlines():
                if line.startswith("{"):
                    event = json.loads(line)
                    url = event.get("url", url) if event.get("event") == "live page serving" else url
                    pub = event["endpoints"][0] if event.get("event") == "vstmon running" else pub
            time.sleep(0.2)
        assert url and pub, (root / "log.jsonl").read_text()
        host, port = url.removeprefix("http://").rstrip("/").split(":")
        time.sleep(10)  # warm-up: every stream streaming and labelled
        print(
            f"{args.streams} streams at 25 fps, tiny model, view.fps {args.fps}, {args.seconds:.0f} s per phase"
        )
        base_pct = None
        for viewers in (0, 1, 5):
            stop = threading.Event()
            counts = [0]
            threads = [
                threading.Thread(target=_viewer, args=(host, int(port), names, args.fps, stop, counts))
                for _ in range(viewers)
            ]
            for thread in threads:
                thread.start()
            with Subscriber(pub, ("label",)) as sub:
                cpu0, t0, labels_seen = _cpu_s(daemon.pid), time.monotonic(), 0
                while time.monotonic() - t0 < args.seconds:
                    if sub.recv(timeout_s=0.5) is not None:
                        labels_seen += 1
                cpu_pct = (_cpu_s(daemon.pid) - cpu0) / (time.monotonic() - t0) * 100
            stop.set()
            for thread in threads:
                thread.join(10)
            extra = ""
            if base_pct is None:
                base_pct = cpu_pct
            elif viewers:
                extra = f", +{(cpu_pct - base_pct) / viewers:.1f}% per viewer"
            print(f"{viewers} viewer(s): daemon CPU {cpu_pct:.1f}% of a core{extra}; {counts[0]} requests; "
                  f"{labels_seen / args.seconds:.2f} labels/s")  # fmt: skip
    finally:
        daemon.terminate()
        daemon.wait(30)
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
