"""Where vstmon keeps files it can regenerate (detector descriptions, inference engines)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    """``$VSTMON_CACHE_DIR``, else systemd's ``$CACHE_DIRECTORY``, else ``$XDG_CACHE_HOME/vstmon`` (~/.cache)."""
    for variable in ("VSTMON_CACHE_DIR", "CACHE_DIRECTORY"):
        if value := os.environ.get(variable):
            return Path(value.split(":", 1)[0])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vstmon"
