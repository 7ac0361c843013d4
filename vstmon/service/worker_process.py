"""A worker process: hosts a group of streams (decoding, detectors, the stream pipeline: ``LocalStreams``) for the
daemon, which keeps the engine, the publisher and the control socket (``service/workers.py`` starts it).

Clips are cut into shared memory (the daemon's ``SharedBlock`` of each stream, passed as a file descriptor) and
announced over the pipe; the engine says when it is done with each array (``released``), so a clip stream never
cuts into one the engine still reads. Results come back over the pipe to the stream's state, which publishes its
labels through the daemon. Everything else the daemon asks (a control reset, a picture for the live page, a
stop) is a request on the pipe; whatever may take long is answered from a thread of its own, so results keep
flowing meanwhile (a lossless submit may be waiting for a release).

The process ends when the daemon says so, when the pipe closes, or when the daemon dies: the kernel kills it
then (``PR_SET_PDEATHSIG``), and a thread watching the parent ends it too where that signal is not available.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from vstmon.config import StreamConfig, parse_config
from vstmon.log import configure_logging, get_logger
from vstmon.service.streams import LocalStreams, ModelInfo
from vstmon.service.worker_link import Link, Requests, clip_from_meta, clip_meta
from vstmon.stream.buffers import SharedBlock, SharedClipBuffers
from vstmon.types import Clip, ClipResult

__all__ = ["RemoteSink", "main"]

_log = get_logger("worker")
_SNAPSHOT_S = 0.5  # how often every stream's snapshot goes to the daemon (and at once on a change)
_PR_SET_PDEATHSIG = 1


@dataclasses.dataclass(frozen=True)
class _Model:
    """The model as a worker process knows it: the daemon holds the network."""

    labels: list[str]
    model_id: str
    untrained: bool


class RemoteSink:
    """The ``ClipSink`` of a worker process: the engine is in the daemon, on the other end of the pipe."""

    def __init__(self, link: Link, blocks: dict[str, SharedBlock]) -> None:
        self._link = link
        self._blocks = blocks
        self._requests = Requests()
        self._cond = threading.Condition()
        self._outstanding: dict[str, int] = {}  # key -> clips the engine holds (sent, not released)
        self.buffers: dict[tuple[str, int], SharedClipBuffers] = {}  # (stream, slot) -> its two arrays

    def buffers_for(self, stream: str, slots: int) -> Any:
        block = self._blocks[stream]
        if block.slots < slots:
            raise ValueError(
                f"stream {stream}: its shared block has {block.slots} clip slots, {slots} needed"
            )

        def make(slot: int) -> SharedClipBuffers:
            buffers = self.buffers[stream, slot] = SharedClipBuffers(block.arrays[slot])
            return buffers

        return make

    # -- ClipSink ---------------------------------------------------------------------------------------------
    def submit(self, clip: Clip, block: bool = False, timeout_s: float | None = None) -> bool:
        key = clip.key
        slot, index = self._blocks[clip.stream].index_of(clip.frames)
        with self._cond:
            if block and not self._cond.wait_for(lambda: self._outstanding.get(key, 0) == 0, timeout_s):
                return False  # the key's previous clip is still the engine's (a lossless stream waits for it)
            self._outstanding[key] = self._outstanding.get(key, 0) + 1
        if not self._link.send(("clip", key, clip.stream, slot, index, clip_meta(clip))):
            self.released(key, clip.stream, slot, index)
            return False
        return True

    def discard(self, key: str, before_segment: int) -> int:
        self._link.send(("discard", key, before_segment))
        return 0

    def forget(self, key: str) -> int:
        self._link.send(("forget", key))
        return 0

    def wait_idle(self, key: str, timeout_s: float) -> bool:
        request = self._requests.new()
        if not self._link.send(("wait_idle", request, key, timeout_s)):
            return False
        ok, value = self._requests.wait(request, timeout_s + 5.0)
        return bool(ok and value)

    # -- what the daemon says ---------------------------------------------------------------------------------
    def released(self, key: str, stream: str, slot: int, index: int) -> None:
        buffers = self.buffers.get((stream, slot))
        if buffers is not None:
            buffers.released(index)
        with self._cond:
            left = self._outstanding.get(key, 0) - 1
            if left > 0:
                self._outstanding[key] = left
            else:
                self._outstanding.pop(key, None)
            self._cond.notify_all()

    def idle(self, request: int, ok: bool) -> None:
        self._requests.answer(request, True, ok)

    def close(self) -> None:
        self._requests.fail_all("the worker process is stopping")
        with self._cond:
            self._outstanding.clear()
            self._cond.notify_all()


class _Worker:
    """The worker process's own state: its streams, the pipe, its threads (see the module docstring)."""

    def __init__(self, link: Link, config_data: dict[str, Any], loaded: ModelInfo) -> None:
        self.link = link
        self.config = parse_config(config_data, require_streams=False)
        self.blocks: dict[str, SharedBlock] = {}
        self.first_segments: dict[str, int] = {}
        self.sink = RemoteSink(link, self.blocks)
        self.host = LocalStreams(
            self.config,
            loaded,
            sink_for=lambda _name: self.sink,
            publish=lambda topic, body: self.link.send(("publish", topic, body)),
            on_change=lambda name: self._send_snapshot(name, changed=True),
            buffers_for=self.sink.buffers_for,
            first_segment=lambda name: self.first_segments.get(name, 1),
            on_segment=lambda name: self._send_snapshot(name, changed=False),
            decoder_threads=1,  # a process hosts a group: N streams must not take N times the cores
        )
        self.stopping = threading.Event()

    # -- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        threading.Thread(target=self._snapshots, name="worker-snapshots", daemon=True).start()
        try:
            while not self.stopping.is_set():
                message = self.link.recv()
                self._dispatch(message)
        except (EOFError, OSError):  # the daemon is gone
            pass
        finally:
            self._stop_everything()

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "result":
            _, meta, probs, batch_size, extra = message
            self.host.deliver(ClipResult(clip_from_meta(meta), probs, batch_size, extra))
        elif kind == "released":
            self.sink.released(*message[1:])
        elif kind == "idle":
            self.sink.idle(message[1], message[2])
        elif kind == "add":
            _, stream_data, slots, shape, first_segment = message
            fd = self.link.recv_fd()
            stream = StreamConfig.model_validate(stream_data)
            self.blocks[stream.name] = SharedBlock.attach(fd, slots, tuple(shape))
            self.first_segments[stream.name] = first_segment
            self.host.add(stream)
        elif kind == "start":
            self.host.start(message[1])
        elif kind in ("reset", "picture", "halt", "close"):
            threading.Thread(target=self._answer, args=(message,), name=f"worker-{kind}", daemon=True).start()
        elif kind == "stop":
            self.stopping.set()

    def _answer(self, message: tuple[Any, ...]) -> None:
        kind, request = message[0], message[1]
        try:
            if kind == "reset":
                value: Any = self.host.reset(message[2], message[3])
            elif kind == "picture":
                value = self.host.picture(message[2])
            elif kind == "halt":
                self.host.halt(list(message[2]), time.monotonic() + float(message[3]))
                value = None
            else:  # close
                value = self.host.close(message[2])
                block = self.blocks.pop(message[2], None)
                if block is not None:
                    block.close()
        except (KeyError, ValueError) as error:
            self.link.send(("reply", request, False, str(error.args[0] if error.args else error)))
            return
        except Exception as error:
            self.link.send(("reply", request, False, str(error)))
            return
        self.link.send(("reply", request, True, value))

    def _send_snapshot(self, name: str, changed: bool) -> None:
        with contextlib.suppress(KeyError):
            self.link.send(("snapshot", self.host.snapshot(name), changed))

    def _snapshots(self) -> None:
        while not self.stopping.wait(_SNAPSHOT_S):
            for name in self.host.names:
                self._send_snapshot(name, changed=False)

    def _stop_everything(self) -> None:
        self.stopping.set()
        self.sink.close()
        self.host.halt(self.host.names, time.monotonic() + 5.0)


