"""Engine: batching across streams, one pending clip per clip stream, fairness between streams, discards,
forgetting subjects, backpressure, lifecycle."""

from __future__ import annotations

import copy
import threading
import time
import weakref

import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers.engine import (
    C,
    Collector,
    OomAbove,
    S,
    T,
    hold,
    make_clip,
    make_engine,
    normalize,
    reference_probs,
    tiny_model,
)
from vstmon.inference.engine import Engine, EnginePool
from vstmon.inference.runner import auto_half_dtype, resolve_devices, resolve_dtype
from vstmon.types import Clip, ClipResult

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny_model()


class BatchGate:
    """A result callback that holds the engine thread at the first result of every batch until the test lets
    that batch through (``step``, or ``open`` for all); records every result in delivery order."""

    def __init__(self) -> None:
        self.results: list[ClipResult] = []
        self.cond = threading.Condition()
        self.entered = 0  # batches whose first result has reached the gate
        self.allowed = 0  # batches let through
        self._left = 0  # results of the current batch still to come

    def __call__(self, result: ClipResult) -> None:
        with self.cond:
            if self._left == 0:
                self.entered += 1
                self._left = result.batch_size
                self.cond.notify_all()
                self.cond.wait_for(lambda: self.allowed >= self.entered, 10)
            self._left -= 1
            self.results.append(result)
            self.cond.notify_all()

    def wait_entered(self, batches: int, timeout_s: float = 10.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.entered >= batches, timeout_s), (
                f"{self.entered} of {batches} batches"
            )

    def step(self) -> None:
        with self.cond:
            self.allowed += 1
            self.cond.notify_all()

    def open(self) -> None:
        with self.cond:
            self.allowed = 1 << 30
            self.cond.notify_all()

    def batches(self) -> list[list[ClipResult]]:
        """The results grouped into their batches (every result delivered)."""
        with self.cond:
            results = list(self.results)
        grouped: list[list[ClipResult]] = []
        while results:
            size = results[0].batch_size
            grouped.append(results[:size])
            results = results[size:]
        return grouped


def start_engine(engines, model, on_result, max_batch=4, max_wait_ms=0.0) -> Engine:
    engine = make_engine(model, "cpu", "auto", max_batch, max_wait_ms, on_result, normalize=normalize)
    engine.start()
    engines.append(engine)
    return engine


def test_results_equal_the_model_run_directly(engines, model):
    collector = Collector()
    engine = start_engine(engines, model, collector, max_batch=4, max_wait_ms=200)
    clips = [make_clip(f"s{i}", seed=i) for i in range(4)]
    for clip in clips:
        assert engine.submit(clip)
    results = collector.wait_for(4)
    expected = reference_probs(model, clips)
    by_stream = {r.clip.stream: r for r in results}
    for i, clip in enumerate(clips):
        probs = by_stream[clip.stream].probs
        assert probs.dtype == np.float32 and probs.shape == (C,)
        np.testing.assert_allclose(probs, expected[i], atol=1e-5)
        assert abs(float(probs.sum()) - 1.0) < 1e-5


def test_batches_gather_clips_across_streams(engines, model):
    collector = Collector(hold=True)
    engine = start_engine(engines, model, collector, max_batch=8, max_wait_ms=0)
    hold(engine, collector)  # the engine thread is now held inside the callback
    for i in range(4):
        engine.submit(make_clip(f"cam{i}", seed=i))
    collector.release.set()
    results = collector.wait_for(5)
    assert results[0].batch_size == 1
    assert {r.clip.stream for r in results[1:]} == {"cam0", "cam1", "cam2", "cam3"}
    assert all(r.batch_size == 4 for r in results[1:])
    stats = engine.stats()
    assert stats["batches"] == 2 and stats["clips"] == 5
    assert stats["mean_batch_size"] == pytest.approx(2.5)


