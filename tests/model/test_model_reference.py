"""vstmon's Video Swin reproduces the official implementation on the reference fixtures (../shared/reference).

Each fixture holds an official-layout checkpoint and the official model's logits and per-stage activations for a
fixed input; ours must match within atol = rtol = 1e-5 in fp32 on CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from vstmon.model.presets import SwinConfig
from vstmon.model.swin3d import STAGE_NAMES, VideoSwin, build_model

FIXTURES = ("tiny_k400_style", "tiny_sthv2_style")
TOL = {"atol": 1e-5, "rtol": 1e-5}


def config_from_fixture(c: dict[str, Any]) -> SwinConfig:
    """The fixture's ``config`` dict as a SwinConfig (descriptive extra fields are ignored)."""
    return SwinConfig(
        embed_dim=c["embed_dim"],
        depths=tuple(c["depths"]),
        num_heads=tuple(c["num_heads"]),
        window_size=tuple(c["window_size"]),
        patch_size=tuple(c["patch_size"]),
        in_chans=c["in_chans"],
        mlp_ratio=c["mlp_ratio"],
        qkv_bias=c["qkv_bias"],
        qk_scale=c["qk_scale"],
        patch_norm=c["patch_norm"],
        drop_rate=c["drop_rate"],
        attn_drop_rate=c["attn_drop_rate"],
        drop_path_rate=c["drop_path_rate"],
        layer_norm_eps=c["layer_norm_eps"],
        num_classes=c["num_classes"],
        head_dropout=c["head_dropout_ratio"],
    )


@pytest.fixture(autouse=True)
def _two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=FIXTURES)
def case(request: pytest.FixtureRequest, reference: Path) -> tuple[VideoSwin, dict[str, Any]]:
    io = torch.load(reference / f"{request.param}_io.pt", map_location="cpu", weights_only=True)
    model = build_model(config_from_fixture(io["config"]))
    checkpoint = torch.load(reference / f"{request.param}.pth", map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    return model, io


def test_checkpoint_keys_are_exactly_the_model_state_dict_keys(
    case: tuple[VideoSwin, dict[str, Any]],
) -> None:
    model, _ = case
    keys = set(model.state_dict())
    assert "backbone.layers.0.blocks.0.attn.relative_position_bias_table" in keys
    assert "cls_head.fc_cls.weight" in keys
    assert not any(k.endswith("relative_position_index") for k in keys)  # non-persistent buffer


def test_logits_and_every_stage_match_the_official_model(case: tuple[VideoSwin, dict[str, Any]]) -> None:
    model, io = case
    with torch.inference_mode():
        stages = model.backbone(io["input"], return_stages=True)
        logits = model(io["input"])
    assert list(stages) == list(STAGE_NAMES)
    torch.testing.assert_close(logits, io["logits"], **TOL)
    assert list(io["intermediates"]) == list(STAGE_NAMES)
    for name, expected in io["intermediates"].items():
        torch.testing.assert_close(stages[name], expected, **TOL, msg=lambda m, name=name: f"{name}: {m}")


def test_forward_features_is_the_backbone_output(case: tuple[VideoSwin, dict[str, Any]]) -> None:
    model, io = case
    with torch.inference_mode():
        features = model.forward_features(io["input"])
    torch.testing.assert_close(features, io["intermediates"]["backbone"], **TOL)


def test_odd_sizes_with_temporal_shift_match_the_official_model(reference: Path) -> None:
    io = torch.load(reference / "tiny_k400_style_io.pt", map_location="cpu", weights_only=True)
    model = build_model(config_from_fixture(io["config"]))
    checkpoint = torch.load(reference / "tiny_k400_style.pth", map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    extra = {c["name"]: c for c in io["extra_cases"]}["odd_sizes_temporal_shift"]
    assert tuple(extra["input"].shape) == (1, 3, 38, 46, 46)
    with torch.inference_mode():
        features = model.forward_features(extra["input"])
        logits = model.cls_head(features)
    torch.testing.assert_close(features, extra["backbone"], **TOL)
    torch.testing.assert_close(logits, extra["logits"], **TOL)
