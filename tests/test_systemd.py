"""The shipped systemd unit passes systemd's own offline checks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

UNIT = REPO_ROOT / "systemd" / "vstmon.service"


@pytest.fixture
def unit_with_real_binary(tmp_path: Path) -> Path:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    # ExecStart must name an existing executable for `verify`; point it at this venv's vstmon.
    vstmon_bin = Path(sys.executable).parent / "vstmon"
    text = UNIT.read_text().replace("/opt/vstmon/.venv/bin/vstmon", str(vstmon_bin))
    unit = tmp_path / "vstmon.service"
    unit.write_text(text)
    return unit


def test_unit_verifies_without_warnings(unit_with_real_binary: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit_with_real_binary)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", f"systemd-analyze warned: {result.stderr}"


def test_unit_is_a_notify_service_with_watchdog() -> None:
    text = UNIT.read_text()
    assert "Type=notify" in text
    assert "WatchdogSec=" in text
    assert "vstmon run --config" in text


def test_unit_does_not_restart_on_a_configuration_error() -> None:
    from vstmon.errors import EX_CONFIG, CheckpointError, ConfigError, LabelsError

    assert EX_CONFIG == ConfigError.exit_code == CheckpointError.exit_code == LabelsError.exit_code == 78
    lines = UNIT.read_text().splitlines()
    assert f"RestartPreventExitStatus={EX_CONFIG}" in lines
    assert "Restart=on-failure" in lines