def test_max_batch_caps_a_batch_and_oldest_go_first(engines, model):
    collector = Collector(hold=True)
    engine = start_engine(engines, model, collector, max_batch=2, max_wait_ms=0)
    hold(engine, collector)
    for i in range(5):
        engine.submit(make_clip(f"cam{i}", seed=i))
    collector.release.set()
    results = collector.wait_for(6)
    assert max(r.batch_size for r in results) == 2
    assert [r.clip.stream for r in results[1:]] == ["cam0", "cam1", "cam2", "cam3", "cam4"]


def test_a_newer_clip_replaces_the_pending_one_and_is_counted(engines, model):
    collector = Collector(hold=True)
    engine = start_engine(engines, model, collector, max_batch=4, max_wait_ms=0)
    engine.submit(make_clip("cam", seed=0))
    assert collector.entered.wait(10)
    for seed in (1, 2, 3):
        assert engine.submit(make_clip("cam", seed=seed))
    assert engine.batcher.pending_count() == 1
    collector.release.set()
    results = collector.wait_for(2)
    assert engine.wait_idle("cam", 10)  # every result of "cam" delivered: none can come after this
    assert [r.clip.first_frame for r in collector.results] == [0, 3]
    assert engine.stats()["clips_dropped"] == {"cam": 2}
    assert engine.batcher.clips_dropped("cam") == 2
    assert results[1].batch_size == 1


def test_discard_drops_pending_clips_of_older_segments(engines, model):
    collector = Collector(hold=True)
    engine = start_engine(engines, model, collector, max_batch=4, max_wait_ms=0)
    hold(engine, collector)
    engine.submit(make_clip("cam", seed=1, segment=1))
    engine.submit(make_clip("other", seed=2, segment=1))
    assert engine.discard("cam", before_segment=2) == 1
    assert not engine.submit(make_clip("cam", seed=3, segment=1))  # late clip of the old segment: refused
    assert engine.submit(make_clip("cam", seed=4, segment=2))
    collector.release.set()
    collector.wait_for(3)
    assert all(engine.wait_idle(stream, 10) for stream in ("busy", "cam", "other"))  # nothing more to come
    assert sorted((r.clip.stream, r.clip.first_frame) for r in collector.results) == [
        ("busy", 100),
        ("cam", 4),
        ("other", 2),
    ]
    assert engine.stats()["clips_discarded"] == 2


def test_results_of_a_discarded_segment_in_flight_are_not_delivered(engines, model):
    in_callback = threading.Event()
    release = threading.Event()
    delivered: list[tuple[str, int]] = []

    def on_result(result: ClipResult) -> None:
        if result.clip.stream == "x":  # first of the batch: hold the batch in flight
            in_callback.set()
            release.wait(10)
        delivered.append((result.clip.stream, result.clip.segment))

    engine = start_engine(engines, model, on_result, max_batch=2, max_wait_ms=2000)
    engine.submit(make_clip("x", seed=1))
    engine.submit(make_clip("cam", seed=2, segment=1))  # same batch, after "x"
    assert in_callback.wait(10)
    engine.discard("cam", before_segment=2)  # reset while its clip is in flight
    release.set()
    engine.submit(make_clip("cam", seed=3, segment=2))
    assert engine.wait_idle("cam", 10) and engine.wait_idle("x", 10)  # every result delivered or discarded
    assert delivered == [("x", 1), ("cam", 2)]
    assert engine.stats()["clips_discarded"] == 1


def test_block_true_waits_for_the_slot(engines, model):
    collector = Collector(hold=True)
    engine = start_engine(engines, model, collector, max_batch=4, max_wait_ms=0)
    engine.submit(make_clip("cam", seed=0))
    assert collector.entered.wait(10)
    assert engine.submit(make_clip("cam", seed=1), block=True)  # slot was free (clip 0 is in flight)
    assert not engine.submit(make_clip("cam", seed=2), block=True, timeout_s=0.2)  # slot busy: times out
    done = threading.Event()
    accepted: list[bool] = []

    def producer() -> None:
        accepted.append(engine.submit(make_clip("cam", seed=3), block=True, timeout_s=10))
        done.set()

    thread = threading.Thread(target=producer)
    thread.start()
    assert not done.wait(0.2)  # still blocked while the engine is held
    collector.release.set()
    assert done.wait(10)
    thread.join(5)
    results = collector.wait_for(3)
    assert accepted == [True]
    assert [r.clip.first_frame for r in results] == [0, 1, 3]
    assert engine.stats()["clips_dropped"] == {}  # nothing lost when blocking


