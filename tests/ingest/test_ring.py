"""RingBuffer: O(1) preallocated frames, one writer and one reader thread, live vs lossless, clear/generation."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from vstmon.ingest.ring import FrameGone, RingBuffer
from vstmon.types import FrameMeta

H = W = 8


def _meta(i: int) -> FrameMeta:
    return FrameMeta(index=i, capture_mono_s=100.0 + i, capture_wall_s=1e9 + i, stream_ts_s=i / 25)


def _push(ring: RingBuffer, i: int, timeout_s: float | None = None) -> int | None:
    slot = ring.write_slot(timeout_s)
    if slot is None:
        return None
    slot[...] = i % 256  # the frame's pixels say which frame it is
    return ring.commit(_meta(i))


def test_frames_and_meta_round_trip() -> None:
    ring = RingBuffer(4, H, W)
    assert [_push(ring, i) for i in range(3)] == [0, 1, 2]
    assert ring.head_seq == 3 and ring.oldest_seq == 0
    assert ring.meta(1) == _meta(1)
    assert ring.stream_ts_s(2) == pytest.approx(2 / 25)
    assert (ring.frame(2) == 2).all()
    out = np.zeros((3, H, W, 3), np.uint8)
    metas = ring.read([0, 2, 1], out)
    assert [m.index for m in metas] == [0, 2, 1]
    assert [int(out[i, 0, 0, 0]) for i in range(3)] == [0, 2, 1]
    with pytest.raises(ValueError, match="not been committed"):
        ring.meta(3)


def test_nbytes_is_fixed_and_covers_the_frames() -> None:
    ring = RingBuffer(10, 32, 32)
    before = ring.nbytes
    assert before >= 10 * 32 * 32 * 3
    for i in range(100):
        _push(ring, i)
    assert ring.nbytes == before


def test_live_mode_overwrites_the_oldest_and_counts_unreleased_drops() -> None:
    ring = RingBuffer(4, H, W)
    for i in range(6):
        assert _push(ring, i) == i  # never blocks
    assert ring.oldest_seq == 2 and ring.frames_dropped == 2  # 0 and 1 overwritten unreleased
    with pytest.raises(FrameGone):
        ring.meta(1)
    with pytest.raises(FrameGone):
        ring.read([1, 2], np.zeros((2, H, W, 3), np.uint8))
    ring.release(5)  # reader is done with 2..4
    for i in range(6, 9):
        _push(ring, i)
    assert ring.frames_dropped == 2  # released frames overwritten: not drops
    _push(ring, 9)  # overwrites 5, which was never released
    assert ring.frames_dropped == 3


def test_a_frame_is_gone_as_soon_as_its_slot_is_handed_to_the_writer() -> None:
    ring = RingBuffer(2, H, W)
    _push(ring, 0)
    _push(ring, 1)
    slot = ring.write_slot()  # takes frame 0's slot back, before commit
    assert slot is not None
    with pytest.raises(FrameGone):
        ring.frame(0)
    assert ring.write_slot() is slot  # again before commit: the same slot, not counted twice
    assert ring.frames_dropped == 1


def test_lossless_blocks_while_full_and_resumes_on_release() -> None:
    ring = RingBuffer(3, H, W, lossless=True)
    for i in range(3):
        assert _push(ring, i) == i
    assert ring.write_slot(timeout_s=0.05) is None  # full of unreleased frames
    ring.release(1)
    assert _push(ring, 3, timeout_s=1.0) == 3
    assert ring.frames_dropped == 0 and ring.oldest_seq == 1
    assert ring.write_slot(timeout_s=0.0) is None


def test_clear_bumps_generation_and_drops_frames() -> None:
    ring = RingBuffer(8, H, W)
    for i in range(5):
        _push(ring, i)
    assert ring.generation == 0
    assert ring.clear(keep_from_seq=3) == 1
    assert ring.oldest_seq == 3
    with pytest.raises(FrameGone):
        ring.meta(2)
    assert ring.meta(3).index == 3
    assert ring.clear() == 2
    assert ring.oldest_seq == ring.head_seq == 5
    with pytest.raises(FrameGone):
        ring.frame(4)
    assert _push(ring, 5) == 5  # seq numbers go on; never reused
    assert ring.frames_dropped == 0  # cleared frames are not drops


def test_clear_frees_a_blocked_lossless_writer() -> None:
    ring = RingBuffer(2, H, W, lossless=True)
    _push(ring, 0)
    _push(ring, 1)
    ring.clear()
    assert ring.write_slot(timeout_s=0.0) is not None


def test_close_wakes_a_blocked_writer_and_a_waiting_reader() -> None:
    ring = RingBuffer(2, H, W, lossless=True)
    _push(ring, 0)
    _push(ring, 1)
    results: dict[str, object] = {}

    def writer() -> None:
        results["slot"] = ring.write_slot()  # no timeout: only close() can end this

    def reader() -> None:
        results["waited"] = ring.wait_for(5, timeout_s=None)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    assert not ring.wait_for(2, timeout_s=0.1)  # both really are blocked
    ring.close()
    for thread in threads:
        thread.join(timeout=5)
        assert not thread.is_alive()
    assert results == {"slot": None, "waited": False}
    assert ring.wait_for(1, timeout_s=0)  # committed frames still count after close


def test_writer_and_reader_threads_lossless_deliver_every_frame_in_order() -> None:
    n = 2000
    ring = RingBuffer(5, H, W, lossless=True)
    seen: list[int] = []
    out = np.zeros((1, H, W, 3), np.uint8)
    errors: list[BaseException] = []

    def writer() -> None:
        for i in range(n):
            if _push(ring, i, timeout_s=10) is None:
                errors.append(RuntimeError(f"writer timed out at {i}"))
                return

    def reader() -> None:
        try:
            for seq in range(n):
                assert ring.wait_for(seq, timeout_s=10)
                meta = ring.read([seq], out)[0]
                assert int(out[0, 0, 0, 0]) == meta.index % 256 and (out[0] == out[0, 0, 0, 0]).all()
                seen.append(meta.index)
                ring.release(seq + 1)
        except BaseException as error:  # report in the main thread
            errors.append(error)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert seen == list(range(n))
    assert ring.frames_dropped == 0


def test_writer_and_reader_threads_live_never_give_a_torn_frame() -> None:
    # a writer that never waits, a reader that copies 3-frame clips: each copy is either whole or FrameGone
    n, size_px = 3000, 192  # big frames: the copy takes long enough for the writer to overtake it
    ring = RingBuffer(6, size_px, size_px)
    out = np.zeros((3, size_px, size_px, 3), np.uint8)
    stop = threading.Event()
    counts = {"ok": 0, "gone": 0}
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            next_seq = 3
            while not stop.is_set():
                if not ring.wait_for(next_seq, timeout_s=0.1):
                    continue
                head = ring.head_seq
                next_seq = head + 1
                seqs = [head - 3, head - 2, head - 1]
                try:
                    metas = ring.read(seqs, out)
                except FrameGone:
                    counts["gone"] += 1
                    continue
                for i, meta in enumerate(metas):
                    assert meta.index == seqs[i]
                    assert (out[i] == seqs[i] % 256).all()  # every pixel from the same, right frame
                counts["ok"] += 1
                ring.release(seqs[0])
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=reader)
    switch_interval_s = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # make the threads interleave inside copies often
    thread.start()
    try:
        for i in range(n):
            _push(ring, i)
    finally:
        stop.set()
        thread.join(timeout=30)
        sys.setswitchinterval(switch_interval_s)
    assert not errors, errors
    assert counts["ok"] + counts["gone"] > 0
    assert ring.head_seq == n
    assert ring.frames_dropped <= n - 6  # only unreleased overwrites count, and the first 6 never overwrite


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="capacity_frames"):
        RingBuffer(1, H, W)
    ring = RingBuffer(2, H, W)
    with pytest.raises(RuntimeError, match="write_slot"):
        ring.commit(_meta(0))
    _push(ring, 0)
    with pytest.raises(ValueError, match="out must be"):
        ring.read([0], np.zeros((1, 4, 4, 3), np.uint8))


class _OvertakingOut(np.ndarray):
    """A clip array whose second row assignment lets the writer run round the ring first (deterministic race)."""

    ring: RingBuffer
    pushes: int

    def __setitem__(self, key: object, value: object) -> None:
        if key == 1:
            for _ in range(self.pushes):
                _push(self.ring, self.ring.head_seq)
        super().__setitem__(key, value)


@pytest.mark.parametrize("pushes", [1, 4])
def test_a_frame_overwritten_while_being_copied_raises_frame_gone(pushes: int) -> None:
    ring = RingBuffer(4, H, W)
    for i in range(4):
        _push(ring, i)
    out = np.zeros((2, H, W, 3), np.uint8).view(_OvertakingOut)
    out.ring, out.pushes = ring, pushes
    with pytest.raises(FrameGone):
        ring.read([0, 1], out)  # frame 0 was copied, then its slot was rewritten before the read returned
