"""Publisher: envelope, topics, seq per stream, and never blocking on slow or absent subscribers."""

from __future__ import annotations

import itertools
import json
import threading
import time

import pytest
import zmq

from tests.helpers.wire import daemon_status, label_body, reset_body, stream_entry, stream_status
from vstmon.config import PublishConfig
from vstmon.errors import VstmonError
from vstmon.wire.protocol import Body, LabelBody, LabelMessage, Message, SegmentBody, parse_message
from vstmon.wire.publish import Publisher


def _body(topic: str) -> Body:
    """A valid body for ``topic``."""
    kind, _, stream = topic.partition(".")
    if kind == "status":
        return stream_status() if stream else daemon_status()
    if kind == "segment":
        return SegmentBody(segment=1, subject=None, start_ts=0.0, end_ts=1.0, clips=0, labels=())
    return reset_body(2) if kind == "reset" else label_body()


def _sub(
    ctx: zmq.Context, endpoint: str, topics: tuple[str, ...] = ("",), rcvhwm: int = 100_000
) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
    sock.connect(endpoint)
    return sock


def _join(publisher: Publisher, sub: zmq.Socket, topic: str = "status") -> None:
    """Slow-joiner: publish probes until the subscriber sees one (bounded), then drain."""
    for _ in range(200):
        publisher.publish(topic, _body(topic))
        if sub.poll(20):
            break
    else:
        raise AssertionError("subscriber never joined")
    while sub.poll(50):
        sub.recv_multipart()


@pytest.fixture
def ctx() -> zmq.Context:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def endpoint() -> str:
    """A wildcard port: the OS picks a free one at bind (read it back from ``publisher.endpoints``)."""
    return "tcp://127.0.0.1:*"


def test_messages_are_two_frames_with_topic_and_compact_json(ctx: zmq.Context, endpoint: str) -> None:
    publisher = Publisher(PublishConfig(endpoints=[endpoint]), ctx)
    endpoint = publisher.endpoints[0]
    sub = _sub(ctx, endpoint)
    _join(publisher, sub)
    before = time.time()
    assert publisher.publish("label.cam1", label_body(segment=1, top=(("walk", 1, 0.7),)))
    assert sub.poll(2000)
    frames = sub.recv_multipart()
    assert len(frames) == 2
    assert frames[0] == b"label.cam1"
    assert b" " not in frames[1]
    body = json.loads(frames[1].decode("utf-8"))
    assert body["v"] == 1 and isinstance(body["v"], int)
    assert body["type"] == "label"
    assert isinstance(body["ts"], float) and before - 1 <= body["ts"] <= time.time() + 1
    assert body["stream"] == "cam1"
    assert body["seq"] == 1 and isinstance(body["seq"], int)
    assert body["segment"] == 1 and body["subject"] is None
    publisher.close()


def test_seq_is_per_stream_and_counts_every_topic(ctx: zmq.Context, endpoint: str) -> None:
    publisher = Publisher(PublishConfig(endpoints=[endpoint]), ctx)
    endpoint = publisher.endpoints[0]
    sub = _sub(ctx, endpoint, ("label", "reset", "segment", "status"))
    _join(publisher, sub)
    sent = [
        "label.cam1",
        "status.cam2",
        "segment.cam1",
        "reset.cam1",
        "label.cam2",
        "status",
        "status.cam1",
        "label.cam1",
    ]
    for topic in sent:
        assert publisher.publish(topic, _body(topic))
    got = []
    for _ in sent:
        assert sub.poll(2000)
        topic, body = sub.recv_multipart()
        got.append((topic.decode(), json.loads(body)))
    assert [t for t, _ in got] == sent
    seqs: dict[str, list[int]] = {}
    for topic, body in got:
        assert body["type"] == topic.split(".")[0]
        if topic == "status":
            assert "seq" not in body and "stream" not in body
            continue
        assert body["stream"] == topic.split(".", 1)[1]
        seqs.setdefault(body["stream"], []).append(body["seq"])
    assert seqs == {"cam1": [1, 2, 3, 4, 5], "cam2": [1, 2]}
    publisher.close()


