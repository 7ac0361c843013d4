"""The ``vstmon`` command as a user runs it: a real process, its exit code and what it prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vstmon import __version__

REPO = Path(__file__).resolve().parents[1]


def _vstmon(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "vstmon", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_version() -> None:
    done = _vstmon("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"vstmon {__version__}"


def test_help_lists_every_command() -> None:
    done = _vstmon("--help")
    assert done.returncode == 0
    for command in ("run", "check", "classify", "weights", "listen", "ctl"):
        assert command in done.stdout
    assert "--config config.yaml" in done.stdout


def test_no_arguments_prints_help_and_exits_2() -> None:
    done = _vstmon()
    assert done.returncode == 2 and "COMMAND" in done.stdout


def test_missing_config_is_a_clear_error_without_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    for args in (("--config", str(missing)), ("check", "--config", str(missing))):
        done = _vstmon(*args, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert str(missing) in done.stderr and "Traceback" not in done.stderr


def test_bad_config_value_names_the_yaml_path(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("streams:\n  - name: cam\n    url: testsrc://\n    hop_s: -1\n")
    done = _vstmon("check", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "hop_s" in done.stderr and "streams" in done.stderr


def test_unknown_command_option_is_an_argparse_error() -> None:
    done = _vstmon("weights", "--no-such-option")
    assert done.returncode == 2 and "unrecognized arguments" in done.stderr
