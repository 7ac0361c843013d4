"""From a file (or a parsed tree) to a validated settings tree, with one error line per bad key.

``load_config(path) -> Config`` reads ``config.yaml`` with the hardened reader, drops top-level ``x-`` keys
(a place for anchors), expands ``${VAR}`` and validates the schema; it opens no other file (the files the
config names are checked by ``vstmon.service.preflight``). ``load_yaml_model(Model, path)`` does the same for any ``LocatedModel`` or
``StrictModel`` tree (``serve.yaml``, ``train.yaml``). Every error is ``SOURCE: key.path: message (line N)``,
one line per key; an unknown key that is close to a known one at that level says ``did you mean `hop_s`?``.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import types
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from vstmon.config.base import KeyLocations, LocatedModel
from vstmon.config.env import EnvError, expand_env
from vstmon.config.reader import read_yaml
from vstmon.config.root import Config
from vstmon.errors import ConfigError

__all__ = ["EXTENSION_PREFIX", "load_config", "load_yaml_model", "parse_config", "validate_model"]

EXTENSION_PREFIX = "x-"  # top-level keys with this prefix are ignored: a place for anchors

_M = TypeVar("_M", bound=BaseModel)
_NUMBER_LIKE_RE = re.compile(r"^[-+]?[0-9][0-9._eE^*+-]{0,23}$")


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside ``X``, ``X | None``, ``list[X]``, ``Annotated[X, ...]``; else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType, list, Annotated):
        for arg in get_args(annotation):
            found = _inner_model(arg)
            if found is not None:
                return found
    return None


def _key_path(
    loc: tuple[int | str, ...], unknown_key: bool, root_model: type[BaseModel]
) -> tuple[str, type[BaseModel] | None]:
    """``('streams', 1, 'reconnect', 'jitter')`` -> ``streams[1].reconnect.jitter``, without pydantic's
    union branch tags (``'str'``, ``'list[str]'``, ``'function-after[...]'``); and the model that holds the
    last key (where an unknown key was met)."""
    out = ""
    model: type[BaseModel] | None = root_model
    holder: type[BaseModel] | None = root_model
    for position, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif model is not None and part in model.model_fields:
            out += f".{part}" if out else part
            holder, model = model, _inner_model(model.model_fields[part].annotation)
        elif unknown_key and position == len(loc) - 1:
            out += f".{part}" if out else str(part)
            holder = model
    return out or "<root>", holder


def _unknown_key_message(key: str, holder: type[BaseModel] | None) -> str:
    """``unknown key``, with the closest of the schema's own names at that level when one is close."""
    if holder is None:
        return "unknown key"
    close = difflib.get_close_matches(key, list(holder.model_fields), n=1, cutoff=0.6)
    return f"unknown key; did you mean `{close[0]}`?" if close else "unknown key"


def _shown_value(value: Any) -> str:
    """The offending value, for numbers (and strings that spell one) only: other strings may hold secrets."""
    if isinstance(value, str) and _NUMBER_LIKE_RE.match(value):
        return f" (got {value})"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return f" (got {value})"
    text = repr(value)
    return f" (got {text if len(text) <= 24 else text[:20] + '...'})"


def _with_line(message: str, locations: KeyLocations, path: str) -> str:
    line = locations.line_of(path)
    return f"{message} (line {line})" if line is not None else message


def validate_model(
    model: type[_M],
    data: Any,
    source: str,
    locations: KeyLocations | None = None,
    context: dict[str, Any] | None = None,
) -> _M:
    """``model`` validated from a parsed YAML tree, ``${VAR}`` expanded; x- keys at the top are dropped.

    A ``LocatedModel`` remembers ``locations`` (``where(path)``). Raises ConfigError with one line per bad
    key: ``SOURCE: key.path: message (line N)``.
    """
    locations = locations if locations is not None else KeyLocations(source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: <root>: the top level must be a mapping")
    # top-level keys starting with x- are free for anchors shared by several streams (x-camera: &cam {...})
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith(EXTENSION_PREFIX))}
    try:
        expanded = expand_env(data)
    except EnvError as error:
        path = error.path or "<root>"
        raise ConfigError(f"{source}: {path}: {_with_line(str(error), locations, path)}") from None
    try:
        tree = model.model_validate(expanded, context=context)
    except ValidationError as error:
        lines: dict[str, str] = {}  # key path -> first message (pydantic may report union branches twice)
        for item in error.errors(include_url=False):
            unknown = item["type"] == "extra_forbidden"
            path, holder = _key_path(item["loc"], unknown, model)
            if path in lines:
                continue
            if unknown:
                message = _unknown_key_message(str(item["loc"][-1]), holder)
            elif item["type"] == "missing":
                message = "required key is missing"
            else:
                message = item["msg"].removeprefix("Value error, ") + _shown_value(item.get("input"))
            lines[path] = f"{source}: {path}: {_with_line(message, locations, path)}"
        raise ConfigError("\n".join(lines.values())) from None
    if isinstance(tree, LocatedModel):
        tree.locate(locations)
    return tree


def _validate_config(data: Any, source: str, require_streams: bool, locations: KeyLocations | None) -> Config:
    config = validate_model(Config, data, source, locations, context={"require_streams": require_streams})
    return config


def parse_config(data: Any, source: str = "<config>", *, require_streams: bool = True) -> Config:
    """Validate an already-parsed YAML/JSON tree (``None`` = all defaults).

    ``require_streams=False`` accepts a config without streams (``vstmon classify`` uses only the model
    and clip sections). Raises ConfigError: one line per bad key, ``SOURCE: key.path: message``.
    """
    return _validate_config(data, source, require_streams, None)


def load_yaml_model(model: type[_M], path: str | os.PathLike[str]) -> _M:
    """Read a YAML file (with ``load_config``'s limits) into ``model``; ConfigError names the key path."""
    data, locations = read_yaml(os.fspath(path))
    return validate_model(model, data, locations.source, locations)


def load_config(path: str | os.PathLike[str], *, require_streams: bool = True) -> Config:
    """Read and validate a YAML config file; relative checkpoint/label paths stay relative to the CWD.

    Refuses files over MAX_FILE_BYTES, bytes that are not UTF-8, duplicate keys, recursive aliases and
    alias expansions over MAX_EXPANDED_NODES, each as a ConfigError naming the key path. The files the config
    names (CURVE keys, checkpoint, labels, detector, stream files) are checked by ``vstmon check`` and at
    start (``vstmon.service.preflight``), not here.
    """
    data, locations = read_yaml(os.fspath(path))
    return _validate_config(data, locations.source, require_streams, locations)
