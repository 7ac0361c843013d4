"""Inference engine: one per device; batches clips across streams and runs the model.

``Engine`` owns the model on its device, its precision and its batching. Stream workers ``submit`` clips.
Clips belong to *clip streams*, named by ``Clip.key``: ``"<stream>"`` for whole-frame clips, and
``"<stream>/<subject id>"`` for the clips of one tracked person. Each clip stream has ONE pending slot (a newer
clip replaces the older one, counted as dropped), so memory is bounded whatever the load. One worker thread
gathers pending clips into a batch (up to ``max_batch``, waiting up to ``max_wait_ms`` after the oldest pending
slot was filled for more), copies their frames into a preallocated (pinned, on CUDA) host buffer, moves it to
the device asynchronously, normalises on the device, runs the model under ``torch.inference_mode()`` and
autocast, and hands every clip's fp32 softmax probabilities to ``on_result``.

Fairness (which clips make a batch when more clip streams are pending than ``max_batch``): streams, not clip
streams, take turns, round robin across batches. The streams with something pending are ordered by when one of
their clips last went into a batch, least recently first (streams never served first, among themselves in order
of their oldest pending slot); each round takes one clip of each stream in that order, the oldest pending slot
of that stream first, and rounds repeat until the batch is full. So every stream with something pending gets at
least ``max_batch // streams pending`` clips of a batch (or all it has pending, if fewer): at least one per
batch while streams pending <= ``max_batch``, and at least one in every ``ceil(streams pending / max_batch)``
batches beyond that. A camera with many people only uses the room the other cameras leave, and its people take
turns among themselves (oldest first). A slot's age is when it was filled: a newer clip replacing a pending one
keeps the slot's place, so a person whose clips keep coming is never pushed back behind the others.

Clip streams that end for good (a subject's track is gone) are ``forget``-ed: their pending clip is discarded,
results of their clips in flight are never delivered, and their bookkeeping is removed once nothing of them is
in flight, so people coming and going for hours do not grow the engine. Drops are also counted per stream
(``clips_dropped_for_stream``), surviving the clip streams they happened in.

Frame ownership: the engine reads ``clip.frames`` only while holding its lock and only while the clip is
pending: the staging copy happens at the moment the clip leaves its slot. So once ``submit`` has returned
and the clip stream has submitted its *next* clip (or the engine has taken this one), the caller may reuse the
array; a pool of two arrays per clip stream is enough (see ``worker.StreamWorker``).

``EnginePool`` puts one engine (one model copy) on each device and assigns streams round-robin (all clip
streams of a stream go to its engine).
"""

from __future__ import annotations

import copy
import gc
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from vstmon.log import get_logger
from vstmon.types import Clip, ClipResult

__all__ = ["Engine", "EnginePool", "auto_half_dtype", "resolve_devices", "resolve_dtype"]

_log = get_logger("engine")
_GROW_AFTER = 50  # batches in a row without out-of-memory before max_batch grows back by one

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_devices(spec: str | Sequence[str]) -> list[torch.device]:
    """``auto`` -> cuda if available else cpu; ``cuda`` -> cuda:0; a list -> each of them (order kept)."""
    items = [spec] if isinstance(spec, str) else list(spec)
    devices: list[torch.device] = []
    for item in items:
        if item == "auto":
            device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        elif item == "cuda":
            device = torch.device("cuda:0")
        else:
            device = torch.device(item)
        if device not in devices:
            devices.append(device)
    return devices


