"""Shared fixtures: the reference fixtures folder, a closed port, GPU skipping.

Servers in tests bind port 0 / ``*`` and report the port the OS chose: asking for a free port first and binding it
later races with every other process on the machine."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import REPO_ROOT

# fixtures shared across the suite (real videos and detector weights, RTSP servers, vstmon processes, tiny daemons)
pytest_plugins = [
    "tests.helpers.assets",
    "tests.helpers.rtsp_fixtures",
    "tests.helpers.process",
    "tests.helpers.daemon",
]


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


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that refuses connections for the whole test: bound (so no other process can take
    it) but not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


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


@pytest.fixture
def silent_endpoint(closed_port: int) -> str:
    """A tcp endpoint where nothing answers: its port is held (bound, never listening) for the whole test."""
    return f"tcp://127.0.0.1:{closed_port}"


@pytest.fixture
def engines() -> Iterator[list]:
    """Engines a test starts (append them): stopped and joined afterwards."""
    started: list = []
    yield started
    for engine in started:
        engine.stop()
        assert engine.join(30), f"engine {engine.name} did not stop"
