"""The config tree: shipped file valid and generated from the schema, every key bounded, errors name their
YAML key path (one line per key), and hostile files (billion laughs, recursive aliases, duplicate keys, huge
or non-UTF-8 files) are refused at once."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

import annotated_types
import pytest
import yaml
from pydantic import BaseModel

from tests.helpers.cli import REPO_ROOT
from vstmon.config import (
    MAX_EXPANDED_NODES,
    MAX_FILE_BYTES,
    Config,
    StreamConfig,
    check_endpoint,
    load_config,
    parse_config,
)
from vstmon.config.reference import ITEM_KEYS_MARKER, render
from vstmon.errors import ConfigError

ONE_STREAM = {"streams": [{"name": "cam", "url": "testsrc://"}]}


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(data: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, **kwargs)
    return str(info.value)


def with_stream(**sections: Any) -> dict[str, Any]:
    return {**ONE_STREAM, **sections}


# -- the shipped file ------------------------------------------------------------------------------------------
def test_shipped_config_is_valid() -> None:
    config = load_config(REPO_ROOT / "config.yaml")
    assert config.clip.frames == 32 and config.clip.size_px == 224
    assert config.streams[0].name == "demo"
    assert config.publish.control == "tcp://127.0.0.1:5557"


def test_shipped_config_is_the_generated_reference() -> None:
    # regenerate with: python -m vstmon.config.reference > config.yaml
    assert (REPO_ROOT / "config.yaml").read_text() == render()


def _models(model: type[BaseModel], path: str = "") -> list[tuple[str, type[BaseModel], str]]:
    """(key path, model, field name) for every field of the tree; list items as ``streams[]``."""
    out = []
    for name, info in model.model_fields.items():
        key = f"{path}.{name}" if path else name
        out.append((key, model, name))
        annotation = info.annotation
        args = getattr(annotation, "__args__", ())
        inner = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        for arg in args:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                inner = arg
        if inner is not None:
            out += _models(inner, f"{key}[]" if getattr(annotation, "__origin__", None) is list else key)
    return out


def test_every_field_has_a_description() -> None:
    missing = [key for key, model, name in _models(Config) if not model.model_fields[name].description]
    assert not missing, f"fields without Field(description=...): {missing}"


def test_every_numeric_field_has_lower_and_upper_bounds() -> None:
    unbounded = []
    for key, model, name in _models(Config):
        info = model.model_fields[name]
        if not re.search(r"\b(int|float)\b", str(info.annotation)):
            continue
        # bounds on the field, or on the numeric member of a union (``Annotated[int, Field(ge=0)] | "auto"``)
        members = [a for a in typing.get_args(info.annotation) if typing.get_origin(a) is typing.Annotated]
        kinds = {type(item) for item in info.metadata} | {
            type(item)
            for member in members
            for meta in member.__metadata__
            for item in getattr(meta, "metadata", [meta])
        }
        has_low = kinds & {annotated_types.Ge, annotated_types.Gt}
        has_high = kinds & {annotated_types.Le, annotated_types.Lt}
        if not (has_low and has_high):
            unbounded.append(key)
    assert not unbounded, f"numeric fields without both bounds: {unbounded}"


def test_reference_lists_every_key_with_its_default() -> None:
    text = render()
    data = yaml.safe_load(text)
    expected = Config().model_dump(mode="json")
    expected.pop("streams")
    data.pop("streams")
    data["model"]["checkpoint"] = None  # the shipped examples outside streams
    data["subjects"]["detector"] = None
    assert data == expected
    # the commented template of one stream: every key, its default, and nothing else
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if f"# {ITEM_KEYS_MARKER} stream" in line)
    template = []
    for line in lines[start + 1 :]:
        if not line.startswith("  # ") or "Shipped example" in line:
            break
        template.append(line.removeprefix("  # "))
    (item,) = yaml.safe_load("\n".join(template))
    stream_defaults = StreamConfig(name="x", url="y").model_dump(mode="json")
    assert set(item) == set(stream_defaults)
    assert {k: v for k, v in item.items() if k not in ("name", "url")} == {
        k: v for k, v in stream_defaults.items() if k not in ("name", "url")
    }


def test_reference_shows_each_fields_range() -> None:
    lines = render().splitlines()

    def comment_of(key_line: str) -> str:  # the comment on the key's line, or wrapped above it
        i = (
            lines.index(key_line)
            if key_line in lines
            else next(i for i, line in enumerate(lines) if line.startswith(key_line + " "))
        )
        above = []
        for line in reversed(lines[:i]):
            if not line.strip().startswith("# ") or not line.startswith(
                " " * (len(key_line) - len(key_line.lstrip()))
            ):
                break
            above.insert(0, line.strip().removeprefix("# "))
        return " ".join([*above, lines[i].partition("# ")[2]])

    assert comment_of("  sndhwm: 1000").endswith("; in [1, 1000000]")
    assert comment_of("  ema_alpha: 0.5").endswith("; in (0, 1]")
    assert comment_of("  max_wait_ms: 20.0").endswith("; in [0, 10000]")


def test_new_stream_clock_keys_have_their_defaults() -> None:
    stream = StreamConfig(name="a", url="x")
    assert stream.frozen_timeout_s == 30.0 and stream.max_time_jump_s == 5.0
    assert parse_config(with_stream()).streams[0].frozen_timeout_s == 30.0
    off = parse_config({"streams": [{"name": "a", "url": "x", "frozen_timeout_s": None}]})
    assert off.streams[0].frozen_timeout_s is None
    assert "streams[0].max_time_jump_s" in error_of(
        {"streams": [{"name": "a", "url": "x", "max_time_jump_s": 0}]}
    )


# -- basics --------------------------------------------------------------------------------------------------
def test_empty_file_gives_all_defaults_when_streams_are_not_required(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    config = load_config(path, require_streams=False)
    assert config.model.precision == "auto"
    assert config.smoothing.window_clips == 5
    assert config.streams == []


@pytest.mark.parametrize("text", ["", "streams: []\n", "model: {arch: auto}\n"])
def test_a_config_without_streams_is_refused_by_default(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"config.yaml: streams: at least one stream is required"):
        load_config(write(tmp_path, text))


def test_classify_style_parsing_accepts_no_streams() -> None:
    assert parse_config({"model": {"arch": "swin_t"}}, require_streams=False).streams == []
    assert "streams: at least one stream" in error_of({"model": {"arch": "swin_t"}})


def test_unknown_key_names_its_path() -> None:
    message = error_of({"streams": [{"name": "a", "url": "x.mp4"}, {"name": "b", "url": "y", "colour": 1}]})
    assert "streams[1].colour: unknown key" in message


def test_wrong_type_names_its_path() -> None:
    assert "inference.max_batch" in error_of(with_stream(inference={"max_batch": "many"}))


def test_size_px_must_be_a_multiple_of_32() -> None:
    with pytest.raises(ConfigError, match=r"clip.size_px: size_px must be a multiple of 32"):
        parse_config(with_stream(clip={"size_px": 100}))


def test_duplicate_stream_names_are_reported_at_the_later_name() -> None:
    message = error_of(
        {"streams": [{"name": "cam", "url": "a"}, {"name": "x", "url": "b"}, {"name": "cam", "url": "c"}]}
    )
    assert message == "<config>: streams[2].name: duplicate stream name 'cam' (streams[0] has it too)"


def test_rtsp_streams_must_share_one_transport() -> None:
    streams = [
        {"name": "a", "url": "rtsp://10.0.0.5/1"},
        {"name": "f", "url": "lobby.mp4", "transport": "udp"},  # not RTSP: its transport does not matter
        {"name": "b", "url": "rtsp://10.0.0.6/1", "transport": "udp"},
    ]
    message = error_of({"streams": streams})
    assert message.startswith("<config>: streams[2].transport: 'udp' differs from streams[0].transport 'tcp'")
    streams[2]["transport"] = "tcp"
    assert parse_config({"streams": streams}).streams[2].transport == "tcp"


def test_stream_name_must_be_topic_safe() -> None:
    with pytest.raises(ConfigError, match=r"streams\[0\].name"):
        parse_config({"streams": [{"name": "front door", "url": "a"}]})


def test_bad_device_rejected() -> None:
    assert "model.device: unknown device 'gpu0'" in error_of(with_stream(model={"device": "gpu0"}))
    assert "model.device: unknown device 'gpu'" in error_of(with_stream(model={"device": ["cpu", "gpu"]}))
    assert "model.device: the device list is empty" in error_of(with_stream(model={"device": []}))
    config = parse_config(with_stream(model={"device": ["cuda:0", "cuda:1"]}))
    assert config.model.device == ["cuda:0", "cuda:1"]


def test_environment_variables_are_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAM_PW", "s3cret")
    config = parse_config({"streams": [{"name": "c", "url": "rtsp://u:${CAM_PW}@127.0.0.1/s"}]})
    assert config.streams[0].url == "rtsp://u:s3cret@127.0.0.1/s"
    assert parse_config(with_stream(log={"level": "${LVL:-debug}"})).log.level == "debug"


def test_missing_environment_variable_names_key_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_PW", raising=False)
    with pytest.raises(ConfigError, match=r"streams\[0\].url: environment variable NOPE_PW is not set"):
        parse_config({"streams": [{"name": "c", "url": "rtsp://u:${NOPE_PW}@h/s"}]})


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_config(write(tmp_path, "model:\n  arch: [unclosed\n"))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config([1, 2])


def test_integer_webcam_url_accepted() -> None:
    assert parse_config({"streams": [{"name": "w", "url": 0}]}).streams[0].url == "0"


def test_errors_in_a_file_name_the_file_key_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        streams:
          - name: cam
            url: testsrc://
        publish:
          top_k: 0
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (
        str(info.value)
        == f"{path}: publish.top_k: Input should be greater than or equal to 1 (got 0) (line 5)"
    )


def test_several_errors_give_one_line_per_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        streams:
          - name: cam
            url: testsrc://
            hop_s: 1
        publish:
          top_k: 0
          heartbeat_s: -1
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "streams[0].hop_s",
        "publish.top_k",
        "publish.heartbeat_s",
    ]
    assert all(line.startswith(f"{path}: ") for line in lines)


def test_secrets_in_a_bad_url_are_not_echoed() -> None:
    message = error_of({"streams": [{"name": "c", "url": ["rtsp://u:hunter2@h/s"]}]})
    assert "streams[0].url" in message and "hunter2" not in message


# -- item 7: values that were tracebacks, silent acceptances or runaways ------------------------------------------
@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("publish: {sndhwm: 10^12}", "publish.sndhwm"),
        ("publish: {sndhwm: 1000000000000}", "publish.sndhwm"),
        ("inference: {threads: 2147483648}", "inference.threads"),
        ("streams: [{name: a, url: x, open_timeout_s: 1e300}]", "streams[0].open_timeout_s"),
        ("streams: [{name: a, url: x, open_timeout_s: 1.0e+300}]", "streams[0].open_timeout_s"),
        ("publish: {heartbeat_s: 1e-9}", "publish.heartbeat_s"),
        ("publish: {heartbeat_s: 0.000000001}", "publish.heartbeat_s"),
        ("clip: {hop_s: .nan}", "clip.hop_s"),
        ("inference: {max_wait_ms: .inf}", "inference.max_wait_ms"),
        ("reset: {scene_change: {threshold: .nan}}", "reset.scene_change.threshold"),
        ("streams: [{name: a, url: x, reconnect: {max_delay_s: .inf}}]", "streams[0].reconnect.max_delay_s"),
        ("smoothing: {ema_alpha: -.inf}", "smoothing.ema_alpha"),
        ("publish: {endpoints: ['tcp://*:70000']}", "publish.endpoints[0]"),
        ("publish: {endpoints: ['tcp://*:5556', 'tcp://127.0.0.1:65536']}", "publish.endpoints[1]"),
        ("publish: {control: 'tcp://127.0.0.1:99999'}", "publish.control"),
        ("publish: {endpoints: ['tcp://*:5556', 'tcp://*:5556']}", "publish.endpoints[1]"),
        ("publish: {control: 'tcp://*:5556'}", "publish.control"),
        ("model: {arch: swin_xl}", "model.arch"),
        ("model: {arch: swin_t_k400}", "model.arch"),
        ("model: {num_classes: 0}", "model.num_classes"),
        ("metrics: {port: 70000}", "metrics.port"),
        ("streams: [{name: a, url: x, width: 100000}]", "streams[0].width"),
        ("streams: [{name: a, url: x, buffer_s: 1e9}]", "streams[0].buffer_s"),
        ("streams: [{name: a, url: x, stall_timeout_s: 0}]", "streams[0].stall_timeout_s"),
        ("streams: [{name: a, url: x, reconnect: {max_attempts: 0}}]", "streams[0].reconnect.max_attempts"),
        ("clip: {frames: 100000}", "clip.frames"),
        ("clip: {sample_fps: 1e6}", "clip.sample_fps"),
        ("reset: {idle_s: 1e300}", "reset.idle_s"),
        ("reset: {idle_motion_threshold: 1000}", "reset.idle_motion_threshold"),
        ("smoothing: {window_clips: 1e9}", "smoothing.window_clips"),
        ("streams: []", "streams"),
        ("model: {arch: auto}", "streams"),
    ],
)
def test_bad_values_are_one_line_naming_their_key(tmp_path: Path, yaml_text: str, key: str) -> None:
    text = yaml_text if key.startswith("streams") else yaml_text + "\n" + _STREAMS
    path = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}: {key}: "), lines[0]


_STREAMS = "streams: [{name: cam, url: 'testsrc://'}]"


def test_numbers_are_shown_back_but_strings_are_not() -> None:
    assert "(got 1000000000000)" in error_of(with_stream(publish={"sndhwm": 10**12}))


@pytest.mark.parametrize(
    "arch", ["auto", "swin_t", "swin_s", "swin_b", "swin_l", "swin_b_sthv2", "swin_t_sthv2"]
)
def test_every_preset_arch_is_accepted(arch: str) -> None:
    assert parse_config(with_stream(model={"arch": arch})).model.arch == arch


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp://*:5556",
        "tcp://127.0.0.1:1",
        "tcp://*:65535",
        "tcp://*:*",
        "tcp://[::1]:5556",
        "tcp://localhost:5556",
        "tcp://eth0:5556",
        "ipc:///run/vstmon/labels.sock",
        "ipc://@abstract",
        "inproc://labels",
    ],
)
def test_good_endpoints_are_accepted(endpoint: str) -> None:
    assert check_endpoint(endpoint) is None
    assert parse_config(with_stream(publish={"endpoints": [endpoint]})).publish.endpoints == [endpoint]


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        ("tcp://*:0", "out of range"),
        ("tcp://*:65536", "out of range"),
        ("tcp://*:http", "must be a number"),
        ("tcp://127.0.0.1", "tcp://HOST:PORT"),
        ("tcp://:5556", "tcp://HOST:PORT"),
        ("tcp://a b:5556", "not a host name"),
        ("udp://*:5556", "must start with"),
        ("*:5556", "must start with"),
        ("ipc://", "names no path"),
        ("inproc://", "names no name"),
        ("ipc:///" + "x" * 200, "at most 107"),
    ],
)
def test_bad_endpoints_are_refused_with_the_reason(endpoint: str, problem: str) -> None:
    message = error_of(with_stream(publish={"endpoints": ["tcp://*:5556", endpoint]}))
    assert message.startswith("<config>: publish.endpoints[1]: ") and problem in message


# -- item 8: duplicate keys --------------------------------------------------------------------------------------
def test_duplicate_keys_are_refused_with_line_and_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        model:
          arch: swin_t
          device: cpu
          arch: swin_b
        streams: [{name: cam, url: x}]
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (
        str(info.value) == f"{path}: model.arch: duplicate key (line 4; first at line 2): remove one of them"
    )


def test_duplicate_keys_inside_a_stream_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        streams:
          - name: a
            url: x
          - name: b
            url: y
            url: z
        """,
    )
    with pytest.raises(ConfigError, match=r"streams\[1\]\.url: duplicate key \(line 6; first at line 5\)"):
        load_config(path)


