"""Environment expansion: ``${VAR}`` and ``${VAR:-default}`` in any string of a parsed settings tree.

Secrets such as camera passwords stay out of the file: ``url: rtsp://admin:${CAM_PASSWORD}@10.0.0.5/stream``.
Only strings are expanded (keys and numbers are not), once, with no nesting: a value that itself contains
``${...}`` is taken as it is. A variable that is not set and has no default is an error naming the key path.
"""

from __future__ import annotations

import os
import re
from typing import Any

__all__ = ["EnvError", "expand_env"]

_ENV_RE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


class EnvError(Exception):
    """A ``${VAR}`` whose variable is not set (and that gives no default); ``path`` is its key path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


def expand_env(node: Any, path: str = "") -> Any:
    """A copy of the tree ``node`` (dicts, lists, scalars) with every string's ``${VAR}`` replaced."""
    if isinstance(node, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group("name"), match.group("default")
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise EnvError(path, f"environment variable {name} is not set")

        return _ENV_RE.sub(substitute, node)
    if isinstance(node, dict):
        return {k: expand_env(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_env(v, f"{path}[{i}]") for i, v in enumerate(node)]
    return node
