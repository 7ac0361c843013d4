"""``vstmon.model.bundle``: what ``config.model`` loads; untrained weights are seeded and warned about once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import torch
import yaml

from tests.helpers.cli import REPO_ROOT
from vstmon.config import parse_config
from vstmon.model import UNTRAINED_SEED, SwinConfig, build_untrained_model, load_model_and_labels

_TINY = SwinConfig(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), num_classes=6)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_two_untrained_loads_have_identical_weights() -> None:
    config = parse_config({"model": {"checkpoint": None, "arch": "auto"}}, require_streams=False)
    torch.manual_seed(1)  # whatever the global state, the weights are the same
    first = load_model_and_labels(config, warn=False)
    torch.manual_seed(2)
    second = load_model_and_labels(config, warn=False)
    assert first.untrained and first.model_id == "untrained:swin_t"
    assert _same_weights(first.model, second.model)


def test_untrained_weights_come_from_the_stated_seed() -> None:
    assert UNTRAINED_SEED == 0
    assert _same_weights(build_untrained_model(_TINY), build_untrained_model(_TINY, seed=0))
    assert not _same_weights(build_untrained_model(_TINY), build_untrained_model(_TINY, seed=1))


def test_building_untrained_weights_leaves_the_global_random_state_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    build_untrained_model(_TINY)
    assert torch.equal(torch.rand(5), expected)


def test_the_daemon_logs_the_untrained_warning_once(tmp_path: Path) -> None:
    config = {
        "model": {"checkpoint": None},
        "clip": {"frames": 8, "frame_interval": 1, "size_px": 64},
        "inference": {"threads": 1},
        "streams": [{"name": "demo", "url": "testsrc://?width=96&height=64&fps=10"}],
        "publish": {"endpoints": ["tcp://127.0.0.1:*"], "control": None},
        "log": {"format": "json"},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vstmon", "--config", "config.yaml"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    running = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "vstmon running" in line:
                running.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert running.wait(180), "the daemon did not start:\n" + "".join(lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        reader.join(30)
    assert code == 0, "".join(lines)
    warnings = [line for line in lines if "UNTRAINED" in line]
    assert len(warnings) == 1, "".join(lines)
