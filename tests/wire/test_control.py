"""Control socket: good requests, every kind of bad request, and the ctl command line."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import zmq

from tests.helpers.cli import run_vstmon
from tests.helpers.wire import FakeDaemon, stream_entry
from vstmon.cli import main
from vstmon.errors import VstmonError
from vstmon.log import configure_logging
from vstmon.wire.control import ControlServer
from vstmon.wire.protocol import REPLY_ADAPTER, ControlCommand, ResetReply, StatusCommand, StatusReply


def _segments(reply: dict[str, Any]) -> dict[str, int]:
    """Stream -> segment of a ``status`` reply (which must be a valid ``StatusReply``)."""
    return {name: entry.segment for name, entry in StatusReply.model_validate(reply).streams.items()}


@pytest.fixture(autouse=True)
def json_logs() -> None:
    configure_logging("info", "json")  # log lines go to stderr, as in the daemon


@pytest.fixture
def daemon() -> FakeDaemon:
    return FakeDaemon()


@pytest.fixture
def server(daemon: FakeDaemon) -> str:
    srv = ControlServer("tcp://127.0.0.1:*", daemon, poll_interval_s=0.05)
    srv.start()
    yield srv.bound_endpoint
    srv.close()
    assert not srv._thread.is_alive()


def _ask(endpoint: str, data: bytes | list[bytes]) -> dict[str, Any]:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 3000)
    sock.setsockopt(zmq.SNDTIMEO, 3000)
    sock.connect(endpoint)
    try:
        if isinstance(data, list):
            sock.send_multipart(data)
        else:
            sock.send(data)
        data = sock.recv()
    finally:
        sock.close()
    REPLY_ADAPTER.validate_json(data, strict=True)  # every reply is one of the protocol's reply models
    reply = json.loads(data)
    assert isinstance(reply, dict)
    return reply


def _ask_json(endpoint: str, obj: Any) -> dict[str, Any]:
    return _ask(endpoint, json.dumps(obj).encode())


def test_reset_with_subject(server: str, daemon: FakeDaemon) -> None:
    assert _ask_json(server, {"cmd": "reset", "stream": "cam1", "subject": "p-43"}) == {
        "ok": True,
        "segment": 2,
    }
    assert daemon.calls == [{"cmd": "reset", "stream": "cam1", "subject": "p-43"}]


def test_reset_without_subject(server: str, daemon: FakeDaemon) -> None:
    assert _ask_json(server, {"cmd": "reset", "stream": "cam2"}) == {"ok": True, "segment": 5}
    assert daemon.calls == [{"cmd": "reset", "stream": "cam2"}]


def test_status(server: str) -> None:
    reply = _ask_json(server, {"cmd": "status"})
    assert reply["ok"] is True and _segments(reply) == {"cam1": 1, "cam2": 4}
    assert reply["streams"]["cam1"] == stream_entry(1).model_dump(mode="json")


@pytest.mark.parametrize(
    ("request_bytes", "error_part"),
    [
        (b'{"cmd": "explode"}', "unknown command 'explode'"),
        (b'{"stream": "cam1"}', 'no "cmd"'),
        (b'{"cmd": 7}', '"cmd" must be a string'),
        (b'{"cmd": "reset", "stream": "nope"}', "unknown stream 'nope'"),
        (b'{"cmd": "reset", "stream": "vstmon-error"}', "vstmon-error is not running"),
        (b'{"cmd": "reset"}', '"stream" is required'),
        (b'{"cmd": "reset", "stream": 5}', '"stream" must be string'),
        (b'{"cmd": "reset", "stream": ""}', '"stream" must not be empty'),
        (b'{"cmd": "reset", "stream": "cam1", "subject": []}', '"subject" must be string or null'),
        (b'{"cmd": "reset", "stream": "cam1", "colour": "red"}', "unknown field(s) 'colour'"),
        (b'{"cmd": "reset", "stream": true}', '"stream" must be string'),
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2, 3]", "must be a JSON object, got list"),
        (b'"reset"', "must be a JSON object, got str"),
        (b"null", "must be a JSON object, got NoneType"),
        (b'{"cmd": "reset", "stream": "boom"}', "internal error: handler bug"),
    ],
)
def test_bad_requests_get_an_error_reply_and_the_server_carries_on(
    server: str, daemon: FakeDaemon, request_bytes: bytes, error_part: str
) -> None:
    reply = _ask(server, request_bytes)
    assert reply["ok"] is False
    assert error_part in reply["error"]
    assert set(reply) == {"ok", "error"}
    assert _ask_json(server, {"cmd": "reset", "stream": "cam1"}) == {"ok": True, "segment": 2}


@pytest.mark.parametrize(
    ("request_obj", "error"),
    [
        (
            {"cmd": "reset", "stream": "cam1", "subject": "s" * 65_000},
            'reset: field "subject" is 65000 characters long (limit 128)',
        ),
        (
            {"cmd": "reset", "stream": "cam1", "subject": "s" * 129},
            'reset: field "subject" is 129 characters long (limit 128)',
        ),
        (
            {"cmd": "reset", "stream": "c" * 65},
            'reset: field "stream" is 65 characters long (limit 64)',
        ),
        ({"cmd": "reset", "stream": "cam1", "subject": ""}, 'reset: field "subject" must not be empty'),
        (
            {"cmd": "reset", "stream": "cam1", "subject": "p-\x07"},
            'reset: field "subject" must not contain control characters (U+0007 at character 3)',
        ),
        (
            {"cmd": "reset", "stream": "cam1", "subject": "a\nb"},
            'reset: field "subject" must not contain control characters (U+000A at character 2)',
        ),
        (
            {"cmd": "reset", "stream": "cam1", "subject": "\u202eevil"},  # bidi override
            'reset: field "subject" must not contain control characters (U+202E at character 1)',
        ),
        (
            {"cmd": "reset", "stream": "cam1", "subject": "x\u2028y"},  # line separator
            'reset: field "subject" must not contain control characters (U+2028 at character 2)',
        ),
        (
            {"cmd": "reset", "stream": "cam\x1b[2J"},
            'reset: field "stream" must not contain control characters (U+001B at character 4)',
        ),
        (
            {"cmd": "x" * 60_000},
            "unknown command 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (60000 characters) "
            "(known commands: reset, status)",
        ),
    ],
)
def test_strings_are_bounded_and_errors_name_the_field_without_echoing_it(
    server: str, daemon: FakeDaemon, request_obj: dict[str, Any], error: str
) -> None:
    reply = _ask_json(server, request_obj)
    assert reply == {"ok": False, "error": error}
    assert daemon.calls == []  # never reached the handler
    assert _ask_json(server, {"cmd": "status"})["ok"] is True


def test_many_long_unknown_fields_are_named_briefly(server: str) -> None:
    names = [f"f{i:05d}" + "y" * 40 for i in range(900)]
    reply = _ask_json(server, {"cmd": "reset", "stream": "cam1", **dict.fromkeys(names, 1)})
    quoted = ", ".join(f"{name[:32]!r}... (46 characters)" for name in names[:5])
    assert reply == {"ok": False, "error": f"reset: unknown field(s) {quoted} and 895 more"}


def test_a_subject_at_the_limit_with_any_printable_characters_is_accepted(
    server: str, daemon: FakeDaemon
) -> None:
    subject = ("Zoë 李 p-43 🙂 " * 20)[:128]
    assert _ask_json(server, {"cmd": "reset", "stream": "cam1", "subject": subject}) == {
        "ok": True,
        "segment": 2,
    }
    assert daemon.calls == [{"cmd": "reset", "stream": "cam1", "subject": subject}]


def test_a_lone_surrogate_is_a_control_character(server: str) -> None:
    reply = _ask(server, b'{"cmd": "reset", "stream": "cam1", "subject": "a\\ud800"}')
    assert reply == {
        "ok": False,
        "error": 'reset: field "subject" must not contain control characters (U+D800 at character 2)',
    }


def test_a_field_given_twice_is_refused(server: str, daemon: FakeDaemon) -> None:
    reply = _ask(server, b'{"cmd": "reset", "stream": "cam1", "stream": "cam2"}')
    assert reply == {"ok": False, "error": "request has field 'stream' twice"}
    assert daemon.calls == []


def test_an_integer_too_long_to_read_is_a_json_error(server: str) -> None:
    reply = _ask(server, b'{"cmd": ' + b"9" * 5000 + b"}")
    assert reply["ok"] is False
    assert reply["error"].startswith("request is not valid JSON: Exceeds the limit (4300 digits)")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"[" * 32_000 + b"]" * 32_000,  # 64,000 bytes: within the 64 KiB limit
        b"{" + b'"a":{' * 10_000 + b"}" * 10_001,
        b'{"cmd": "status", "x": ' + b"[" * 9 + b"]" * 9 + b"}",  # just over the limit of 8
        b"[" * 32_000,  # deep and not even valid
    ],
    ids=["arrays", "objects", "nine-levels", "unclosed"],
)
def test_deeply_nested_requests_get_a_clear_error_and_one_log_line(
    server: str, daemon: FakeDaemon, request_bytes: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    for _ in range(20):
        assert _ask(server, request_bytes) == {
            "ok": False,
            "error": "request nested too deeply (limit 8 levels)",
        }
    assert _ask_json(server, {"cmd": "reset", "stream": "cam1"}) == {"ok": True, "segment": 2}
    lines = capsys.readouterr().err.splitlines()
    rejected = [json.loads(line) for line in lines if "control request rejected" in line]
    assert len(rejected) == 20 and len(lines) == 20
    assert all(r["error"] == "request nested too deeply (limit 8 levels)" for r in rejected)
    assert "Traceback" not in "".join(lines) and "exception" not in rejected[0]


def test_eight_levels_are_parsed_and_validated(server: str) -> None:
    reply = _ask(server, b'{"cmd": "status", "x": ' + b"[" * 7 + b"]" * 7 + b"}")
    assert reply == {"ok": False, "error": "status: unknown field(s) 'x'"}


def test_a_handler_bug_logs_its_traceback_once_then_one_line_per_repeat(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    for _ in range(3):
        reply = _ask_json(server, {"cmd": "reset", "stream": "boom"})
        assert reply == {"ok": False, "error": "internal error: handler bug"}
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [r["event"] for r in records] == [
        "control handler failed",
        "control handler failed again",
        "control handler failed again",
    ]
    assert "RuntimeError: handler bug" in records[0]["exception"]
    assert all("exception" not in r for r in records[1:])


def test_replies_never_carry_credentials(daemon: FakeDaemon) -> None:
    def handler(command: ControlCommand) -> StatusReply:
        if isinstance(command, StatusCommand):
            return StatusReply(
                streams={"token": stream_entry(reason="cannot open rtsp://admin:p@ss/w@cam/live")}
            )
        raise VstmonError("stream 'cam1' is not running: cannot open rtsp://admin:p@ss/w@cam/live")

    srv = ControlServer("tcp://127.0.0.1:*", handler, poll_interval_s=0.05)
    srv.start()
    try:
        reply = StatusReply.model_validate(_ask_json(srv.bound_endpoint, {"cmd": "status"}))
        assert (
            reply.streams["token"].reason == "cannot open rtsp://admin:***@cam/live"
        )  # a stream named token
        assert _ask_json(srv.bound_endpoint, {"cmd": "reset", "stream": "cam1"}) == {
            "ok": False,
            "error": "stream 'cam1' is not running: cannot open rtsp://admin:***@cam/live",
        }
    finally:
        srv.close()


def test_huge_request_is_rejected_and_the_server_carries_on(server: str, daemon: FakeDaemon) -> None:
    huge = json.dumps({"cmd": "reset", "stream": "cam1", "subject": "x" * 200_000}).encode()
    reply = _ask(server, huge)
    assert reply["ok"] is False and "too large" in reply["error"]
    assert daemon.calls == []  # never reached the handler
    assert _ask_json(server, {"cmd": "status"})["ok"] is True


def test_multipart_request_is_rejected(server: str) -> None:
    reply = _ask(server, [b'{"cmd": "status"}', b"extra"])
    assert reply["ok"] is False and "one message frame" in reply["error"]
    assert _ask_json(server, {"cmd": "status"})["ok"] is True


def test_many_bad_requests_in_a_row_then_a_good_one(server: str) -> None:
    for bad in (b"{", b"[]", b'{"cmd": 1}', b'{"cmd": "reset", "stream": 5}', b"x" * 70_000):
        assert _ask(server, bad)["ok"] is False
    assert _ask_json(server, {"cmd": "reset", "stream": "cam1", "subject": "p-1"}) == {
        "ok": True,
        "segment": 2,
    }


def test_bind_error_is_clear() -> None:
    first = ControlServer("tcp://127.0.0.1:*", lambda command: ResetReply(segment=1))
    first.start()
    try:
        with pytest.raises(VstmonError, match="cannot bind"):
            ControlServer(first.bound_endpoint, lambda command: ResetReply(segment=1)).start()
    finally:
        first.close()


def test_stop_ends_the_thread_promptly() -> None:
    srv = ControlServer("tcp://127.0.0.1:*", lambda command: ResetReply(segment=1), poll_interval_s=0.05)
    srv.start()
    srv.stop()
    srv.join(2.0)
    assert not srv._thread.is_alive()


# -- vstmon ctl ------------------------------------------------------------------------------------------------
def test_ctl_reset_with_subject(server: str, daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ctl", server, "reset", "cam1", "--subject", "p-43"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "segment": 2}
    assert daemon.calls == [{"cmd": "reset", "stream": "cam1", "subject": "p-43"}]


def test_ctl_reset_without_subject(
    server: str, daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ctl", server, "reset", "cam2"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "segment": 5}
    assert daemon.calls == [{"cmd": "reset", "stream": "cam2"}]


def test_ctl_status(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ctl", server, "status"]) == 0
    assert _segments(json.loads(capsys.readouterr().out)) == {"cam1": 1, "cam2": 4}


def test_ctl_unknown_stream_exits_1_with_the_error(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ctl", server, "reset", "cam9"]) == 1
    reply = json.loads(capsys.readouterr().out)
    assert reply == {"ok": False, "error": "unknown stream 'cam9'"}


def test_ctl_without_daemon_fails_clearly_within_the_timeout(
    capsys: pytest.CaptureFixture[str], closed_port: int
) -> None:
    endpoint = f"tcp://127.0.0.1:{closed_port}"
    started = time.monotonic()
    assert main(["ctl", endpoint, "--timeout-s", "0.5", "status"]) == 2
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert "no reply from" in err and endpoint in err and "is the daemon running" in err
    assert elapsed < 10  # bounded (the timeout is 0.5 s; generous margin for a loaded machine)


@pytest.mark.parametrize(
    "order",
    [
        ["--timeout-s", "0.4", "{ep}", "status"],
        ["{ep}", "--timeout-s", "0.4", "status"],
        ["{ep}", "status", "--timeout-s", "0.4"],
        ["{ep}", "reset", "cam1", "--timeout-s", "0.4", "--subject", "p-1"],
        ["{ep}", "reset", "--timeout-s", "0.4", "cam1"],
    ],
    ids=["before-endpoint", "before-action", "after-action", "after-stream", "before-stream"],
)
def test_ctl_timeout_is_accepted_anywhere(silent_endpoint: str, order: list[str]) -> None:
    proc = run_vstmon("ctl", *(arg.format(ep=silent_endpoint) for arg in order))
    assert proc.returncode == 2, proc.stderr
    assert f"no reply from {silent_endpoint} within 0.4 s" in proc.stderr  # the given value, not the default


def test_ctl_with_options_after_the_action_talks_to_a_real_server(server: str, daemon: FakeDaemon) -> None:
    proc = run_vstmon("ctl", server, "reset", "cam1", "--timeout-s", "30", "--subject", "p-43")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"ok": True, "segment": 2}
    assert daemon.calls == [{"cmd": "reset", "stream": "cam1", "subject": "p-43"}]


def test_ctl_without_transport_suggests_tcp() -> None:
    proc = run_vstmon("ctl", "localhost:5557", "status")
    assert proc.returncode == 2
    assert proc.stderr == (
        "vstmon: error: endpoint 'localhost:5557' has no transport; did you mean tcp://localhost:5557?\n"
    )
