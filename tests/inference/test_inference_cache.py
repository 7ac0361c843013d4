"""``compile: tensorrt`` on the CPU: the engine cache's keying, atomic writes and rebuilds (with stand-in builders:
plain Python classes that build, save and load a real file), the runner's fallback with one error line (with a
failing stand-in, and with the real TensorRT builder, whose torch-tensorrt is not installed here), the
``torch.export`` step of the real build, and systemd's start timeout extended while a slow warm-up runs."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers.engine import C, S, T, make_clip, reference_probs, tiny_model
from tests.helpers.notify_listener import NotifyListener
from vstmon.inference.engine_cache import (
    EngineKey,
    EngineOptions,
    engine_cache_dir,
    engine_path,
    load_or_build,
    weights_sha256,
)
from vstmon.inference.runner import Runner
from vstmon.inference.tensorrt import TensorRTBuilder, export_for_engine
from vstmon.log import configure_logging
from vstmon.service.sdnotify import SystemdNotifier

KEY = EngineKey(
    "standin", "NVIDIA H100 80GB HBM3", "9.0", 16, (32, 224, 224), "bf16", "2.13.0", "1.0", "ab" * 32
)


class StandInBuilder:
    """Builds an 'engine' that is a copy of the model, saves its weights with ``torch.save`` and loads them back
    into a fresh copy: a real file round trip. Counts what it did."""

    backend = "standin"

    def __init__(self) -> None:
        self.builds = 0
        self.saves = 0
        self.loads = 0

    def version(self) -> str:
        return "standin 1.0"

    def build(self, model: nn.Module, example: torch.Tensor, max_batch: int) -> nn.Module:
        self.builds += 1
        return copy.deepcopy(model)

    def save(self, engine: nn.Module, path: Path, example: torch.Tensor, max_batch: int) -> None:
        self.saves += 1
        torch.save(engine.state_dict(), path)

    def load(self, path: Path, device: torch.device) -> nn.Module:
        self.loads += 1
        engine = tiny_model()
        engine.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        return engine.to(device).eval()


class FailingBuilder(StandInBuilder):
    def build(self, model: nn.Module, example: torch.Tensor, max_batch: int) -> nn.Module:
        self.builds += 1
        raise RuntimeError("planted build failure\nsecond line of the builder's report")


class UnsavableBuilder(StandInBuilder):
    def save(self, engine: nn.Module, path: Path, example: torch.Tensor, max_batch: int) -> None:
        path.write_bytes(b"half an engine")
        raise OSError(28, "No space left on device")


class SlowBuilder(StandInBuilder):
    """Blocks its build until ``release`` is set (a first TensorRT build takes minutes)."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.release = release

    def build(self, model: nn.Module, example: torch.Tensor, max_batch: int) -> nn.Module:
        assert self.release.wait(60), "the test never released the build"
        return super().build(model, example, max_batch)


def _example() -> torch.Tensor:
    return torch.randn(1, 3, T, S, S)


def _options(builder: Any, folder: Path | None, fallback: str = "eager") -> EngineOptions:
    return EngineOptions(builder, folder, "cd" * 32, stem="tiny", fallback=fallback)


def _key(**changes: Any) -> EngineKey:
    return dataclasses.replace(KEY, max_batch=4, clip_shape=(T, S, S), **changes)


def _log_records(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]


# ---- keys and paths ----------------------------------------------------------------------------------------------


def test_a_key_digest_is_stable_and_names_the_file_next_to_the_checkpoint(tmp_path: Path) -> None:
    assert KEY.digest() == dataclasses.replace(KEY).digest()
    assert len(KEY.digest()) == 16
    checkpoint = tmp_path / "swin_tiny.pth"
    checkpoint.write_bytes(b"weights")
    folder = engine_cache_dir(checkpoint)
    assert folder == tmp_path.resolve()
    assert (
        engine_path(folder, "swin_tiny", KEY)
        == tmp_path.resolve() / f"swin_tiny.standin-{KEY.digest()}.engine"
    )


@pytest.mark.parametrize(
    "change",
    [
        {"gpu": "NVIDIA A100-SXM4-80GB"},
        {"compute_capability": "8.0"},
        {"max_batch": 32},
        {"clip_shape": (16, 224, 224)},
        {"precision": "fp16"},
        {"torch_version": "2.14.1"},
        {"builder_version": "2.0"},
        {"weights_sha256": "ef" * 32},
        {"backend": "other"},
    ],
)
def test_every_field_of_the_key_changes_the_file(change: dict[str, Any]) -> None:
    assert dataclasses.replace(KEY, **change).digest() != KEY.digest()


def test_without_a_checkpoint_engines_go_to_the_cache_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VSTMON_CACHE_DIR", str(tmp_path / "cache"))
    assert engine_cache_dir(None) == tmp_path / "cache" / "engines"


def test_the_weights_hash_follows_the_values() -> None:
    model = tiny_model()
    same = copy.deepcopy(model)
    assert weights_sha256(model) == weights_sha256(same)
    with torch.no_grad():
        next(same.parameters()).add_(1e-3)
    assert weights_sha256(model) != weights_sha256(same)


