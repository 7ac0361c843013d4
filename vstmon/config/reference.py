"""The commented reference config (the shipped ``config.yaml``), generated from the schema in ``vstmon.config``.

``render()`` walks the pydantic models in field order: every key with its default, its description and its
allowed range as a comment; nested models become nested mappings; a list of models (``streams``) shows the
keys of one item, commented, then the shipped example items. A few values are shipped examples rather than
defaults (the checkpoint path, the ``demo`` stream, the commented real cameras): they are listed below and
marked as such in the file. Adding a field or a section to the schema needs nothing here; regenerate with

    python -m vstmon.config.reference > config.yaml

(``tests/config/test_config.py`` checks that the shipped file equals ``render()``).
"""

from __future__ import annotations

import sys
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from vstmon.config import EXTENSION_PREFIX, Config

__all__ = ["ITEM_KEYS_MARKER", "render"]

LINE_WIDTH = 118
COMMENT_COLUMN = 28  # comments start here when the key and value are shorter
ITEM_KEYS_MARKER = "Every key of one"  # heads the commented item template: "# Every key of one stream, ..."

_HEADER = f"""\
# vstmon configuration: every key, with its default (values marked "shipped example" are not defaults).
# Generated from the schema (vstmon/config/): python -m vstmon.config.reference > config.yaml
# Every key is optional except streams (at least one stream). Unknown keys are rejected; numbers show their
# allowed range. ${{VAR}} (or ${{VAR:-default}}) is replaced from the environment: keep passwords there.
# Top-level keys starting with {EXTENSION_PREFIX} are ignored: a place for anchors that several streams share
# (x-camera: &camera {{transport: udp}}, then in a stream: <<: *camera).
# Check a file without starting the daemon:  vstmon check --config config.yaml
"""


@dataclass(frozen=True)
class _Example:
    """A shipped value that is not the default, with comment lines shown above it."""

    value: Any
    above: tuple[str, ...] = ()


@dataclass(frozen=True)
class _ListExample:
    """Shipped items of a list of models: live items, then commented examples (YAML text)."""

    items: list[dict[str, Any]]
    above: tuple[str, ...] = ()
    commented: str = ""
    template_name: str = "item"


_EXAMPLES: dict[str, _Example] = {
    "model.checkpoint": _Example(
        "checkpoints/swin_tiny_patch244_window877_kinetics400_1k.pth",
        (
            "Shipped example: the official Kinetics-400 Swin-T weights (default: null); fetch them with:",
            "  vstmon weights fetch swin_tiny_patch244_window877_kinetics400_1k",
        ),
    ),
    "subjects.detector": _Example(
        "checkpoints/ssdlite_mobilenet_v2_pedestrian.pb",
        (
            "Shipped example: person tracking on (default: null = off); fetch the detector with:",
            "  vstmon weights fetch ssdlite_mobilenet_v2_pedestrian",
        ),
    ),
}

_LIST_EXAMPLES: dict[str, _ListExample] = {
    "streams": _ListExample(
        items=[{"name": "demo", "url": "testsrc://?width=640&height=480&fps=25"}],
        above=(
            "Shipped example: a synthetic moving pattern, so the daemon runs on a machine without cameras.",
        ),
        commented="""\
Shipped examples of real sources (uncomment and edit):
- name: cam1
  url: "rtsp://viewer:${CAM1_PASSWORD}@10.0.0.5:554/stream1"
  transport: tcp
  reconnect: {initial_delay_s: 0.5, max_delay_s: 30}
- name: lobby-file
  url: /srv/video/lobby.mp4
  loop: true
  realtime: true
- name: desk
  url: /dev/video0
  width: 1280
  height: 720
  fps: 30
""",
        template_name="stream",
    ),
}


# ---------------------------------------------------------------------------------------------------------
# schema introspection
# ---------------------------------------------------------------------------------------------------------
def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _list_item_model(annotation: Any) -> type[BaseModel] | None:
    if get_origin(annotation) is list:
        args = get_args(annotation)
        return _model_of(args[0]) if args else None
    if get_origin(annotation) in (Union, types.UnionType):
        for arg in get_args(annotation):
            found = _list_item_model(arg)
            if found is not None:
                return found
    return None


