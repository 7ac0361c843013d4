"""Credentials never reach log lines."""

from __future__ import annotations

import json

import pytest

from vstmon.log import configure_logging, get_logger, redact, redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://admin:hunter2@10.0.0.5:554/s1", "rtsp://admin:***@10.0.0.5:554/s1"),
        ("rtsps://token@cam.example/live", "rtsps://***@cam.example/live"),
        ("http://cam/video.mjpg?user=a&password=xyz&x=1", "http://cam/video.mjpg?user=a&password=***&x=1"),
        ("/srv/video/a.mp4", "/srv/video/a.mp4"),
        ("failed to open rtsp://u:p@h/s: timeout", "failed to open rtsp://u:***@h/s: timeout"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_walks_containers() -> None:
    data = {"urls": ["rtsp://a:b@h/x"], "nested": {"u": "http://c:d@h/"}}
    assert redact(data) == {"urls": ["rtsp://a:***@h/x"], "nested": {"u": "http://c:***@h/"}}


def test_log_lines_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    get_logger("test").info("opening", url="rtsp://viewer:topsecret@127.0.0.1:8554/stream")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert "topsecret" not in line
    assert record["url"] == "rtsp://viewer:***@127.0.0.1:8554/stream"
    assert record["component"] == "test"
