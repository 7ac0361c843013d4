"""How the protocol's checks say what is wrong: pydantic's validation errors turned into one sentence that names
the message, the field path, what the field must be and what came (``label.cam1.top[1]: field 'score' must be a
number, got str``; ``reset: field "subject" is 129 characters long (limit 128)``), and how a field's type reads
(``type_text``, shared with the generated tables of PROTOCOL.md).

Works on any model (no protocol model is imported here): ``vstmon.wire.protocol`` passes its models in. Pydantic
only, as the protocol module.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from vstmon.errors import VstmonError

__all__ = [
    "MessageError",
    "command_error",
    "decode",
    "echo",
    "field_error",
    "message_failure",
    "reply_failure",
    "type_text",
]

ECHO_CHARS = 32  # at most this much of an offending value is quoted back in an error
ECHO_NAMES = 5  # at most this many unknown field names are quoted back


class MessageError(VstmonError):
    """A received message does not follow the protocol (the message says which field and why)."""


# -- type names (errors and PROTOCOL.md) -------------------------------------------------------------------------
_SCALARS = {int: "int", float: "number", str: "string", bool: "bool"}
_ARTICLES = {"int": "an integer", "number": "a number", "string": "a string", "bool": "a boolean"}


def type_text(annotation: Any, article: bool = False, names: bool = False) -> str:
    """How a field's type reads in an error message (``article``: ``an integer or null``) or in PROTOCOL.md
    (``int or null``; ``names``: objects by their model's name, ``list of `Score```)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return type_text(args[0], article, names)
    if origin in (types.UnionType, typing.Union):
        named = [type_text(a, article, names) for a in args if a is not type(None)]
        return " or ".join(named + (["null"] if type(None) in args else []))
    if origin is Literal:
        return " or ".join(json.dumps(a) for a in args)
    if origin is tuple:
        items = type_text(args[0], names=names)
        if len(args) == 2 and args[1] is Ellipsis:
            return ("a list" if article else "list") + f" of {items}"
        return ("a list" if article else "list") + f" of {len(args)} {items}s"
    if origin is dict:
        values = f" of {type_text(args[1], names=names)}" if names else ""
        return ("an object" if article else "object") + values
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"`{annotation.__name__}`" if names else ("an object" if article else "object")
    name = _SCALARS.get(annotation, getattr(annotation, "__name__", str(annotation)))
    return _ARTICLES.get(name, name) if article else name


# -- received messages and replies -------------------------------------------------------------------------------
def decode(where: bytes | str, body: bytes | str | Mapping[str, Any]) -> tuple[str, str]:
    """(``where`` as text, ``body`` as JSON text); ``MessageError`` for bytes that are not UTF-8."""
    if isinstance(where, bytes):
        try:
            where = where.decode("utf-8")
        except UnicodeDecodeError:
            raise MessageError(f"topic {where[:40]!r} is not UTF-8") from None
    if isinstance(body, Mapping):
        try:
            return where, json.dumps(body)
        except (TypeError, ValueError) as error:
            raise MessageError(f"{where}: body is not JSON: {error}") from None
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise MessageError(f"{where}: body is not UTF-8") from None
    return where, body


def _field_annotation(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> Any:
    """The annotation of the field at ``loc`` (names and list indices) inside ``model``; None if not found."""
    annotation: Any = None
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        model = next((t for t in (annotation, *_flat_args(annotation)) if _is_model(t)), None)
    return annotation


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _flat_args(annotation: Any) -> list[Any]:
    out = []
    for arg in typing.get_args(annotation):
        out.append(arg)
        out.extend(_flat_args(arg))
    return out


def field_error(where: str, model: type[BaseModel] | None, error: Mapping[str, Any], version: int) -> str:
    """One pydantic error (its ``loc`` inside ``model``) as a sentence naming the field path."""
    loc = tuple(error["loc"])
    names = [i for i, part in enumerate(loc) if isinstance(part, str)]
    if not names:
        return f"{where}: {error['msg']}"
    last = names[-1]
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[:last])
    name, inside = loc[last], loc[last + 1 :]
    place = f"{where}{path}"
    expected = type_text(_field_annotation(model, loc[: last + 1]), article=True)
    if error["type"] == "missing" and not inside:
        return f"{place}: missing field {name!r}"
    if name == "v" and not path and error["type"] == "literal_error":
        return f"{where}: schema version {error['input']} is not supported (this client reads v={version})"
    if inside:  # an element of a list field (a box of 3 numbers, a number out of range)
        return f"{place}: field {name!r} must be {expected} (item {inside[0]}: {error['msg'].lower()})"
    return f"{place}: field {name!r} must be {expected}, got {type(error['input']).__name__}"


def _json_type(value: Any) -> str:
    return {list: "list", str: "str", int: "int", float: "float", bool: "bool", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def message_failure(
    topic: str, error: ValidationError, models: Mapping[str, type[BaseModel]], version: int
) -> str:
    """Why a message did not parse, most useful first: bad JSON, the wrong kind of message for its topic, the
    version, then the first field. ``models``: the union's tag (topic pattern) -> message model."""
    errors = error.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return f"{topic}: body is not valid JSON ({first['ctx'].get('error', first['msg'])})"
    if first["type"] in ("union_tag_not_found", "union_tag_invalid") and not first["loc"]:
        data = first["input"]
        if not isinstance(data, dict):
            return f"{topic}: body must be a JSON object, got {_json_type(data)}"
        if "type" not in data:
            return f"{topic}: missing field 'type'"
        return f"{topic}: unknown message type {data['type']!r}"
    kind, _, topic_stream = topic.partition(".")
    tag = str(first["loc"][0])
    if tag != (f"{kind}.<stream>" if topic_stream else kind):
        if tag.partition(".")[0] != kind:
            return f"{topic}: type {tag.partition('.')[0]!r} does not match the topic"
        return (
            f"{topic}: missing field 'stream'"
            if topic_stream
            else f"{topic}: a daemon status names no stream"
        )
    first = next((e for e in errors if tuple(e["loc"][1:]) == ("v",)), first)  # a version says it all
    return field_error(topic, models.get(tag), {**first, "loc": first["loc"][1:]}, version)


def reply_failure(where: str, error: ValidationError, models: Mapping[str, type[BaseModel]]) -> str:
    """Why a control reply did not parse. ``models``: the reply union's tag -> reply model."""
    first = error.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return f"{where}: not valid JSON ({first['ctx'].get('error', first['msg'])})"
    if not first["loc"]:
        return f'{where}: must be a JSON object with "ok"'
    tag = str(first["loc"][0])
    return field_error(where, models.get(tag), {**first, "loc": first["loc"][1:]}, version=1)


# -- control requests --------------------------------------------------------------------------------------------
def echo(value: str) -> str:
    """``value`` quoted for an error message, cut to ``ECHO_CHARS`` characters (an error never echoes a flood)."""
    if len(value) <= ECHO_CHARS:
        return repr(value)
    return f"{value[:ECHO_CHARS]!r}... ({len(value)} characters)"


def command_error(
    cmd: str, model: type[BaseModel], errors: list[Any], check_text: Callable[[str], object]
) -> str:
    """The first problem of a control request, as the control socket says it: unknown fields first, then the
    fields in order. ``check_text`` raises the control-character error for a string pydantic refused first (a
    lone surrogate is not even a valid string to it)."""
    unknown = sorted(str(e["loc"][-1]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        names = ", ".join(echo(k) for k in unknown[:ECHO_NAMES])
        more = f" and {len(unknown) - ECHO_NAMES} more" if len(unknown) > ECHO_NAMES else ""
        return f"{cmd}: unknown field(s) {names}{more}"
    order = list(model.model_fields)
    error = min(
        errors, key=lambda e: order.index(e["loc"][1]) if e["loc"][1:] and e["loc"][1] in order else 99
    )
    name = error["loc"][1] if len(error["loc"]) > 1 else "?"
    field = f'{cmd}: field "{name}"'
    kind, value = error["type"], error["input"]
    if kind == "missing":
        return f"{field} is required"
    if kind == "string_too_short":
        return f"{field} must not be empty"
    if kind == "string_too_long":
        return f"{field} is {len(value)} characters long (limit {error['ctx']['max_length']})"
    if kind == "control_character":
        return f"{field} {error['msg']}"
    if kind == "string_unicode" and isinstance(value, str):
        try:
            check_text(value)
        except PydanticCustomError as bad:
            return f"{field} {bad.message()}"
    expected = type_text(model.model_fields[name].annotation) if name in model.model_fields else "valid"
    return f"{field} must be {expected}, got {type(value).__name__}"
