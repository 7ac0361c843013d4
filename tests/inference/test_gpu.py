"""The GPU path on a real CUDA device (skipped without one): compiled inference with inductor, the attention
kernel picked at warm-up, the precision picked by compute capability, and a real out-of-memory split under a
memory cap. The CPU-visible halves of these behaviours are tested in test_engine*.py."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from tests.helpers.engine import (
    Collector,
    S,
    T,
    make_clip,
    make_engine,
    normalize,
    reference_probs,
    tiny_model,
)
from vstmon.inference.runner import auto_half_dtype
from vstmon.model import build_model
from vstmon.model.presets import PRESETS

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _no_memory_cap_afterwards():
    yield
    torch.cuda.set_per_process_memory_fraction(1.0, 0)


def test_auto_precision_follows_this_gpus_capability():
    engine = make_engine(tiny_model(), "cuda", "auto", 1, 0, lambda _r: None)
    capability = torch.cuda.get_device_capability(0)
    assert engine.backend.dtype is auto_half_dtype(capability)
    if capability >= (8, 0):
        assert engine.backend.dtype is torch.bfloat16


def test_compiled_with_inductor_matches_eager_and_compiles_nothing_after_warm_up(engines):
    torch._dynamo.reset()
    model = tiny_model()
    collector = Collector()
    engine = make_engine(copy.deepcopy(model), "cuda", "fp32", 4, 0, collector, compile=True,
                    normalize=normalize, clip_shape=(T, S, S, 3))  # fmt: skip
    engines.append(engine)
    engine.start()
    assert engine.backend.compiled, "inductor should compile the prepared model on CUDA"
    graphs = counters["stats"]["unique_graphs"]
    for n in range(1, 5):
        clips = [make_clip(f"s{i}", seed=10 * n + i) for i in range(n)]
        probs = engine.backend.infer(np.stack([c.frames for c in clips]))
        np.testing.assert_allclose(probs, reference_probs(model, clips), atol=1e-3)
    assert counters["stats"]["unique_graphs"] == graphs, "a batch size compiled after warm-up"


def test_warm_up_picks_an_attention_kernel_that_takes_the_mask_and_gives_the_same_output(engines):
    model = tiny_model()
    collector = Collector()
    engine = make_engine(copy.deepcopy(model), "cuda", "fp32", 2, 0, collector, normalize=normalize,
                    clip_shape=(T, S, S, 3))  # fmt: skip
    engines.append(engine)
    engine.start()
    assert engine.backend.attention in {"cudnn", "efficient", "math"}
    assert engine.backend.attention_figures and engine.backend.attention in engine.backend.attention_figures
    clips = [make_clip("a", seed=1), make_clip("b", seed=2)]
    for clip in clips:
        engine.submit(clip)
    by_stream = {r.clip.stream: r.probs for r in collector.wait_for(2, timeout_s=60)}
    expected = reference_probs(model, clips)
    for i, clip in enumerate(clips):
        np.testing.assert_allclose(by_stream[clip.stream], expected[i], atol=1e-3)


def test_a_real_out_of_memory_splits_the_batch_and_delivers_every_clip(engines):
    """A memory cap between what 2 and 8 clips need: the first batch of 8 meets a real CUDA out-of-memory error,
    is split, every clip is still delivered, and max_batch is lowered."""
    frames, size, batch = 8, 112, 8
    model = build_model(PRESETS["swin_t"], 400).eval().cuda()
    peaks = {}
    for n in (2, batch):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            model(torch.randn(n, 3, frames, size, size, device="cuda"))
        peaks[n] = torch.cuda.max_memory_reserved()
    torch.cuda.empty_cache()
    fraction = (peaks[2] + peaks[batch]) / 2 / torch.cuda.get_device_properties(0).total_memory
    delivered: list[np.ndarray] = []
    done = threading.Event()

    def on_result(result) -> None:
        delivered.append(result.probs)
        if len(delivered) == batch:
            done.set()

    engine = make_engine(model, "cuda", "fp32", batch, 2000, on_result, gpu_memory_fraction=fraction)
    engines.append(engine)
    engine.start()
    rng = np.random.default_rng(0)
    for i in range(batch):
        clip = make_clip(f"s{i}", seed=i)
        clip.frames = rng.integers(0, 256, size=(frames, size, size, 3), dtype=np.uint8)
        assert engine.submit(clip)
    assert done.wait(120), f"only {len(delivered)} of {batch} clips delivered"
    assert engine.backend.oom_splits >= 1
    assert engine.backend.max_batch < batch
    assert engine.clips_failed == 0
    assert all(np.isfinite(p).all() for p in delivered)
