"""Control socket: good requests, every kind of bad request, and the ctl command line."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import zmq

from tests.conftest import free_port
from vstmon.cli import main
from vstmon.errors import VstmonError
from vstmon.publish import ControlServer


class FakeDaemon:
    """A real handler with real state: two streams, segment numbers that advance on reset."""

    def __init__(self) -> None:
        self.segments = {"cam1": 1, "cam2": 4}
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.calls.append(dict(request))
            if request["cmd"] == "status":
                return {"streams": {name: {"segment": seg} for name, seg in self.segments.items()}}
            stream = request["stream"]
            if stream == "boom":
                raise RuntimeError("handler bug")
            if stream == "vstmon-error":
                raise VstmonError("stream vstmon-error is not running")
            if stream not in self.segments:
                raise KeyError(f"unknown stream {stream!r}")
            self.segments[stream] += 1
            return {"segment": self.segments[stream]}


@pytest.fixture
def daemon() -> FakeDaemon:
    return FakeDaemon()


@pytest.fixture
def server(daemon: FakeDaemon) -> str:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    srv = ControlServer(endpoint, daemon, poll_interval_s=0.05)
    srv.start()
    yield endpoint
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
        reply = json.loads(sock.recv())
    finally:
        sock.close()
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
    assert reply == {"ok": True, "streams": {"cam1": {"segment": 1}, "cam2": {"segment": 4}}}


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
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    first = ControlServer(endpoint, lambda r: {})
    first.start()
    try:
        with pytest.raises(VstmonError, match="cannot bind"):
            ControlServer(endpoint, lambda r: {}).start()
    finally:
        first.close()


def test_stop_ends_the_thread_promptly() -> None:
    srv = ControlServer(f"tcp://127.0.0.1:{free_port()}", lambda r: {}, poll_interval_s=0.05)
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
    assert json.loads(capsys.readouterr().out)["streams"]["cam2"] == {"segment": 4}


def test_ctl_unknown_stream_exits_1_with_the_error(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ctl", server, "reset", "cam9"]) == 1
    reply = json.loads(capsys.readouterr().out)
    assert reply == {"ok": False, "error": "unknown stream 'cam9'"}


def test_ctl_without_daemon_fails_clearly_within_the_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    assert main(["ctl", endpoint, "--timeout-s", "0.5", "status"]) == 2
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert "no reply from" in err and endpoint in err and "is the daemon running" in err
    assert elapsed < 10  # bounded (the timeout is 0.5 s; generous margin for a loaded machine)
