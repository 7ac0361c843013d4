"""CURVE on the PUB and control sockets: only clients with an allowed key receive and control.

Real sockets on 127.0.0.1 and real processes for the command line. Every "gets nothing" is measured in the same
window in which an allowed client got messages (a positive control), with bounded waits.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth
from structlog.testing import capture_logs

from tests.helpers.cli import REPO_ROOT, run_vstmon, vstmon_env
from tests.helpers.wire import FakeDaemon, label_body, stream_entry
from vstmon.config import CurveConfig, PublishConfig, load_config
from vstmon.errors import ConfigError, VstmonError
from vstmon.service.control_cli import request
from vstmon.service.preflight import preflight
from vstmon.wire.client import Subscriber
from vstmon.wire.control import ControlServer
from vstmon.wire.keys import generate_certificates
from vstmon.wire.protocol import ResetReply, StatusReply
from vstmon.wire.publish import Publisher

DEADLINE_S = 30.0  # generous: CI is a loaded 2-core box; every wait ends as soon as its condition holds
WANTED = 40  # messages the allowed subscriber must get (the positive control)


@dataclass(frozen=True)
class Keys:
    server_public: Path
    server_secret: Path
    allowed_dir: Path
    alice_public: Path  # allowed: her public key is in allowed_dir
    alice_secret: Path
    mallory_public: Path  # a well-formed key the daemon does not know
    mallory_secret: Path

    def curve(self) -> CurveConfig:
        return CurveConfig(secret_key=self.server_secret, allowed_keys=self.allowed_dir)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    server_public, server_secret = generate_certificates(tmp_path / "server", "server")
    alice_public, alice_secret = generate_certificates(tmp_path / "alice", "alice")
    mallory_public, mallory_secret = generate_certificates(tmp_path / "mallory", "mallory")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / alice_public.name).write_bytes(alice_public.read_bytes())
    return Keys(
        server_public, server_secret, allowed, alice_public, alice_secret, mallory_public, mallory_secret
    )


def _wait_for(
    condition: Callable[[], bool], step: Callable[[], None], deadline_s: float = DEADLINE_S
) -> bool:
    """Run ``step`` until ``condition`` holds or the deadline passes; whether it holds."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        step()
    return True


def _zap_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("vstmon-zap-")}


@pytest.fixture
def curve_publisher(keys: Keys) -> Iterator[Publisher]:
    publisher = Publisher(PublishConfig(endpoints=["tcp://127.0.0.1:*"], curve=keys.curve()))
    yield publisher
    publisher.close()


@pytest.fixture
def curve_control(keys: Keys) -> Iterator[tuple[ControlServer, FakeDaemon]]:
    handler = FakeDaemon({"cam1": 1})
    server = ControlServer("tcp://127.0.0.1:*", handler, poll_interval_s=0.05, curve=keys.curve())
    server.start()
    yield server, handler
    server.close()


# -- the PUB socket ---------------------------------------------------------------------------------------------
def test_only_the_allowed_key_receives_labels(keys: Keys, curve_publisher: Publisher) -> None:
    endpoint = curve_publisher.endpoints[0]
    allowed = Subscriber(endpoint, server_key=keys.server_public, client_key=keys.alice_secret)
    unknown = Subscriber(endpoint, server_key=keys.server_public, client_key=keys.mallory_secret)
    plain = Subscriber(endpoint)
    wrong_server = Subscriber(endpoint, server_key=keys.mallory_public, client_key=keys.alice_secret)
    others = {"unknown key": unknown, "no CURVE": plain, "wrong server key": wrong_server}
    try:

        def step() -> None:
            curve_publisher.publish("label.cam1", label_body())
            allowed.recv_raw(timeout_s=0.005)
            for subscriber in others.values():
                subscriber.recv_raw(timeout_s=0)

        def done() -> bool:
            return (
                allowed.received >= WANTED
                and all(s.handshake_error is not None for s in others.values())
                and curve_publisher.curve is not None
                and curve_publisher.curve.refused >= 1
            )

        settled = _wait_for(done, step)
        for _ in range(WANTED):  # the same number again, now that every handshake has been tried
            step()
        assert settled, {name: s.handshake_error for name, s in others.items()}
        assert allowed.received >= WANTED and allowed.handshake_error is None
        assert {name: s.received for name, s in others.items()} == dict.fromkeys(others, 0)
        assert "refused this client's key" in str(unknown.handshake_error)
        assert "requires CURVE" in str(plain.handshake_error)
        assert "--server-key" in str(wrong_server.handshake_error)
        assert curve_publisher.curve.accepted >= 1
    finally:
        for subscriber in (allowed, *others.values()):
            subscriber.close()


