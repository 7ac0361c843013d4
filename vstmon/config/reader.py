"""The hardened YAML reader: a settings file's text to plain data, and the line of every key path.

The file is read defensively: at most ``MAX_FILE_BYTES``, UTF-8 only (a bad byte is named with its key path and
line), no duplicate keys, and the YAML node graph is measured before anything is built from it, so a "billion
laughs" file (aliases of aliases) or a recursive alias is refused at once instead of exhausting memory. Anchors,
aliases and ``<<`` merge keys stay allowed within ``MAX_EXPANDED_NODES``. Every refusal is a ``ConfigError``
naming the file, the key path and the line.

``read_yaml(path)`` returns the data and the file's ``KeyLocations`` (key path -> line), which the loader hands
to the validated tree: schema errors and errors found later (a port in use) both cite the line.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import yaml

from vstmon.config.base import KeyLocations
from vstmon.errors import ConfigError

__all__ = [
    "MAX_DEPTH",
    "MAX_EXPANDED_CHARS",
    "MAX_EXPANDED_NODES",
    "MAX_FILE_BYTES",
    "key_lines",
    "read_yaml",
]

MAX_FILE_BYTES = 1 << 20  # a config file larger than 1 MiB is refused unread
MAX_EXPANDED_NODES = 100_000  # YAML nodes after every alias is expanded (1,000 streams use about 40,000)
MAX_EXPANDED_CHARS = 8 << 20  # characters of scalar text after every alias is expanded
MAX_DEPTH = 32  # nesting levels of mappings and sequences (a valid config uses 4)

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps the anchors' names (for messages) after composing the document.

    The pure-Python loader is used on purpose: its composer fails with RecursionError on absurd nesting,
    where the C one can exhaust the C stack.
    """

    anchor_names: dict[int, str]

    def compose_document(self) -> yaml.Node:
        self.get_event()  # DOCUMENT-START
        node = self.compose_node(None, None)  # type: ignore[arg-type]
        self.get_event()  # DOCUMENT-END
        self.anchor_names = {id(n): name for name, n in self.anchors.items()}
        self.anchors = {}
        return node


def _mark(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}"


def _key_text(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else "?"


class _GraphCheck:
    """One memoised walk of the composed node graph, before anything is constructed from it.

    Refuses recursive aliases, nesting deeper than MAX_DEPTH, duplicate mapping keys, and a document whose
    alias expansion exceeds MAX_EXPANDED_NODES nodes or MAX_EXPANDED_CHARS characters. A node shared through
    aliases is measured once (memo by identity), so the walk costs the size of the file, not of its expansion.
    """

    def __init__(self, loader: _Loader, source: str) -> None:
        self._loader = loader
        self._source = source
        self._size: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, expanded chars)
        self._open: set[int] = set()  # nodes on the current walk path (a cycle comes back to one)

    def _error(self, path: str, message: str) -> ConfigError:
        return ConfigError(f"{self._source}: {path or '<root>'}: {message}")

    def measure(self, node: yaml.Node, path: str = "", depth: int = 0) -> tuple[int, int]:
        key = id(node)
        if key in self._size:
            return self._size[key]
        if key in self._open:
            name = self._loader.anchor_names.get(key, "?")
            raise self._error(path, f"alias *{name} refers to a node that contains it (a recursive alias)")
        if depth > MAX_DEPTH:
            raise self._error(path, f"nested more than {MAX_DEPTH} levels deep ({_mark(node)})")
        self._open.add(key)
        nodes, chars = 1, 0
        if isinstance(node, yaml.ScalarNode):
            chars = len(node.value)
            if node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:timestamp"):
                try:  # constructing these can fail (4300-digit int limit, month 13); cached for later
                    self._loader.construct_object(node)
                except (ValueError, OverflowError) as error:
                    raise self._error(path, f"{error} ({_mark(node)})") from None
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                n, c = self.measure(item, f"{path}[{index}]", depth + 1)
                nodes, chars = nodes + n, chars + c
        elif isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], yaml.Node] = {}
            for key_node, value_node in node.value:
                name = _key_text(key_node)
                child = f"{path}.{name}" if path else name
                ident = (key_node.tag, name)
                if isinstance(key_node, yaml.ScalarNode):
                    if ident in seen:
                        raise self._error(
                            child,
                            f"duplicate key ({_mark(key_node)}; first at {_mark(seen[ident])}): "
                            "remove one of them",
                        )
                    seen[ident] = key_node
                if key_node.tag == _MERGE_TAG:
                    child = path  # merged keys land in this mapping
                for part, part_path in ((key_node, child), (value_node, child)):
                    n, c = self.measure(part, part_path, depth + 1)
                    nodes, chars = nodes + n, chars + c
        self._open.discard(key)
        if nodes > MAX_EXPANDED_NODES or chars > MAX_EXPANDED_CHARS:
            raise self._error(
                path,
                f"aliases expand this to more than {MAX_EXPANDED_NODES:,} YAML nodes or "
                f"{MAX_EXPANDED_CHARS >> 20} MiB of text ({_mark(node)}); refused (a 'billion laughs' file?)",
            )
        self._size[key] = (nodes, chars)
        return nodes, chars