# ---- load or build -----------------------------------------------------------------------------------------------


def test_the_first_start_builds_and_caches_the_next_loads(tmp_path: Path) -> None:
    builder, model, key = StandInBuilder(), tiny_model(), _key()
    _engine, built = load_or_build(_options(builder, tmp_path), key, model, _example(), torch.device("cpu"))
    assert built and builder.builds == 1 and builder.saves == 1
    path = engine_path(tmp_path, "tiny", key)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, path.name + ".json"]  # nothing temporary
    sidecar = json.loads((tmp_path / (path.name + ".json")).read_text())
    assert sidecar["key"]["gpu"] == key.gpu and sidecar["bytes"] == path.stat().st_size

    again, built = load_or_build(_options(builder, tmp_path), key, model, _example(), torch.device("cpu"))
    assert not built and builder.builds == 1 and builder.loads == 1
    x = _example()
    with torch.inference_mode():
        torch.testing.assert_close(again(x), model(x))


@pytest.mark.parametrize("damage", ["truncated", "overwritten", "no sidecar", "sidecar of another key"])
def test_a_corrupt_or_mismatched_cached_engine_is_rebuilt(
    tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", "json")
    builder, model, key = StandInBuilder(), tiny_model(), _key()
    load_or_build(_options(builder, tmp_path), key, model, _example(), torch.device("cpu"))
    path = engine_path(tmp_path, "tiny", key)
    sidecar = path.with_name(path.name + ".json")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "overwritten":
        path.write_bytes(os.urandom(path.stat().st_size))
    elif damage == "no sidecar":
        sidecar.unlink()
    else:
        meta = json.loads(sidecar.read_text())
        meta["key"]["precision"] = "fp16"
        sidecar.write_text(json.dumps(meta))
    capsys.readouterr()
    _engine, built = load_or_build(_options(builder, tmp_path), key, model, _example(), torch.device("cpu"))
    assert built and builder.builds == 2
    warnings = [r for r in _log_records(capsys) if "cached engine not used" in r.get("event", "")]
    assert len(warnings) == 1 and warnings[0]["path"] == str(path)
    _engine, built = load_or_build(_options(builder, tmp_path), key, model, _example(), torch.device("cpu"))
    assert not built  # the rebuilt entry is valid


def test_a_cached_engine_the_loader_cannot_read_is_rebuilt(tmp_path: Path) -> None:
    class BrokenLoader(StandInBuilder):
        def load(self, path: Path, device: torch.device) -> nn.Module:
            if self.loads == 0:
                self.loads += 1
                raise RuntimeError("engine deserialisation failed: wrong TensorRT version")
            return super().load(path, device)

    builder, key = BrokenLoader(), _key()
    load_or_build(_options(builder, tmp_path), key, tiny_model(), _example(), torch.device("cpu"))
    _engine, built = load_or_build(
        _options(builder, tmp_path), key, tiny_model(), _example(), torch.device("cpu")
    )
    assert built and builder.builds == 2


def test_a_failed_build_raises_and_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="planted build failure"):
        load_or_build(
            _options(FailingBuilder(), tmp_path), _key(), tiny_model(), _example(), torch.device("cpu")
        )
    assert list(tmp_path.iterdir()) == []