def test_refused_keys_are_logged_once_each(keys: Keys, curve_publisher: Publisher) -> None:
    endpoint = curve_publisher.endpoints[0]
    mallory_public = zmq.auth.load_certificate(keys.mallory_public)[0].decode()
    with capture_logs() as logs:
        for _ in range(3):  # the same unknown key, three connections
            with Subscriber(endpoint, server_key=keys.server_public, client_key=keys.mallory_secret) as sub:
                assert _wait_for(lambda s=sub: s.handshake_error is not None, lambda s=sub: s.recv_raw(0.01))
        curve = curve_publisher.curve
        assert curve is not None and curve.refused >= 3
    refused = [e for e in logs if e["event"].startswith("CURVE client refused")]
    assert [(e["log_level"], e["client"], e["socket"]) for e in refused] == [
        ("warning", mallory_public, "publish")
    ]


def test_reloading_the_allowed_keys_lets_a_new_client_in_and_a_broken_directory_changes_nothing(
    keys: Keys, curve_publisher: Publisher
) -> None:
    curve = curve_publisher.curve
    assert curve is not None
    endpoint = curve_publisher.endpoints[0]
    with Subscriber(endpoint, server_key=keys.server_public, client_key=keys.mallory_secret) as before:
        assert _wait_for(lambda: before.handshake_error is not None, lambda: before.recv_raw(0.01))
    (keys.allowed_dir / "broken.key").write_text("metadata\n")
    with pytest.raises(ConfigError, match=r"publish\.curve\.allowed_keys: .*broken\.key"):
        curve.reload_allowed_keys()
    (keys.allowed_dir / "broken.key").unlink()
    (keys.allowed_dir / keys.mallory_public.name).write_bytes(keys.mallory_public.read_bytes())
    assert curve.reload_allowed_keys() == 2
    with Subscriber(endpoint, server_key=keys.server_public, client_key=keys.mallory_secret) as after:

        def step() -> None:
            curve_publisher.publish("label.cam1", label_body())
            after.recv_raw(timeout_s=0.01)

        assert _wait_for(lambda: after.received >= 3, step), after.handshake_error
        assert after.handshake_error is None


# -- the control socket -----------------------------------------------------------------------------------------
def test_only_the_allowed_key_controls(keys: Keys, curve_control: tuple[ControlServer, FakeDaemon]) -> None:
    server, handler = curve_control
    endpoint = str(server.bound_endpoint)
    reply = request(endpoint, {"cmd": "status"}, DEADLINE_S, keys.server_public, keys.alice_secret)
    assert reply == StatusReply(streams={"cam1": stream_entry(1)})
    with pytest.raises(VstmonError, match="refused this client's key"):
        request(
            endpoint, {"cmd": "reset", "stream": "cam1"}, DEADLINE_S, keys.server_public, keys.mallory_secret
        )
    with pytest.raises(VstmonError, match="requires CURVE"):
        request(endpoint, {"cmd": "reset", "stream": "cam1"}, DEADLINE_S)
    # positive control after the refusals: the allowed client still controls, and only its requests arrived
    reply = request(
        endpoint, {"cmd": "reset", "stream": "cam1"}, DEADLINE_S, keys.server_public, keys.alice_secret
    )
    assert reply.ok is True
    assert handler.calls == [{"cmd": "status"}, {"cmd": "reset", "stream": "cam1"}]
    assert server.curve is not None and server.curve.refused >= 1


