"""The README's first run on a machine without internet: the shipped config.yaml, no checkpoint, a daemon that
publishes (untrained, marked) labels when asked to with ``--allow-untrained`` (issue: new users got stuck at the
weights download)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.cli import REPO_ROOT, run_vstmon
from vstmon.wire.client import Subscriber


def _shipped_config_in(tmp_path: Path, detector: Path) -> dict[str, Any]:
    """The shipped config.yaml as it is, run from ``tmp_path``: the detector fetched into checkpoints/ there,
    the Swin checkpoint missing (the download failed offline)."""
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(detector, tmp_path / "checkpoints" / "ssdlite_mobilenet_v2_pedestrian.pb")
    data = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())
    assert not (tmp_path / data["model"]["checkpoint"]).exists()
    return data


def test_without_the_weights_the_daemon_refuses_and_names_the_flag(
    tmp_path: Path, pedestrian_pb: Path
) -> None:
    data = _shipped_config_in(tmp_path, pedestrian_pb)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    result = run_vstmon("--config", str(tmp_path / "config.yaml"), cwd=tmp_path)
    assert result.returncode == 78, result.stderr
    assert "model.checkpoint" in result.stderr and "--allow-untrained" in result.stderr


def test_allow_untrained_runs_the_shipped_config_and_marks_every_label(
    tmp_path: Path, pedestrian_pb: Path, vstmon_process: Any
) -> None:
    data = _shipped_config_in(tmp_path, pedestrian_pb)
    daemon = vstmon_process(data, args=("--allow-untrained",)).wait_running(timeout_s=120)
    with Subscriber(daemon.pub, topics=["label"]) as sub:
        message = sub.recv(timeout_s=120)
    assert message is not None, f"no label within 120 s:\n{daemon.log()}"
    assert message.untrained is True and message.model.startswith("untrained:swin_t")
    assert daemon.terminate() == 0
    warnings = [e for e in daemon.log_events() if "UNTRAINED" in str(e.get("event", ""))]
    assert len(warnings) == 1, daemon.log()  # one loud line, not one per component
    assert "--allow-untrained" in warnings[0]["event"] and "weights fetch" in warnings[0]["event"]
