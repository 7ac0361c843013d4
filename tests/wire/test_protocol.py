"""The protocol module: PROTOCOL.md's tables are generated from the models, every model is documented, bodies
serialise as the wire expects, control commands are checked as the doc says, and ``--pretty`` reads the models."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from tests.helpers.cli import REPO_ROOT
from tests.helpers.wire import daemon_status, label_body, stream_entry, stream_status
from vstmon.wire import protocol
from vstmon.wire.pretty import pretty_line
from vstmon.wire.protocol import (
    DaemonStatus,
    LabelMessage,
    MessageError,
    ResetCommand,
    StatusCommand,
    StatusMessage,
    StreamStatusBody,
    SubjectSlot,
    parse_command,
    parse_message,
    parse_reply,
)
from vstmon.wire.protocol_doc import TABLES, main, render

PROTOCOL_MD = REPO_ROOT / "docs" / "PROTOCOL.md"
ROOTS: tuple[type[BaseModel], ...] = (
    protocol.StreamEnvelope,
    protocol.LabelBody,
    protocol.SegmentBody,
    protocol.ResetBody,
    protocol.SubjectBody,
    protocol.StreamStatusBody,
    protocol.DaemonStatusBody,
    protocol.ResetCommand,
    protocol.StatusCommand,
    protocol.ResetReply,
    protocol.StatusReply,
    protocol.ErrorReply,
)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _every_model() -> set[type[BaseModel]]:
    """Every model a message, command or reply is made of (walking the fields from the roots)."""
    seen: set[type[BaseModel]] = set()
    todo = list(ROOTS)
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for info in model.model_fields.values():
            todo.extend(_models_in(info.annotation))
    return seen


def test_protocol_md_tables_are_the_generated_ones() -> None:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    assert render(text) == text, (
        "PROTOCOL.md's field tables are stale: run python -m vstmon.wire.protocol_doc"
    )
    assert main([str(PROTOCOL_MD), "--check"]) == 0


def test_every_model_has_a_table_and_every_field_a_description() -> None:
    tabled = {model for model, _skip in TABLES.values()}
    spelled_out = {protocol.ClipInfo}  # one object per label: its fields are rows of the label table
    assert _every_model() - spelled_out == tabled
    for model in _every_model():
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
    # every message of the union is a body of a table plus the envelope
    for message in (protocol.LabelMessage, protocol.StatusMessage, protocol.DaemonStatus):
        body = next(
            base for base in message.__mro__[1:] if base in tabled and base is not protocol.StreamEnvelope
        )
        assert set(message.model_fields) == set(body.model_fields) | (
            set(protocol.StreamEnvelope.model_fields)
            if issubclass(message, protocol.StreamEnvelope)
            else set(protocol.Envelope.model_fields)
        )


def test_a_stale_table_is_found_and_rewritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "PROTOCOL.md"
    stale = PROTOCOL_MD.read_text(encoding="utf-8").replace("| `uptime_s` | number |", "| `uptime_s` | int |")
    doc.write_text(stale, encoding="utf-8")
    assert main([str(doc), "--check"]) == 1
    assert "not the generated ones" in capsys.readouterr().out
    assert main([str(doc)]) == 0
    assert doc.read_text(encoding="utf-8") == PROTOCOL_MD.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="names no table"):
        render("<!-- fields: nope -->\n<!-- /fields -->\n")
    with pytest.raises(ValueError, match="no place for the table"):
        render("no markers at all")


def test_bodies_serialise_as_the_wire_format_has_them() -> None:
    """Fields that say something only when set are left out otherwise; nulls that are part of the format stay."""
    assert stream_status(reason="opened", fps_in=25, frames_dropped=3, clips_dropped=1, clips=42).model_dump(
        mode="json"
    ) == {
        "state": "streaming",
        "reason": "opened",
        "fps_in": 25.0,
        "frames_dropped": 3,
        "clips_dropped": 1,
        "reconnects": 0,
        "clips": 42,
        "people": None,
        "subject": None,
    }
    per_subject = stream_status(
        subjects=[SubjectSlot(subject="c-1", box=None, segment=1, clips=0)], waiting=0
    )
    assert {"subjects", "waiting"} <= set(per_subject.model_dump(mode="json"))
    assert stream_status(inference="unknown").model_dump(mode="json")["inference"] == "unknown"
    assert "untrained" not in label_body().model_dump(mode="json")
    assert label_body().model_copy(update={"untrained": True}).model_dump(mode="json")["untrained"] is True
    daemon = protocol.DaemonStatusBody(
        uptime_s=12.5, device="cpu", model="m1", streams={"cam1": stream_entry(2)}
    )
    data = daemon.model_dump(mode="json")
    assert (data["state"], data["device"], data["streams"]["cam1"]["segment"]) == ("running", ["cpu"], 2)


def _wire(topic: str, body: BaseModel, seq: int = 1) -> dict[str, Any]:
    kind, _, stream = topic.partition(".")
    envelope: dict[str, Any] = {"v": 1, "type": kind, "ts": 1.7e9}
    if stream:
        envelope |= {"stream": stream, "seq": seq}
    return {**body.model_dump(mode="json"), **envelope}


def test_fields_a_newer_daemon_adds_are_ignored_at_every_level() -> None:
    data = _wire("label.cam1", label_body())
    data["new_field"] = {"any": "thing"}
    data["top"][0]["new_too"] = 1
    data["clip"]["fps"] = 25.0
    message = parse_message("label.cam1", data)
    assert isinstance(message, LabelMessage) and message.top[0].label == "walking the dog"
    with pytest.raises(MessageError, match="schema version 2 is not supported"):
        parse_message("label.cam1", {**data, "v": 2})


def test_a_daemon_status_and_a_stream_status_are_told_apart_by_the_topic() -> None:
    status = parse_message("status.cam1", _wire("status.cam1", stream_status(inference="up")))
    daemon = parse_message("status", _wire("status", daemon_status(1.0, {"cam1": stream_entry(3)})))
    assert isinstance(status, StatusMessage) and status.inference == "up" and status.topic == "status.cam1"
    assert isinstance(daemon, DaemonStatus) and daemon.streams["cam1"].segment == 3
    with pytest.raises(MessageError, match=r"^status: stream 'cam1' does not match the topic$"):
        parse_message("status", _wire("status.cam1", stream_status()))
    with pytest.raises(MessageError, match=r"^status\.cam1: missing field 'stream'$"):
        parse_message("status.cam1", _wire("status", daemon_status()))


def _no_twice(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({key for key, _value in pairs}) < len(pairs):
        raise KeyError("a field twice")
    return dict(pairs)


def _doc_error_examples() -> list[tuple[Any, str]]:
    """The control error examples of PROTOCOL.md whose request is plain JSON that ``parse_command`` checks (not
    the socket's size, nesting and duplicate checks, nor the daemon's unknown stream)."""
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(.+?)` \| `(.+?)` \|$", text.split("Examples of `error`:")[1], re.MULTILINE)
    examples = []
    for request, error in rows:
        try:
            data = json.loads(request, object_pairs_hook=_no_twice)
        except (json.JSONDecodeError, KeyError):
            continue  # not JSON, or a field twice (the socket answers), or abbreviated with ...
        if "unknown stream" not in error:
            examples.append((data, error))
    return examples


@pytest.mark.parametrize(("request_data", "error"), _doc_error_examples())
def test_the_control_errors_in_protocol_md_are_what_the_socket_says(request_data: Any, error: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_command(request_data)
    assert str(raised.value) == error


def test_control_commands_and_replies_parse_into_their_models() -> None:
    assert len(_doc_error_examples()) >= 6
    reset = parse_command({"cmd": "reset", "stream": "cam1", "subject": "p-43"})
    assert reset == ResetCommand(stream="cam1", subject="p-43")
    assert parse_command({"cmd": "status"}) == StatusCommand()
    reply = parse_reply("status", json.dumps({"ok": True, "streams": {"cam1": stream_entry(5).model_dump()}}))
    assert isinstance(reply, protocol.StatusReply) and reply.streams["cam1"].segment == 5
    assert parse_reply("reset", b'{"ok": false, "error": "unknown stream"}') == protocol.ErrorReply(
        error="unknown stream"
    )
    with pytest.raises(MessageError, match=r"reset reply: field 'segment' must be an integer, got str"):
        parse_reply("reset", b'{"ok": true, "segment": "5"}')


def test_pretty_status_lines_say_what_a_status_has() -> None:
    status = parse_message("status.cam1", _wire("status.cam1", stream_status(clips=310, people=2)))
    line = pretty_line(status)
    assert line.endswith("--          status streaming, 25.0 fps in, 310 clips, 2 in view")
    assert "None" not in line  # issue 18: a stream's status has no segment; it printed "segment None"
    daemon = parse_message("status", _wire("status", daemon_status(1.0, {"cam1": stream_entry(3)})))
    assert pretty_line(daemon).endswith("daemon running: 1/1 streams streaming")


def test_the_protocol_module_imports_neither_zmq_nor_torch_nor_cv2() -> None:
    """Every layer may import the protocol: it brings pydantic and nothing heavy with it."""
    probe = (
        "import sys, vstmon.wire.protocol, vstmon.wire.protocol_doc; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'zmq', 'torch', 'cv2', 'numpy', 'yaml'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=True
    )
    assert done.stdout.strip() == "[]"
    assert StreamStatusBody.topic_pattern == "status.<stream>"