def test_a_plain_req_socket_gets_no_reply_and_reaches_no_handler(
    keys: Keys, curve_control: tuple[ControlServer, FakeDaemon]
) -> None:
    server, handler = curve_control
    socket = zmq.Context.instance().socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(str(server.bound_endpoint))
    try:
        socket.send(b'{"cmd": "reset", "stream": "cam1"}')
        # while it waits, an allowed client is answered (so the server was serving all along)
        reply = request(
            str(server.bound_endpoint), {"cmd": "status"}, DEADLINE_S, keys.server_public, keys.alice_secret
        )
        assert reply.ok is True
        assert socket.poll(1000, zmq.POLLIN) == 0
    finally:
        socket.close()
    assert handler.calls == [{"cmd": "status"}]


# -- threads and warnings ---------------------------------------------------------------------------------------
def test_zap_threads_start_and_stop_with_their_sockets(keys: Keys) -> None:
    before = threading.enumerate()
    publisher = Publisher(PublishConfig(endpoints=["tcp://127.0.0.1:*"], curve=keys.curve()))
    control = ControlServer(
        "tcp://127.0.0.1:*", FakeDaemon({"cam1": 1}), poll_interval_s=0.05, curve=keys.curve()
    )
    control.start()
    assert _zap_threads() == {"vstmon-zap-publish", "vstmon-zap-control"}
    publisher.close()
    control.close(timeout_s=DEADLINE_S)
    assert not control.alive
    assert _zap_threads() == set()
    assert set(threading.enumerate()) <= set(before)


def test_a_failed_bind_leaves_no_zap_thread(keys: Keys) -> None:
    first = Publisher(PublishConfig(endpoints=["tcp://127.0.0.1:*"]))
    try:
        taken = first.endpoints[0]
        with pytest.raises(ConfigError, match="cannot bind"):
            Publisher(PublishConfig(endpoints=[taken], curve=keys.curve()))
        with pytest.raises(ConfigError, match="cannot bind"):
            ControlServer(taken, FakeDaemon({"cam1": 1}), curve=keys.curve()).start()
    finally:
        first.close()
    assert _zap_threads() == set()


def _control_warnings(endpoint: str, curve: CurveConfig | None) -> list[dict[str, Any]]:
    server = ControlServer(endpoint, FakeDaemon({"cam1": 1}), poll_interval_s=0.05, curve=curve)
    with capture_logs() as logs:
        server.start()
    server.close()
    return [e for e in logs if e["log_level"] == "warning" and "control socket" in e["event"]]


def test_control_beyond_loopback_without_curve_warns(keys: Keys) -> None:
    warnings = _control_warnings("tcp://0.0.0.0:*", None)
    assert len(warnings) == 1
    assert "without CURVE" in warnings[0]["event"]
    assert warnings[0]["endpoint"].startswith("tcp://0.0.0.0:")


def test_control_on_loopback_or_with_curve_does_not_warn(keys: Keys, tmp_path: Path) -> None:
    assert _control_warnings("tcp://127.0.0.1:*", None) == []
    assert _control_warnings(f"ipc://{tmp_path}/control.sock", None) == []
    assert _control_warnings("tcp://0.0.0.0:*", keys.curve()) == []


# -- key files --------------------------------------------------------------------------------------------------
def test_keys_generate_writes_a_usable_pair_with_a_private_secret(tmp_path: Path) -> None:
    result = run_vstmon("keys", "generate", str(tmp_path / "k"), "--name", "cam-viewer")
    assert result.returncode == 0, result.stderr
    public, secret = tmp_path / "k" / "cam-viewer.key", tmp_path / "k" / "cam-viewer.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) & 0o077 in (0o044, 0o004, 0o040, 0)  # umask may narrow it
    public_key, no_secret = zmq.auth.load_certificate(public)
    pair_public, pair_secret = zmq.auth.load_certificate(secret)
    assert no_secret is None and "secret" not in public.read_text().replace("Secret", "").split("curve")[1]
    assert pair_public == public_key and pair_secret is not None
    assert zmq.curve_public(pair_secret) == public_key
    assert str(public) in result.stdout and str(secret) in result.stdout


