"""Shared fixtures: the reference fixtures folder, free ports, GPU skipping."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def reference_dir() -> Path | None:
    """../shared/reference beside the repo (or $VSTMON_REFERENCE_DIR); None when absent."""
    candidate = Path(os.environ.get("VSTMON_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "reference"))
    return candidate if (candidate / "tiny_k400_style.pth").is_file() else None


@pytest.fixture(scope="session")
def reference() -> Path:
    path = reference_dir()
    if path is None:
        reason = (
            "reference fixtures not found: expected ../shared/reference beside the repo "
            "(or set VSTMON_REFERENCE_DIR)"
        )
        if os.environ.get("VSTMON_REQUIRE_REFERENCE") == "1":  # CI: the proof of equivalence must run
            pytest.fail(f"VSTMON_REQUIRE_REFERENCE=1 but {reason}")
        pytest.skip(reason)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def port() -> int:
    return free_port()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
