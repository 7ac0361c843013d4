"""Credentials never reach log lines: URL user-info parsed up to the last "@", secret query parameters masked."""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys

import pytest

from tests.helpers.cli import REPO_ROOT
from vstmon.log import configure_logging, get_logger, redact, redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://admin:hunter2@10.0.0.5:554/s1", "rtsp://admin:***@10.0.0.5:554/s1"),
        ("rtsps://token@cam.example/live", "rtsps://***@cam.example/live"),
        ("http://cam/video.mjpg?user=a&password=xyz&x=1", "http://cam/video.mjpg?user=a&password=***&x=1"),
        ("/srv/video/a.mp4", "/srv/video/a.mp4"),
        ("failed to open rtsp://u:p@h/s: timeout", "failed to open rtsp://u:***@h/s: timeout"),
        # the password holds "@" and "/": the user-info ends at the last "@"
        ("rtsp://admin:p@ss@host/live", "rtsp://admin:***@host/live"),
        ("rtsp://admin:pa/ss@host:554/live", "rtsp://admin:***@host:554/live"),
        ("rtsp://admin:p@s/s?#:x@host/live?x=1", "rtsp://admin:***@host/live?x=1"),
        ("rtsp://:onlypass@host/live", "rtsp://***@host/live"),
        ("rtsp://admin:@host/live", "rtsp://admin:@host/live"),  # nothing to hide
        # two URLs in one text, each masked
        ("a rtsp://u:p@h1/s and http://v:q@h2/t", "a rtsp://u:***@h1/s and http://v:***@h2/t"),
        # a URL that went through pathlib ("//" -> "/"), still a URL; "C:/" is not a scheme
        ("video file rtsp:/admin:p@ss@h/x does not exist", "video file rtsp:/admin:***@h/x does not exist"),
        ("C:/videos/me@home.mp4 and /srv/a:b@c.mp4", "C:/videos/me@home.mp4 and /srv/a:b@c.mp4"),
        # repr of an exception holding the URL
        ("OSError('rtsp://admin:p@ss@host/x')", "OSError('rtsp://admin:***@host/x')"),
        # an "@" in the query: the host is masked too (over-masking, never leaking)
        ("http://cam/x?mail=a@b.example", "http://***@b.example"),
        # a user name that is not a plain name is masked with the rest
        ("rtsp://me@mail.example:pw@host/x", "rtsp://***@host/x"),
        # secret query parameters, any case, also as the last part of a longer name
        (
            "http://h/v?PassWord=1&passwd=2&pwd=3&pw=4&pass=5&width=640",
            "http://h/v?PassWord=***&passwd=***&pwd=***&pw=***&pass=***&width=640",
        ),
        (
            "https://h/v?token=a&access_token=b&api_key=c&apikey=d&key=e&secret=f&auth=g&sig=h&signature=i",
            "https://h/v?token=***&access_token=***&api_key=***&apikey=***&key=***&secret=***&auth=***"
            "&sig=***&signature=***",
        ),
        (
            "https://h/v?client_secret=a&X-Amz-Signature=b&stream_key=c&fps=25",
            "https://h/v?client_secret=***&X-Amz-Signature=***&stream_key=***&fps=25",
        ),
        ("testsrc://?width=640&height=480&fps=25", "testsrc://?width=640&height=480&fps=25"),
        ("retry with password=hunter2 now", "retry with password=*** now"),
        # a secret parameter whose value holds "@": both rules apply, the union is masked
        ("http://cam/x?password=p@ss", "http://***"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


PASSWORDS = [
    "hunter2",
    "p@ss",
    "pa/ss",
    "p@s/s",
    "a:b@c/d",
    "@@",
    "//",
    "p?w#d",
    "x@y?z=1&token=2",
    "%40/%2F",
]


@pytest.mark.parametrize("password", PASSWORDS)
def test_no_part_of_a_password_survives_in_any_url_form(password: str) -> None:
    forms = [
        "rtsp://admin:{p}@cam.local:554/Streaming/Channels/101",
        "rtsp://admin:{p}@10.1.2.3/live?channel=1",
        "http://viewer:{p}@cam/video.mjpg?x=1",
        "reconnecting: cannot open rtsp://admin:{p}@cam/live: refused; retry 2 in 1.0 s",
        "RuntimeError('open rtsp://admin:{p}@cam/live failed')",
        "http://cam/snap.jpg?user=admin&password={p}",
        "http://cam/snap.jpg?token={p}",
    ]
    for form in forms:
        if "&" in password and "=" in form.partition("{p}")[0]:
            continue  # an "&" ends a query value by definition (the camera too would see a new parameter)
        out = redact_url(form.format(p=password))
        # no fragment of 2 or more characters of the password is left (unless the text has it anyway)
        fragments = {password[i:j] for i, j in itertools.combinations(range(len(password) + 1), 2)}
        leaked = [f for f in fragments if len(f) >= 2 and f in out and f not in form.format(p="")]
        assert not leaked, (form, out, leaked)
        if "admin:" in form:
            assert "admin:***" in out  # the user name is kept


def test_redact_walks_containers_and_masks_secret_keys() -> None:
    data = {
        "urls": ["rtsp://a:b@h/x", ("http://c:d@h/",)],
        "nested": {"u": "http://c:d@h/", "password": "hunter2", "api_key": 7, "subject": None},
    }
    assert redact(data) == {
        "urls": ["rtsp://a:***@h/x", ("http://c:***@h/",)],
        "nested": {"u": "http://c:***@h/", "password": "***", "api_key": "***", "subject": None},
    }


def test_redaction_is_linear_on_long_hostile_text() -> None:
    # would take minutes with a backtracking pattern; asserts only the result (no timing)
    for text in ("a" * 60_000, "a://" * 15_000, "ab:/" * 15_000, "a=" * 30_000, "a.b" * 20_000):
        assert redact_url(text) == text
    assert redact_url("x://" + "@" * 60_000) == "x://***@"
    assert redact_url("token=" * 10_000) == "token=***"


def test_json_log_lines_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    get_logger("test").info("opening", url="rtsp://viewer:top@se/cret@127.0.0.1:8554/stream?token=tk1")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert "top" not in line and "cret" not in line and "tk1" not in line
    assert record["url"] == "rtsp://viewer:***@127.0.0.1:8554/stream?token=***"
    assert record["component"] == "test"


def test_console_log_lines_and_messages_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "console")
    get_logger("test").warning("cannot open rtsp://admin:p@ss/w@cam/live", password="hunter2")
    err = capsys.readouterr().err
    assert "rtsp://admin:***@cam/live" in err
    assert "p@ss" not in err and "ss/w" not in err and "hunter2" not in err