def test_an_engine_that_cannot_be_saved_is_used_uncached(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", "json")
    builder = UnsavableBuilder()
    engine, built = load_or_build(
        _options(builder, tmp_path), _key(), tiny_model(), _example(), torch.device("cpu")
    )
    assert built and isinstance(engine, nn.Module)
    assert list(tmp_path.iterdir()) == []  # the half-written temporary file is gone
    records = [r for r in _log_records(capsys) if "not cached" in r.get("event", "")]
    assert len(records) == 1 and "No space left" in records[0]["error"]


# ---- the runner --------------------------------------------------------------------------------------------------


def _model() -> nn.Module:
    torch.manual_seed(7)
    return tiny_model()


def _runner(options: EngineOptions, **kwargs: Any) -> Runner:
    return Runner(_model(), "cpu", "fp32", 3, clip_shape=(T, S, S, 3), compile="tensorrt", engine=options,
                  **kwargs)  # fmt: skip


def _check_outputs(runner: Runner) -> None:
    """The runner's probabilities are those of the same weights run eagerly."""
    clips = [make_clip(f"s{i}", seed=40 + i) for i in range(3)]
    probs = runner.infer(np.stack([c.frames for c in clips]))
    assert probs.shape == (3, C)
    np.testing.assert_allclose(probs, reference_probs(_model(), clips), atol=1e-5)


def test_a_runner_builds_the_engine_at_warm_up_and_the_next_one_loads_it(tmp_path: Path) -> None:
    builder = StandInBuilder()
    first = _runner(_options(builder, tmp_path))
    first.warm_up()
    assert first.forward_mode == "standin" and first.compiled and builder.builds == 1
    _check_outputs(first)
    second = _runner(_options(builder, tmp_path))
    second.warm_up()
    assert second.forward_mode == "standin" and builder.builds == 1 and builder.loads == 1
    _check_outputs(second)


@pytest.mark.parametrize(
    "builder", [FailingBuilder(), TensorRTBuilder()], ids=["build error", "not installed"]
)
def test_a_failed_build_falls_back_to_eager_with_one_error_line(
    tmp_path: Path, builder: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", "json")
    runner = _runner(_options(builder, tmp_path, fallback="eager"))
    runner.warm_up()
    assert runner.forward_mode == "eager" and not runner.compiled
    _check_outputs(runner)
    errors = [r for r in _log_records(capsys) if r.get("level") == "error"]
    assert len(errors) == 1, errors
    assert f"{builder.backend} engine unavailable; running eager instead" in errors[0]["event"]
    expected = (
        "RuntimeError: planted build failure"
        if isinstance(builder, FailingBuilder)
        else "ModuleNotFoundError"
    )
    assert errors[0]["error"].startswith(expected) and "\n" not in errors[0]["error"]
    assert list(tmp_path.iterdir()) == []


def test_a_failed_build_falls_back_to_torch_compile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fallback's route; TorchDynamo is switched off (its own setting) so that the compile costs nothing
    here: tests/test_engine_compile.py compiles for real."""
    configure_logging("info", "json")
    # the config module's own patch: a monkeypatch of it deletes the setting on undo ("disable does not exist"
    # for every later compile in this process)
    with torch._dynamo.config.patch(disable=True):
        runner = _runner(_options(FailingBuilder(), tmp_path, fallback="inductor"), compile_backend="eager")
        runner.warm_up()
        assert runner.forward_mode == "inductor" and runner.compiled
        _check_outputs(runner)
    assert len([r for r in _log_records(capsys) if r.get("level") == "error"]) == 1


def test_an_engine_that_fails_on_a_batch_falls_back_to_eager_and_the_batch_is_run() -> None:
    class BreaksLater(StandInBuilder):
        broken = False

        def build(self, model: nn.Module, example: torch.Tensor, max_batch: int) -> Any:
            super().build(model, example, max_batch)

            def engine(x: torch.Tensor) -> torch.Tensor:
                if self.broken:
                    raise RuntimeError("engine: CUDA error: an illegal memory access was encountered")
                return model(x)

            return engine

    builder = BreaksLater()
    runner = _runner(_options(builder, None))
    runner.warm_up()
    assert runner.forward_mode == "standin"
    builder.broken = True
    clips = [make_clip(f"s{i}", seed=40 + i) for i in range(3)]
    probs = runner.run(runner.stage(clips))  # the engine fails: eager runs the batch
    assert runner.forward_mode == "eager"
    np.testing.assert_allclose(probs, reference_probs(_model(), clips), atol=1e-5)


def test_the_model_exports_with_a_dynamic_batch_for_the_engine_build() -> None:
    """The first step of the real TensorRT build (``torch.export``) runs here: one program for batches 1 to 4."""
    model = tiny_model()
    model.prepare((T, S, S), "cpu")
    program = export_for_engine(model, _example(), max_batch=4)
    exported = program.module()
    for n in (1, 3, 4):
        x = torch.randn(n, 3, T, S, S)
        with torch.no_grad():
            torch.testing.assert_close(exported(x), model(x))


# ---- systemd start timeout -----------------------------------------------------------------------------------------


def _extensions(messages: list[bytes]) -> list[bytes]:
    return [m for m in messages if m.startswith(b"EXTEND_TIMEOUT_USEC=")]


def test_a_slow_warm_up_extends_the_start_timeout_until_it_ends(tmp_path: Path) -> None:
    with NotifyListener(tmp_path / "notify.sock") as listener:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "2000000"})
        release = threading.Event()
        runner = _runner(_options(SlowBuilder(release), tmp_path))

        def release_after_three_extensions() -> None:  # the build lasts until systemd heard of it three times
            listener.wait_for(lambda messages: len(_extensions(messages)) >= 3, timeout_s=60)
            release.set()

        helper = threading.Thread(target=release_after_three_extensions, daemon=True)
        helper.start()
        with notifier.extending_start(every_s=0.05, extend_s=30):
            runner.warm_up()
        helper.join(5)
        sent = _extensions(listener.messages)
        assert len(sent) >= 3
        assert sent[0] == b"EXTEND_TIMEOUT_USEC=30000000"
        assert b"WATCHDOG=1" not in listener.messages  # the watchdog starts at READY
        assert runner.forward_mode == "standin"
        after = len(listener.messages)
        notifier.notify("READY=1")
        messages = listener.wait_for(lambda m: m[-1:] == [b"READY=1"], timeout_s=10)
        assert len(messages) == after + 1  # nothing more was extended once warm-up was over
        notifier.close()


def test_without_a_notify_socket_extending_is_a_no_op() -> None:
    before = threading.active_count()
    with SystemdNotifier({}).extending_start(every_s=0.01):
        assert threading.active_count() == before
