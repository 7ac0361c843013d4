"""The ``vstmon`` command as a user runs it: a real process, its exit code and what it prints."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import pytest

from tests.helpers.cli import run_vstmon
from vstmon import __version__
from vstmon.errors import EX_CONFIG, EX_USAGE

REPO = Path(__file__).resolve().parents[1]


def test_version() -> None:
    done = run_vstmon("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"vstmon {__version__}"


def test_help_lists_every_command() -> None:
    done = run_vstmon("--help")
    assert done.returncode == 0
    for command in ("run", "check", "classify", "weights", "listen", "ctl"):
        assert command in done.stdout
    assert "--config config.yaml" in done.stdout


def test_no_arguments_prints_help_and_exits_2() -> None:
    done = run_vstmon()
    assert done.returncode == 2 and "COMMAND" in done.stdout


def test_missing_config_is_a_clear_error_without_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    for args in (("--config", str(missing)), ("check", "--config", str(missing))):
        done = run_vstmon(*args, cwd=tmp_path)
        assert done.returncode == EX_CONFIG, done.stderr
        assert str(missing) in done.stderr and "Traceback" not in done.stderr


def test_bad_config_value_names_the_yaml_path(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("streams:\n  - name: cam\n    url: testsrc://\n    hop_s: -1\n")
    done = run_vstmon("check", "--config", str(config), cwd=tmp_path)
    assert done.returncode == EX_CONFIG and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"vstmon: error: {config}: streams[0].hop_s: ")


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


_STREAM = "streams: [{name: cam, url: 'testsrc://'}]\n"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (_STREAM + "publish: {endpoints: ['tcp://*:70000']}\n", "publish.endpoints[0]"),
        (_STREAM + "model: {arch: swin_xxl}\n", "model.arch"),
        (_STREAM + "model: {checkpoint: nowhere.pth}\n", "model.checkpoint"),
        (_STREAM + "model: {checkpoint: null, labels: nowhere.txt}\n", "model.labels"),
        ("streams: []\n", "streams"),
        (_STREAM + "log: {level: info}\nlog: {level: debug}\n", "log"),
    ],
)
def test_check_exits_78_on_config_errors_without_loading_the_model(
    tmp_path: Path, text: str, key: str
) -> None:
    path = _config(tmp_path, text)
    done = run_vstmon("check", "--no-model", "--config", str(path), cwd=tmp_path)
    assert done.returncode == EX_CONFIG, done.stderr
    assert done.stderr.startswith(f"vstmon: error: {path}: {key}: "), done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr


def test_each_bad_key_gets_its_own_prefixed_line(tmp_path: Path) -> None:
    path = _config(
        tmp_path, "streams: [{name: a, url: x}, {name: a, url: y}]\npublish: {sndhwm: 1e12, top_k: 0}\n"
    )
    done = run_vstmon("check", "--no-model", "--config", str(path), cwd=tmp_path)
    assert done.returncode == EX_CONFIG
    keys = [line.split(": ")[3] for line in done.stderr.splitlines()]
    assert keys == ["streams[1].name", "publish.top_k", "publish.sndhwm"]
    assert all(line.startswith(f"vstmon: error: {path}: ") for line in done.stderr.splitlines())


def test_check_refuses_cuda_on_a_machine_without_it(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    path = _config(tmp_path, _STREAM + "model: {checkpoint: null, device: cuda}\n")
    done = run_vstmon("check", "--no-model", "--config", str(path), cwd=tmp_path)
    assert done.returncode == EX_CONFIG
    assert done.stderr.startswith(
        f"vstmon: error: {path}: model.device: cuda:0 was asked for, but torch sees no CUDA"
    )


def test_check_prints_the_resolved_device_and_precision(tmp_path: Path) -> None:
    from vstmon.inference.runner import resolve_devices, resolve_dtype

    path = _config(tmp_path, _STREAM + "model: {checkpoint: null, device: auto, precision: auto}\n")
    done = run_vstmon("check", "--no-model", "--config", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    device = resolve_devices("auto")[0]
    precision = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}[
        str(resolve_dtype("auto", device))
    ]
    assert f"device: {device}, precision {precision}\n" in done.stdout
    assert "auto" not in done.stdout.split("device: ")[1].splitlines()[0]


def test_check_refuses_a_billion_laughs_file(tmp_path: Path) -> None:
    levels = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = _config(tmp_path, "\n".join(levels) + "\n" + _STREAM)
    done = run_vstmon("check", "--no-model", "--config", str(path), cwd=tmp_path)  # timeout: a hang guard
    assert done.returncode == EX_CONFIG
    assert "aliases expand this to more than" in done.stderr


def test_the_daemon_exits_78_on_a_config_error(tmp_path: Path) -> None:
    path = _config(tmp_path, "streams: [{name: cam, url: 'testsrc://', open_timeout_s: 1e300}]\n")
    done = run_vstmon("--config", str(path), cwd=tmp_path)
    assert done.returncode == EX_CONFIG
    assert done.stderr.splitlines()[-1].startswith(f"vstmon: error: {path}: streams[0].open_timeout_s: ")


def test_the_daemon_exits_78_on_a_missing_checkpoint(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        _STREAM
        + "model: {checkpoint: nowhere.pth}\npublish: {endpoints: ['ipc://pub.sock'], control: null}\n",
    )
    done = run_vstmon("--config", str(path), cwd=tmp_path)
    assert done.returncode == EX_CONFIG, done.stderr
    assert "model.checkpoint" in done.stderr and "Traceback" not in done.stderr


def test_the_daemon_exits_78_when_its_endpoint_cannot_bind(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = _config(
            tmp_path,
            _STREAM
            + f"model: {{checkpoint: null}}\npublish: {{endpoints: ['tcp://127.0.0.1:{port}'], control: null}}\n",
        )
        done = run_vstmon("--config", str(path), cwd=tmp_path)
    assert done.returncode == EX_CONFIG, done.stderr
    last = done.stderr.splitlines()[-1]  # the file, the key and its line, as a schema error gives them
    assert last.startswith(
        f"vstmon: error: {path}: publish.endpoints[0]: cannot bind tcp://127.0.0.1:{port}: "
    )
    assert last.endswith(" (line 3)"), last


def test_check_loads_the_model_and_reports_a_label_mismatch_as_78(tmp_path: Path, reference: Path) -> None:
    checkpoint = reference / "tiny_k400_style.pth"  # a 10-class head
    labels = tmp_path / "labels.txt"
    for count, code in ((10, 0), (7, EX_CONFIG)):
        labels.write_text("".join(f"class {i}\n" for i in range(count)))
        path = _config(
            tmp_path, _STREAM + f"model: {{checkpoint: '{checkpoint}', labels: '{labels}', device: cpu}}\n"
        )
        done = run_vstmon("check", "--config", str(path), cwd=tmp_path)
        assert done.returncode == code, done.stderr
    assert "model: tiny_k400_style@" not in done.stdout
    assert done.stderr.startswith(f"vstmon: error: {path}: model.labels: ") and "10 classes" in done.stderr


def test_command_line_misuse_exits_2(tmp_path: Path) -> None:
    done = run_vstmon("check")  # --config is required
    assert done.returncode == EX_USAGE == 2 and "--config" in done.stderr


def test_unknown_command_option_is_an_argparse_error() -> None:
    done = run_vstmon("weights", "--no-such-option")
    assert done.returncode == 2 and "unrecognized arguments" in done.stderr