def test_keys_generate_never_overwrites(tmp_path: Path) -> None:
    public, secret = generate_certificates(tmp_path, "server")
    before = (public.read_bytes(), secret.read_bytes())
    result = run_vstmon("keys", "generate", str(tmp_path), "--name", "server")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "already exists" in lines[0] and "server.key" in lines[0]
    assert (public.read_bytes(), secret.read_bytes()) == before


def test_keys_generate_refuses_a_name_that_is_a_path(tmp_path: Path) -> None:
    result = run_vstmon("keys", "generate", str(tmp_path), "--name", "../escape")
    assert result.returncode == 2
    assert result.stderr.startswith("vstmon: error: key name '../escape'")
    assert list(tmp_path.parent.glob("escape*")) == []


def _write_config(path: Path, curve: dict[str, str]) -> Path:
    lines = ["streams: [{name: demo, url: 'testsrc://?width=64&height=48&fps=5'}]", "publish:"]
    lines.append("  curve:" if curve else "  curve: {}")
    lines += [f"    {key}: {value}" for key, value in curve.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _bad_cases(keys: Keys, tmp: Path) -> dict[str, tuple[dict[str, str], str, str]]:
    """case -> (publish.curve, key path in the error, text in the error)."""
    garbage = tmp / "garbage.key_secret"
    garbage.write_text("not a certificate\n")
    garbage.chmod(0o600)
    shared = tmp / "shared.key_secret"
    shared.write_bytes(keys.alice_secret.read_bytes())
    shared.chmod(0o644)
    short = tmp / "short.key_secret"
    short.write_text('curve\n    public-key = "abc"\n    secret-key = "def"\n')
    short.chmod(0o600)
    empty, bad_dir = tmp / "empty", tmp / "bad_dir"
    empty.mkdir()
    bad_dir.mkdir()
    (bad_dir / "broken.key").write_text("metadata\n")
    secret, allowed = str(keys.server_secret), str(keys.allowed_dir)
    return {
        "missing secret": (
            {"secret_key": str(tmp / "nope"), "allowed_keys": allowed},
            "secret_key",
            "does not exist",
        ),
        "public given as secret": (
            {"secret_key": str(keys.server_public), "allowed_keys": allowed},
            "secret_key",
            "holds no secret-key",
        ),
        "not a certificate": (
            {"secret_key": str(garbage), "allowed_keys": allowed},
            "secret_key",
            "not a ZeroMQ",
        ),
        "not a key": ({"secret_key": str(short), "allowed_keys": allowed}, "secret_key", "not a CURVE key"),
        "world-readable secret": (
            {"secret_key": str(shared), "allowed_keys": allowed},
            "secret_key",
            "accessible to other users (mode 0644)",
        ),
        "directory as secret": (
            {"secret_key": str(tmp), "allowed_keys": allowed},
            "secret_key",
            "is a directory",
        ),
        "missing allowed dir": (
            {"secret_key": secret, "allowed_keys": str(tmp / "nope")},
            "allowed_keys",
            "does not exist",
        ),
        "file as allowed dir": (
            {"secret_key": secret, "allowed_keys": str(keys.alice_public)},
            "allowed_keys",
            "is not a directory",
        ),
        "empty allowed dir": (
            {"secret_key": secret, "allowed_keys": str(empty)},
            "allowed_keys",
            "no client public",
        ),
        "broken allowed key": (
            {"secret_key": secret, "allowed_keys": str(bad_dir)},
            "allowed_keys",
            "broken.key",
        ),
        "secret without allowed": ({"secret_key": secret}, "allowed_keys", "required with secret_key"),
        "allowed without secret": ({"allowed_keys": allowed}, "secret_key", "required with allowed_keys"),
    }


def test_bad_key_files_are_one_line_config_errors(keys: Keys, tmp_path: Path) -> None:
    for case, (curve, field, text) in _bad_cases(keys, tmp_path).items():
        config = _write_config(tmp_path / "config.yaml", curve)
        with pytest.raises(ConfigError) as caught:  # the schema at load, the files in preflight
            preflight(load_config(config))
        lines = str(caught.value).splitlines()
        assert len(lines) == 1, (case, lines)
        assert lines[0].startswith(f"{config}: publish.curve.{field}: "), (case, lines[0])
        assert text in lines[0], (case, lines[0])
        if field in curve:  # names the file it is about, and its line in the config
            assert curve[field] in lines[0] or text in curve[field], (case, lines[0])
            assert "(line " in lines[0], (case, lines[0])


def test_good_keys_pass_the_config(keys: Keys, tmp_path: Path) -> None:
    curve = {"secret_key": str(keys.server_secret), "allowed_keys": str(keys.allowed_dir)}
    config = load_config(_write_config(tmp_path / "config.yaml", curve))
    preflight(config)  # the key files are readable and of the right kind
    assert config.publish.curve == keys.curve() and config.publish.curve.enabled
    assert not load_config(_write_config(tmp_path / "plain.yaml", {})).publish.curve.enabled


def test_vstmon_check_exits_78_on_a_bad_key_file(keys: Keys, tmp_path: Path) -> None:
    config = _write_config(
        tmp_path / "config.yaml",
        {"secret_key": str(keys.server_public), "allowed_keys": str(keys.allowed_dir)},
    )
    result = run_vstmon("check", "--no-model", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 78, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"vstmon: error: {config}: publish.curve.secret_key: {keys.server_public} holds no secret-key: "
        "it is a public certificate (give the .key_secret file) (line 4)"
    ]


def test_client_key_options_must_come_together_and_be_secret(keys: Keys) -> None:
    with pytest.raises(VstmonError, match=r"CURVE needs both --server-key .*; --client-key is missing"):
        Subscriber("tcp://127.0.0.1:5556", server_key=keys.server_public)
    with pytest.raises(VstmonError, match=r"--client-key: .*holds no secret-key"):
        Subscriber("tcp://127.0.0.1:5556", server_key=keys.server_public, client_key=keys.alice_public)
    with pytest.raises(VstmonError, match=r"--server-key: .*does not exist"):
        request(
            "tcp://127.0.0.1:5557",
            {"cmd": "status"},
            1.0,
            keys.server_public.with_name("x"),
            keys.alice_secret,
        )


# -- the command line (real processes) --------------------------------------------------------------------------
@pytest.fixture
def publishing(curve_publisher: Publisher) -> Iterator[str]:
    """``curve_publisher`` sending a label every 10 ms from a thread until the test ends; its endpoint."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.01):
            curve_publisher.publish("label.cam1", label_body())

    thread = threading.Thread(target=loop, name="test-publishing")
    thread.start()
    yield curve_publisher.endpoints[0]
    stop.set()
    thread.join()


def _listen(endpoint: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "vstmon.cli", "listen", endpoint, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=vstmon_env(),
        cwd=REPO_ROOT,
    )


def test_listen_with_an_allowed_key_prints_messages_and_others_get_none(keys: Keys, publishing: str) -> None:
    server = ("--server-key", str(keys.server_public))
    allowed = _listen(
        publishing, *server, "--client-key", str(keys.alice_secret), "--count", "5", "--timeout-s", "60"
    )
    unknown = _listen(publishing, *server, "--client-key", str(keys.mallory_secret), "--timeout-s", "4")
    plain = _listen(publishing, "--timeout-s", "4")
    out, err = allowed.communicate(timeout=120)
    assert allowed.returncode == 0, err
    assert [json.loads(line)["topic"] for line in out.splitlines()] == ["label.cam1"] * 5
    # both listened while labels were going out (the allowed one got 5 in that window); they got none
    for process, said in ((unknown, "refused this client's key"), (plain, "requires CURVE")):
        out, err = process.communicate(timeout=120)
        assert process.returncode == 1, err
        assert out == ""
        assert said in err
        assert "no message in 4 s" in err


def test_ctl_with_an_allowed_key_controls_and_an_unknown_key_does_not(
    keys: Keys, curve_control: tuple[ControlServer, FakeDaemon]
) -> None:
    server, handler = curve_control
    endpoint, server_key = str(server.bound_endpoint), ("--server-key", str(keys.server_public))
    refused = run_vstmon(
        "ctl", endpoint, *server_key, "--client-key", str(keys.mallory_secret), "reset", "cam1"
    )
    assert refused.returncode == 2
    assert refused.stdout == ""
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith(
        f"vstmon: error: control request to {endpoint} failed: the daemon refused this client"
    )
    plain = run_vstmon("ctl", endpoint, "reset", "cam1")
    assert plain.returncode == 2 and "requires CURVE" in plain.stderr
    allowed = run_vstmon(
        "ctl", endpoint, "status", *server_key, "--client-key", str(keys.alice_secret), "--timeout-s", "60"
    )
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout) == StatusReply(streams={"cam1": stream_entry(1)}).model_dump(
        mode="json"
    )
    assert handler.calls == [{"cmd": "status"}]


# -- a real daemon ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_daemon_with_curve_publishes_to_and_obeys_the_allowed_key_only(
    keys: Keys, tmp_path: Path, vstmon_process
) -> None:
    from tests.helpers.daemon import daemon_config, tiny_checkpoint
    from vstmon.service.control_cli import request

    checkpoint, labels = tiny_checkpoint(tmp_path)
    data = daemon_config(
        checkpoint,
        labels,
        [{"name": "pattern", "url": "testsrc://?width=160&height=120&fps=25"}],
        control_port="*",
    )
    data["publish"]["curve"] = {"secret_key": str(keys.server_secret), "allowed_keys": str(keys.allowed_dir)}
    process = vstmon_process(data).wait_running()
    allowed = Subscriber(process.pub, server_key=keys.server_public, client_key=keys.alice_secret)
    unknown = Subscriber(process.pub, server_key=keys.server_public, client_key=keys.mallory_secret)
    plain = Subscriber(process.pub)
    try:
        labels_seen = 0

        def step() -> None:
            nonlocal labels_seen
            message = allowed.recv(timeout_s=0.1)
            labels_seen += message is not None and message.topic == "label.pattern"
            unknown.recv_raw(timeout_s=0)
            plain.recv_raw(timeout_s=0)

        assert _wait_for(
            lambda: (
                labels_seen >= 3 and unknown.handshake_error is not None and plain.handshake_error is not None
            ),
            step,
            deadline_s=120,
        ), (labels_seen, unknown.handshake_error, plain.handshake_error, process.log()[-2000:])
        assert unknown.received == plain.received == 0
        assert "refused this client's key" in str(unknown.handshake_error)
        # the control socket: the allowed key is answered, the unknown one is refused and changes nothing
        reply = request(
            process.control, {"cmd": "reset", "stream": "pattern"}, 30, keys.server_public, keys.alice_secret
        )
        assert reply == ResetReply(segment=2)
        with pytest.raises(VstmonError, match="refused"):
            request(
                process.control,
                {"cmd": "reset", "stream": "pattern"},
                10,
                keys.server_public,
                keys.mallory_secret,
            )
        status = request(process.control, {"cmd": "status"}, 30, keys.server_public, keys.alice_secret)
        assert isinstance(status, StatusReply) and status.streams["pattern"].segment == 2  # refused: no reset
    finally:
        for subscriber in (allowed, unknown, plain):
            subscriber.close()
    refused = [e for e in process.log_events() if e.get("event", "").startswith("CURVE client refused")]
    assert sorted(e["socket"] for e in refused) == ["control", "publish"]
    assert process.terminate() == 0, process.log()