def _die_with_parent(parent_pid: int) -> None:
    """The kernel kills this process when the daemon dies (Linux); and a thread checks, in case it cannot."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the daemon died before the signal was armed
        os._exit(0)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)  # a last resort beside the kernel's signal; no event can tell this
        os._exit(0)

    threading.Thread(target=watch, name="worker-parent", daemon=True).start()


def main(fd: int, parent_pid: int) -> None:
    """Serve the daemon on the pipe ``fd`` until it says stop or goes (``python -m
    vstmon.service.worker_process FD PARENT_PID``; ``service/workers.py`` starts it)."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the daemon decides
    import cv2

    cv2.setNumThreads(1)  # one process hosts a group of streams: OpenCV's own thread pool would oversubscribe
    with contextlib.suppress(Exception):
        import torch

        torch.set_num_threads(
            1
        )  # the person detector's; torch's spinning threads cost more than they give here
    link = Link(Connection(fd))
    kind, config_data, (labels, model_id, untrained), _index = link.recv()
    if kind != "init":
        raise SystemExit(f"worker process: expected init from the daemon, got {kind!r}")
    worker = _Worker(link, config_data, _Model(list(labels), model_id, bool(untrained)))
    log = worker.config.log
    configure_logging(log.level, log.format)
    link.send(("hello", os.getpid()))
    worker.run()
    link.close()
    os._exit(0)  # the streams' threads are stopped; the interpreter's teardown would only slow a restart


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
