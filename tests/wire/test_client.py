"""Client: typed parsing of every message type, gap detection, and `vstmon listen` end to end."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import zmq

from tests.helpers.cli import REPO_ROOT, run_vstmon
from tests.helpers.wire import (
    daemon_status,
    label_body,
    reset_body,
    segment_body,
    stream_entry,
    stream_status,
)
from vstmon.config import PublishConfig, SmoothingConfig
from vstmon.errors import VstmonError
from vstmon.stream.state import SegmentState
from vstmon.types import Clip, ClipResult
from vstmon.wire.client import (
    DaemonStatus,
    LabelMessage,
    MessageError,
    ResetMessage,
    SegmentMessage,
    StatusMessage,
    SubjectMessage,
    Subscriber,
    parse_message,
)
from vstmon.wire.protocol import Message, SubjectSlot
from vstmon.wire.publish import Publisher


@pytest.fixture
def captured() -> Iterator[tuple[Publisher, list[tuple[str, dict]]]]:
    """A real publisher (no subscriber needed) and the messages it sends, as JSON objects, in order."""
    publisher = Publisher(PublishConfig(endpoints=["tcp://127.0.0.1:*"]))
    out: list[tuple[str, dict]] = []

    def tap(topic: str, message: Message) -> None:
        out.append((topic, json.loads(message.model_dump_json())))

    publisher.add_tap(tap)
    yield publisher, out
    publisher.close()


def _capture_real_messages(captured) -> list[tuple[str, dict]]:
    """Messages exactly as the real SegmentState and Publisher produce them."""
    publisher, out = captured
    state = SegmentState(
        "cam1", SmoothingConfig(), ["a", "b", "c"], 2, "m1", untrained=True, publish=publisher.publish
    )
    clip = Clip("cam1", 0, np.zeros((4, 8, 8, 3), np.uint8), 0, 6, 1.0, 2.0, 0.0, 1.0, 0.0)
    state.accept_clip(clip)
    state.on_result(ClipResult(clip, np.array([0.2, 0.7, 0.1], np.float32)))
    state.reset("control", subject="p-1")
    publisher.publish("status.cam1", stream_status(reason="opened", clips_dropped=1, reconnects=2, clips=3))
    publisher.publish("status", daemon_status(3.5, {"cam1": stream_entry(segment=2)}))
    return out


def test_subject_messages_and_subject_fields_parse(captured) -> None:
    publisher, out = captured
    state = SegmentState("cam1", SmoothingConfig(), ["a", "b"], 2, "m1", publish=publisher.publish)
    clip = Clip("cam1", 0, np.zeros((4, 8, 8, 3), np.uint8), 0, 6, 1.0, 2.0, 0.0, 1.0, 0.0)
    clip.box = (0.1, 0.2, 0.30001, 1.2)  # rounded to 4 decimals and clipped to the frame
    state.accept_clip(clip)
    state.on_result(ClipResult(clip, np.array([0.3, 0.7], np.float32)))
    state.reset("subject_change", subject="cam1-4")
    state.subject_event("change", "cam1-4", "cam1-2", (0.5, 0.25, 0.75, 0.9), 0.871234, 3)
    publisher.publish("status.cam1", stream_status(reason="ok", clips=1, people=3, subject="cam1-4"))
    per_subject = stream_status(
        reason="ok",
        clips=4,
        people=3,
        subjects=[SubjectSlot(subject="cam1-4", box=(0, 0, 1, 1), segment=2, clips=5)],
        waiting=1,
    )
    publisher.publish("status.cam1", per_subject)
    label, _segment, reset, subject, status, status2 = (parse_message(t, json.dumps(b)) for t, b in out)
    assert isinstance(label, LabelMessage) and label.box == (0.1, 0.2, 0.3, 1.0)
    assert isinstance(reset, ResetMessage) and reset.reason == "subject_change" and reset.subject == "cam1-4"
    assert isinstance(subject, SubjectMessage)
    assert (subject.event, subject.segment, subject.subject, subject.previous, subject.people) == (
        "change",
        2,
        "cam1-4",
        "cam1-2",
        3,
    )
    assert subject.box == (0.5, 0.25, 0.75, 0.9) and subject.score == 0.8712
    assert isinstance(status, StatusMessage) and (status.people, status.subject) == (3, "cam1-4")
    assert isinstance(status2, StatusMessage) and status2.waiting == 1
    assert status2.subjects == (SubjectSlot(subject="cam1-4", box=(0.0, 0.0, 1.0, 1.0), segment=2, clips=5),)
    assert status.subjects is None and status.waiting is None  # whole-frame mode sends neither
    assert "subjects" not in out[4][1] and "waiting" not in out[4][1] and "inference" not in out[4][1]
    boxed = {**out[2][1], "box": [0.1, 0.2, 0.3, 0.4]}
    assert parse_message("reset.cam1", boxed).box == (0.1, 0.2, 0.3, 0.4)
    # fields of an older daemon (no box, no people) read as None; a bad box is refused with its field
    older = {k: v for k, v in out[0][1].items() if k != "box"}
    assert parse_message("label.cam1", older).box is None
    with pytest.raises(MessageError, match="'box' must be"):
        parse_message("label.cam1", {**out[0][1], "box": [0.1, 0.2, 0.3]})


def test_status_carries_inference_when_a_server_runs_the_model(captured) -> None:
    publisher, out = captured
    publisher.publish("status.cam1", stream_status(inference="down"))
    publisher.publish("status", daemon_status(1.0, {"cam1": stream_entry(inference="up")}))
    status, daemon = (parse_message(t, json.dumps(b)) for t, b in out)
    assert isinstance(status, StatusMessage) and status.inference == "down"
    assert isinstance(daemon, DaemonStatus) and daemon.streams["cam1"].inference == "up"


def test_parse_every_message_type(captured) -> None:
    label, segment, reset, status, daemon = (
        parse_message(t, json.dumps(b)) for t, b in _capture_real_messages(captured)
    )
    assert isinstance(label, LabelMessage)
    assert (label.stream, label.seq, label.segment, label.subject, label.model) == ("cam1", 1, 1, None, "m1")
    assert label.untrained is True
    assert label.clip.frames == 4 and label.clip.last_frame == 6 and label.clip.end_ts == 2.0
    assert [s.label for s in label.top] == ["b", "a"] and label.top[0].score == pytest.approx(0.7)
    assert label.smoothed == label.top
    assert isinstance(segment, SegmentMessage)
    assert segment.segment == 1 and segment.clips == 1 and segment.labels[0].label == "b"
    assert segment.labels[0].seconds == pytest.approx(1.0)
    assert isinstance(reset, ResetMessage)
    assert (reset.segment, reset.previous_segment, reset.subject, reset.reason) == (2, 1, "p-1", "control")
    assert isinstance(status, StatusMessage)
    assert (status.state, status.fps_in, status.clips_dropped, status.reconnects, status.seq) == (
        "streaming",
        25.0,
        1,
        2,
        4,
    )
    assert isinstance(daemon, DaemonStatus)
    assert (daemon.device, daemon.uptime_s, daemon.state, daemon.topic) == (
        ("cpu",),
        3.5,
        "running",
        "status",
    )
    assert (daemon.streams["cam1"].state, daemon.streams["cam1"].segment) == ("streaming", 2)
    assert (label.topic, status.topic) == ("label.cam1", "status.cam1")


def test_parse_accepts_bytes_and_ignores_unknown_fields(captured) -> None:
    topic, body = _capture_real_messages(captured)[2]
    body["new_field_in_a_later_release"] = [1, 2]
    message = parse_message(topic.encode(), json.dumps(body).encode())
    assert isinstance(message, ResetMessage)


@pytest.mark.parametrize(
    ("topic", "mutate", "error"),
    [
        ("reset.cam1", lambda b: b.pop("segment"), "missing field 'segment'"),
        ("reset.cam1", lambda b: b.update(segment="2"), "'segment' must be an integer"),
        ("reset.cam1", lambda b: b.update(v=2), "schema version 2"),
        ("reset.cam1", lambda b: b.update(type="label"), "does not match the topic"),
        ("reset.cam1", lambda b: b.update(stream="cam2"), "stream 'cam2' does not match"),
        ("reset.cam1", lambda b: b.update(subject=5), "'subject' must be a string or null"),
        ("reset.cam1", lambda b: b.update(seq=True), "'seq' must be an integer"),
    ],
)
def test_malformed_fields_are_clear_errors(captured, topic, mutate, error) -> None:
    body = dict(next(b for t, b in _capture_real_messages(captured) if t == topic))
    mutate(body)
    with pytest.raises(MessageError, match=error.replace("(", r"\(")):
        parse_message(topic, json.dumps(body))


def test_malformed_label_fields_name_the_path(captured) -> None:
    topic, body = _capture_real_messages(captured)[0]
    body["top"][1]["score"] = "high"
    with pytest.raises(MessageError, match=r"label.cam1.top\[1\]: field 'score' must be a number"):
        parse_message(topic, json.dumps(body))
    body["clip"] = []
    with pytest.raises(MessageError, match="'clip' must be an object"):
        parse_message(topic, json.dumps(body))


@pytest.mark.parametrize(
    ("topic", "body", "error"),
    [
        ("label.cam1", b"{oops", "not valid JSON"),
        ("label.cam1", b"[1]", "must be a JSON object"),
        ("label.cam1", b"\xff", "not UTF-8"),
        (b"\xff", b"{}", "not UTF-8"),
        ("label", json.dumps({"v": 1, "type": "label", "ts": 1.0}), "must name a stream"),
        (
            "weird.cam1",
            json.dumps({"v": 1, "type": "weird", "ts": 1.0, "stream": "cam1", "seq": 1}),
            "unknown",
        ),
    ],
)
def test_malformed_bodies_are_clear_errors(topic, body, error) -> None:
    with pytest.raises(MessageError, match=error):
        parse_message(topic, body)


# -- real sockets ------------------------------------------------------------------------------------------------
@pytest.fixture
def publisher():
    pub = Publisher(PublishConfig(endpoints=["tcp://127.0.0.1:*"], sndhwm=100_000))
    yield pub, pub.endpoints[0]
    pub.close()


def _wait_joined(pub: Publisher, sub: Subscriber) -> None:
    for _ in range(200):
        pub.publish("status", daemon_status())
        if sub.recv(timeout_s=0.02) is not None:
            break
    else:
        raise AssertionError("subscriber never joined")
    while sub.recv(timeout_s=0.1) is not None:
        pass


def test_subscriber_reports_gaps_per_stream(publisher) -> None:
    pub, endpoint = publisher
    with Subscriber(endpoint, ("reset", "status"), timeout_s=2.0) as sub:
        _wait_joined(pub, sub)
        # label.cam1 is not subscribed: its seq numbers 3-5 are a real gap for this subscriber
        plan = [
            "reset.cam1",
            "reset.cam1",
            "label.cam1",
            "label.cam1",
            "label.cam1",
            "reset.cam1",
            "reset.cam2",
        ]
        for topic in plan:
            pub.publish(topic, reset_body(2) if topic.startswith("reset") else label_body())
        received = []
        while len(received) < 4 and (message := sub.recv()) is not None:
            received.append(message)
        assert [(m.stream, m.seq) for m in received] == [("cam1", 1), ("cam1", 2), ("cam1", 6), ("cam2", 1)]
        assert sub.gaps == 1 and sub.missing == 3
        assert [(g.stream, g.first_seq, g.last_seq) for g in sub.gap_log] == [("cam1", 3, 5)]


def test_seq_going_back_counts_as_a_daemon_restart_not_a_gap(publisher) -> None:
    _, endpoint = publisher
    with Subscriber(endpoint, ("reset",), timeout_s=2.0) as sub:
        sub._track("cam1", 7)
        assert sub._track("cam1", 1) == []
        assert sub.restarts == 1 and sub.gaps == 0
        assert [(g.first_seq, g.last_seq) for g in sub._track("cam1", 3)] == [(2, 2)]


def test_subscriber_counts_malformed_messages_and_keeps_going() -> None:
    """A daemon that does not follow the protocol (a raw PUB socket: the real publisher only sends models)."""
    context = zmq.Context.instance()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:*")
    envelope = {"v": 1, "type": "reset", "ts": 1.0, "stream": "cam1"}
    bad = {**reset_body(2).model_dump(mode="json"), "segment": "not an int", **envelope, "seq": 1}
    good = {**reset_body(3).model_dump(mode="json"), **envelope, "seq": 2}
    try:
        with Subscriber(pub.getsockopt_string(zmq.LAST_ENDPOINT), ("",), timeout_s=0.02) as sub:
            for _ in range(500):  # until the subscriber has joined: it refuses the bad message
                pub.send_multipart((b"reset.cam1", json.dumps(bad).encode()))
                assert sub.recv() is None
                if sub.malformed:
                    break
            assert sub.malformed >= 1 and "field 'segment' must be an integer, got str" in sub.last_error
            pub.send_multipart((b"reset.cam1", json.dumps(good).encode()))
            message = sub.recv(timeout_s=5.0)
            assert isinstance(message, ResetMessage) and message.segment == 3 and message.seq == 2
    finally:
        pub.close()


def test_subscriber_iteration_stops_after_timeout(publisher) -> None:
    _, endpoint = publisher
    with Subscriber(endpoint, timeout_s=0.2) as sub:
        assert list(sub) == []


def _feed(pub: Publisher, stop: threading.Event) -> None:
    n = 0
    while not stop.wait(0.01):
        n += 1
        pub.publish("reset.cam1", reset_body(n))
        pub.publish("status", daemon_status(float(n)))


def test_listen_cli_prints_json_lines_in_a_subprocess(publisher) -> None:
    pub, endpoint = publisher
    stop = threading.Event()
    feeder = threading.Thread(target=_feed, args=(pub, stop))
    feeder.start()
    try:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "vstmon.cli",
                "listen",
                endpoint,
                "--topic",
                "reset",
                "--count",
                "5",
                "--timeout-s",
                "10",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=REPO_ROOT,
        )
    finally:
        stop.set()
        feeder.join(5)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 5
    seqs = []
    for line in lines:
        obj = json.loads(line)
        assert obj["topic"] == "reset.cam1"
        assert next(iter(obj)) == "topic"
        assert {
            "v",
            "type",
            "ts",
            "stream",
            "seq",
            "segment",
            "previous_segment",
            "subject",
            "reason",
        } <= set(obj)
        body = {k: v for k, v in obj.items() if k != "topic"}
        assert isinstance(parse_message(obj["topic"], body), ResetMessage)
        seqs.append(obj["seq"])
    assert seqs == list(range(seqs[0], seqs[0] + 5))


def test_listen_cli_times_out_with_exit_code_1(silent_endpoint: str) -> None:
    proc = run_vstmon("listen", silent_endpoint, "--count", "3", "--timeout-s", "0.3")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("vstmon listen: no message in 0.3 s; got 0 of 3")


def test_listen_with_nothing_there_says_so_and_exits_1_also_without_count(silent_endpoint: str) -> None:
    proc = run_vstmon("listen", silent_endpoint, "--timeout-s", "0.5")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == (
        f"vstmon listen: no message in 0.5 s (is a daemon publishing on {silent_endpoint}?)\n"
    )


def test_listen_exits_0_when_messages_came_and_then_the_stream_went_quiet(publisher) -> None:
    pub, endpoint = publisher
    listener = subprocess.Popen(
        [sys.executable, "-m", "vstmon.cli", "listen", endpoint, "--topic", "reset", "--timeout-s", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        cwd=REPO_ROOT,
    )
    first_line: list[str] = []
    reader = threading.Thread(target=lambda: first_line.append(listener.stdout.readline()))
    reader.start()
    try:
        n = 0
        while reader.is_alive() and n < 1200:  # publish until the listener has joined and printed one (60 s)
            n += 1
            pub.publish("reset.cam1", reset_body(n))
            reader.join(0.05)
        assert first_line and json.loads(first_line[0])["topic"] == "reset.cam1"
        _out, err = listener.communicate(timeout=60)  # nothing more is published: it times out
    finally:
        listener.kill()
        listener.wait()
    assert listener.returncode == 0, err
    assert err == ""


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("localhost:5556", "endpoint 'localhost:5556' has no transport; did you mean tcp://localhost:5556?"),
        ("5556", "endpoint '5556' has no transport; did you mean tcp://127.0.0.1:5556?"),
        ("tcp://localhost", "endpoint 'tcp://localhost' has no port; did you mean tcp://localhost:5556?"),
        (
            "tcp://*:5556",
            "endpoint 'tcp://*:5556' is a bind address (as in publish.endpoints); a client connects to the "
            "daemon's host and port: did you mean tcp://127.0.0.1:5556?",
        ),
        (
            "http://cam:5556/x",
            "endpoint 'http://cam:5556/x': transport 'http' is not supported (tcp://, ipc:// or inproc://); "
            "did you mean tcp://cam:5556?",
        ),
        (
            "/run/vstmon.sock",
            "endpoint '/run/vstmon.sock' has no transport; did you mean ipc:///run/vstmon.sock?",
        ),
    ],
)
def test_listen_suggests_the_endpoint_it_probably_meant(endpoint: str, message: str) -> None:
    proc = run_vstmon("listen", endpoint, "--timeout-s", "0.2")
    assert proc.returncode == 2
    assert proc.stderr == f"vstmon: error: {message}\n"


def test_a_subscriber_refuses_an_endpoint_without_transport() -> None:
    with pytest.raises(VstmonError, match=r"did you mean tcp://localhost:5556\?"):
        Subscriber("localhost:5556")


def test_listen_with_a_topic_filter_does_not_call_other_topics_gaps(
    publisher, capsys: pytest.CaptureFixture[str]
) -> None:
    from vstmon.cli import main

    pub, endpoint = publisher
    stop = threading.Event()

    def feed() -> None:
        n = 0
        while not stop.wait(0.01):
            n += 1
            pub.publish("reset.cam1", reset_body(n))
            pub.publish("status.cam1", stream_status(), stream="cam1")  # takes a seq, not subscribed

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        assert main(["listen", endpoint, "--topic", "reset", "--count", "4", "--timeout-s", "10"]) == 0
    finally:
        stop.set()
        feeder.join(5)
    captured = capsys.readouterr()
    seqs = [json.loads(line)["seq"] for line in captured.out.splitlines()]
    assert len(seqs) == 4 and [b - a for a, b in itertools.pairwise(seqs)] == [2, 2, 2]
    assert "gap" not in captured.err


def _feed_all_kinds(pub: Publisher, stop: threading.Event) -> None:
    label = label_body(3, "p-43", top=(("walking the dog", 383, 0.71),), smoothed=(("jogging", 176, 0.44),))
    segment = segment_body(3, labels=(("walking the dog", 383, 29, 27.0),))
    status = stream_status(clips=310, reconnects=1)
    while not stop.wait(0.01):
        pub.publish("label.cam1", label)
        pub.publish("segment.cam1", segment)
        pub.publish("reset.cam1", reset_body(4, subject="p-43"))
        pub.publish("status.cam1", status)
        pub.publish("status", daemon_status(5.0, {"cam1": stream_entry(segment=4)}))


def test_listen_pretty_prints_one_aligned_line_per_message(publisher) -> None:
    pub, endpoint = publisher
    stop = threading.Event()
    feeder = threading.Thread(target=_feed_all_kinds, args=(pub, stop))
    feeder.start()
    try:
        proc = run_vstmon("listen", endpoint, "--pretty", "--count", "15", "--timeout-s", "10", timeout_s=60)
    finally:
        stop.set()
        feeder.join(5)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 15 and "\033[" not in proc.stdout  # no colour when stdout is not a terminal
    labels = [line for line in lines if "walking the dog" in line and " 0.71  ~" in line]
    assert labels and all("cam1" in line and "p-43" in line and "~ jogging 0.44" in line for line in labels)
    assert all(line.endswith("seg 3") for line in labels)
    assert any("reset (control) -> segment 4, subject p-43" in line for line in lines)
    assert any("segment 3 closed: 29 clips; walking the dog 27.0 s" in line for line in lines)
    # a stream's status has no segment: its line says what it has (issue 18: it printed "segment None")
    statuses = [line for line in lines if "status streaming" in line]
    assert statuses and all(line.endswith("status streaming, 25.0 fps in, 310 clips") for line in statuses)
    assert any(
        "daemon  " in line and line.endswith("daemon running: 1/1 streams streaming") for line in lines
    )
    assert "None" not in proc.stdout
    starts = {line.index("p-43") for line in labels}
    assert len(starts) == 1  # aligned columns
