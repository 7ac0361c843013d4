"""Engine with ``torch.compile``: the prepared VideoSwin traces without a graph break, warm-up compiles every
batch size before the first clip (no graph is compiled afterwards), and a failed compile falls back to eager."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from tests.helpers.engine import (
    C,
    Collector,
    S,
    T,
    make_clip,
    make_engine,
    normalize,
    reference_probs,
    tiny_model,
)
from vstmon.inference.engine import Engine
from vstmon.log import configure_logging

pytestmark = pytest.mark.slow  # compiling takes seconds on a CPU


def _compiling_engine(model, collector, backend) -> Engine:
    return make_engine(model, "cpu", "fp32", 4, 0, collector, normalize=normalize, compile=True,
                  compile_backend=backend, clip_shape=(T, S, S, 3))  # fmt: skip


def _unique_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def _clips(n: int, seed: int) -> list:
    return [make_clip(f"s{i}", seed=seed + i) for i in range(n)]


def test_a_prepared_video_swin_traces_without_a_graph_break():
    torch._dynamo.reset()
    model = tiny_model()
    model.prepare((T, S, S), "cpu")
    x = torch.randn(2, 3, T, S, S)
    with torch.inference_mode():
        explanation = torch._dynamo.explain(model)(x)
    reasons = [str(b.reason).splitlines()[0] for b in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
    assert explanation.graph_count == 1


def test_an_unprepared_video_swin_also_traces_without_a_graph_break():
    """Without ``prepare``, the shifted-window gathers and masks are computed inside the graph."""
    torch._dynamo.reset()
    model = tiny_model()
    x = torch.randn(2, 3, T, S, S)
    with torch.inference_mode():
        explanation = torch._dynamo.explain(model)(x)
    reasons = [str(b.reason).splitlines()[0] for b in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons


def test_start_compiles_every_batch_size_and_no_graph_is_compiled_afterwards(engines):
    torch._dynamo.reset()
    model = tiny_model()
    reference = copy.deepcopy(model)  # the plain model, never prepared or compiled
    collector = Collector()
    engine = _compiling_engine(model, collector, "eager")
    before_start = _unique_graphs()
    engine.start()  # warms up: compiles
    engines.append(engine)
    assert engine.backend.compiled and engine.stats()["backend"]["compiled"]
    after_start = _unique_graphs()
    assert 0 < after_start - before_start <= 2  # one graph for batch 1, one (dynamic) for 2..max_batch

    for n in range(1, 5):  # on the caller's thread
        clips = _clips(n, seed=10 * n)
        probs = engine.backend.infer(np.stack([c.frames for c in clips]))
        assert probs.shape == (n, C) and probs.dtype == np.float32
        np.testing.assert_allclose(probs, reference_probs(reference, clips), atol=1e-5)
    assert _unique_graphs() == after_start  # every batch size was compiled at start

    clips = [make_clip(f"cam{i}", seed=100 + i) for i in range(3)]  # on the engine's thread
    for clip in clips:
        assert engine.submit(clip)
    results = collector.wait_for(3, timeout_s=60)
    assert all(engine.wait_idle(clip.key, 60) for clip in clips)
    expected = reference_probs(reference, clips)
    by_stream = {r.clip.stream: r.probs for r in results}
    for i, clip in enumerate(clips):
        np.testing.assert_allclose(by_stream[clip.stream], expected[i], atol=1e-5)
    assert engine.backend.compiled and engine.stats()["errors"] == 0
    assert _unique_graphs() == after_start


def broken(gm, example_inputs):
    raise RuntimeError("planted compile failure")


def test_a_compile_failure_falls_back_to_eager_with_one_log_line(engines, capsys):
    torch._dynamo.reset()
    configure_logging("info", "json")
    model = tiny_model()
    reference = copy.deepcopy(model)  # the plain model, never prepared or compiled
    collector = Collector()
    engine = _compiling_engine(
        model,
        collector,
        broken,
    )
    engine.start()
    engines.append(engine)
    assert not engine.backend.compiled
    clips = [make_clip(f"cam{i}", seed=200 + i) for i in range(3)]
    for clip in clips:
        assert engine.submit(clip)
    results = collector.wait_for(3, timeout_s=60)
    expected = reference_probs(reference, clips)
    by_stream = {r.clip.stream: r.probs for r in results}
    for i, clip in enumerate(clips):
        np.testing.assert_allclose(by_stream[clip.stream], expected[i], atol=1e-5)
    stats = engine.stats()
    assert stats["backend"]["compiled"] is False and stats["clips_failed"] == 0 and stats["errors"] == 0
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    failed = [r for r in records if "torch.compile failed" in r.get("event", "")]
    assert len(failed) == 1, records
    assert failed[0]["level"] == "error"
