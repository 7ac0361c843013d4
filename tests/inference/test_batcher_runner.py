"""The engine's two halves alone: the batcher (slots, fairness, staging marks; no torch) and the runner (the
model on its device: staging, forward, out-of-memory splits), each driven without the engine thread."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.helpers.engine import OomAbove, S, T, make_clip, normalize, reference_probs, tiny_model
from vstmon.inference.batcher import Batcher
from vstmon.inference.runner import Runner


def test_the_batcher_imports_no_torch():
    code = "import sys, vstmon.inference.batcher; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_the_batcher_takes_streams_in_turn_and_releases_a_batch_only_when_finished():
    batcher = Batcher(max_wait_ms=0)
    for i in range(3):
        assert batcher.submit(make_clip("cam", seed=i, key=f"cam/{i}"))
    assert batcher.submit(make_clip("door", seed=9))
    batch = batcher.take(max_batch=2)
    assert [p.clip.key for p, _ in batch] == ["cam/0", "door"]  # one clip of each stream first
    batcher.staged(batch)
    assert not batcher.idle("door")  # in flight until finished
    assert batcher.progress()[0]
    batcher.finish(batch)
    assert batcher.idle("door")
    assert [p.clip.key for p, _ in batcher.take(max_batch=4)] == ["cam/1", "cam/2"]


def test_a_submit_of_a_clip_stream_being_staged_waits_for_its_copy_alone():
    batcher = Batcher(max_wait_ms=0)
    batcher.submit(make_clip("a", seed=1))
    batch = batcher.take(max_batch=4)  # "a" is being staged from here until staged()
    returned = threading.Event()

    def submit_next() -> None:
        batcher.submit(make_clip("a", seed=2))
        returned.set()

    thread = threading.Thread(target=submit_next)
    thread.start()
    assert batcher.submit(make_clip("b", seed=3))  # another clip stream does not wait
    assert not returned.wait(0.3)
    batcher.staged(batch)
    assert returned.wait(10)
    thread.join(10)


def test_a_freed_slot_wakes_the_submitters_of_its_own_clip_stream_and_no_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Eight lossless streams wait for their slots; a batch of one frees one slot: only that stream's submitter
    wakes (one shared condition with notify_all woke all eight on every event)."""
    import vstmon.inference.batcher as batcher_module

    wakes: dict[int, int] = {}

    class CountingCondition(threading.Condition):
        def wait(self, timeout: float | None = None) -> bool:
            woken = super().wait(timeout)
            wakes[id(self)] = wakes.get(id(self), 0) + 1
            return woken

    batcher = Batcher(max_wait_ms=0)
    monkeypatch.setattr(
        batcher_module.threading, "Condition", CountingCondition
    )  # the slot waits from here on
    names = [f"cam{i}" for i in range(8)]
    for i, name in enumerate(names):
        assert batcher.submit(make_clip(name, seed=i))
    returned = {name: threading.Event() for name in names}

    def submit_next(name: str, seed: int) -> None:
        if batcher.submit(make_clip(name, seed=seed), block=True, timeout_s=60):
            returned[name].set()

    threads = [threading.Thread(target=submit_next, args=(n, 10 + i)) for i, n in enumerate(names)]
    for thread in threads:
        thread.start()
    waiting = threading.Event()
    deadline = time.monotonic() + 30
    while len(batcher._slot_waits) < len(names) and time.monotonic() < deadline:
        waiting.wait(0.01)
    assert sorted(batcher._slot_waits) == names
    conditions = {name: id(wait.cond) for name, wait in batcher._slot_waits.items()}
    batch = batcher.take(max_batch=1)
    assert [p.clip.key for p, _ in batch] == ["cam0"]
    batcher.staged(batch)
    assert returned["cam0"].wait(30)
    assert not any(returned[name].is_set() for name in names[1:])
    assert {name: wakes.get(conditions[name], 0) for name in names[1:]} == dict.fromkeys(names[1:], 0)
    batcher.stop()  # the others give up
    for thread in threads:
        thread.join(30)
    assert not batcher._slot_waits  # nothing kept for clip streams that no longer wait


def test_the_batcher_refuses_a_clip_of_another_shape_at_its_stream():
    batcher = Batcher(max_wait_ms=0, clip_shape=(T, S, S, 3))
    clip = make_clip("cam", seed=1)
    clip.frames = np.zeros((T, S, S + 1, 3), np.uint8)
    with pytest.raises(ValueError, match="stream cam: clip shape"):
        batcher.submit(clip)


def test_the_runner_stages_and_runs_clips_like_the_model():
    model = tiny_model()
    runner = Runner(model, "cpu", "fp32", 4, normalize=normalize, clip_shape=(T, S, S, 3))
    clips = [make_clip(f"s{i}", seed=i) for i in range(3)]
    probs = runner.run(runner.stage(clips))
    np.testing.assert_allclose(probs, reference_probs(model, clips), atol=1e-5)


def test_the_runner_splits_a_batch_that_does_not_fit_and_lowers_max_batch():
    model = tiny_model()
    runner = Runner(OomAbove(model, limit=1), "cpu", "fp32", 4, normalize=normalize)
    clips = [make_clip(f"s{i}", seed=i) for i in range(4)]
    probs = runner.run(runner.stage(clips))
    np.testing.assert_allclose(probs, reference_probs(model, clips), atol=1e-5)
    assert runner.max_batch < 4 and runner.oom_splits >= 1


def test_a_blocking_submit_waiting_for_its_slot_also_waits_for_the_copy_of_the_clip_taken_from_it():
    """The lossless path: the next clip waits for the slot; when the batcher takes the pending clip, the slot is
    free but that clip is still being copied, and its array must not be handed back (cut into) before that."""
    batcher = Batcher(max_wait_ms=0)
    batcher.submit(make_clip("a", seed=1))
    returned = threading.Event()

    def submit_next() -> None:
        assert batcher.submit(make_clip("a", seed=2), block=True, timeout_s=60)
        returned.set()

    thread = threading.Thread(target=submit_next)
    thread.start()
    assert not returned.wait(0.3)  # waiting for the slot
    batch = batcher.take(max_batch=4)
    assert not returned.wait(0.5), "the next clip was accepted while the taken one was still being copied"
    batcher.staged(batch)
    assert returned.wait(10)
    thread.join(10)