def key_lines(root: yaml.Node | None) -> dict[str, int]:
    """Every key path of the document (``streams[1].url``, ``streams[1]``) -> the 1-based line that names it.

    A key's line is the line of the key; a list item's is the line where the item starts. Merge keys are
    followed as YAML builds the mapping (explicit keys win, then the merged mappings in order), so a key a
    stream takes from ``<<: *camera`` points at the anchor where it is written. Run after ``_GraphCheck``:
    the walk is bounded by the document's expanded size, and there are no recursive aliases.
    """
    lines: dict[str, int] = {}
    if root is not None:
        _collect_lines(root, "", lines, 0)
    return lines


def _collect_lines(node: yaml.Node, path: str, lines: dict[str, int], depth: int) -> None:
    if depth > MAX_DEPTH:
        return
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = f"{path}[{index}]"
            lines.setdefault(child, item.start_mark.line + 1)
            _collect_lines(item, child, lines, depth + 1)
    elif isinstance(node, yaml.MappingNode):
        for key_node, value_node in _effective_pairs(node, depth):
            child = f"{path}.{key_node.value}" if path else str(key_node.value)
            lines.setdefault(child, key_node.start_mark.line + 1)
            _collect_lines(value_node, child, lines, depth + 1)


def _effective_pairs(node: yaml.MappingNode, depth: int) -> list[tuple[yaml.Node, yaml.Node]]:
    """The (key, value) pairs a mapping ends up with: its own scalar keys, then merged ones not already set."""
    own: list[tuple[yaml.Node, yaml.Node]] = []
    merged: list[yaml.Node] = []
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            merged.extend(value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node])
        elif isinstance(key_node, yaml.ScalarNode):
            own.append((key_node, value_node))
    names = {key.value for key, _ in own}
    for source in merged:
        if isinstance(source, yaml.MappingNode) and depth < MAX_DEPTH:
            for key_node, value_node in _effective_pairs(source, depth + 1):
                if key_node.value not in names:
                    names.add(key_node.value)
                    own.append((key_node, value_node))
    return own


def _innermost_path(node: yaml.Node, index: int, path: str = "", seen: set[int] | None = None) -> str | None:
    """The key path of the innermost value whose text spans character ``index`` of the document.

    Each node is looked at once (``seen``), so shared and recursive aliases cost nothing extra.
    """
    seen = set() if seen is None else seen
    if id(node) in seen:
        return None
    seen.add(id(node))
    if not node.start_mark.index <= index < max(node.end_mark.index, node.start_mark.index + 1):
        return None
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _innermost_path(item, index, f"{path}[{i}]", seen)
            if found is not None:
                return found
    elif isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = f"{path}.{_key_text(key_node)}" if path else _key_text(key_node)
            for part in (key_node, value_node):
                found = _innermost_path(part, index, child, seen)
                if found is not None:
                    return found
    return path


def _line_col(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: the config file does not exist") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file: {error.strerror or error}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: the file is larger than {MAX_FILE_BYTES >> 20} MiB; refused unread")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        text = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
        index = len(data[: error.start].decode("utf-8").removeprefix("\ufeff"))
        line, column = _line_col(text, index)
        where = None
        with contextlib.suppress(yaml.YAMLError, RecursionError):
            where = _innermost_path(yaml.compose(text, Loader=_Loader), index)
        raise ConfigError(
            f"{path}: {where or '<root>'}: byte 0x{data[error.start]:02x} at line {line}, column {column} "
            "is not UTF-8; save the file as UTF-8"
        ) from None


def _yaml_problem(error: yaml.YAMLError, text: str) -> str:
    if isinstance(error, yaml.reader.ReaderError):
        line, column = _line_col(text, error.position)
        character = chr(error.character) if isinstance(error.character, int) else error.character
        return f"not valid YAML at line {line}, column {column}: character {character!r} is not allowed"
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"not valid YAML{where}: {getattr(error, 'problem', None) or error}"


def _load_yaml(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """Parse, check the node graph, then construct plain data; returns (data, root node)."""
    try:
        loader = _Loader(text)  # the reader refuses control characters here
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: {_yaml_problem(error, text)}") from None
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as error:
            raise ConfigError(f"{source}: {_yaml_problem(error, text)}") from None
        except RecursionError:
            raise ConfigError(f"{source}: nested too deeply (more than {MAX_DEPTH} levels)") from None
        if root is None:
            return None, None
        _GraphCheck(loader, source).measure(root)
        try:
            return loader.construct_document(root), root
        except yaml.YAMLError as error:
            raise ConfigError(f"{source}: {_yaml_problem(error, text)}") from None
        except (ValueError, TypeError, OverflowError) as error:
            raise ConfigError(f"{source}: a value cannot be read: {error}") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> tuple[Any, KeyLocations]:
    """Read a settings file within the limits above: its plain data (None when empty) and where each key is."""
    path = Path(path)
    data, root = _load_yaml(_read_text(path), str(path))
    return data, KeyLocations(str(path), key_lines(root))
