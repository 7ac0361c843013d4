"""The config knows the model names without importing the model, and the names cannot drift from the presets."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.cli import vstmon_env
from vstmon.config import ARCH_NAMES, ModelConfig, parse_config
from vstmon.errors import ConfigError
from vstmon.model.presets import PRESETS


def test_arch_names_are_the_presets() -> None:
    assert set(ARCH_NAMES) == set(PRESETS)


def test_validating_a_config_imports_nothing_of_the_model() -> None:
    code = (
        "import sys\n"
        "from vstmon.config import load_config, parse_config\n"
        "parse_config({'model': {'arch': 'swin_b_sthv2'}, 'streams': [{'name': 'a', 'url': 'testsrc://'}]})\n"
        "print(sorted(m for m in sys.modules if m.startswith('vstmon.model') or m == 'torch'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=vstmon_env(), timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout


def test_an_unknown_arch_lists_the_names() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"model": {"arch": "swin_x"}}, require_streams=False)
    message = str(caught.value)
    assert message.startswith("<config>: model.arch: unknown arch 'swin_x'; use auto or one of ")
    assert all(name in message for name in PRESETS)
    assert ModelConfig(arch="swin_l_sthv2").arch == "swin_l_sthv2"
