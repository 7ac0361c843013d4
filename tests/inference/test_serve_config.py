"""``vstmon serve``'s errors name serve.yaml, the key and its line, as config.yaml's do (no Triton needed)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.helpers.cli import run_vstmon
from vstmon.config import load_yaml_model
from vstmon.errors import EX_CONFIG, ConfigError
from vstmon.service.serve import ServeConfig


def _serve_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_preferred_batch_size_above_max_batch_is_refused_with_its_line(tmp_path: Path) -> None:
    path = _serve_yaml(tmp_path, "serve:\n  max_batch: 16\n  preferred_batch_sizes: [4, 8, 32]\n")
    with pytest.raises(ConfigError) as caught:
        load_yaml_model(ServeConfig, path)
    assert str(caught.value) == (
        f"{path}: serve.preferred_batch_sizes[2]: must be at most max_batch (16) (got 32) (line 3)"
    )


def test_a_typo_in_serve_yaml_gets_a_suggestion(tmp_path: Path) -> None:
    path = _serve_yaml(tmp_path, "serve:\n  grpc_prot: 8001\n")
    with pytest.raises(
        ConfigError, match=r"serve\.grpc_prot: unknown key; did you mean `grpc_port`\? \(line 2\)"
    ):
        load_yaml_model(ServeConfig, path)


def test_serve_names_missing_model_files_with_their_lines(tmp_path: Path) -> None:
    path = _serve_yaml(
        tmp_path,
        """\
        model:
          checkpoint: nowhere.pth
          labels: nolabels.txt
        serve:
          grpc_port: 8001
        """,
    )
    done = run_vstmon("serve", "--config", str(path), cwd=tmp_path)
    assert done.returncode == EX_CONFIG, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith(
        f"vstmon: error: {path}: model.checkpoint: nowhere.pth does not exist (download "
    )
    assert lines[0].endswith(" (line 2)")
    assert lines[1].startswith(f"vstmon: error: {path}: model.labels: nolabels.txt does not exist ")
    assert lines[1].endswith(" (line 3)")
    assert all("nvidia-pytriton" in line for line in lines[2:])  # where the serve extra is not installed
    assert "Traceback" not in done.stderr
