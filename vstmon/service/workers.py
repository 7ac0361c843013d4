"""``ProcessStreams``: the daemon's streams in worker processes (``workers.processes``), each process hosting a
group of them (``service/worker_process.py``); the engine, the publisher and the control socket stay here.

Why: one Python process holding every decoder, worker and the engine starves the engine of the interpreter
(measured on an H100 at 16 streams: each batch took ~4x its time alone), and one crash inside FFmpeg or OpenCV
took every camera down. Here each group decodes and steps its pipelines in its own interpreter, and the engine's
thread shares this one only with a router thread per worker process (blocked on its pipe), the publisher and the
tick.

Shared memory: each stream's clip arrays live in one ``SharedBlock`` (two clips per clip stream: the stream's
own, and per subject one per slot), created here when the stream is added and kept for its life, whichever
process hosts it; it is passed to the worker as a file descriptor and has no name, so nothing of it outlives the
processes (``memfd``). Fixed per stream: ``slots x 2 x T x S x S x 3`` bytes (9.6 MiB at 32 x 224; 48.2 MiB with
``max_subjects: 4``). A clip announced on the pipe is submitted to the engine with its frames as a view of the
block (no copy); the batcher says when it is done with them (``released``) and the worker may cut into that
array again.

A worker process that dies (SIGKILL, a segfault) is started again after ``workers.restart_delay_s`` (doubling
while it keeps dying within a minute, up to 30 s): its streams' clips in the engine are forgotten, and the
streams resume in the new process with a reset ``worker_restart`` (segments go on from where they were). The
other streams see nothing of it: their messages keep their ``seq`` (counted here) and their latency.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

import vstmon
from vstmon.config import Config, StreamConfig
from vstmon.errors import VstmonError
from vstmon.inference.engine import EnginePool
from vstmon.log import get_logger
from vstmon.model.bundle import LoadedModel
from vstmon.service.streams import StreamSnapshot
from vstmon.service.worker_link import Link, Requests, clip_from_meta, clip_meta
from vstmon.stream.buffers import SharedBlock, clip_shape
from vstmon.stream.build import clip_slots
from vstmon.types import Clip, ClipResult, SourceState

__all__ = ["ProcessStreams"]

_log = get_logger("workers")
_START_TIMEOUT_S = (
    60.0  # a worker process has this long to say hello (imports: OpenCV, torch for the detector)
)
_REQUEST_S = 10.0  # a request to a worker (reset, picture, close) waits this long at most
_PICTURE_S = 1.0
_MAX_RESTART_DELAY_S = 30.0
_QUICK_DEATH_S = 60.0  # a worker that dies this soon after its start doubles the next delay


class _Process:
    """One worker process, its pipe and its router thread (on the daemon's side)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: Any = None
        self.link: Link | None = None
        self.router: threading.Thread | None = None
        self.streams: list[str] = []
        self.requests = Requests()
        self.started_mono_s = 0.0
        self.restarts = 0
        self.restart_delay_s = 0.0
        self.alive = False


class ProcessStreams:
    """The daemon's stream host with worker processes (see the module docstring); the same questions as
    ``LocalStreams``."""

    def __init__(self, processes: int) -> None:
        self._processes = [_Process(i) for i in range(processes)]
        self._lock = threading.Lock()
        self._owner: dict[str, _Process] = {}  # stream -> the process hosting it
        self._configs: dict[str, StreamConfig] = {}
        self._blocks: dict[str, SharedBlock] = {}
        self._snapshots: dict[str, StreamSnapshot] = {}
        self._started: set[str] = set()
        self._stopping = False
        self._restart_cond = threading.Condition()
        self._due: list[tuple[float, _Process]] = []  # worker processes to start again, and when
        self._begun = threading.Event()
        self._begin_error: VstmonError | None = None
        self._supervisor: threading.Thread | None = None
        self.config: Config | None = None

    # -- set-up ---------------------------------------------------------------------------------------------
    def begin(
        self,
        config: Config,
        loaded: LoadedModel,
        pool: EnginePool,
        publish: Any,
        on_change: Any,
        daemon: Any = None,
    ) -> None:
        """Start the worker processes (they say hello before this returns)."""
        self.config = config
        self._loaded = (list(loaded.labels), loaded.model_id, loaded.untrained)
        self._pool = pool
        self._publish = publish
        self._on_change = on_change
        self._supervisor = threading.Thread(target=self._supervise, name="workers-supervisor", daemon=True)
        self._supervisor.start()
        if not self._begun.wait(_START_TIMEOUT_S * 2) or self._begin_error is not None:
            raise self._begin_error or VstmonError("the worker processes did not start")

    def _supervise(self) -> None:
        """The thread that starts every worker process, at first and after a death: it lives as long as they do,
        because the kernel's parent-death signal (``worker_process``) follows the thread that started a child,
        not the process."""
        try:
            launched = [
                (process, *self._launch(process)) for process in self._processes
            ]  # they start together
            for process, proc, link in launched:
                self._await(process, proc, link)
        except VstmonError as error:
            self._begin_error = error
        finally:
            self._begun.set()
        if self._begin_error is not None:
            return
        while True:
            with self._restart_cond:
                while not self._stopping and not self._due:
                    self._restart_cond.wait()
                if self._stopping:
                    return
                due_s, process = min(self._due, key=lambda item: item[0])
                wait_s = due_s - time.monotonic()
                if wait_s > 0:
                    self._restart_cond.wait(wait_s)
                    continue
                self._due.remove((due_s, process))
            self._restart(process)

    def _launch(self, process: _Process) -> tuple[subprocess.Popen[bytes], Link]:
        """Start one worker process (``python -m vstmon.service.worker_process``, not ``multiprocessing``, whose
        spawn would import the daemon's own ``__main__`` in the child) and send it what it needs."""
        assert self.config is not None
        ours, theirs = socket.socketpair()
        package_root = str(Path(vstmon.__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(
            [sys.executable, "-m", "vstmon.service.worker_process", str(theirs.fileno()), str(os.getpid())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": path},
        )
        theirs.close()
        link = Link(Connection(ours.detach()))
        link.send(("init", self.config.model_dump(mode="json"), self._loaded, process.index))
        return proc, link

    def _await(self, process: _Process, proc: subprocess.Popen[bytes], link: Link) -> None:
        """Wait for a launched worker's hello, then route what it sends."""
        try:
            if not link.conn.poll(_START_TIMEOUT_S):
                raise VstmonError(
                    f"worker process {process.index} did not start within {_START_TIMEOUT_S:.0f} s"
                )
            hello = link.recv()
        except (EOFError, OSError):
            proc.kill()
            proc.wait(5.0)
            raise VstmonError(
                f"worker process {process.index} ended at start (exit code {proc.returncode})"
            ) from None
        except VstmonError:
            proc.kill()
            raise
        if hello[0] != "hello":
            proc.kill()
            raise VstmonError(f"worker process {process.index} said {hello[0]!r} instead of hello")
        process.process, process.link = proc, link
        process.started_mono_s = time.monotonic()
        process.alive = True
        process.requests = Requests()
        process.router = threading.Thread(
            target=self._route, args=(process, link), name=f"router-{process.index}", daemon=True
        )
        process.router.start()
        _log.info("worker process started", worker=process.index, pid=proc.pid)

    # -- the streams ----------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._configs)

    def add(self, cfg: StreamConfig) -> None:
        """Give the stream to the process hosting the fewest, with its shared block (made here, kept here)."""
        assert self.config is not None
        slots = clip_slots(self.config, cfg)
        shape = clip_shape(self.config.clip.frames, self.config.clip.size_px)
        block = SharedBlock.create(cfg.name, slots, shape)
        with self._lock:
            process = min(self._processes, key=lambda p: len(p.streams))
            process.streams.append(cfg.name)
            self._owner[cfg.name] = process
            self._configs[cfg.name] = cfg
            self._blocks[cfg.name] = block
            self._snapshots[cfg.name] = StreamSnapshot(cfg.name)
        self._pool.assign(cfg.name)  # its engine, fixed from now on (status reads its drops from it)
        self._hand_over(process, cfg.name, first_segment=1)

    def _hand_over(self, process: _Process, name: str, first_segment: int) -> None:
        block = self._blocks[name]
        message = (
            "add",
            self._configs[name].model_dump(mode="json"),
            block.slots,
            block.shape,
            first_segment,
        )
        if process.link is not None:
            process.link.send(message, fd=block.fd)

    def start(self, name: str) -> None:
        self._started.add(name)
        process = self._owner.get(name)
        if process is not None and process.link is not None:
            process.link.send(("start", name))

    def snapshot(self, name: str) -> StreamSnapshot:
        return self._snapshots[name]

    def deliver(self, result: ClipResult) -> None:
        """An engine's result: to the process hosting its stream (its state publishes the label)."""
        process = self._owner.get(result.clip.stream)
        if process is not None and process.link is not None:
            process.link.send(
                ("result", clip_meta(result.clip), result.probs, result.batch_size, result.extra)
            )

    def released(self, clip: Clip) -> None:
        """The engine is done with a clip's frames: its array is free again (the batcher's ``on_release``)."""
        block = self._blocks.get(clip.stream)
        process = self._owner.get(clip.stream)
        if block is None or process is None or process.link is None:
            return
        with contextlib.suppress(
            ValueError
        ):  # not one of this block's arrays (a restarted stream's old clip)
            slot, index = block.index_of(clip.frames)
            process.link.send(("released", clip.key, clip.stream, slot, index))

    def reset(self, name: str, subject: str | None) -> int:
        if name not in self._configs:
            known = ", ".join(self._configs) or "none"
            raise KeyError(f"unknown stream {name!r} (streams: {known})")
        ok, value = self._ask(name, ("reset", name, subject), _REQUEST_S)
        if not ok:
            raise VstmonError(f"stream {name!r}: {value}")
        return int(value)

    def picture(self, name: str) -> tuple[np.ndarray, tuple[int, int]] | None:
        if name not in self._configs:
            return None
        ok, value = self._ask(name, ("picture", name), _PICTURE_S)
        return value if ok else None

    def problems(self, timeout_s: float) -> list[str]:
        """Stream workers that died or stalled in their processes (from their snapshots); a worker process that
        died is being started again, which is not a problem for the watchdog."""
        problems = []
        for name, snap in list(self._snapshots.items()):
            process = self._owner.get(name)
            if process is None or not process.alive or name not in self._started:
                continue
            if not snap.worker_alive:
                problems.append(f"worker {name} thread died")
            elif snap.worker_busy and snap.worker_since_s > timeout_s:
                problems.append(
                    f"worker {name}: no frame handled for {snap.worker_since_s:.0f} s with frames waiting"
                )
        return problems

    # -- stopping --------------------------------------------------------------------------------------------
    def halt(self, names: list[str], deadline_s: float) -> None:
        """Stop the sources and workers of ``names`` in their processes, all within one deadline."""
        asked = []
        for process in self._processes:
            mine = [n for n in names if self._owner.get(n) is process]
            if mine and process.link is not None and process.alive:
                request = process.requests.new()
                process.link.send(("halt", request, mine, max(0.0, deadline_s - time.monotonic())))
                asked.append((process, request))
        for process, request in asked:
            ok, value = process.requests.wait(request, max(0.1, deadline_s - time.monotonic()) + 1.0)
            if not ok:
                _log.error(
                    "a worker process did not halt its streams in time", worker=process.index, why=value
                )

    def close(self, name: str) -> StreamSnapshot | None:
        """A halted stream's final messages (published by its process before it answers) and last snapshot; the
        stream leaves its process and its shared block is freed."""
        if name not in self._configs:
            return None
        ok, value = self._ask(name, ("close", name), _REQUEST_S)
        with self._lock:
            process = self._owner.pop(name, None)
            if process is not None and name in process.streams:
                process.streams.remove(name)
            self._configs.pop(name, None)
            self._started.discard(name)
            last = self._snapshots.pop(name, None)
            block = self._blocks.pop(name, None)
        if block is not None:
            block.close()
        if ok and isinstance(value, StreamSnapshot):
            return value
        return dataclasses.replace(last, state=str(SourceState.STOPPED), reason="stopped") if last else None

    def shutdown(self, deadline_s: float) -> None:
        """Stop every worker process (they have halted their streams) and free what is left. The supervisor
        thread ends last: its end would kill the processes it started (the parent-death signal)."""
        with self._restart_cond:
            self._stopping = True  # no restart from now on (a router that sees its pipe close says nothing)
        for process in self._processes:
            if process.link is not None:
                process.link.send(("stop",))
        for process in self._processes:
            proc = process.process
            if proc is None:
                continue
            try:
                proc.wait(max(0.0, deadline_s - time.monotonic()))
            except subprocess.TimeoutExpired:
                _log.error("a worker process did not stop in time; killed", worker=process.index)
                proc.kill()
                proc.wait(5.0)
            if process.link is not None:
                process.link.close()
        with self._restart_cond:
            self._restart_cond.notify_all()
        if self._supervisor is not None:
            self._supervisor.join(max(0.0, deadline_s - time.monotonic()) + 1.0)
        for block in self._blocks.values():
            block.close()
        self._blocks.clear()

    # -- the pipes -------------------------------------------------------------------------------------------
    def _ask(self, name: str, message: tuple[Any, ...], timeout_s: float) -> tuple[bool, Any]:
        process = self._owner.get(name)
        if process is None or process.link is None or not process.alive:
            return False, "its worker process is restarting"
        request = process.requests.new()
        if not process.link.send((message[0], request, *message[1:])):
            return False, "its worker process is gone"
        return process.requests.wait(request, timeout_s)

    def _route(self, process: _Process, link: Link) -> None:
        """The router thread of one worker process: what it sends, to the engine, the publisher and the host."""
        try:
            while True:
                self._dispatch(process, link.recv())
        except (EOFError, OSError):
            pass
        except Exception:
            _log.exception("router failed", worker=process.index)
        self._lost(process, link)

    def _dispatch(self, process: _Process, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "clip":
            _, key, stream, slot, index, meta = message
            block = self._blocks.get(stream)
            engine = self._pool.engine_of(stream) or self._pool.assign(stream)
            if block is None:
                return
            clip = clip_from_meta(meta, block.arrays[slot][index])
            if not engine.submit(clip):  # refused (an old segment's, a forgotten key's): free at once
                process.link.send(("released", key, stream, slot, index))  # type: ignore[union-attr]
        elif kind == "publish":
            self._publish(message[1], message[2])
        elif kind == "snapshot":
            _, snap, changed = message
            if snap.name in self._configs:
                self._snapshots[snap.name] = snap
                if changed:
                    self._on_change(snap.name, snap)
        elif kind == "reply":
            process.requests.answer(message[1], message[2], message[3])
        elif kind == "discard":
            engine = self._pool.engine_of(message[1].split("/", 1)[0])
            if engine is not None:
                engine.discard(message[1], message[2])
        elif kind == "forget":
            engine = self._pool.engine_of(message[1].split("/", 1)[0])
            if engine is not None:
                engine.forget(message[1])
        elif kind == "wait_idle":
            _, request, key, timeout_s = message
            threading.Thread(
                target=self._wait_idle,
                args=(process, request, key, timeout_s),
                name="router-idle",
                daemon=True,
            ).start()

    def _wait_idle(self, process: _Process, request: int, key: str, timeout_s: float) -> None:
        engine = self._pool.engine_of(key.split("/", 1)[0])
        ok = engine.wait_idle(key, timeout_s) if engine is not None else True
        if process.link is not None:
            process.link.send(("idle", request, ok))

    # -- a worker process that died --------------------------------------------------------------------------
    def _lost(self, process: _Process, link: Link) -> None:
        process.alive = False
        process.requests.fail_all("its worker process died")
        if self._stopping or process.link is not link:
            return
        proc = process.process
        code = None
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1.0)
            code = proc.returncode
        why = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        _log.error("worker process died; its streams resume in a new one", worker=process.index, why=why,
                   streams=process.streams)  # fmt: skip
        for name in list(process.streams):
            engine = self._pool.engine_of(name)
            if engine is not None:
                engine.forget_stream(name)  # its clips in flight are never published
            last = self._snapshots.get(name)
            if last is not None:
                snap = dataclasses.replace(
                    last,
                    state=str(SourceState.RECONNECTING),
                    reason=f"worker process died ({why}); restarting",
                )
                self._snapshots[name] = snap
                self._on_change(name, snap)
        quick = time.monotonic() - process.started_mono_s < _QUICK_DEATH_S
        base = self.config.workers.restart_delay_s if self.config is not None else 0.5
        process.restart_delay_s = (
            min(_MAX_RESTART_DELAY_S, max(base, process.restart_delay_s * 2)) if quick else base
        )
        with self._restart_cond:
            self._due.append((time.monotonic() + process.restart_delay_s, process))
            self._restart_cond.notify_all()

    def _restart(self, process: _Process) -> None:
        """Start ``process`` again (the supervisor thread) and give it its streams back."""
        try:
            self._await(process, *self._launch(process))
        except Exception as error:
            _log.error("a worker process could not be started again; retrying", worker=process.index,
                       error=str(error))  # fmt: skip
            self._lost(process, process.link)  # type: ignore[arg-type]
            return
        process.restarts += 1
        for name in list(process.streams):
            last = self._snapshots.get(name)
            segment = last.segment if last is not None and last.segment else 0
            self._hand_over(process, name, first_segment=segment + 1)
            if name in self._started:
                process.link.send(("start", name))  # type: ignore[union-attr]
