"""The batcher: per clip stream pending slots, fairness across streams, discards and forgets. No torch here.

Clips belong to *clip streams*, named by ``Clip.key``: ``"<stream>"`` for whole-frame clips, and
``"<stream>/<subject id>"`` for the clips of one tracked person. Each clip stream has ONE pending slot (a newer
clip replaces the older one, counted as dropped), so memory is bounded whatever the load. ``take`` gathers
pending clips into a batch (up to ``max_batch``, waiting up to ``max_wait_ms`` after the oldest pending slot was
filled for more).

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
in flight, so people coming and going for hours do not grow the batcher. Drops are also counted per stream
(``clips_dropped_for_stream``), surviving the clip streams they happened in.

Frame ownership: a clip's frames are read while it is pending and while its batch is being staged (between
``take`` and ``staged``); a submit of a clip stream whose previous clip is being staged waits for that copy
alone. So once ``submit`` has returned and the clip stream has submitted its *next* clip, the caller may reuse
the first clip's array; a pool of two arrays per clip stream is enough (see ``clip_stream.ClipStream``).

Wake-ups are targeted, so that many streams do not make one another (and the engine) run for nothing: one lock,
and a condition per kind of waiter: the engine waits for work, ``wait_idle`` callers for results delivered, and
a submitter waiting for its clip stream's slot (or for its previous clip's copy) on a condition of that clip
stream alone, told only when that slot frees.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from vstmon.types import Clip

__all__ = ["Batch", "Batcher"]


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


class _SlotWait:
    """The submitters of one clip stream blocked on its slot (``Batcher._wait_for_slot``)."""

    __slots__ = ("cond", "waiters")

    def __init__(self, cond: threading.Condition) -> None:
        self.cond = cond
        self.waiters = 0


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


Batch = list[tuple[_Pending, _ClipStream]]  # the clips of one batch, each with its clip stream's bookkeeping


class Batcher:
    """Pending slots and batching for one engine (see the module docstring). Thread-safe; ``take`` is called by
    one consumer (the engine thread)."""

    def __init__(
        self,
        max_wait_ms: float,
        clip_shape: tuple[int, ...] | None = None,
        on_release: Callable[[Clip], None] | None = None,
    ) -> None:
        self._max_wait_s = max(0.0, float(max_wait_ms)) / 1000.0
        # told when the engine will never read a clip's frames again (copied, replaced, discarded, forgotten):
        # a clip stream in another process may then cut into that array (stream/buffers.py); never under the lock
        self._on_release = on_release
        self._clip_shape = clip_shape  # every clip must have this shape (set by the first clip when None)
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the engine (take): clips came, or stop
        self._delivered = threading.Condition(self._lock)  # wait_idle: a clip stream's results are all out
        self._slot_waits: dict[
            str, _SlotWait
        ] = {}  # key -> its blocked submitters (only while there are any)
        # per clip stream (Clip.key): both bounded by the live clip streams (``forget`` removes a key)
        self._pending: dict[str, _Pending] = {}  # key -> its one pending clip
        self._keys: dict[str, _ClipStream] = {}  # key -> segment floor, in-flight count, drops, forgotten
        self._staging: set[str] = set()  # keys whose clip is being copied by the consumer (lock released)
        self._order = 0  # slots filled so far (the queue order of _Pending)
        self._last_served: dict[str, int] = {}  # stream -> the pick number of its latest clip taken
        self._picks = 0  # clips taken into batches so far
        self._stop = False
        self.clips_discarded = 0
        self._dropped_by_stream: dict[str, int] = {}  # stream -> pending clips replaced, over all its keys
        self._batch_running = False  # a batch is out of the pending slots and not finished
        self._progress_mono_s = time.monotonic()  # a batch finished, or work came while idle

    @property
    def clip_shape(self) -> tuple[int, ...] | None:
        return self._clip_shape

    @property
    def stopped(self) -> bool:
        return self._stop

    def stop(self) -> None:
        """Wake every waiter; later submits are refused and ``take`` returns None."""
        with self._lock:
            self._stop = True
            self._work.notify_all()
            self._delivered.notify_all()
            for wait in self._slot_waits.values():
                wait.cond.notify_all()

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
        with self._lock:
            while key in self._staging and not self._stop:  # its previous clip is being copied (two arrays)
                self._wait_for_slot(key, None)
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
                while (key in self._pending or key in self._staging) and not self._stop:  # slot, then copy
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._wait_for_slot(key, remaining)
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
            self._work.notify()  # one engine thread per batcher
        if previous is not None:
            self._release(previous.clip)
        return True

    def discard(self, key: str, before_segment: int) -> int:
        """Drop clip stream ``key``'s pending clip if its segment is older than ``before_segment`` and refuse
        its later clips of such segments; results of its clips of such segments still in flight are not
        delivered. Returns how many pending clips were dropped (0 or 1). For a subject's clip stream that has
        ended, call ``forget`` instead (a ``discard`` after ``forget`` would bring the key back)."""
        with self._lock:
            state = self._keys.get(key)
            if state is None:
                state = self._keys[key] = _ClipStream()
            state.min_segment = max(state.min_segment, int(before_segment))
            pending = self._pending.get(key)
            if pending is None or pending.clip.segment >= before_segment:
                return 0
            del self._pending[key]
            self.clips_discarded += 1
            self._slot_freed(key)
            self._delivered.notify_all()
        self._release(pending.clip)
        return 1

    def forget(self, key: str) -> int:
        """Clip stream ``key`` has ended for good (its subject is gone): its pending clip is dropped (counted
        in ``clips_discarded``), results of its clips in flight are never delivered, and everything the engine
        keeps for ``key`` is removed at once, or when its batch in flight finishes (until then its new clips
        are refused). Drops stay counted for its stream (``clips_dropped_for_stream``). A result already being
        handed to ``on_result`` when this is called may still arrive: ``wait_idle(key)`` returns once none
        can. A later clip with the same key starts a new clip stream. Returns the pending clips dropped (0
        or 1)."""
        with self._lock:
            pending = self._pending.pop(key, None)
            if pending is not None:
                self.clips_discarded += 1
            state = self._keys.get(key)
            if state is not None:
                state.forgotten = True
                if state.inflight == 0:
                    del self._keys[key]
            self._slot_freed(key)
            self._delivered.notify_all()
        if pending is None:
            return 0
        self._release(pending.clip)
        return 1

    def keys_of(self, stream: str) -> list[str]:
        """The clip streams of ``stream`` the batcher knows (its own key and its people's)."""
        with self._lock:
            return [k for k in self._keys if k == stream or k.startswith(f"{stream}/")]

    def _idle_locked(self, key: str) -> bool:
        state = self._keys.get(key)
        return key not in self._pending and (state is None or state.inflight == 0)

    def idle(self, key: str) -> bool:
        """True when clip stream ``key`` has no pending clip and none in flight (all its results delivered)."""
        with self._lock:
            return self._idle_locked(key)

    def wait_idle(self, key: str, timeout_s: float) -> bool:
        """Wait until ``idle(key)``; False on timeout or when the engine stops first."""
        with self._lock:
            return (
                self._delivered.wait_for(lambda: self._stop or self._idle_locked(key), timeout_s)
                and not self._stop
            )

    def progress(self) -> tuple[bool, float]:
        """(work to do, seconds since the last progress): work = clips pending or a batch running; progress = a
        batch finished, or work arrived while the engine was idle. A wedged engine (a forward that never
        returns) has work and no progress: the daemon stops the watchdog pings."""
        with self._lock:
            busy = bool(self._pending) or self._batch_running
            return busy, time.monotonic() - self._progress_mono_s

    def starving(self) -> bool:
        """Clips wait and no batch runs (the engine gathering a batch, or held up): a benchmark samples it."""
        with self._lock:
            return bool(self._pending) and not self._batch_running

    def pending_count(self) -> int:
        """Clips waiting for a batch (at most one per clip stream)."""
        with self._lock:
            return len(self._pending)

    def clips_dropped(self, key: str) -> int:
        """Pending clips of clip stream ``key`` replaced by a newer one (0 once the key is forgotten)."""
        with self._lock:
            state = self._keys.get(key)
            return state.dropped if state is not None else 0

    def clips_dropped_for_stream(self, stream: str) -> int:
        """Pending clips replaced by a newer one in all clip streams of ``stream``, forgotten ones included."""
        with self._lock:
            return self._dropped_by_stream.get(stream, 0)

    def take(self, max_batch: int) -> Batch | None:
        """Wait for a batch of at most ``max_batch`` clips (see the module docstring); take its clips out of
        their slots, marked in flight and being staged. None once stopped. Call ``staged`` once its frames are
        copied and ``finish`` once it is done."""
        with self._lock:
            while not self._stop:
                if self._pending:
                    first_s = min(p.since_mono_s for p in self._pending.values())
                    wait_s = first_s + self._max_wait_s - time.monotonic()
                    if len(self._pending) >= max_batch or wait_s <= 0:
                        break
                    self._work.wait(wait_s)
                else:
                    self._work.wait()
            if self._stop:
                return None
            chosen = _fair_order(list(self._pending.values()), max_batch, self._last_served)
            for p in chosen:
                self._picks += 1
                self._last_served[p.clip.stream] = self._picks
            batch = [(p, self._keys[p.clip.key]) for p in chosen]  # a pending key always has its state
            for p, state in batch:
                del self._pending[p.clip.key]
                self._staging.add(p.clip.key)
                state.inflight += 1
            self._batch_running = True  # its keys are now staging: their submitters still wait (see staged)
        return batch

    def staged(self, batch: Batch) -> None:
        """The frames of ``batch`` are copied: its clip streams may submit (and reuse their arrays) again."""
        with self._lock:
            for p, _ in batch:
                self._staging.discard(p.clip.key)
                self._slot_freed(p.clip.key)
        for pending, _state in batch:
            self._release(pending.clip)

    def _wait_for_slot(self, key: str, timeout_s: float | None) -> None:
        """Wait (the lock held) until ``key``'s slot or staging frees, ``stop``, or ``timeout_s``."""
        wait = self._slot_waits.get(key)
        if wait is None:
            wait = self._slot_waits[key] = _SlotWait(threading.Condition(self._lock))
        wait.waiters += 1
        try:
            wait.cond.wait(timeout_s)
        finally:
            wait.waiters -= 1
            if wait.waiters == 0:
                del self._slot_waits[key]

    def _slot_freed(self, key: str) -> None:
        """(The lock held.) ``key``'s pending slot or its staging has freed: wake its submitters, no others."""
        wait = self._slot_waits.get(key)
        if wait is not None:
            wait.cond.notify_all()

    def _release(self, clip: Clip) -> None:
        if self._on_release is not None:
            self._on_release(clip)

    def finish(self, batch: Batch) -> None:
        """``batch`` is done (delivered or failed): nothing of it is in flight any more."""
        with self._lock:
            self._batch_running = False
            self._progress_mono_s = time.monotonic()
            for pending, state in batch:
                state.inflight -= 1
                key = pending.clip.key
                if state.forgotten and state.inflight == 0 and self._keys.get(key) is state:
                    del self._keys[key]  # forgotten while in flight: now nothing of it is left
            self._delivered.notify_all()

    @staticmethod
    def current(pending: _Pending, state: _ClipStream) -> bool:
        """The clip's result may still be delivered: its clip stream is not forgotten and its segment is not
        discarded (a result read once its batch is run; the flags only ever move one way)."""
        return not state.forgotten and pending.clip.segment >= state.min_segment

    def count_discarded(self) -> None:
        """A result not delivered (its segment was reset, or its subject left, while it was in flight)."""
        with self._lock:
            self.clips_discarded += 1

    def live_clip_streams(self) -> int:
        with self._lock:
            return len(self._keys)

    def dropped_by_stream(self) -> dict[str, int]:
        with self._lock:
            return dict(self._dropped_by_stream)