def test_explicit_stream_argument_and_the_envelope_is_the_publishers(ctx: zmq.Context, endpoint: str) -> None:
    publisher = Publisher(PublishConfig(endpoints=[endpoint]), ctx)
    endpoint = publisher.endpoints[0]
    sub = _sub(ctx, endpoint, ("label",))
    _join(publisher, sub, topic="label.x")
    # a body cannot carry envelope fields: they are not its fields, and unknown fields are left out
    body = LabelBody.model_validate({**label_body().model_dump(), "v": 99, "type": "bogus", "seq": -5})
    publisher.publish("label.cam9", body, stream="cam9")
    assert sub.poll(2000)
    sent = json.loads(sub.recv_multipart()[1])
    assert (sent["v"], sent["type"], sent["stream"], sent["seq"]) == (1, "label", "cam9", 1)
    publisher.close()


def test_taps_get_the_typed_message_a_subscriber_parses(ctx: zmq.Context, endpoint: str) -> None:
    publisher = Publisher(PublishConfig(endpoints=[endpoint]), ctx)
    sub = _sub(ctx, publisher.endpoints[0], ("label",))
    tapped: list[tuple[str, Message]] = []
    publisher.add_tap(lambda topic, message: tapped.append((topic, message)))
    _join(publisher, sub, topic="label.x")
    tapped.clear()
    publisher.publish("label.cam1", label_body(segment=4, subject="p-1", box=(0.1, 0.2, 0.3, 0.4)))
    assert sub.poll(2000)
    topic, data = sub.recv_multipart()
    [(tap_topic, message)] = tapped
    assert tap_topic == topic.decode() and isinstance(message, LabelMessage)
    assert message == parse_message(topic, data)
    assert (message.stream, message.seq, message.segment, message.subject) == ("cam1", 1, 4, "p-1")
    assert message.box == (0.1, 0.2, 0.3, 0.4)
    publisher.close()


def test_binds_every_endpoint_including_ipc(ctx: zmq.Context, tmp_path) -> None:
    ipc = f"ipc://{tmp_path}/pub.sock"
    publisher = Publisher(PublishConfig(endpoints=["tcp://127.0.0.1:*", ipc]), ctx)
    assert publisher.endpoints[0].startswith("tcp://127.0.0.1:") and publisher.endpoints[1] == ipc
    for endpoint in publisher.endpoints:
        sub = _sub(ctx, endpoint)
        _join(publisher, sub)
        publisher.publish("reset.cam1", reset_body(2))
        assert sub.poll(2000)
        assert sub.recv_multipart()[0] == b"reset.cam1"
        sub.close()
    publisher.close()


def test_bind_error_names_the_endpoint(ctx: zmq.Context, endpoint: str) -> None:
    first = Publisher(PublishConfig(endpoints=[endpoint]), ctx)
    taken = first.endpoints[0]
    with pytest.raises(VstmonError, match=taken.replace(".", r"\.")):
        Publisher(PublishConfig(endpoints=[taken]), ctx)
    first.close()


def test_no_subscriber_never_blocks(ctx: zmq.Context, endpoint: str) -> None:
    publisher = Publisher(PublishConfig(endpoints=[endpoint], sndhwm=10), ctx)
    endpoint = publisher.endpoints[0]
    body = label_body()
    for _ in range(5000):
        publisher.publish("label.cam1", body)
    # a PUB with no subscriber discards silently: every call returned, nothing raised
    assert publisher.stats()["errors"] == 0
    publisher.close()


