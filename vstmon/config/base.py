"""What every settings tree shares: the strict base model, validators used by several sections, and a file's
key locations.

``StrictModel`` rejects unknown keys, is frozen, validates defaults and refuses NaN and infinities. A
``LocatedModel`` is the root of one file (``config.yaml``, ``serve.yaml``): the loader gives it
the file's name and the line of every key path, so an error found after loading (a port in use, a checkpoint
that does not fit) can still say ``config.yaml: publish.endpoints[0]: ... (line 12)``, as a schema error does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from vstmon.errors import ConfigError, VstmonError

__all__ = [
    "KeyLocations",
    "LocatedModel",
    "StrictModel",
    "check_crop_size",
    "check_endpoint",
    "fail_at",
    "is_tcp_host",
]

_TCP_HOST_RE = re.compile(r"^(\*|\[[0-9A-Fa-f:.%\w-]+\]|[\w.%-]+)$")
_IPC_PATH_MAX_BYTES = 107  # sun_path holds 108 bytes including the terminating NUL


class StrictModel(BaseModel):
    """The base of every settings tree (config.yaml here, serve.yaml in vstmon.inference, train.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


@dataclass(frozen=True)
class KeyLocations:
    """Where a settings tree was read from: the source's name and ``key path -> line`` (1-based).

    Not part of a config's value: two configs with equal settings are equal wherever they were written.
    """

    source: str = field(default="<config>", compare=False)
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def line_of(self, path: str) -> int | None:
        return self.lines.get(path)


class LocatedModel(StrictModel):
    """The root of one settings file: remembers where each key was written (kept by ``model_copy``)."""

    _locations: KeyLocations = PrivateAttr(default_factory=KeyLocations)

    def locate(self, locations: KeyLocations) -> None:
        """Record where this tree was read from (the loader calls it once, right after validation)."""
        self._locations = locations

    @property
    def source(self) -> str:
        """The file this tree was read from (``<config>`` for a tree built in code)."""
        return self._locations.source

    def where(self, path: str) -> str:
        """``config.yaml: publish.endpoints[0] (line 12)``: a key path, its file and its line when known."""
        line = self._locations.line_of(path)
        return f"{self.source}: {path}" + (f" (line {line})" if line is not None else "")

    def problem(self, path: str, message: str) -> str:
        """One error line in the README's form: ``config.yaml: publish.endpoints[0]: MESSAGE (line 12)``."""
        line = self._locations.line_of(path)
        return f"{self.source}: {path}: {message}" + (f" (line {line})" if line is not None else "")

    def config_error(self, path: str, message: str, kind: type[VstmonError] = ConfigError) -> VstmonError:
        """``kind`` (a ConfigError unless told) with ``problem(path, message)`` as its message."""
        return kind(self.problem(path, message))


def check_crop_size(size_px: int) -> int:
    """A crop size the model can take: a multiple of 32 (4-pixel patches, then three 2x merges)."""
    if size_px % 32:
        raise ValueError(f"size_px must be a multiple of 32 (patch 4 x 3 merges), got {size_px}")
    return size_px


def fail_at(loc: tuple[int | str, ...], message: str, value: Any) -> ValidationError:
    """A ValidationError at ``loc`` below the field being validated (raise it from a validator)."""
    return ValidationError.from_exception_data(
        "Config",
        [
            InitErrorDetails(
                type=PydanticCustomError("vstmon", "{message}", {"message": message}), loc=loc, input=value
            )
        ],
    )


def is_tcp_host(host: str) -> bool:
    """``*``, an address, ``[IPv6]``, or a host or interface name (the HOST of ``tcp://HOST:PORT``)."""
    return _TCP_HOST_RE.match(host) is not None


def check_endpoint(endpoint: str) -> str | None:
    """What is wrong with a ZeroMQ bind endpoint, or None when it is well-formed.

    ``tcp://HOST:PORT`` (HOST ``*``, an address, ``[IPv6]``, a host or interface name; PORT 1-65535 or ``*``
    for any free port), ``ipc://PATH`` (at most 107 bytes) or ``inproc://NAME``.
    """
    if not isinstance(endpoint, str):
        return "must be a string"
    scheme, sep, rest = endpoint.partition("://")
    if not sep or scheme not in ("tcp", "ipc", "inproc"):
        return f"endpoint {endpoint!r} must start with tcp://, ipc:// or inproc://"
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host:
            return (
                f"endpoint {endpoint!r} must be tcp://HOST:PORT (e.g. tcp://*:5556 or tcp://127.0.0.1:5556)"
            )
        if not is_tcp_host(host):
            return f"endpoint {endpoint!r}: {host!r} is not a host name, address, [IPv6 address] or *"
        if port == "*":
            return None
        if not port.isdecimal():
            return f"endpoint {endpoint!r}: port {port!r} must be a number 1-65535 or *"
        if not 1 <= int(port) <= 65535:
            return f"endpoint {endpoint!r}: port {int(port)} is out of range (1-65535)"
        return None
    if not rest:
        return f"endpoint {endpoint!r} names no {'path' if scheme == 'ipc' else 'name'}"
    if scheme == "ipc" and len(rest.encode()) > _IPC_PATH_MAX_BYTES:
        return f"ipc path is {len(rest.encode())} bytes; Unix sockets allow at most {_IPC_PATH_MAX_BYTES}"
    return None
