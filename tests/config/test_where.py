"""Where a key was written: errors found after loading cite the file and line as schema errors do, and a typo in a
key name gets the closest name the schema has at that level."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vstmon.config import Config, load_config, parse_config
from vstmon.errors import ConfigError

CONFIG = """\
x-camera: &camera
  transport: udp
streams:
  - name: a
    url: testsrc://
  - <<: *camera
    name: b
    url: testsrc://
publish:
  endpoints:
    - tcp://127.0.0.1:5556
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, text))
    return str(caught.value)


def test_where_names_the_file_the_key_and_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, CONFIG)
    config = load_config(path)
    assert config.where("publish.endpoints[0]") == f"{path}: publish.endpoints[0] (line 11)"
    assert config.where("streams[1]") == f"{path}: streams[1] (line 6)"
    assert config.where("streams[1].name") == f"{path}: streams[1].name (line 7)"
    # a key taken from a merged anchor is where the anchor writes it
    assert config.where("streams[1].transport") == f"{path}: streams[1].transport (line 2)"
    assert config.where("metrics.port") == f"{path}: metrics.port"  # a default: written nowhere
    assert config.problem("publish.endpoints[0]", "cannot bind") == (
        f"{path}: publish.endpoints[0]: cannot bind (line 11)"
    )


def test_where_survives_model_copy_and_does_not_change_equality(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, CONFIG))
    copy = config.model_copy(update={"smoothing": config.smoothing.model_copy(update={"window_clips": 9})})
    assert copy.where("publish.endpoints[0]").endswith("(line 11)")
    assert copy.source == config.source
    from_dict = parse_config(
        {
            "streams": [
                {"name": "a", "url": "testsrc://"},
                {"name": "b", "url": "testsrc://", "transport": "udp"},
            ],
            "publish": {"endpoints": ["tcp://127.0.0.1:5556"]},
        }
    )
    assert from_dict == config  # where a config was written is not part of its value
    assert from_dict.where("publish.endpoints[0]") == "<config>: publish.endpoints[0]"
    assert Config().where("log.level") == "<config>: log.level"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            "streams: [{name: a, url: testsrc://}]\nclip:\n  hop: 2\n",
            "clip.hop: unknown key; did you mean `hop_s`? (line 3)",
        ),
        ("stream: [{name: a, url: testsrc://}]\n", "stream: unknown key; did you mean `streams`? (line 1)"),
        (
            "streams:\n  - name: a\n    urll: testsrc://\n",
            "streams[0].urll: unknown key; did you mean `url`? (line 3)",
        ),
        (
            "streams: [{name: a, url: testsrc://}]\npublish:\n  curve: {secret_keys: k}\n",
            "publish.curve.secret_keys: unknown key; did you mean `secret_key`? (line 3)",
        ),
        ("streams: [{name: a, url: testsrc://}]\nclip: {zebra: 1}\n", "clip.zebra: unknown key (line 2)"),
    ],
)
def test_an_unknown_key_suggests_the_closest_name_at_its_level(tmp_path: Path, text: str, line: str) -> None:
    lines = _error(tmp_path, text).splitlines()  # (a misspelt required key is also reported missing)
    assert [x for x in lines if "unknown key" in x] == [f"{tmp_path / 'config.yaml'}: {line}"], lines
