"""The wire protocol's cost per message: building, publishing and parsing the pydantic models.

Measures, on this machine's CPU, microseconds per ``label`` message (top-k ``--top-k`` of 400 classes):

- build: ``SegmentState.on_result`` (smoothing, top-k, the ``LabelBody`` model) with a publish callback that
  keeps nothing;
- publish: the same through a real ``Publisher`` (no subscriber: dump, envelope, JSON, one ``send``), without and
  with a tap (the live page's: the message is parsed again into its typed model for it);
- parse: ``parse_message`` of the published bytes (what ``Subscriber.recv`` does per message).

A daemon publishes a few label messages per second per stream, so these figures bound the protocol's share of
the engine thread (which publishes under the stream's lock) and of a subscriber.

    .venv/bin/python benchmarks/bench_protocol.py --messages 20000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vstmon.config import PublishConfig, SmoothingConfig  # noqa: E402
from vstmon.stream.state import SegmentState  # noqa: E402
from vstmon.types import Clip, ClipResult  # noqa: E402
from vstmon.wire.protocol import Body, Message, parse_message  # noqa: E402
from vstmon.wire.publish import Publisher  # noqa: E402

CLASSES = 400


def _results(n: int) -> list[ClipResult]:
    rng = np.random.default_rng(0)
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    out = []
    for i in range(n):
        clip = Clip("cam1", 0, frames, i, i + 31, 1.0 + i, 2.0 + i, float(i), i + 1.0, time.monotonic())
        out.append(ClipResult(clip, rng.dirichlet(np.ones(CLASSES)).astype(np.float32)))
    return out


def _per_message_us(state: SegmentState, results: list[ClipResult]) -> float:
    started = time.perf_counter()
    for result in results:
        state.accept_clip(result.clip)
        state.on_result(result)
    return (time.perf_counter() - started) / len(results) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args()
    labels = [f"action {i}" for i in range(CLASSES)]
    results = _results(args.messages)

    def state(publish: object) -> SegmentState:
        return SegmentState("cam1", SmoothingConfig(), labels, args.top_k, "m1", publish=publish)  # type: ignore[arg-type]

    kept: list[tuple[str, Body]] = []
    build_us = _per_message_us(state(lambda topic, body: kept.append((topic, body))), results)
    publisher = Publisher(PublishConfig(endpoints=["tcp://127.0.0.1:*"]))
    publish_us = _per_message_us(state(publisher.publish), results)
    tapped: list[Message] = []
    publisher.add_tap(lambda topic, message: tapped.append(message))
    tap_us = _per_message_us(state(publisher.publish), results)
    publisher.close()
    assert len(tapped) == args.messages
    envelope = {"v": 1, "type": "label", "ts": 1.7e9, "stream": "cam1"}  # as the publisher adds it
    wire = [
        (topic, json.dumps({**body.model_dump(mode="json"), **envelope, "seq": seq}))
        for seq, (topic, body) in enumerate(kept[:2000], 1)
    ]
    started = time.perf_counter()
    for topic, text in wire:
        parse_message(topic, text)
    parse_us = (time.perf_counter() - started) / len(wire) * 1e6
    print(
        f"label messages: {args.messages}, top-k {args.top_k} of {CLASSES} classes, {len(wire[0][1])} bytes"
    )
    print(f"  build (SegmentState.on_result + LabelBody):       {build_us:7.1f} us/message")
    print(f"  publish (+ dump, envelope, JSON, send):          {publish_us:7.1f} us/message")
    print(f"  publish with a tap (+ parse for the live page):  {tap_us:7.1f} us/message")
    print(f"  parse (parse_message, as Subscriber.recv):       {parse_us:7.1f} us/message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
