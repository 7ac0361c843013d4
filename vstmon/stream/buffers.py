"""Where a clip stream cuts its clips: two preallocated arrays per clip stream, and who may write into which.

A clip's frames are read by the engine while the clip is pending and while its batch is being staged (copied
into the runner's buffer); the clip stream must not cut into that array meanwhile.

- ``AlternatingBuffers`` (the engine in the same process): the engine's own rule keeps it safe. A clip stream
  has at most one pending clip, and a submit waits for the copy of its previous clip (``inference/batcher.py``),
  so the array not holding the last submitted clip is always free: cut into the other one.
- ``SharedClipBuffers`` (the engine in another process, ``service/workers.py``): the arrays live in one shared
  memory block per stream (``SharedBlock``), mapped by both processes; the engine's process says when it is done
  with a clip's array (``released``), and a cut waits for a free array (``acquire``). Both processes map the
  block from one file descriptor (``memfd``): it has no name in /dev/shm, so nothing is left behind whatever
  way a process ends; its memory goes back when the last mapping closes.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from collections.abc import Callable
from typing import Protocol

import numpy as np

__all__ = ["AlternatingBuffers", "ClipBuffers", "SharedBlock", "SharedClipBuffers", "clip_shape"]


def clip_shape(frames: int, size_px: int) -> tuple[int, int, int, int]:
    """One clip's array: (T, H, W, 3) uint8."""
    return (frames, size_px, size_px, 3)


class ClipBuffers(Protocol):
    """The two arrays of one clip stream."""

    arrays: np.ndarray  # (2, T, H, W, 3) uint8

    def acquire(self, interrupted: Callable[[], bool]) -> int | None:
        """The index of an array that may be cut into now (waits while none is free); None if interrupted."""
        ...

    def submitted(self, index: int) -> None:
        """The clip cut into array ``index`` was handed to the engine."""
        ...


class AlternatingBuffers:
    """Two arrays, the engine in this process (see the module docstring)."""

    def __init__(self, arrays: np.ndarray) -> None:
        self.arrays = arrays
        self._last = 1  # the array of the last submitted clip

    def acquire(self, interrupted: Callable[[], bool]) -> int | None:
        return 1 - self._last

    def submitted(self, index: int) -> None:
        self._last = index


class SharedClipBuffers:
    """Two arrays in shared memory, the engine in another process (see the module docstring)."""

    _WAIT_S = 0.1  # how often a waiting cut checks ``interrupted``

    def __init__(self, arrays: np.ndarray) -> None:
        self.arrays = arrays
        self._busy = [False, False]  # the engine's process holds the array
        self._cond = threading.Condition()
        self._last = 1

    def acquire(self, interrupted: Callable[[], bool]) -> int | None:
        with self._cond:
            while True:
                for index in (1 - self._last, self._last):  # the older one first, as AlternatingBuffers
                    if not self._busy[index]:
                        return index
                if interrupted():
                    return None
                self._cond.wait(self._WAIT_S)

    def submitted(self, index: int) -> None:
        with self._cond:
            self._busy[index] = True
            self._last = index

    def released(self, index: int) -> None:
        """The engine's process is done with array ``index`` (copied, replaced, discarded or forgotten)."""
        with self._cond:
            self._busy[index] = False
            self._cond.notify_all()


class SharedBlock:
    """One stream's clip arrays in shared memory: ``slots`` clip streams x 2 arrays of ``shape``.

    ``SharedBlock.create(slots, shape)`` in the process that owns it (the daemon: the memory is the stream's for
    its life, whichever worker process hosts it); ``SharedBlock.attach(fd, slots, shape)`` in another process, from
    the descriptor passed to it. ``arrays[slot]`` is slot ``slot``'s (2, T, H, W, 3) view. Fixed size:
    ``nbytes = slots x 2 x T x H x W x 3``.
    """

    def __init__(self, fd: int, slots: int, shape: tuple[int, ...], owner: bool) -> None:
        self.fd = fd
        self.slots = slots
        self.shape = tuple(shape)
        self.nbytes = slots * 2 * int(np.prod(shape))
        self._mmap = mmap.mmap(fd, self.nbytes)
        self.arrays = np.ndarray((slots, 2, *shape), np.uint8, buffer=self._mmap)  # (S, 2, T, H, W, 3)
        self._owner = owner

    @classmethod
    def create(cls, name: str, slots: int, shape: tuple[int, ...]) -> SharedBlock:
        fd = os.memfd_create(f"vstmon-{name}", os.MFD_CLOEXEC)
        os.ftruncate(fd, slots * 2 * int(np.prod(shape)))
        return cls(fd, slots, shape, owner=True)

    @classmethod
    def attach(cls, fd: int, slots: int, shape: tuple[int, ...]) -> SharedBlock:
        return cls(fd, slots, shape, owner=False)

    def index_of(self, frames: np.ndarray) -> tuple[int, int]:
        """(slot, array) of a clip's frames, which must be one of this block's arrays."""
        offset = frames.__array_interface__["data"][0] - self.arrays.__array_interface__["data"][0]
        array_bytes = self.nbytes // (self.slots * 2)
        index, rest = divmod(offset, array_bytes)
        if rest or not 0 <= index < self.slots * 2:
            raise ValueError("these frames are not one of this block's clip arrays")
        return divmod(int(index), 2)

    def close(self) -> None:
        """Unmap and close the descriptor (the memory goes back once every process has done so)."""
        self.arrays = np.empty((0,), np.uint8)
        with contextlib.suppress(BufferError):  # a view is still alive somewhere: unmapped with the process
            self._mmap.close()
        os.close(self.fd)