def test_exception_tracebacks_in_log_lines_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    try:
        raise OSError("cannot open rtsp://admin:p@ss/w@cam/live")
    except OSError:
        get_logger("test").exception("failed")
    record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert "rtsp://admin:***@cam/live" in record["exception"]
    assert "p@ss" not in json.dumps(record)


def test_stdlib_logging_records_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    root.addHandler(handler)
    try:
        configure_logging("info", "json")  # filters every root handler, once
        logging.getLogger("thirdparty").warning("GET %s failed", "http://u:p@ss@h/x?api_key=k9")
    finally:
        root.removeHandler(handler)
    err = capsys.readouterr().err
    assert "http://u:***@h/x?api_key=***" in err and "k9" not in err and "p@ss" not in err


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )


def test_a_malformed_stdlib_log_call_does_not_raise_through_the_filter() -> None:
    proc = _python(
        "import logging\n"
        "from vstmon.log import configure_logging\n"
        "configure_logging('info', 'json')\n"
        "logging.getLogger('thirdparty').warning('%d items', 'not a number')\n"
        "print('alive')\n"
    )
    assert proc.returncode == 0 and proc.stdout == "alive\n"
    assert "Logging error" in proc.stderr  # reported the way logging reports it


def test_uncaught_tracebacks_of_a_process_are_redacted() -> None:
    code = (
        "import threading\n"
        "from vstmon.log import configure_logging\n"
        "configure_logging('info', 'json')\n"
        "def boom():\n"
        "    raise RuntimeError('thread: rtsp://admin:p@ss/w@cam/a')\n"
        "t = threading.Thread(target=boom, name='worker'); t.start(); t.join()\n"
        "raise RuntimeError('main: rtsp://admin:p@ss/w@cam/b')\n"
    )
    proc = _python(code)
    assert proc.returncode == 1
    assert "Exception in thread worker" in proc.stderr
    assert "thread: rtsp://admin:***@cam/a" in proc.stderr
    assert "main: rtsp://admin:***@cam/b" in proc.stderr
    assert "p@ss" not in proc.stderr and "ss/w" not in proc.stderr


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
