"""Running ``vstmon`` as a real process from the tests (the repo importable first)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def vstmon_env(**extra: str) -> dict[str, str]:
    """The environment of a ``vstmon`` subprocess: this one, with the repo importable first."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def run_vstmon(*args: str, timeout_s: float = 120, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    """``vstmon ARGS`` as a real process (bounded by ``timeout_s``); its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "vstmon.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=vstmon_env(),
        cwd=cwd,
        check=False,
    )