def test_stalled_subscriber_never_blocks_and_others_still_receive(ctx: zmq.Context, endpoint: str) -> None:
    publisher = Publisher(PublishConfig(endpoints=[endpoint], sndhwm=10), ctx)
    endpoint = publisher.endpoints[0]
    stalled = _sub(ctx, endpoint, rcvhwm=10)  # connected, reads nothing while we publish
    reader = _sub(ctx, endpoint)
    _join(publisher, stalled)
    _join(publisher, reader)

    received: list[list[bytes]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            if reader.poll(50):
                received.append(reader.recv_multipart())

    thread = threading.Thread(target=read)
    thread.start()
    payload = label_body(top=tuple(("x" * 20, i, 0.1) for i in range(5)))
    total = 50_000
    results = [publisher.publish("label.cam1", payload) for _ in range(total)]
    assert len(results) == total  # every call returned
    deadline = time.monotonic() + 5
    while len(received) < 100 and time.monotonic() < deadline:
        stop.wait(0.05)
    stop.set()
    thread.join(5)
    assert publisher.stats()["errors"] == 0
    assert len(received) >= 100  # the reading subscriber was served meanwhile
    # the stalled subscriber lost most messages (dropped by its full queue), visible as seq gaps
    stalled_seqs = []
    while stalled.poll(200):
        topic, body = stalled.recv_multipart()
        if topic == b"label.cam1":
            stalled_seqs.append(json.loads(body)["seq"])
    assert 0 < len(stalled_seqs) < total
    assert any(b - a > 1 for a, b in itertools.pairwise(stalled_seqs))
    publisher.close()


def test_concurrent_publishers_keep_seq_contiguous(ctx: zmq.Context, endpoint: str) -> None:
    publisher = Publisher(PublishConfig(endpoints=[endpoint], sndhwm=100_000), ctx)
    endpoint = publisher.endpoints[0]
    sub = _sub(ctx, endpoint, ("label", "reset"))
    _join(publisher, sub, topic="label.probe")

    def work(topic: str) -> None:
        body = _body(topic)
        for _ in range(500):
            publisher.publish(topic, body)

    threads = [threading.Thread(target=work, args=(t,)) for t in ("label.cam1", "reset.cam1", "label.cam2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    seqs: dict[str, list[int]] = {"cam1": [], "cam2": []}
    while len(seqs["cam1"]) + len(seqs["cam2"]) < 1500 and sub.poll(2000):
        body = json.loads(sub.recv_multipart()[1])
        seqs[body["stream"]].append(body["seq"])
    assert seqs["cam1"] == list(range(1, 1001))
    assert seqs["cam2"] == list(range(1, 501))
    publisher.close()


def test_unserialisable_or_misplaced_bodies_are_dropped_not_raised(ctx: zmq.Context, endpoint: str) -> None:
    publisher = Publisher(PublishConfig(endpoints=[endpoint]), ctx)
    nan = label_body().model_copy(update={"latency_ms": float("nan")})  # JSON has no NaN
    assert publisher.publish("label.cam1", nan) is False
    assert publisher.publish("reset.cam1", label_body()) is False  # a label body on a reset topic
    assert publisher.publish("status", stream_status()) is False  # a stream's status as the daemon's
    assert publisher.publish("label.cam1", {"segment": 1}) is False  # type: ignore[arg-type]  # not a model
    assert publisher.stats()["errors"] == 4
    publisher.close()
    assert publisher.publish("label.cam1", label_body()) is False  # after close: dropped, no exception


def test_status_messages_never_carry_credentials(ctx: zmq.Context, endpoint: str) -> None:
    publisher = Publisher(PublishConfig(endpoints=[endpoint]), ctx)
    endpoint = publisher.endpoints[0]
    sub = _sub(ctx, endpoint)
    _join(publisher, sub)
    reason = "cannot open rtsp://admin:p@ss/w0rd@cam/live?token=tk9; retry 1 in 0.5 s"
    assert publisher.publish("status.cam1", stream_status(state="reconnecting", reason=reason))
    assert publisher.publish("status", daemon_status(streams={"key": stream_entry(reason=reason)}))
    assert publisher.publish("label.cam1", label_body(subject="password=p-43"))  # labels go out untouched
    messages = [parse_message(*sub.recv_multipart()) for _ in range(3) if sub.poll(5000)]
    masked = "cannot open rtsp://admin:***@cam/live?token=*** retry 1 in 0.5 s"  # a value ends at a space
    assert messages[0].reason == masked
    assert messages[1].streams["key"].reason == masked  # a stream named "key" keeps its status
    assert messages[2].subject == "password=p-43"
    publisher.close()
