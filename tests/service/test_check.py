"""``vstmon check`` reports what the daemon would refuse at once, one line each with its key and line (a real
``vstmon check`` process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers.cli import run_vstmon, vstmon_env
from vstmon.errors import EX_CONFIG


def test_check_reports_stream_urls_the_daemon_refuses(tmp_path: Path) -> None:
    video = tmp_path / "here.mp4"
    video.write_bytes(b"\0")  # exists: parse_source accepts it (opening it is the daemon's business)
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            streams:
              - {{name: synthetic, url: 'testsrc://'}}
              - name: typo
                url: 'rtps://viewer:s3cret@10.0.0.5/live'
              - {{name: here, url: '{video}'}}
              - {{name: gone, url: missing.mp4}}
              - {{name: folder, url: '{tmp_path}'}}
            """
        )
    )
    done = run_vstmon("check", "--no-model", "--config", str(config), cwd=tmp_path)
    assert done.returncode == EX_CONFIG, done.stderr
    assert done.stderr.splitlines() == [
        f"vstmon: error: {config}: streams[1].url: unsupported URL scheme 'rtps' in rtps://viewer:***@10.0.0.5/live "
        "(use rtsp://, rtsps://, http(s)://, a file path, a webcam index, /dev/videoN or testsrc) (line 4)",
        f"vstmon: error: {config}: streams[3].url: video file missing.mp4 does not exist (line 6)",
        f"vstmon: error: {config}: streams[4].url: {tmp_path} is not a regular file (line 7)",
    ]
    assert "s3cret" not in done.stderr and done.stdout == ""


def test_check_accepts_the_same_streams_once_they_are_fixed(tmp_path: Path) -> None:
    (tmp_path / "missing.mp4").write_bytes(b"\0")
    config = tmp_path / "config.yaml"
    config.write_text(
        "streams:\n  - {name: cam, url: 'rtsp://10.0.0.5/live'}\n  - {name: file, url: missing.mp4}\n"
    )
    done = run_vstmon("check", "--no-model", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"config {config}: ok" in done.stdout


def test_the_url_check_needs_no_opencv() -> None:
    code = (
        "import sys\n"
        "from vstmon.config import parse_config\n"
        "from vstmon.service.preflight import stream_url_problems\n"
        "config = parse_config({'streams': [{'name': 'a', 'url': 'rtps://x'}]})\n"
        "print(len(stream_url_problems(config.streams)), 'cv2' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=vstmon_env(), timeout=60, check=True
    )
    assert done.stdout.split() == ["1", "False"], done.stdout
