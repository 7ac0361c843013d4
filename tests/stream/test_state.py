"""SegmentState: label messages, smoothing over the current segment only, and the reset protocol."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from vstmon.config import SmoothingConfig
from vstmon.stream.state import SegmentState
from vstmon.types import Clip, ClipResult
from vstmon.wire.protocol import Body, ClipInfo, LabelBody, ResetBody, Score, SegmentBody, SegmentLabel

LABELS = ["walk", "run", "jump", "sit"]


class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[str, Any]] = []  # (topic, the body model: LabelBody, ResetBody, ...)
        self.lock = threading.Lock()

    def __call__(self, topic: str, body: Body) -> None:
        with self.lock:
            self.messages.append((topic, body))

    def topics(self) -> list[str]:
        return [t for t, _ in self.messages]


class Clock:
    def __init__(self, wall: float = 1_700_000_000.0, mono: float = 100.0) -> None:
        self.wall_s, self.mono_s = wall, mono

    def wall(self) -> float:
        return self.wall_s

    def mono(self) -> float:
        return self.mono_s


def make_clip(n: int, hop_s: float = 1.0, span_s: float = 2.0, generation: int = 0) -> Clip:
    end = span_s + n * hop_s
    return Clip(
        stream="cam1",
        generation=generation,
        frames=np.zeros((8, 32, 32, 3), dtype=np.uint8),
        first_frame=int((end - span_s) * 25),
        last_frame=int(end * 25),
        start_ts=1_700_000_000.0 + end - span_s,
        end_ts=1_700_000_000.0 + end,
        start_stream_s=end - span_s,
        end_stream_s=end,
        ready_mono_s=99.75,
    )


def probs(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def make_state(method: str = "mean", window: int = 3, untrained: bool = False, top_k: int = 3, **kw: Any):
    rec, clock = Recorder(), Clock()
    state = SegmentState(
        "cam1",
        SmoothingConfig(method=method, window_clips=window, ema_alpha=0.5),
        LABELS,
        top_k=top_k,
        model_id="swin_t-k400-abc123",
        untrained=untrained,
        publish=rec,
        clock=clock.wall,
        monotonic=clock.mono,
        **kw,
    )
    return state, rec, clock


def feed(state: SegmentState, n: int, p: np.ndarray, **clip_kw: Any) -> bool:
    clip = make_clip(n, **clip_kw)
    assert state.accept_clip(clip)
    return state.on_result(ClipResult(clip, p))


def test_label_message_has_exactly_the_contract_fields() -> None:
    state, rec, _ = make_state()
    assert feed(state, 0, probs(0.1, 0.6, 0.2, 0.1))
    [(topic, msg)] = rec.messages
    assert topic == "label.cam1" and isinstance(msg, LabelBody)
    wire = set(msg.model_dump(mode="json"))  # the JSON fields (untrained is left out while false)
    assert wire == {"segment", "subject", "box", "clip", "top", "smoothed", "latency_ms", "model"}
    assert msg.segment == 1 and msg.subject is None and msg.box is None
    assert msg.clip == ClipInfo(
        start_ts=1_700_000_000.0, end_ts=1_700_000_002.0, first_frame=0, last_frame=50, frames=8
    )
    assert [s.label for s in msg.top] == ["run", "jump", "walk"]  # top_k=3, descending, stable ties
    assert [s.index for s in msg.top] == [1, 2, 0]
    assert msg.top[0].score == pytest.approx(0.6)
    assert msg.smoothed == msg.top  # first clip of a segment smooths to itself
    assert msg.latency_ms == pytest.approx(250.0)  # mono 100.0 - ready 99.75
    assert msg.model == "swin_t-k400-abc123"


def test_untrained_flag_only_when_untrained() -> None:
    state, rec, _ = make_state(untrained=True)
    feed(state, 0, probs(0.25, 0.25, 0.25, 0.25))
    assert rec.messages[0][1].untrained is True
    assert rec.messages[0][1].model_dump(mode="json")["untrained"] is True


def test_mean_smoothing_over_last_k_clips() -> None:
    state, rec, _ = make_state(method="mean", window=3, top_k=4)
    ps = [probs(1, 0, 0, 0), probs(0, 1, 0, 0), probs(0, 0, 1, 0), probs(0, 0, 0, 1), probs(0.5, 0.5, 0, 0)]
    for n, p in enumerate(ps):
        feed(state, n, p)
    expected = [np.mean(ps[max(0, i - 2) : i + 1], axis=0) for i in range(len(ps))]
    for (_, msg), exp in zip(rec.messages, expected, strict=True):
        got = np.zeros(4)
        for s in msg.smoothed:
            got[s.index] = s.score
        np.testing.assert_allclose(got, exp, atol=1e-9)


def test_ema_smoothing_is_renormalised_over_the_window() -> None:
    state, rec, _ = make_state(method="ema", window=3, top_k=4)
    rng = np.random.default_rng(1)
    ps = [rng.dirichlet(np.ones(4)).astype(np.float32) for _ in range(6)]
    for n, p in enumerate(ps):
        feed(state, n, p)
    alpha = 0.5
    for i, (_, msg) in enumerate(rec.messages):
        window = ps[max(0, i - 2) : i + 1][::-1]  # newest first
        weights = np.array([alpha * (1 - alpha) ** age for age in range(len(window))])
        exp = (weights[:, None] * np.asarray(window, dtype=np.float64)).sum(0) / weights.sum()
        got = np.zeros(4)
        for s in msg.smoothed:
            got[s.index] = s.score
        np.testing.assert_allclose(got, exp, atol=1e-7)
    # e.g. the third message: (0.5 p2 + 0.25 p1 + 0.125 p0) / 0.875


def test_reset_publishes_segment_then_reset_and_clears_smoothing() -> None:
    state, rec, clock = make_state(method="mean", window=5, top_k=4)
    feed(state, 0, probs(0.7, 0.1, 0.1, 0.1))  # clip 0 spans 0..2 s (stream clock)
    feed(state, 1, probs(0.7, 0.1, 0.1, 0.1))  # clip 1 ends at 3 s: walk was top for 3 s
    clock.wall_s += 10
    assert state.reset("control", subject="p-43") == 2
    assert rec.topics()[-2:] == ["segment.cam1", "reset.cam1"]
    summary, reset = rec.messages[-2][1], rec.messages[-1][1]
    assert summary == SegmentBody(
        segment=1,
        subject=None,
        box=None,
        start_ts=1_700_000_000.0,
        end_ts=1_700_000_010.0,
        clips=2,
        labels=(SegmentLabel(label="walk", index=0, clips=2, seconds=3.0),),
    )
    assert reset == ResetBody(segment=2, previous_segment=1, subject="p-43", box=None, reason="control")
    # smoothing cleared: the first result of segment 2 is smoothed to itself
    feed(state, 2, probs(0.0, 0.0, 0.0, 1.0))
    msg = rec.messages[-1][1]
    assert msg.segment == 2 and msg.subject == "p-43"
    assert msg.smoothed[0] == Score(label="sit", index=3, score=1.0)
    assert msg.smoothed[1].score == 0.0


def test_segment_summary_attributes_seconds_to_the_top_smoothed_label() -> None:
    state, rec, _ = make_state(method="mean", window=2, top_k=4)
    # clips every 1 s, each spans 2 s; smoothed top over window 2
    feed(state, 0, probs(0.9, 0.1, 0, 0))  # smoothed top walk; span 2 s -> walk 2
    feed(state, 1, probs(0.0, 1.0, 0, 0))  # smoothed (.45,.55) run; +1 s -> run 1
    feed(state, 2, probs(0.0, 1.0, 0, 0))  # run; +1 -> run 2
    feed(state, 4, probs(0.0, 0.0, 1, 0))  # (0,.5,.5) tie -> run (lower index); +2 s (hop skipped) -> run 4
    feed(state, 5, probs(0.0, 0.0, 1, 0))  # jump; +1 -> jump 1
    state.reset("scene_change")
    summary = rec.messages[-2][1]
    assert summary.clips == 5
    assert summary.labels == (
        SegmentLabel(label="run", index=1, clips=3, seconds=4.0),
        SegmentLabel(label="walk", index=0, clips=1, seconds=2.0),
        SegmentLabel(label="jump", index=2, clips=1, seconds=1.0),
    )
    assert sum(item.seconds for item in summary.labels) == 7.0  # stream time covered: 0 .. 7 s


def test_result_from_before_a_reset_is_never_published() -> None:
    state, rec, _ = make_state()
    old = make_clip(0)
    assert state.accept_clip(old)  # stamped segment 1, then in flight in the engine
    state.reset("scene_change")
    assert state.on_result(ClipResult(old, probs(1, 0, 0, 0))) is False
    assert "label.cam1" not in rec.topics()
    assert state.results_discarded == 1
    summary = rec.messages[0][1]
    assert summary.clips == 0 and summary.labels == ()


def test_clip_from_an_older_ring_generation_is_refused_after_reset() -> None:
    state, _, _ = make_state()
    state.reset("control", min_generation=3)
    old = make_clip(0, generation=2)
    assert state.accept_clip(old) is False
    assert state.clips_rejected == 1
    fresh = make_clip(1, generation=3)
    assert state.accept_clip(fresh) and fresh.segment == 2


def test_subject_rules_on_reset() -> None:
    state, rec, _ = make_state()
    state.reset("control", subject="p-1")
    assert state.subject == "p-1"
    state.reset("reconnect", keep_subject=True)
    assert state.subject == "p-1"
    state.reset("scene_change")
    assert state.subject is None
    assert [m.subject for t, m in rec.messages if t == "reset.cam1"] == ["p-1", "p-1", None]
    assert [m.segment for t, m in rec.messages if t == "segment.cam1"] == [1, 2, 3]


def test_bad_reset_reason_and_subject_are_rejected() -> None:
    state, rec, _ = make_state()
    with pytest.raises(ValueError, match="unknown reset reason"):
        state.reset("because")
    with pytest.raises(ValueError, match="subject"):
        state.reset("control", subject=5)  # type: ignore[arg-type]
    assert rec.messages == [] and state.segment == 1


def test_announce_start() -> None:
    state, rec, _ = make_state()
    state.announce_start()
    assert rec.messages == [
        ("reset.cam1", ResetBody(segment=1, previous_segment=0, subject=None, box=None, reason="start"))
    ]


def test_wrong_probability_length_is_discarded_not_raised() -> None:
    state, rec, _ = make_state()
    clip = make_clip(0)
    state.accept_clip(clip)
    assert state.on_result(ClipResult(clip, probs(0.5, 0.5))) is False
    assert rec.messages == []


def test_concurrent_results_and_resets_keep_order() -> None:
    state, rec, _ = make_state()
    stop = threading.Event()

    def results() -> None:
        n = 0
        while not stop.is_set():
            clip = make_clip(n)
            if state.accept_clip(clip):
                state.on_result(ClipResult(clip, probs(0.4, 0.3, 0.2, 0.1)))
            n += 1

    thread = threading.Thread(target=results)
    thread.start()
    for _ in range(50):
        state.reset("control")
    stop.set()
    thread.join(5)
    segment = 1
    for topic, msg in rec.messages:
        if topic in ("label.cam1", "segment.cam1"):  # belongs to the open segment
            assert msg.segment == segment
        else:
            segment += 1
            assert msg.segment == segment
    assert segment == 51