def _default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return info.default


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bounds(info: FieldInfo) -> str:
    """``in [0.1, 600]``, ``in (0, 1]``, ``>= 1``, or ""."""
    low = high = None
    low_open = high_open = False
    for item in info.metadata:
        if isinstance(item, annotated_types.Ge):
            low = item.ge
        elif isinstance(item, annotated_types.Gt):
            low, low_open = item.gt, True
        elif isinstance(item, annotated_types.Le):
            high = item.le
        elif isinstance(item, annotated_types.Lt):
            high, high_open = item.lt, True
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_number(low)}, {_number(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_number(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_number(high)}"
    return ""


def _description(model: type[BaseModel], name: str, info: FieldInfo) -> str:
    if not info.description:
        raise ValueError(f"{model.__name__}.{name} has no description (Field(description=...)): add one")
    bounds = _bounds(info)
    return f"{info.description}; {bounds}" if bounds else info.description


def _yaml_value(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...").strip()


# ---------------------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------------------
def _keyed(indent: str, key_text: str, comment: str) -> list[str]:
    """``key: value   # comment``, or the comment wrapped above the key when the line would be too long."""
    if not comment:
        return [f"{indent}{key_text}"]
    line = f"{indent}{key_text}".ljust(COMMENT_COLUMN - 1)
    if len(line) + 3 + len(comment) <= LINE_WIDTH:
        return [f"{line} # {comment}"]
    wrapped = textwrap.wrap(
        comment, LINE_WIDTH - len(indent) - 4, break_on_hyphens=False
    )  # 2 spare: templates
    return [f"{indent}# {part}" for part in wrapped] + [f"{indent}{key_text}"]


def _comment_lines(indent: str, lines: tuple[str, ...] | list[str]) -> list[str]:
    return [f"{indent}# {line}".rstrip() for line in lines]


def _render_model(model: type[BaseModel], path: str, indent: str, template: bool = False) -> list[str]:
    return _render_fields(model, list(model.model_fields), path, indent, template)


def _render_fields(
    model: type[BaseModel], names: list[str], path: str, indent: str, template: bool = False
) -> list[str]:
    out: list[str] = []
    for name in names:
        info = model.model_fields[name]
        key_path = f"{path}.{name}" if path else name
        comment = _description(model, name, info)
        nested = _model_of(info.annotation)
        item_model = _list_item_model(info.annotation)
        if nested is not None:
            out += _keyed(indent, f"{name}:", comment)
            out += _render_model(nested, key_path, indent + "  ", template)
        elif item_model is not None and not template:
            out += _render_list(name, key_path, item_model, comment, indent)
        elif info.is_required():
            out += _keyed(indent, f"{name}: <required>", comment)
        elif key_path in _EXAMPLES and not template:
            example = _EXAMPLES[key_path]
            out += _comment_lines(indent, example.above)
            out += _keyed(indent, f"{name}: {_yaml_value(example.value)}", comment)
        else:
            default = _default(info)
            if default is PydanticUndefined:  # pragma: no cover - is_required() covers it
                default = None
            out += _keyed(indent, f"{name}: {_yaml_value(default)}", comment)
    return out


def _render_list(
    name: str, key_path: str, item_model: type[BaseModel], comment: str, indent: str
) -> list[str]:
    example = _LIST_EXAMPLES.get(key_path)
    item_name = example.template_name if example else "item"
    inner = indent + "  "
    body = _render_model(item_model, f"{key_path}[]", inner + "  ", template=True)
    template = [f"{inner}- {body[0].removeprefix(inner + '  ')}", *body[1:]] if body else []
    out = _keyed(indent, f"{name}:" if example and example.items else f"{name}: []", comment)
    out.append(f"{inner}# {ITEM_KEYS_MARKER} {item_name}, with its default:")
    out += [f"{inner}# {line.removeprefix(inner)}" for line in template]
    if example is None:
        return out
    out += _comment_lines(inner, example.above)
    for item in example.items:
        lines = [f"{key}: {_yaml_value(value)}" for key, value in item.items()]
        out += [f"{inner}- {lines[0]}", *(f"{inner}  {line}" for line in lines[1:])]
    if example.commented:
        out += _comment_lines(inner, example.commented.splitlines())
    return out


def render() -> str:
    """The whole commented reference config, as shipped in ``config.yaml``."""
    out = [_HEADER.rstrip("\n")]
    for name in Config.model_fields:  # one section each, a blank line between
        out.append("")
        out += _render_fields(Config, [name], "", "")
    return "\n".join(out) + "\n"


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
