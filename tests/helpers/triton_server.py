"""A real ``vstmon serve`` (Triton through PyTriton) as a process group, for the Triton tests and benchmarks.

The server runs in its own environment (nvidia-pytriton pins numpy<2): ``$VSTMON_SERVE_PYTHON``, or
``.venv-serve/bin/python`` in the repo (``.ci/run`` makes it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.helpers.cli import REPO_ROOT, vstmon_env

__all__ = ["Server", "serve_python"]

_READY_S = 180.0  # a loaded 2-core machine starts tritonserver and its Python stub in ~5-20 s


def serve_python() -> Path | None:
    """The serve environment's python, or None when there is none."""
    path = Path(os.environ.get("VSTMON_SERVE_PYTHON") or REPO_ROOT / ".venv-serve" / "bin" / "python")
    return path if path.exists() else None


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _group_shm(pgid: int) -> set[Path]:
    """The /dev/shm files mapped by the processes of group ``pgid``."""
    found: set[Path] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            maps = (entry / "maps").read_text()
        except (OSError, ValueError, IndexError):
            continue
        for line in maps.splitlines():
            path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
            if path.startswith("/dev/shm/"):
                found.add(Path(path.removesuffix(" (deleted)")))
    return found


class Server:
    """``vstmon serve`` as a real process group (tritonserver and its stub are children: killed together)."""

    def __init__(
        self,
        tmp: Path,
        checkpoint: Path,
        labels: Path,
        max_queue_delay_ms: float = 5.0,
        frames: int = 8,
        size_px: int = 64,
        max_batch: int = 8,
        log_level: str = "debug",
    ) -> None:
        self.grpc, http, metrics = _free_ports(3)
        self.url = f"127.0.0.1:{self.grpc}"
        self.config = tmp / "serve.yaml"
        self.config.write_text(
            json.dumps(
                {
                    "model": {"arch": "auto", "checkpoint": str(checkpoint), "labels": str(labels), "device": "cpu"},
                    "clip": {"frames": frames, "size_px": size_px},
                    "serve": {"grpc_port": self.grpc, "http_port": http, "metrics_port": metrics,
                              "max_batch": max_batch, "max_queue_delay_ms": max_queue_delay_ms},
                    "log": {"level": log_level, "format": "json"},
                }
            )
        )  # fmt: skip
        self.log = tmp / f"serve-{self.grpc}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [str(serve_python()), "-m", "vstmon", "serve", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=vstmon_env(),
                cwd=REPO_ROOT,
                start_new_session=True,
            )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.url)
        deadline = time.monotonic() + _READY_S
        try:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"vstmon serve exited {self.process.returncode}:\n{self.log.read_text()}"
                    )
                try:
                    if client.is_model_ready("vstmon"):
                        return
                except Exception:
                    pass
                time.sleep(0.2)
        finally:
            client.close()
        raise AssertionError(f"vstmon serve not ready in {_READY_S} s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL to the whole group: the server dies as a crash would, with nothing cleaned up by itself.
        The shared-memory segments its processes had mapped (PyTriton's, under /dev/shm) are then removed here,
        so that the test session leaves none behind."""
        if self.process is not None and self.process.poll() is None:
            segments = _group_shm(self.process.pid)
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
            for segment in segments:
                segment.unlink(missing_ok=True)

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise

    def batches(self) -> list[dict[str, Any]]:
        """The server's per-batch log records (``requests``: how many requests Triton merged into it)."""
        records = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"event": "batch"' in line:
                records.append(json.loads(line))
        return records