def test_block_true_returns_false_on_stop(model):
    collector = Collector(hold=True)
    engine = make_engine(model, "cpu", "fp32", 4, 0, collector, normalize=normalize)
    engine.start()
    engine.submit(make_clip("cam", seed=0))
    assert collector.entered.wait(10)
    engine.submit(make_clip("cam", seed=1))
    result: list[bool] = []
    thread = threading.Thread(
        target=lambda: result.append(engine.submit(make_clip("cam", seed=2), block=True))
    )
    thread.start()
    time.sleep(0.1)
    engine.stop()
    thread.join(5)
    assert result == [False]
    collector.release.set()
    assert engine.join(5)


def test_stop_joins_the_worker_thread(model):
    before = {t.ident for t in threading.enumerate()}
    engine = make_engine(model, "cpu", "fp32", 4, 5, lambda r: None, normalize=normalize)
    engine.start()
    assert engine.alive
    engine.submit(make_clip("cam", seed=0))
    engine.stop()
    assert engine.join(5)
    assert not engine.alive
    assert {t.ident for t in threading.enumerate()} <= before
    assert not engine.submit(make_clip("cam", seed=1))  # stopped engines refuse clips


def test_a_raising_callback_does_not_kill_the_worker(engines, model):
    good: list[ClipResult] = []

    def on_result(result: ClipResult) -> None:
        if result.clip.stream == "bad":
            raise RuntimeError("callback bug")
        good.append(result)

    engine = start_engine(engines, model, on_result, max_batch=1)
    engine.submit(make_clip("bad", seed=0))
    deadline = time.monotonic() + 10
    while engine.stats()["callback_errors"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    engine.submit(make_clip("good", seed=1))
    while not good and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.alive
    assert [r.clip.stream for r in good] == ["good"]
    assert engine.stats()["callback_errors"] == 1


def test_a_clip_of_another_shape_is_refused_with_a_clear_error(engines, model):
    collector = Collector()
    engine = start_engine(engines, model, collector, max_batch=1)
    engine.submit(make_clip("a", seed=0))
    bad = make_clip("b", seed=1)
    bad.frames = np.zeros((T, S, S // 2, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="stream b: clip shape"):
        engine.submit(bad)
    bad.frames = np.zeros((T, S, S, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="uint8"):
        engine.submit(bad)
    engine.submit(make_clip("c", seed=2))
    collector.wait_for(2)
    assert engine.alive


def test_resolve_device_and_precision():
    assert resolve_devices("cpu") == [torch.device("cpu")]
    assert resolve_devices(["cpu", "cpu"]) == [torch.device("cpu")]
    auto = resolve_devices("auto")[0]
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_dtype("int8", torch.device("cpu"))


def test_pool_assigns_streams_round_robin_and_shares_one_model_per_device(model):
    pool = EnginePool([make_engine(model, "cpu", "fp32", 4, 0, lambda r: None, normalize=normalize)])
    assert pool.assign("a") is pool.assign("b") is pool.engines[0]
    assert pool.assign("a").backend.model is model
    pool.start()
    pool.stop()
    assert pool.join(5)


def test_bf16_autocast_on_cpu_gives_close_probabilities(engines, model):
    collector = Collector()
    engine = make_engine(model, "cpu", "bf16", 2, 0, collector, normalize=normalize)
    engine.start()
    engines.append(engine)
    clip = make_clip("cam", seed=3)
    engine.submit(clip)
    result = collector.wait_for(1)[0]
    assert result.probs.dtype == np.float32
    np.testing.assert_allclose(result.probs, reference_probs(model, [clip])[0], atol=5e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["auto", "fp16", "bf16", "fp32"])
def test_gpu_precisions_and_pinned_staging(model, precision):
    collector = Collector()
    engine = make_engine(copy.deepcopy(model), "cuda", precision, 4, 50, collector, normalize=normalize)
    engine.start()
    try:
        clips = [make_clip(f"s{i}", seed=i) for i in range(4)]
        for clip in clips:
            engine.submit(clip)
        results = collector.wait_for(4)
        assert engine.backend.host is not None and engine.backend.host.is_pinned()
        expected = reference_probs(model, clips)
        by_stream = {r.clip.stream: r.probs for r in results}
        tol = 1e-4 if precision == "fp32" else 5e-2
        for i, clip in enumerate(clips):
            np.testing.assert_allclose(by_stream[clip.stream], expected[i], atol=tol)
    finally:
        engine.stop()
        assert engine.join(10)


def test_out_of_memory_splits_the_batch_and_lowers_max_batch(engines, model):
    collector = Collector(hold=True)
    engine = start_engine(engines, OomAbove(model, limit=2), collector, max_batch=8, max_wait_ms=0)
    hold(engine, collector)
    clips = [make_clip(f"cam{i}", seed=i) for i in range(5)]
    for clip in clips:
        engine.submit(clip)
    collector.release.set()
    results = collector.wait_for(6)
    expected = reference_probs(model, clips)
    for i, result in enumerate(results[1:]):
        assert result.clip.stream == f"cam{i}"
        np.testing.assert_allclose(result.probs, expected[i], atol=1e-5)
    stats = engine.stats()
    assert engine.alive
    assert (
        stats["backend"]["max_batch"] == 2
        and stats["backend"]["oom_splits"] >= 1
        and stats["clips_failed"] == 0
    )


class _AllocatesThenOom(nn.Module):
    """Allocates a stand-in for a forward pass's activations, then raises out-of-memory above ``limit`` clips;
    remembers (weakly) each failed attempt's allocation and whether it was still alive when the next call came."""

    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner = inner
        self.limit = limit
        self.failed: list[weakref.ref[torch.Tensor]] = []
        self.alive_at_retry: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.alive_at_retry.extend(ref() is not None for ref in self.failed)
        self.failed.clear()
        activations = torch.ones(x.shape[0], 1 << 20)  # 4 MiB per clip
        if x.shape[0] > self.limit:
            self.failed.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x) + 0 * activations[:, :1].sum()


def test_out_of_memory_frees_the_failed_batch_before_retrying_and_max_batch_grows_back(
    engines, model, monkeypatch
):
    import vstmon.inference.runner

    monkeypatch.setattr(vstmon.inference.runner, "_GROW_AFTER", 3)
    wrapped = _AllocatesThenOom(model, limit=2)
    collector = Collector(hold=True)
    engine = start_engine(engines, wrapped, collector, max_batch=4, max_wait_ms=0)
    hold(engine, collector)
    for i in range(4):
        engine.submit(make_clip(f"cam{i}", seed=i))
    collector.release.set()
    collector.wait_for(5)
    assert wrapped.alive_at_retry and not any(wrapped.alive_at_retry)  # freed before every retry
    assert (
        engine.stats()["backend"]["max_batch"] == 3 and engine.stats()["clips_failed"] == 0
    )  # below the 4 that failed
    wrapped.limit = 4  # memory is back
    for round_ in range(4):
        for i in range(2):
            engine.submit(make_clip(f"cam{i}", seed=10 + round_))
        collector.wait_for(5 + 2 * (round_ + 1))
    assert (
        engine.stats()["backend"]["max_batch"] == 4
    )  # grew back by one after 3 batches in a row that fitted


def test_wait_idle_returns_once_the_streams_results_are_delivered(engines, model):
    collector = Collector(hold=True)
    engine = start_engine(engines, model, collector, max_batch=4, max_wait_ms=0)
    assert engine.batcher.idle("cam")
    engine.submit(make_clip("cam", seed=0))
    assert collector.entered.wait(10)
    assert not engine.batcher.idle("cam")  # in flight: its result is being delivered
    assert not engine.wait_idle("cam", timeout_s=0.1)
    collector.release.set()
    assert engine.wait_idle("cam", timeout_s=10)
    assert len(collector.results) == 1


# -- clip streams: one per subject (Clip.key) -------------------------------------------------------------------
def test_subjects_of_one_stream_have_their_own_pending_slots(engines, model):
    collector = Collector(hold=True)
    engine = start_engine(engines, model, collector, max_batch=4, max_wait_ms=0)
    hold(engine, collector)  # the engine thread is held inside the callback
    assert engine.submit(make_clip("cam", seed=1, key="cam/p-1"))
    assert engine.submit(make_clip("cam", seed=2, key="cam/p-2"))
    assert engine.submit(make_clip("cam", seed=3, key="cam/p-1"))  # replaces p-1's pending clip, not p-2's
    assert engine.batcher.pending_count() == 2
    collector.release.set()
    collector.wait_for(3)
    assert all(engine.wait_idle(key, 10) for key in ("busy", "cam/p-1", "cam/p-2"))
    assert sorted((r.clip.key, r.clip.first_frame) for r in collector.results) == [
        ("busy", 100),
        ("cam/p-1", 3),
        ("cam/p-2", 2),
    ]
    assert engine.batcher.clips_dropped("cam/p-1") == 1 and engine.batcher.clips_dropped("cam/p-2") == 0
    assert engine.batcher.clips_dropped_for_stream("cam") == 1
    assert engine.stats()["clips_dropped"] == {"cam": 1}


def test_discard_drops_only_the_clip_stream_it_names(engines, model):
    collector = Collector(hold=True)
    engine = start_engine(engines, model, collector, max_batch=4, max_wait_ms=0)
    hold(engine, collector)
    engine.submit(make_clip("cam", seed=1, segment=1, key="cam/p-1"))
    engine.submit(make_clip("cam", seed=2, segment=1, key="cam/p-2"))
    assert engine.discard("cam/p-1", before_segment=2) == 1
    assert not engine.submit(make_clip("cam", seed=3, segment=1, key="cam/p-1"))  # p-1's old segment: refused
    assert engine.submit(make_clip("cam", seed=4, segment=1, key="cam/p-2"))  # p-2's segment 1 goes on
    collector.release.set()
    collector.wait_for(2)
    assert all(engine.wait_idle(key, 10) for key in ("busy", "cam/p-1", "cam/p-2"))
    assert [(r.clip.key, r.clip.first_frame) for r in collector.results] == [("busy", 100), ("cam/p-2", 4)]
    assert engine.stats()["clips_discarded"] == 2


def test_forget_drops_the_pending_clip_and_results_in_flight_and_then_the_key(engines, model):
    gate = BatchGate()
    engine = start_engine(engines, model, gate, max_batch=2, max_wait_ms=0)
    engine.submit(make_clip("busy", seed=100))
    gate.wait_entered(1)  # held with "busy" in flight
    engine.submit(make_clip("cam", seed=4, key="cam/p-4"))
    engine.submit(make_clip("cam", seed=1, key="cam/p-1"))
    gate.step()
    gate.wait_entered(2)  # the batch [p-4, p-1] is in flight, held at p-4's result
    engine.submit(make_clip("cam", seed=2, key="cam/p-2"))
    engine.submit(make_clip("cam", seed=3, key="cam/p-2"))  # replaces p-2's pending clip (a drop of "cam")
    engine.forget("cam/p-1")  # in flight: its result must never come
    engine.forget("cam/p-2")  # pending: dropped
    assert engine.batcher.pending_count() == 0
    assert not engine.submit(make_clip("cam", seed=5, key="cam/p-1"))  # gone for good: refused
    gate.open()
    assert all(engine.wait_idle(key, 10) for key in ("busy", "cam/p-1", "cam/p-2", "cam/p-4"))
    assert [r.clip.key for r in gate.results] == ["busy", "cam/p-4"]
    stats = engine.stats()
    assert stats["clips_discarded"] == 3  # p-1 in flight, p-2 pending, p-1's late clip
    assert stats["clip_streams"] == 2  # busy and cam/p-4: the forgotten keys left nothing behind
    assert engine.batcher.clips_dropped("cam/p-2") == 0  # the key is gone ...
    assert engine.batcher.clips_dropped_for_stream("cam") == 1  # ... its drop still counts for its stream


def test_subjects_coming_and_going_leave_no_entry_behind(engines, model):
    collector = Collector()
    engine = start_engine(engines, model, collector, max_batch=1, max_wait_ms=0)
    engine.submit(make_clip("cam", seed=0))  # the whole-frame clip stream stays
    people = 200
    for i in range(people):  # at most 3 people in view; each is forgotten pending, in flight or done
        key = f"cam/p-{i}"
        engine.submit(make_clip("cam", seed=i, key=key))
        engine.discard(key, before_segment=1)
        engine.submit(make_clip("cam", seed=i + 1, key=key))
        if i >= 3:
            engine.forget(f"cam/p-{i - 3}")
    for i in range(people - 3, people):
        engine.forget(f"cam/p-{i}")
    assert all(engine.wait_idle(f"cam/p-{i}", 10) for i in range(people))  # nothing of them in flight
    assert engine.wait_idle("cam", 10)
    assert engine.stats()["clip_streams"] == 1 and engine.batcher.pending_count() == 0
    left = [
        (name, key)
        for name, value in vars(engine).items()
        if isinstance(value, dict)
        for key in value
        if isinstance(key, str) and key.startswith("cam/")
    ]
    assert left == []
    assert engine.stats()["clips_dropped"].keys() <= {"cam"}  # drops are counted per stream, not per person


def _submit_subjects(engine: Engine, stream: str, subjects: int, seed: int) -> None:
    for i in range(subjects):
        engine.submit(make_clip(stream, seed=seed + i, key=f"{stream}/{stream}-{i}"))


def test_a_stream_with_one_person_gets_a_clip_into_every_batch_beside_a_crowded_one(engines, model):
    gate = BatchGate()
    engine = start_engine(engines, model, gate, max_batch=2, max_wait_ms=0)
    engine.submit(make_clip("busy", seed=100))
    gate.wait_entered(1)  # held with "busy" in flight
    _submit_subjects(engine, "A", 8, seed=0)  # 8 people on camera A, queued before B's one
    _submit_subjects(engine, "B", 1, seed=50)
    rounds = 12
    for r in range(rounds):
        gate.step()  # the batch in flight completes; the engine takes the next one and is held again
        gate.wait_entered(r + 2)
        _submit_subjects(engine, "A", 8, seed=1000 * (r + 1))  # every subject cuts its next clip
        _submit_subjects(engine, "B", 1, seed=1000 * (r + 1) + 50)
    gate.open()
    keys = [f"A/A-{i}" for i in range(8)] + ["B/B-0", "busy"]
    assert all(engine.wait_idle(key, 10) for key in keys)
    batches = [sorted(r.clip.key for r in batch) for batch in gate.batches()[1 : rounds + 1]]
    # B's person is in every batch (the first included); A's 8 people share the other place in turn
    assert batches == [sorted([f"A/A-{r % 8}", "B/B-0"]) for r in range(rounds)]
    assert engine.batcher.clips_dropped("B/B-0") == 0  # a steady rate: B never lost a clip
    assert engine.batcher.clips_dropped_for_stream("A") > 0


def test_streams_take_turns_and_a_crowded_stream_fills_the_room_left(engines, model):
    gate = BatchGate()
    engine = start_engine(engines, model, gate, max_batch=4, max_wait_ms=0)
    engine.submit(make_clip("busy", seed=100))
    gate.wait_entered(1)
    _submit_subjects(engine, "A", 8, seed=0)  # oldest stream first, then C, then B
    _submit_subjects(engine, "C", 2, seed=20)
    _submit_subjects(engine, "B", 1, seed=40)
    gate.open()
    keys = [f"A/A-{i}" for i in range(8)] + ["C/C-0", "C/C-1", "B/B-0", "busy"]
    assert all(engine.wait_idle(key, 10) for key in keys)
    batches = [[r.clip.key for r in batch] for batch in gate.batches()]
    # round 1: one clip of each stream in order of their oldest clip; round 2: A again, until full
    assert batches[1] == ["A/A-0", "C/C-0", "B/B-0", "A/A-1"]
    # then the stream served least recently goes first: C, then A, whose people share the room left
    assert batches[2] == ["C/C-1", "A/A-2", "A/A-3", "A/A-4"]
    assert batches[3] == ["A/A-5", "A/A-6", "A/A-7"]


def test_more_streams_than_max_batch_take_turns_across_batches(engines, model):
    gate = BatchGate()
    engine = start_engine(engines, model, gate, max_batch=2, max_wait_ms=0)
    engine.submit(make_clip("busy", seed=100))
    gate.wait_entered(1)
    crowd = {"A": 8, "B": 8, "C": 1}  # two crowded cameras and one with a single person

    def submit_all(seed: int) -> None:
        for stream, people in crowd.items():
            _submit_subjects(engine, stream, people, seed=seed + 10 * ord(stream))

    submit_all(0)
    rounds = 9
    for r in range(rounds):
        gate.step()
        gate.wait_entered(r + 2)
        submit_all(1000 * (r + 1))  # every person cuts their next clip
    gate.open()
    keys = [f"{stream}/{stream}-{i}" for stream, people in crowd.items() for i in range(people)]
    assert all(engine.wait_idle(key, 10) for key in [*keys, "busy"])
    streams = [[r.clip.stream for r in batch] for batch in gate.batches()[1 : rounds + 1]]
    # round robin over the 3 cameras, 2 per batch: C gets a clip into every other batch, like A and B
    assert streams == [["A", "B"], ["C", "A"], ["B", "C"]] * 3


@pytest.mark.parametrize(
    ("capability", "dtype"),
    [((7, 0), torch.float16), ((7, 2), torch.float16), ((7, 5), torch.float16),  # V100, Xavier, T4
     ((8, 0), torch.bfloat16), ((8, 7), torch.bfloat16), ((9, 0), torch.bfloat16)],  # A100, Orin, H100
)  # fmt: skip
def test_auto_precision_is_bf16_only_where_the_gpu_has_it_natively(capability, dtype) -> None:
    assert auto_half_dtype(capability) == dtype


def test_a_device_listed_twice_gets_one_engine(model) -> None:
    from vstmon.config import parse_config
    from vstmon.inference.backend import build_backends

    config = parse_config({"model": {"device": ["cpu", "cpu"]}}, require_streams=False)
    assert [backend.name for backend in build_backends(config, model)] == ["cpu"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none on this machine")
def test_auto_precision_follows_the_engines_own_gpu() -> None:
    for index in range(torch.cuda.device_count()):
        device = torch.device("cuda", index)
        assert resolve_dtype("auto", device) == auto_half_dtype(torch.cuda.get_device_capability(device))


# -- staging (the copy into the host buffer) -------------------------------------------------------------------
def test_the_staging_copy_runs_outside_the_lock(engines, model):
    collector = Collector()
    engine = start_engine(engines, model, collector, max_batch=4, max_wait_ms=0)
    original = engine.backend.stage
    copying = threading.Event()
    release = threading.Event()

    def slow_stage(clips: list[Clip]) -> torch.Tensor:
        if any(clip.key == "a" for clip in clips) and not release.is_set():
            copying.set()  # the copy of a batch holding "a"'s clip is held here
            release.wait(30)
        return original(clips)

    engine.backend.stage = slow_stage  # type: ignore[method-assign]
    a0, a1, b0 = make_clip("a", seed=0), make_clip("a", seed=1), make_clip("b", seed=2)
    a0_frames = a0.frames.copy()
    accepted: dict[int, bool] = {}
    a_done, b_done = threading.Event(), threading.Event()

    def submit(clip: Clip, done: threading.Event) -> None:
        accepted[clip.first_frame] = engine.submit(clip)
        done.set()

    threads = [
        threading.Thread(target=submit, args=(a1, a_done)),
        threading.Thread(target=submit, args=(b0, b_done)),
    ]
    try:
        assert engine.submit(a0)
        assert copying.wait(10)
        for thread in threads:
            thread.start()
        assert b_done.wait(10), "another clip stream's submit waited for a's copy"
        assert not a_done.wait(0.2)  # a's next clip waits until its previous one is copied
        assert not a_done.is_set()
    finally:
        release.set()
    assert a_done.wait(10)
    for thread in threads:
        thread.join(5)
    assert accepted == {1: True, 2: True}
    a0.frames[:] = 0  # a0 was copied before a1's submit returned: the caller may reuse its array now
    collector.wait_for(3)
    assert engine.wait_idle("a", 10) and engine.wait_idle("b", 10)
    by_clip = {(r.clip.key, r.clip.first_frame): r.probs for r in collector.results}
    assert sorted(by_clip) == [("a", 0), ("a", 1), ("b", 2)]
    a0.frames = a0_frames
    expected = reference_probs(model, [a0, a1, b0])
    for i, key in enumerate([("a", 0), ("a", 1), ("b", 2)]):
        np.testing.assert_allclose(by_clip[key], expected[i], atol=1e-5)
    assert engine.stats()["clips_dropped"] == {}


def test_a_failing_staging_copy_fails_its_batch_and_the_engine_goes_on(engines, model):
    collector = Collector()
    # a batch is taken when both clip streams have a clip pending (max_batch 2; no timeout in a test's time)
    engine = start_engine(engines, model, collector, max_batch=2, max_wait_ms=600_000)
    original = engine.backend.stage
    calls: list[int] = []

    def failing_once(clips: list[Clip]) -> torch.Tensor:
        calls.append(len(clips))
        if len(calls) == 1:
            raise RuntimeError("planted staging failure")
        return original(clips)

    engine.backend.stage = failing_once  # type: ignore[method-assign]
    assert engine.submit(make_clip("cam", seed=0))
    assert engine.submit(make_clip("other", seed=1))
    # the failed batch releases its clips: nothing of them is in flight any more
    assert engine.wait_idle("cam", 10) and engine.wait_idle("other", 10), "the failed batch stays in flight"
    assert engine.alive
    stats = engine.stats()
    assert stats["clips_failed"] == 2 and stats["errors"] == 1 and stats["clips"] == 0
    assert collector.results == []
    later = [make_clip("cam", seed=2), make_clip("other", seed=3)]
    for clip in later:
        assert engine.submit(clip)
    results = collector.wait_for(2)
    assert engine.wait_idle("cam", 10) and engine.wait_idle("other", 10)
    assert sorted((r.clip.key, r.clip.first_frame) for r in results) == [("cam", 2), ("other", 3)]
    expected = reference_probs(model, later)
    by_key = {r.clip.key: r.probs for r in results}
    for i, clip in enumerate(later):
        np.testing.assert_allclose(by_key[clip.key], expected[i], atol=1e-5)
    assert calls == [2, 2] and engine.alive
    assert engine.stats()["clips_failed"] == 2


def test_a_given_clip_shape_allocates_the_staging_buffer_at_construction(model):
    engine = make_engine(
        model, "cpu", "fp32", 4, 0, lambda r: None, normalize=normalize, clip_shape=(T, S, S, 3)
    )
    assert engine.backend.host is not None and tuple(engine.backend.host.shape) == (4, T, S, S, 3)
    assert engine.backend.host.dtype == torch.uint8
    bad = make_clip("cam", seed=0)
    bad.frames = np.zeros((T, S, S // 2, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="clip shape"):  # refused before any clip set the shape
        engine.submit(bad)
    assert engine.submit(make_clip("cam", seed=1))
    for shape in [(4, 32, 32), (T, S, S, 4), (0, S, S, 3), (1, T, S, S, 3)]:
        with pytest.raises(ValueError, match="clip_shape"):
            make_engine(model, "cpu", "fp32", 4, 0, lambda r: None, normalize=normalize, clip_shape=shape)
