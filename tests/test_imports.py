"""Commands that do not run the model do not import torch (it takes seconds): each is run as a real process and
looks at its own ``sys.modules`` when it is done."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import REPO_ROOT, vstmon_env

_PROBE = """
import json, sys
from vstmon.cli import main
try:
    code = main(json.loads(sys.argv[1]))
except SystemExit as stop:
    code = stop.code
print(json.dumps({"code": code, "torch": "torch" in sys.modules}))
"""


def _run(args: list[str], cwd: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(args)],
        capture_output=True, text=True, timeout=60, env=vstmon_env(), cwd=cwd, check=False,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "args",
    [
        ["listen", "tcp://127.0.0.1:9", "--timeout-s", "0.2"],
        ["ctl", "tcp://127.0.0.1:9", "status", "--timeout-s", "0.2"],
        ["weights", "list"],
        ["--config", "missing.yaml"],
        ["check", "--config", "missing.yaml"],
        ["check", "--config", "bad.yaml"],
        ["--help"],
    ],
    ids=[
        "listen",
        "ctl",
        "weights list",
        "run, missing config",
        "check, missing config",
        "check, bad config",
        "help",
    ],
)
def test_commands_that_run_no_model_do_not_import_torch(args: list[str], tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("clip: {hop: 1}\nstreams: [{name: a, url: x.mp4}]\n")
    result = _run(args, tmp_path)
    assert result["torch"] is False, result
    assert result["code"] != 0 or args[0] in ("weights", "--help")


def test_keys_generate_does_not_import_torch(tmp_path: Path) -> None:
    result = _run(["keys", "generate", str(tmp_path / "keys")], REPO_ROOT)
    assert result == {"code": 0, "torch": False}