def auto_half_dtype(capability: tuple[int, int]) -> torch.dtype:
    """The half precision a GPU of this compute capability runs natively: bf16 from 8.0 (Ampere, Jetson Orin),
    fp16 before (T4, V100, Jetson Xavier; their bf16 is emulated and slow)."""
    return torch.bfloat16 if capability >= (8, 0) else torch.float16


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` = on CUDA, bf16 or fp16 by the capability of ``device`` itself (``auto_half_dtype``; not
    ``torch.cuda.is_bf16_supported()``, which counts emulation and asks the current device); fp32 elsewhere."""
    if precision == "auto":
        if device.type == "cuda":
            return auto_half_dtype(torch.cuda.get_device_capability(device))
        return torch.float32
    try:
        return _DTYPES[precision]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r} (auto, fp32, fp16 or bf16)") from None


def _is_oom(error: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(error, oom_type):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


class _Pending:
    """A filled slot: its clip, when that clip was submitted, when and in which order the slot was filled."""

    __slots__ = ("clip", "order", "since_mono_s", "submit_mono_s")

    def __init__(self, clip: Clip, submit_mono_s: float, since_mono_s: float, order: int) -> None:
        self.clip = clip
        self.submit_mono_s = submit_mono_s  # this clip's submit (latency)
        self.since_mono_s = since_mono_s  # the slot's fill, kept when a newer clip replaces this one
        self.order = order  # the slot's place in the queue (slots filled earlier come first)


class _ClipStream:
    """Per clip stream (``Clip.key``) bookkeeping; lives in ``Engine._keys`` from the first submit or discard
    until ``forget`` (or, when a clip of it is in flight then, until that clip's batch has finished)."""

    __slots__ = ("dropped", "forgotten", "inflight", "min_segment")

    def __init__(self) -> None:
        self.min_segment = 0  # clips of older segments are refused / not delivered
        self.inflight = 0  # clips of this key in the batch being run (0 or 1)
        self.dropped = 0  # pending clips replaced by a newer one
        self.forgotten = False  # ended for good: nothing more is accepted or delivered


def _fair_order(
    pending: Sequence[_Pending], max_batch: int, last_served: Mapping[str, int]
) -> list[_Pending]:
    """The clips of the next batch (see "Fairness" in the module docstring): streams in turn, least recently
    served first (``last_served``: stream -> its latest pick; never served: oldest pending slot first), one clip
    per stream per round, oldest slot first within a stream."""
    by_stream: dict[str, deque[_Pending]] = {}
    for p in sorted(pending, key=lambda p: p.order):
        by_stream.setdefault(p.clip.stream, deque()).append(p)  # insertion order: by oldest pending slot
    order = sorted(by_stream, key=lambda stream: last_served.get(stream, -1))  # stable: ties keep slot order
    queues = [by_stream[stream] for stream in order]
    chosen: list[_Pending] = []
    while queues and len(chosen) < max_batch:
        for queue in queues:
            if len(chosen) == max_batch:
                break
            chosen.append(queue.popleft())
        queues = [queue for queue in queues if queue]
    return chosen


class Engine:
    """One model on one device; batches clips across streams (see the module docstring).

    ``on_result`` is called on the engine thread, once per clip, in batch order; an exception it raises is
    logged and counted, never fatal. ``result.extra`` carries ``submit_mono_s`` (when the clip was submitted)
    and ``done_mono_s`` (when its batch finished). ``on_batch(size, seconds)`` is called once per batch. ``normalize`` maps a uint8 (N, T, H, W, 3) tensor on the device to the
    model's float (N, 3, T, H, W) input (default: ``vstmon.preprocess.normalize_clips``).
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device,
        precision: str,
        max_batch: int,
        max_wait_ms: float,
        on_result: Callable[[ClipResult], None],
        gpu_memory_fraction: float | None = None,
        compile: bool = False,
        normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
        name: str | None = None,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.device = resolve_devices(str(device))[0] if isinstance(device, str) else device
        self.dtype = resolve_dtype(precision, self.device)
        self.name = name or str(self.device)
        if normalize is None:
            from vstmon.preprocess import normalize_clips

            normalize = normalize_clips
        self._normalize = normalize
        self._on_result = on_result
        self._on_batch = on_batch
        self.max_batch = int(max_batch)
        self._configured_max_batch = self.max_batch  # what max_batch grows back to after out-of-memory splits
        self._fits_in_a_row = 0
        self._max_wait_s = max(0.0, float(max_wait_ms)) / 1000.0
        if self.device.type == "cuda" and gpu_memory_fraction is not None:
            torch.cuda.set_per_process_memory_fraction(float(gpu_memory_fraction), self.device)
        self.model = model.to(self.device).eval()
        self._forward: Callable[[torch.Tensor], torch.Tensor] = self.model
        if compile:
            try:
                self._forward = torch.compile(self.model)  # type: ignore[assignment]
            except Exception as error:  # an optional speed-up must never stop the daemon
                _log.warning("torch.compile failed; running eager", device=self.name, error=str(error))
        self._autocast = self.dtype != torch.float32
        # staging: allocated once for the clip shape (first batch), reused for every batch
        self._host: torch.Tensor | None = None  # (max_batch, T, H, W, 3) uint8, pinned on CUDA
        self._host_np: np.ndarray | None = None  # numpy view of _host
        self._clip_shape: tuple[int, ...] | None = None

        self._cond = threading.Condition()
        # per clip stream (Clip.key): both bounded by the live clip streams (``forget`` removes a key)
        self._pending: dict[str, _Pending] = {}  # key -> its one pending clip
        self._keys: dict[str, _ClipStream] = {}  # key -> segment floor, in-flight count, drops, forgotten
        self._order = 0  # slots filled so far (the queue order of _Pending)
        self._last_served: dict[
            str, int
        ] = {}  # stream -> the pick number of its latest clip taken (fairness)
        self._picks = 0  # clips taken into batches so far
        self._stop = False
        self._thread: threading.Thread | None = None
        # counters (written by the engine thread or under the lock; read without it for stats)
        self.batches = 0
        self.clips = 0
        self.errors = 0
        self.callback_errors = 0
        self.oom_splits = 0
        self.clips_failed = 0
        self.clips_discarded = 0
        self._dropped_by_stream: dict[str, int] = {}  # stream -> pending clips replaced, over all its keys
        self.last_batch_s = 0.0
        self.last_batch_size = 0
        self.busy_s = 0.0
        self._batch_running = False  # a batch is out of the pending slots and being run
        self._progress_mono_s = time.monotonic()  # a batch finished, or work came to an idle engine
        self._batch_size_counts: dict[int, int] = {}

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread (once)."""
        if self._thread is not None:
            return
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"engine-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the worker to finish its current batch and exit; pending clips are dropped."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the worker thread; True when it has exited."""
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- producers --------------------------------------------------------------------------------------------
    def submit(self, clip: Clip, block: bool = False, timeout_s: float | None = None) -> bool:
        """Queue ``clip`` in its clip stream's slot (``clip.key``); True when queued.

        ``block=False``: an older pending clip of the same clip stream is replaced (counted in
        ``clips_dropped``); the slot keeps its place in the queue. ``block=True``: wait (up to ``timeout_s``,
        forever when None) until the slot is free; False on timeout or stop. Clips of a segment already
        discarded, and clips of a key forgotten while a clip of it is still in flight, are refused (False,
        counted in ``clips_discarded``).
        """
        key = clip.key
        shape = tuple(clip.frames.shape)
        if clip.frames.dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
            raise ValueError(
                f"stream {key}: a clip must be uint8 (T, H, W, 3), got {clip.frames.dtype} {shape}"
            )
        with self._cond:
            if self._clip_shape is None:
                self._clip_shape = shape  # every clip must have this shape (one staging buffer)
            elif shape != self._clip_shape:
                raise ValueError(
                    f"stream {key}: clip shape {shape} differs from the engine's {self._clip_shape}"
                )
            if self._stop:
                return False
            state = self._keys.get(key)
            if state is None:
                state = self._keys[key] = _ClipStream()
            if state.forgotten or clip.segment < state.min_segment:
                self.clips_discarded += 1
                return False
            if block and key in self._pending:
                deadline = None if timeout_s is None else time.monotonic() + timeout_s
                while key in self._pending and not self._stop:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                if self._stop:
                    return False
                # discarded or forgotten while waiting (a forgotten key may already be gone from _keys)
                if self._keys.get(key) is not state or state.forgotten or clip.segment < state.min_segment:
                    self.clips_discarded += 1
                    return False
            now_s = time.monotonic()
            if (
                not self._pending and not self._batch_running
            ):  # idle until now: progress is measured from here
                self._progress_mono_s = now_s
            previous = self._pending.get(key)
            if previous is not None:
                state.dropped += 1
                self._dropped_by_stream[clip.stream] = self._dropped_by_stream.get(clip.stream, 0) + 1
                self._pending[key] = _Pending(clip, now_s, previous.since_mono_s, previous.order)
            else:
                self._order += 1
                self._pending[key] = _Pending(clip, now_s, now_s, self._order)
            self._cond.notify_all()
            return True

    def discard(self, key: str, before_segment: int) -> int:
        """Drop clip stream ``key``'s pending clip if its segment is older than ``before_segment`` and refuse
        its later clips of such segments; results of its clips of such segments still in flight are not
        delivered. Returns how many pending clips were dropped (0 or 1). For a subject's clip stream that has
        ended, call ``forget`` instead (a ``discard`` after ``forget`` would bring the key back)."""
        with self._cond:
            state = self._keys.get(key)
            if state is None:
                state = self._keys[key] = _ClipStream()
            state.min_segment = max(state.min_segment, int(before_segment))
            pending = self._pending.get(key)
            if pending is not None and pending.clip.segment < before_segment:
                del self._pending[key]
                self.clips_discarded += 1
                self._cond.notify_all()
                return 1
            return 0

    def forget(self, key: str) -> int:
        """Clip stream ``key`` has ended for good (its subject is gone): its pending clip is dropped (counted
        in ``clips_discarded``), results of its clips in flight are never delivered, and everything the engine
        keeps for ``key`` is removed at once, or when its batch in flight finishes (until then its new clips
        are refused). Drops stay counted for its stream (``clips_dropped_for_stream``). A result already being
        handed to ``on_result`` when this is called may still arrive: ``wait_idle(key)`` returns once none
        can. A later clip with the same key starts a new clip stream. Returns the pending clips dropped (0
        or 1)."""
        with self._cond:
            dropped = 0
            if self._pending.pop(key, None) is not None:
                self.clips_discarded += 1
                dropped = 1
            state = self._keys.get(key)
            if state is not None:
                state.forgotten = True
                if state.inflight == 0:
                    del self._keys[key]
            self._cond.notify_all()
            return dropped

    def _idle_locked(self, key: str) -> bool:
        state = self._keys.get(key)
        return key not in self._pending and (state is None or state.inflight == 0)

    def idle(self, key: str) -> bool:
        """True when clip stream ``key`` has no pending clip and none in flight (all its results delivered)."""
        with self._cond:
            return self._idle_locked(key)

    def wait_idle(self, key: str, timeout_s: float) -> bool:
        """Wait until ``idle(key)``; False on timeout or when the engine stops first."""
        with self._cond:
            return (
                self._cond.wait_for(lambda: self._stop or self._idle_locked(key), timeout_s)
                and not self._stop
            )

    def progress(self) -> tuple[bool, float]:
        """(work to do, seconds since the last progress): work = clips pending or a batch running; progress = a
        batch finished, or work arrived while the engine was idle. A wedged engine (a forward that never
        returns) has work and no progress: the daemon stops the watchdog pings."""
        with self._cond:
            busy = bool(self._pending) or self._batch_running
            return busy, time.monotonic() - self._progress_mono_s

    def pending_count(self) -> int:
        """Clips waiting for a batch (at most one per clip stream)."""
        with self._cond:
            return len(self._pending)

    def clips_dropped(self, key: str) -> int:
        """Pending clips of clip stream ``key`` replaced by a newer one (0 once the key is forgotten)."""
        with self._cond:
            state = self._keys.get(key)
            return state.dropped if state is not None else 0

    def clips_dropped_for_stream(self, stream: str) -> int:
        """Pending clips replaced by a newer one in all clip streams of ``stream``, forgotten ones included."""
        with self._cond:
            return self._dropped_by_stream.get(stream, 0)

    def stats(self) -> dict[str, Any]:
        """Counters: batches, clips, mean batch size, per-stream drops, live clip streams, last batch latency."""
        batches = self.batches
        return {
            "device": self.name,
            "dtype": str(self.dtype).removeprefix("torch."),
            "max_batch": self.max_batch,
            "batches": batches,
            "clips": self.clips,
            "mean_batch_size": (self.clips / batches) if batches else 0.0,
            "batch_sizes": dict(self._batch_size_counts),
            "clips_dropped": dict(self._dropped_by_stream),
            "clip_streams": len(self._keys),
            "clips_discarded": self.clips_discarded,
            "clips_failed": self.clips_failed,
            "errors": self.errors,
            "callback_errors": self.callback_errors,
            "oom_splits": self.oom_splits,
            "last_batch_s": self.last_batch_s,
            "last_batch_size": self.last_batch_size,
            "busy_s": self.busy_s,
        }

    def infer(self, frames: np.ndarray) -> np.ndarray:
        """Run uint8 clips (N, T, H, W, 3) synchronously on the caller's thread, the same way as a batch
        (copy, normalise, autocast forward, fp32 softmax) -> probabilities (N, C). For benchmarks and tools."""
        return self._infer(torch.from_numpy(np.ascontiguousarray(frames)))

    # -- worker -----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            batch, host = taken
            try:
                self._process(batch, host)
            except Exception as error:  # never let one batch kill the engine thread
                self.errors += 1
                self.clips_failed += len(batch)
                _log.exception("batch failed", device=self.name, size=len(batch), error=str(error))
            finally:
                with self._cond:
                    self._batch_running = False
                    self._progress_mono_s = time.monotonic()
                    for pending, state in batch:
                        state.inflight -= 1
                        key = pending.clip.key
                        if state.forgotten and state.inflight == 0 and self._keys.get(key) is state:
                            del self._keys[key]  # forgotten while in flight: now nothing of it is left
                    self._cond.notify_all()

    def _take(self) -> tuple[list[tuple[_Pending, _ClipStream]], torch.Tensor] | None:
        """Wait for a batch; copy its frames into the staging buffer (lock held) and free their slots."""
        with self._cond:
            while not self._stop:
                if self._pending:
                    first_s = min(p.since_mono_s for p in self._pending.values())
                    wait_s = first_s + self._max_wait_s - time.monotonic()
                    if len(self._pending) >= self.max_batch or wait_s <= 0:
                        break
                    self._cond.wait(wait_s)
                else:
                    self._cond.wait()
            if self._stop:
                return None
            chosen = _fair_order(list(self._pending.values()), self.max_batch, self._last_served)
            for p in chosen:
                self._picks += 1
                self._last_served[p.clip.stream] = self._picks
            batch = [(p, self._keys[p.clip.key]) for p in chosen]  # a pending key always has its state
            try:
                host = self._stage([p.clip for p in chosen])
            finally:
                for p in chosen:
                    del self._pending[p.clip.key]
                self._cond.notify_all()
            for _, state in batch:
                state.inflight += 1
            self._batch_running = True
            return batch, host

    def _stage(self, clips: list[Clip]) -> torch.Tensor:
        shape = self._clip_shape or tuple(clips[0].frames.shape)
        if self._host is None:
            pin = self.device.type == "cuda"
            self._host = torch.empty((self.max_batch, *shape), dtype=torch.uint8, pin_memory=pin)
            self._host_np = self._host.numpy()
            self._clip_shape = shape
            _log.debug("staging buffer allocated", device=self.name, shape=list(self._host.shape), pinned=pin)
        assert self._host_np is not None
        for i, clip in enumerate(clips):
            if tuple(clip.frames.shape) != shape:
                raise ValueError(
                    f"stream {clip.stream}: clip shape {tuple(clip.frames.shape)} differs from {shape}"
                )
            np.copyto(self._host_np[i], clip.frames)
        return self._host[: len(clips)]

    def _process(self, batch: list[tuple[_Pending, _ClipStream]], host: torch.Tensor) -> None:
        start_s = time.monotonic()
        probs = self._infer_split(host)
        elapsed_s = time.monotonic() - start_s
        if probs is None:
            self.clips_failed += len(batch)
            return
        n = len(batch)
        self.batches += 1
        self.clips += n
        self.last_batch_s = elapsed_s
        self.last_batch_size = n
        self.busy_s += elapsed_s
        self._batch_size_counts[n] = self._batch_size_counts.get(n, 0) + 1
        if self._on_batch is not None:
            try:
                self._on_batch(n, elapsed_s)
            except Exception as error:
                _log.warning("batch callback failed", device=self.name, error=str(error))
        done_s = time.monotonic()
        for i, (pending, state) in enumerate(batch):
            clip = pending.clip
            if np.isnan(probs[i, 0]):  # out of memory even alone: dropped (counted, logged)
                self.clips_failed += 1
                continue
            if state.forgotten or clip.segment < state.min_segment:
                self.clips_discarded += (
                    1  # its segment was reset, or its subject left, while it was in flight
                )
                continue
            try:
                extra = {"submit_mono_s": pending.submit_mono_s, "done_mono_s": done_s}
                self._on_result(ClipResult(clip=clip, probs=probs[i], batch_size=n, extra=extra))
            except Exception as error:
                self.callback_errors += 1
                _log.exception("result callback failed", device=self.name, stream=clip.key, error=str(error))

    def _infer_split(self, host: torch.Tensor) -> np.ndarray | None:
        """Run ``host`` (n clips); on out-of-memory lower ``max_batch`` and run the halves. Rows of clips that do
        not fit even alone are NaN (dropped by the caller); None when none fitted.

        The retry happens after the ``except`` block is left: the exception's traceback holds the failed
        attempt's frames (staged input, normalised tensor, activations), and retrying under it would need that
        memory twice. After ``_GROW_AFTER`` batches in a row without an out-of-memory error, ``max_batch`` grows
        back by one, up to the configured value.
        """
        out_of_memory = False
        try:
            probs = self._infer(host)
        except Exception as error:
            if not _is_oom(error):
                raise
            out_of_memory = True
        if not out_of_memory:
            self._grow_back()
            return probs
        gc.collect()  # frames of the failed attempt can sit in reference cycles
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        n = host.shape[0]
        self._fits_in_a_row = 0
        if n <= 1:
            _log.error("out of memory on a single clip; clip dropped", device=self.name)
            self.errors += 1
            return None
        self.max_batch = max(1, min(self.max_batch, n - 1))  # below the smallest size that failed
        self.oom_splits += 1
        _log.warning(
            "out of memory: batch split, max_batch lowered",
            device=self.name,
            batch=n,
            max_batch=self.max_batch,
        )
        halves = [self._infer_split(host[: n // 2]), self._infer_split(host[n // 2 :])]
        if all(h is None for h in halves):
            return None
        width = next(h.shape[1] for h in halves if h is not None)
        return np.concatenate(
            [h if h is not None else np.full((len(part), width), np.nan, np.float32)
             for h, part in zip(halves, (host[: n // 2], host[n // 2 :]), strict=True)],
            axis=0,
        )  # fmt: skip

    def _grow_back(self) -> None:
        self._fits_in_a_row += 1
        if self.max_batch < self._configured_max_batch and self._fits_in_a_row >= _GROW_AFTER:
            self.max_batch += 1
            self._fits_in_a_row = 0
            _log.info(
                "max_batch raised again after batches that fitted", device=self.name, max_batch=self.max_batch
            )

    def _infer(self, host: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            frames = host.to(self.device, non_blocking=True)  # (N, T, H, W, 3) uint8
            x = self._normalize(frames)  # (N, 3, T, H, W) float
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self._autocast):
                logits = self._forward(x)  # (N, C)
            probs = torch.softmax(logits.float(), dim=-1)  # (N, C) fp32
            return probs.cpu().numpy()


class EnginePool:
    """One ``Engine`` per device (one model copy each), streams assigned round-robin."""

    def __init__(
        self,
        model: nn.Module,
        devices: Sequence[str | torch.device] | str,
        precision: str,
        max_batch: int,
        max_wait_ms: float,
        on_result: Callable[[ClipResult], None],
        gpu_memory_fraction: float | None = None,
        compile: bool = False,
        normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
        on_batch: Callable[[str, int, float], None] | None = None,
    ) -> None:
        # one list, duplicates dropped (cuda and cuda:0 are one device: one engine)
        resolved = resolve_devices(devices if isinstance(devices, str) else [str(d) for d in devices])
        # every replica is copied from the model as given (on the CPU), before the first engine moves its own
        # copy: a copy of a model already on cuda:0 would pass through cuda:0's memory (and its cap)
        replicas = [model] + [copy.deepcopy(model) for _ in resolved[1:]]
        self.engines: list[Engine] = []
        for device, replica in zip(resolved, replicas, strict=True):
            self.engines.append(
                Engine(
                    replica,
                    device,
                    precision,
                    max_batch,
                    max_wait_ms,
                    on_result,
                    gpu_memory_fraction=gpu_memory_fraction,
                    compile=compile,
                    normalize=normalize,
                    on_batch=(lambda n, s, name=str(device): on_batch(name, n, s)) if on_batch else None,
                )
            )
        self._assigned: dict[str, Engine] = {}

    @property
    def devices(self) -> list[str]:
        return [engine.name for engine in self.engines]

    def assign(self, stream: str) -> Engine:
        """The engine for ``stream`` (round-robin over devices on first call; fixed afterwards)."""
        engine = self._assigned.get(stream)
        if engine is None:
            engine = self.engines[len(self._assigned) % len(self.engines)]
            self._assigned[stream] = engine
        return engine

    def start(self) -> None:
        for engine in self.engines:
            engine.start()

    def stop(self) -> None:
        for engine in self.engines:
            engine.stop()

    def join(self, timeout_s: float | None = None) -> bool:
        return all([engine.join(timeout_s) for engine in self.engines])

    def stats(self) -> list[dict[str, Any]]:
        return [engine.stats() for engine in self.engines]