def test_duplicate_top_level_sections_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "streams: [{name: a, url: x}]\npublish: {top_k: 3}\npublish: {top_k: 4}\n")
    with pytest.raises(ConfigError, match=r": publish: duplicate key \(line 3; first at line 2\)"):
        load_config(path)


# -- item 6: hostile YAML ----------------------------------------------------------------------------------------
_LAUGHS = "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n"
    if i
    else "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for i in range(10)
)
_MERGE_BOMB = "m0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9}\n" + "".join(
    f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 9)}]}}\n" for i in range(1, 10)
)

_BOUNDED_LOAD = """
import resource, sys
limit = 768 << 20  # a billion laughs needs tens of GB; a bounded check needs a few tens of MB
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from vstmon.config import load_config
from vstmon.errors import ConfigError
try:
    load_config(sys.argv[1])
except ConfigError as error:
    print(error)
    sys.exit(0)
sys.exit("accepted")
"""


@pytest.mark.parametrize("text", [_LAUGHS, _MERGE_BOMB], ids=["aliases", "merge-keys"])
def test_alias_bombs_are_refused_with_little_memory(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text + _STREAMS + "\n")
    assert path.stat().st_size < 2000
    done = subprocess.run(
        [sys.executable, "-c", _BOUNDED_LOAD, str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard only: the refusal takes milliseconds (figures in the report)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"more than {MAX_EXPANDED_NODES:,} YAML nodes" in done.stdout
    assert re.match(rf"{re.escape(str(path))}: (l|m)\d: ", done.stdout)


def test_alias_bomb_refusal_names_the_first_key_that_expands_too_far(tmp_path: Path) -> None:
    path = write(tmp_path, _LAUGHS)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    # 9**5 = 59,049 strings fit; l5 holds 9**6 = 531,441
    assert str(info.value).startswith(f"{path}: l5: aliases expand this to more than")
    assert "(line 6)" in str(info.value)


def test_recursive_aliases_are_refused(tmp_path: Path) -> None:
    for text, key in (("a: &a [1, *a]\n", "a[1]"), ("a: &a {b: *a}\n", "a.b")):
        path = write(tmp_path, text)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert (
            str(info.value)
            == f"{path}: {key}: alias *a refers to a node that contains it (a recursive alias)"
        )


def test_deep_nesting_is_refused_not_a_crash(tmp_path: Path) -> None:
    for depth in (40, 5000):
        path = write(tmp_path, "a: " + "[" * depth + "]" * depth + "\n")
        with pytest.raises(ConfigError, match="nested"):
            load_config(path)


def test_anchors_aliases_and_merge_keys_still_work(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        x-camera: &camera
          transport: udp
          stall_timeout_s: 7
          reconnect: {max_delay_s: 10}
        streams:
          - <<: *camera
            name: a
            url: rtsp://10.0.0.1/s
          - <<: *camera
            name: b
            url: rtsp://10.0.0.2/s
            stall_timeout_s: 9
        publish:
          endpoints: &pub ["tcp://*:5556"]
        """,
    )
    config = load_config(path)
    assert [s.transport for s in config.streams] == ["udp", "udp"]
    assert [s.stall_timeout_s for s in config.streams] == [7, 9]  # a stream's own key wins over the merge
    assert all(s.reconnect.max_delay_s == 10 for s in config.streams)


def test_many_cameras_sharing_settings_fit_the_bound(tmp_path: Path) -> None:
    cameras = "".join(
        f"  - {{<<: *camera, name: cam{i}, url: 'rtsp://10.0.{i // 256}.{i % 256}/s'}}\n" for i in range(1000)
    )
    path = write(
        tmp_path, "x-camera: &camera {transport: udp, reconnect: {max_delay_s: 10}}\nstreams:\n" + cameras
    )
    assert len(load_config(path).streams) == 1000


def test_files_over_the_size_bound_are_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(_STREAMS + "\n" + "#" * MAX_FILE_BYTES + "\n")
    with pytest.raises(ConfigError, match=r"big.yaml: the file is larger than 1 MiB"):
        load_config(path)
    if Path("/dev/zero").exists():  # an endless file: read no more than the bound
        with pytest.raises(ConfigError, match="larger than 1 MiB"):
            load_config("/dev/zero")


def test_non_utf8_bytes_name_the_key_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"streams:\n  - name: cam\n    url: rtsp://h/caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: streams[0].url: byte 0xe9 at line 3, column 22 is not UTF-8; save the file as UTF-8"
    )


def test_control_characters_are_a_yaml_error_with_position(tmp_path: Path) -> None:
    path = tmp_path / "nul.yaml"
    path.write_bytes(b"streams: [{name: a, url: x}]\nlog: {level: in\x00fo}\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line 2, column 16"):
        load_config(path)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufeff".encode() + _STREAMS.encode())
    assert load_config(path).streams[0].name == "cam"


def test_oversized_integers_are_an_error_not_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, _STREAMS + "\npublish: {sndhwm: " + "9" * 5000 + "}\n")
    with pytest.raises(ConfigError, match=r"publish\.sndhwm: .*\(line 2\)"):
        load_config(path)
