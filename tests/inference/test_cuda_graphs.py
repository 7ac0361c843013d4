"""CUDA graphs of the runner's step, one per batch size (``vstmon.inference.cuda_graphs``). The GPU tests are marked ``gpu``
and have not run yet (no GPU where they were written); the guards run everywhere."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tests.helpers.engine import C, S, T, make_clip, reference_probs, tiny_model
from vstmon.inference.cuda_graphs import CudaGraphs
from vstmon.inference.runner import Runner


def _clips(n: int, seed: int) -> list:
    return [make_clip(f"s{i}", seed=seed + i) for i in range(n)]


def test_cuda_graphs_refuse_a_cpu_device() -> None:
    with pytest.raises(ValueError, match="CUDA device"):
        CudaGraphs(torch.device("cpu"), (T, S, S, 3))


def test_a_cpu_runner_asked_for_graphs_captures_none_and_runs_eagerly() -> None:
    model = tiny_model()
    runner = Runner(copy.deepcopy(model), "cpu", "fp32", 2, clip_shape=(T, S, S, 3), cuda_graphs=True)
    runner.warm_up()
    assert runner._graphs is None
    clips = _clips(2, seed=3)
    np.testing.assert_allclose(runner.run(runner.stage(clips)), reference_probs(model, clips), atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize(("precision", "atol"), [("fp32", 1e-5), ("bf16", 2e-2)])
def test_every_batch_size_gets_a_graph_whose_replay_equals_eager(precision: str, atol: float) -> None:
    model = tiny_model()
    runner = Runner(copy.deepcopy(model), "cuda", precision, 4, clip_shape=(T, S, S, 3), cuda_graphs=True)
    runner.warm_up()
    assert runner._graphs is not None and sorted(runner._graphs.sizes()) == [1, 2, 3, 4]
    for n in range(1, 5):
        clips = _clips(n, seed=10 * n)
        probs = runner.run(runner.stage(clips))
        assert probs is not None and probs.shape == (n, C)
        np.testing.assert_allclose(probs, reference_probs(model, clips), atol=atol)


@pytest.mark.gpu
def test_replays_do_not_share_outputs_between_batches() -> None:
    """Each batch's probabilities are copied out before the next replay overwrites the graph's output."""
    model = tiny_model()
    runner = Runner(copy.deepcopy(model), "cuda", "fp32", 2, clip_shape=(T, S, S, 3), cuda_graphs=True)
    runner.warm_up()
    first_clips, second_clips = _clips(2, seed=1), _clips(2, seed=50)
    first = runner.run(runner.stage(first_clips))
    second = runner.run(runner.stage(second_clips))
    np.testing.assert_allclose(first, reference_probs(model, first_clips), atol=1e-5)
    np.testing.assert_allclose(second, reference_probs(model, second_clips), atol=1e-5)


@pytest.mark.gpu
def test_graphs_of_a_compiled_forward_equal_eager() -> None:
    torch._dynamo.reset()
    model = tiny_model()
    runner = Runner(copy.deepcopy(model), "cuda", "fp32", 2, clip_shape=(T, S, S, 3), cuda_graphs=True,
                    compile=True)  # fmt: skip
    runner.warm_up()
    assert runner.compiled and runner._graphs is not None and sorted(runner._graphs.sizes()) == [1, 2]
    clips = _clips(2, seed=7)
    np.testing.assert_allclose(runner.run(runner.stage(clips)), reference_probs(model, clips), atol=1e-4)
