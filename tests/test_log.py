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


def test_a_logger_made_before_configuration_follows_it(capsys: pytest.CaptureFixture[str]) -> None:
    early = get_logger("early")  # as a module-level logger is, at import time
    configure_logging("warning", "json")
    early.info("hidden")
    early.warning("shown", n=1)
    configure_logging("debug", "json")
    early.debug("now shown")
    lines = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
    assert [(r["event"], r["level"], r["component"]) for r in lines] == [
        ("shown", "warning", "early"),
        ("now shown", "debug", "early"),
    ]
