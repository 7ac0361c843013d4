"""The config tree: shipped file valid, unknown keys rejected with their YAML path, env expansion."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from vstmon.config import load_config, parse_config
from vstmon.errors import ConfigError


def test_shipped_config_is_valid() -> None:
    config = load_config(REPO_ROOT / "config.yaml")
    assert config.clip.frames == 32 and config.clip.size_px == 224
    assert config.streams[0].name == "demo"
    assert config.publish.control == "tcp://127.0.0.1:5557"


def test_empty_file_gives_all_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("")
    config = load_config(path)
    assert config.model.precision == "auto"
    assert config.smoothing.window_clips == 5
    assert config.streams == []


def test_unknown_key_names_its_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"streams": [{"name": "a", "url": "x.mp4"}, {"name": "b", "url": "y", "colour": 1}]})
    assert "streams[1].colour: unknown key" in str(info.value)


def test_wrong_type_names_its_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"inference": {"max_batch": "many"}})
    assert "inference.max_batch" in str(info.value)


def test_size_px_must_be_a_multiple_of_32() -> None:
    with pytest.raises(ConfigError, match=r"clip.size_px: size_px must be a multiple of 32"):
        parse_config({"clip": {"size_px": 100}})


def test_duplicate_stream_names_rejected() -> None:
    with pytest.raises(ConfigError, match="duplicate stream name 'cam'"):
        parse_config({"streams": [{"name": "cam", "url": "a"}, {"name": "cam", "url": "b"}]})


def test_stream_name_must_be_topic_safe() -> None:
    with pytest.raises(ConfigError, match=r"streams\[0\].name"):
        parse_config({"streams": [{"name": "front door", "url": "a"}]})


def test_bad_device_rejected() -> None:
    with pytest.raises(ConfigError, match=r"model\.device"):
        parse_config({"model": {"device": "gpu0"}})
    assert parse_config({"model": {"device": ["cuda:0", "cuda:1"]}}).model.device == ["cuda:0", "cuda:1"]


def test_environment_variables_are_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAM_PW", "s3cret")
    config = parse_config({"streams": [{"name": "c", "url": "rtsp://u:${CAM_PW}@127.0.0.1/s"}]})
    assert config.streams[0].url == "rtsp://u:s3cret@127.0.0.1/s"
    assert parse_config({"log": {"level": "${LVL:-debug}"}}).log.level == "debug"


def test_missing_environment_variable_names_key_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_PW", raising=False)
    with pytest.raises(ConfigError, match=r"streams\[0\].url: environment variable NOPE_PW is not set"):
        parse_config({"streams": [{"name": "c", "url": "rtsp://u:${NOPE_PW}@h/s"}]})


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  arch: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_config(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config([1, 2])


def test_integer_webcam_url_accepted() -> None:
    assert parse_config({"streams": [{"name": "w", "url": 0}]}).streams[0].url == "0"
