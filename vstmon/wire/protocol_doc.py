"""docs/PROTOCOL.md's field tables, generated from the models of ``vstmon.wire.protocol``.

Each table sits between ``<!-- fields: NAME -->`` and ``<!-- /fields -->`` in PROTOCOL.md and lists the fields
of one model (``TABLES``): name, type and the field's ``description``. A field holding one object
(``clip``) is spelled out as ``clip.start_ts``, ...; lists and maps of objects name the model of their items,
which has a table of its own. The prose around the tables is written by hand.

``python -m vstmon.wire.protocol_doc [PATH]`` rewrites the tables in PATH (default docs/PROTOCOL.md);
``--check`` only says whether they are current (exit 1 when not), as the test does.
"""

from __future__ import annotations

import argparse
import re
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from vstmon.wire import protocol as p
from vstmon.wire.protocol_errors import type_text

__all__ = ["TABLES", "field_rows", "render", "table"]

# table name in PROTOCOL.md -> (model, the model whose fields it leaves out: they are listed in its own table)
TABLES: dict[str, tuple[type[BaseModel], type[BaseModel] | None]] = {
    "envelope": (p.StreamEnvelope, None),
    "label": (p.LabelBody, None),
    "score": (p.Score, None),
    "segment": (p.SegmentBody, None),
    "segment-label": (p.SegmentLabel, None),
    "reset": (p.ResetBody, None),
    "subject": (p.SubjectBody, None),
    "stream-status": (p.StreamStatusBody, None),
    "subject-slot": (p.SubjectSlot, None),
    "daemon-status": (p.DaemonStatusBody, None),
    "stream-entry": (p.StreamEntry, p.StreamStatusBody),
    "reset-command": (p.ResetCommand, None),
    "status-command": (p.StatusCommand, None),
    "reset-reply": (p.ResetReply, None),
    "status-reply": (p.StatusReply, None),
    "error-reply": (p.ErrorReply, None),
}
_BLOCK = re.compile(r"(<!-- fields: (?P<name>[a-z-]+) -->\n)(?P<body>.*?)(<!-- /fields -->)", re.DOTALL)
_DEFAULT_DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _single_model(annotation: Any) -> type[BaseModel] | None:
    """The model of a field that holds exactly one object (not a list, map or null)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def field_rows(model: type[BaseModel], prefix: str = "", skip: type[BaseModel] | None = None) -> list[str]:
    """The table rows of ``model``'s fields (nested single objects spelled out with a dotted prefix)."""
    rows = []
    for name, info in model.model_fields.items():
        if skip is not None and name in skip.model_fields:
            continue
        nested = _single_model(info.annotation)
        if nested is not None:
            rows.extend(field_rows(nested, f"{prefix}{name}."))
            continue
        if not info.description:
            raise ValueError(f"{model.__name__}.{name} has no description (Field(description=...))")
        kind = type_text(info.annotation, names=True)
        rows.append(f"| `{prefix}{name}` | {_cell(kind)} | {_cell(info.description)} |")
    return rows


def table(name: str) -> str:
    """The generated table called ``name`` (a key of ``TABLES``), header included, ending in a newline."""
    model, skip = TABLES[name]
    lines = ["| field | type | meaning |", "| --- | --- | --- |", *field_rows(model, skip=skip)]
    return "\n".join(lines) + "\n"


def render(document: str) -> str:
    """``document`` with every generated table replaced by its current text; ``ValueError`` naming a marker
    without a table, or a table without a marker."""
    found: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in TABLES:
            raise ValueError(
                f"PROTOCOL.md: <!-- fields: {name} --> names no table (known: {', '.join(TABLES)})"
            )
        found.append(name)
        return match.group(1) + table(name) + match.group(4)

    out = _BLOCK.sub(replace, document)
    missing = [name for name in TABLES if name not in found]
    if missing:
        raise ValueError(f"PROTOCOL.md has no place for the table(s) {', '.join(missing)}")
    return out


def main(argv: typing.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vstmon.wire.protocol_doc", description=__doc__.split("\n")[0]
    )
    parser.add_argument("path", nargs="?", type=Path, default=_DEFAULT_DOC, help="default: docs/PROTOCOL.md")
    parser.add_argument(
        "--check", action="store_true", help="only check; exit 1 when the tables are not current"
    )
    args = parser.parse_args(argv)
    text = args.path.read_text(encoding="utf-8")
    current = render(text)
    if args.check:
        if current != text:
            print(
                f"{args.path}: the field tables are not the generated ones; run python -m vstmon.wire.protocol_doc"
            )
            return 1
        return 0
    if current != text:
        args.path.write_text(current, encoding="utf-8")
        print(f"{args.path}: field tables updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
