"""Checkpoint loading: every supported layout gives the official logits; every bad input a clear error.

Uses the official reference fixtures (../shared/reference; skipped when absent) and files made here.
"""

from __future__ import annotations

import hashlib
import pickle
import random
import re
from pathlib import Path

import pytest
import torch
from structlog.testing import capture_logs

from vstmon.errors import CheckpointError
from vstmon.model import load_checkpoint_state, load_model
from vstmon.model.checkpoint import infer_config
from vstmon.model.presets import SwinConfig

torch.set_num_threads(1)

FIXTURES = {
    "tiny_k400_style": (8, 7, 7),
    "tiny_sthv2_style": (16, 7, 7),
}


class _Custom:
    """A class that a weights-only load must refuse."""

    def __init__(self) -> None:
        self.value = 3


# -- helpers ---------------------------------------------------------------------------------------------------
def official_state(path: Path) -> dict[str, torch.Tensor]:
    return dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])


def reference_io(reference: Path, name: str) -> dict:
    return torch.load(reference / f"{name}_io.pt", map_location="cpu", weights_only=True)


def logits_of(model: torch.nn.Module, io: dict) -> torch.Tensor:
    with torch.inference_mode():
        return model(io["input"])


def official_index(window: tuple[int, int, int]) -> torch.Tensor:
    """The relative-position index as the official code builds it (written here independently of vstmon)."""
    wd, wh, ww = window
    coords = torch.stack(torch.meshgrid(torch.arange(wd), torch.arange(wh), torch.arange(ww), indexing="ij"))
    flat = coords.flatten(1)  # (3, N)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()  # (N, N, 3)
    rel[:, :, 0] += wd - 1
    rel[:, :, 1] += wh - 1
    rel[:, :, 2] += ww - 1
    rel[:, :, 0] *= (2 * wh - 1) * (2 * ww - 1)
    rel[:, :, 1] *= 2 * ww - 1
    return rel.sum(-1)  # (N, N)


def with_index(state: dict[str, torch.Tensor], window: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    out = dict(state)
    for key in state:
        if key.endswith(".attn.relative_position_bias_table"):
            out[key.replace("relative_position_bias_table", "relative_position_index")] = official_index(
                window
            )
    return out


def to_torchvision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official layout -> torchvision ``SwinTransformer3d`` layout (the inverse of the loader's mapping)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := re.match(r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.(.*)", key):
            rest = m.group(3).replace("mlp.fc1.", "mlp.0.").replace("mlp.fc2.", "mlp.3.")
            out[f"features.{2 * int(m.group(1))}.{m.group(2)}.{rest}"] = value
        elif m := re.match(r"backbone\.layers\.(\d+)\.downsample\.(.*)", key):
            out[f"features.{2 * int(m.group(1)) + 1}.{m.group(2)}"] = value
        elif key.startswith("cls_head.fc_cls."):
            out["head." + key.removeprefix("cls_head.fc_cls.")] = value
        else:
            assert key.startswith(("backbone.patch_embed.", "backbone.norm.")), key
            out[key.removeprefix("backbone.")] = value
    return out


@pytest.fixture(scope="module")
def k400(reference: Path) -> tuple[Path, dict]:
    return reference / "tiny_k400_style.pth", reference_io(reference, "tiny_k400_style")


# -- the reference fixtures ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FIXTURES))
def test_reference_fixture_loads_with_inferred_config_and_official_logits(reference: Path, name: str) -> None:
    model = load_model(reference / f"{name}.pth", arch="auto")
    cfg = model.config
    assert cfg.embed_dim == 32
    assert cfg.depths == (2, 2, 2, 2)
    assert cfg.num_heads == (1, 2, 4, 8)
    assert cfg.window_size == FIXTURES[name]
    assert cfg.patch_size == (2, 4, 4)
    assert cfg.in_chans == 3
    assert cfg.mlp_ratio == 4.0
    assert cfg.qkv_bias and cfg.patch_norm
    assert cfg.num_classes == 10
    assert not model.training
    io = reference_io(reference, name)
    torch.testing.assert_close(logits_of(model, io), io["logits"], atol=1e-5, rtol=1e-5)


def test_checkpoint_id_is_stem_and_sha256_prefix(k400: tuple[Path, dict]) -> None:
    path, _ = k400
    model = load_model(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.checkpoint_id == f"tiny_k400_style@{digest[:12]}"


def test_official_presets_are_recognised_by_shape() -> None:
    from vstmon.model import build_model

    with torch.device("meta"):
        state = build_model("swin_b_sthv2").state_dict()
    cfg = infer_config(state)
    assert cfg.extra.get("preset") == "swin_b_sthv2"
    assert (cfg.embed_dim, cfg.depths, cfg.num_heads, cfg.window_size, cfg.num_classes) == (
        128,
        (2, 2, 18, 2),
        (4, 8, 16, 32),
        (16, 7, 7),
        174,
    )


# -- other layouts -----------------------------------------------------------------------------------------------
def test_checkpoint_with_index_buffers_loads(tmp_path: Path, k400: tuple[Path, dict]) -> None:
    path, io = k400
    state = with_index(official_state(path), (8, 7, 7))
    target = tmp_path / "with_index.pth"
    torch.save({"meta": {"epoch": 30}, "state_dict": state, "optimizer": {"state": {}}}, target)
    model = load_model(target)
    torch.testing.assert_close(logits_of(model, io), io["logits"], atol=1e-5, rtol=1e-5)


def test_index_buffers_disambiguate_the_window(tmp_path: Path, reference: Path) -> None:
    state = with_index(official_state(reference / "tiny_sthv2_style.pth"), (16, 7, 7))
    assert infer_config(state).window_size == (16, 7, 7)


def test_wrong_index_buffer_is_reported(tmp_path: Path, k400: tuple[Path, dict]) -> None:
    path, _ = k400
    state = with_index(official_state(path), (8, 7, 7))
    key = "backbone.layers.1.blocks.0.attn.relative_position_index"
    state[key] = state[key].clone()
    state[key][3, 5] += 1
    target = tmp_path / "bad_index.pth"
    torch.save({"state_dict": state}, target)
    with pytest.raises(CheckpointError, match=re.escape(key) + r": values differ"):
        load_model(target)


def test_torchvision_layout_round_trip(tmp_path: Path, k400: tuple[Path, dict]) -> None:
    path, io = k400
    state = to_torchvision(with_index(official_state(path), (8, 7, 7)))
    assert "features.0.0.mlp.0.weight" in state and "features.1.reduction.weight" in state
    target = tmp_path / "swin3d_tv.pth"
    torch.save(state, target)
    model = load_model(target)
    assert model.config.window_size == (8, 7, 7)
    torch.testing.assert_close(logits_of(model, io), io["logits"], atol=1e-5, rtol=1e-5)
    assert set(load_checkpoint_state(target)) == set(with_index(official_state(path), (8, 7, 7)))


def test_mmaction2_layout_round_trip(tmp_path: Path, k400: tuple[Path, dict]) -> None:
    path, io = k400
    state = {re.sub(r"^backbone\.norm\.", "backbone.norm3.", k): v for k, v in official_state(path).items()}
    assert "backbone.norm3.weight" in state
    target = tmp_path / "mmaction2.pth"
    torch.save({"meta": {"mmengine_version": "0.10"}, "state_dict": state}, target)
    model = load_model(target)
    torch.testing.assert_close(logits_of(model, io), io["logits"], atol=1e-5, rtol=1e-5)


def test_ddp_module_prefix_is_stripped(tmp_path: Path, k400: tuple[Path, dict]) -> None:
    path, io = k400
    target = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in official_state(path).items()}}, target)
    torch.testing.assert_close(logits_of(load_model(target), io), io["logits"], atol=1e-5, rtol=1e-5)


def test_half_precision_checkpoint_loads_as_float32(tmp_path: Path, k400: tuple[Path, dict]) -> None:
    path, io = k400
    target = tmp_path / "half.pth"
    torch.save({"state_dict": {k: v.half() for k, v in official_state(path).items()}}, target)
    model = load_model(target)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    torch.testing.assert_close(logits_of(model, io), io["logits"], atol=0.05, rtol=0.05)


# -- heads -----------------------------------------------------------------------------------------------------
@pytest.fixture
def bare_backbone(tmp_path: Path, k400: tuple[Path, dict]) -> Path:
    path, _ = k400
    state = {
        k.removeprefix("backbone."): v for k, v in official_state(path).items() if k.startswith("backbone.")
    }
    target = tmp_path / "backbone.pth"
    torch.save(state, target)
    return target


def test_bare_backbone_without_num_classes_says_the_head_is_missing(bare_backbone: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no classifier head.*num_classes") as info:
        load_model(bare_backbone)
    assert str(bare_backbone) in str(info.value)


def test_bare_backbone_with_num_classes_gets_a_new_head(bare_backbone: Path, k400: tuple[Path, dict]) -> None:
    _, io = k400
    with capture_logs() as logs:
        model = load_model(bare_backbone, num_classes=7)
    assert any("untrained head" in entry["event"] for entry in logs)
    assert model.config.num_classes == 7
    with torch.inference_mode():
        features = model.forward_features(io["input"])
        logits = model(io["input"])
    torch.testing.assert_close(features, io["intermediates"]["backbone"], atol=1e-5, rtol=1e-5)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


def test_head_size_that_differs_from_num_classes_names_both(k400: tuple[Path, dict]) -> None:
    path, _ = k400
    with pytest.raises(CheckpointError, match=r"head with 10 classes but num_classes is 400"):
        load_model(path, num_classes=400)


# -- strictness ------------------------------------------------------------------------------------------------
def test_mismatched_missing_and_unexpected_keys_are_listed_with_shapes(
    tmp_path: Path, k400: tuple[Path, dict]
) -> None:
    path, _ = k400
    state = official_state(path)
    state["backbone.layers.0.blocks.1.attn.proj.weight"] = torch.zeros(32, 30)
    del state["backbone.layers.1.blocks.1.norm2.bias"]
    state["backbone.layers.0.blocks.0.attn.extra_scale"] = torch.zeros(3, 4)
    target = tmp_path / "broken.pth"
    torch.save({"state_dict": state}, target)
    with pytest.raises(CheckpointError) as info:
        load_model(target)
    message = str(info.value)
    assert "backbone.layers.0.blocks.1.attn.proj.weight: checkpoint (32, 30), model (32, 32)" in message
    assert "missing from the checkpoint: backbone.layers.1.blocks.1.norm2.bias (64,)" in message
    assert "unexpected in the checkpoint: backbone.layers.0.blocks.0.attn.extra_scale (3, 4)" in message


def test_explicit_arch_that_does_not_fit_is_a_clear_bounded_error(k400: tuple[Path, dict]) -> None:
    path, _ = k400
    with pytest.raises(CheckpointError) as info:
        load_model(path, arch="swin_t")
    message = str(info.value)
    assert "does not fit arch swin_t" in message
    assert "backbone.patch_embed.proj.weight: checkpoint (32, 3, 2, 4, 4), model (96, 3, 2, 4, 4)" in message
    assert "... and" in message  # hundreds of keys are truncated
    assert "embed_dim=32" in message  # what the file really holds
    assert len(message) < 6000


def test_explicit_config_that_fits_loads(k400: tuple[Path, dict]) -> None:
    path, io = k400
    cfg = SwinConfig(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=(8, 7, 7))
    model = load_model(path, arch=cfg)
    assert model.config.num_classes == 10  # taken from the head
    torch.testing.assert_close(logits_of(model, io), io["logits"], atol=1e-5, rtol=1e-5)


def test_explicit_config_with_another_window_is_reported(k400: tuple[Path, dict]) -> None:
    path, _ = k400
    cfg = SwinConfig(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=(16, 7, 7))
    with pytest.raises(
        CheckpointError,
        match=re.escape("relative_position_bias_table: checkpoint (2535, 1), model (5239, 1)"),
    ):
        load_model(path, arch=cfg)


def test_unknown_preset_name(k400: tuple[Path, dict]) -> None:
    path, _ = k400
    with pytest.raises(CheckpointError, match=r"unknown model preset 'swin_xl'"):
        load_model(path, arch="swin_xl")


# -- files that are not checkpoints --------------------------------------------------------------------------------
def _text(path: Path, _real: Path) -> None:
    path.write_text("this is a README, not weights\n" * 20)


def _html(path: Path, _real: Path) -> None:
    path.write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")


def _random(path: Path, _real: Path) -> None:
    path.write_bytes(b"\x13" + random.Random(1).randbytes(4096))


def _random_after_pickle_marker(path: Path, _real: Path) -> None:
    path.write_bytes(b"\x80" + random.Random(2).randbytes(4096))


def _empty(path: Path, _real: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path, real: Path) -> None:
    data = real.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _custom_object(path: Path, real: Path) -> None:
    torch.save({"state_dict": official_state(real), "trainer": _Custom()}, path)


def _plain_pickle(path: Path, _real: Path) -> None:
    with path.open("wb") as f:
        pickle.dump({"state_dict": _Custom()}, f)


def _tensor_only(path: Path, _real: Path) -> None:
    torch.save(torch.zeros(3), path)


def _foreign_state_dict(path: Path, _real: Path) -> None:
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.weight": torch.zeros(10, 4)}, path)


def _non_tensor_values(path: Path, _real: Path) -> None:
    torch.save({"state_dict": {"backbone.norm.weight": torch.zeros(3), "backbone.note": "hi"}}, path)


BAD_FILES = {
    "text": (_text, "is not a PyTorch checkpoint: it holds text"),
    "html": (_html, "HTML"),
    "random bytes": (_random, "is not a PyTorch checkpoint"),
    "random bytes after a pickle marker": (
        _random_after_pickle_marker,
        "not a PyTorch checkpoint, or is corrupted",
    ),
    "empty": (_empty, "is empty"),
    "truncated": (_truncated, "truncated or corrupted"),
    "custom object": (_custom_object, r"pickled Python objects \(tests\.model\.test_checkpoint\._Custom\)"),
    "plain pickle": (_plain_pickle, "not a PyTorch checkpoint, or is corrupted"),
    "a tensor": (_tensor_only, "holds a Tensor, not a dict"),
    "foreign state dict": (_foreign_state_dict, "not a Video Swin checkpoint"),
    "non-tensor values": (_non_tensor_values, r"not tensors: backbone\.note \(str\)"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_gets_a_clear_error_naming_it(tmp_path: Path, k400: tuple[Path, dict], case: str) -> None:
    make, expected = BAD_FILES[case]
    path = tmp_path / "model.pth"
    make(path, k400[0])
    with pytest.raises(CheckpointError, match=expected) as info:
        load_model(path)
    assert str(path) in str(info.value)
    assert info.value.__cause__ is None  # no chained torch traceback
    assert "\n" not in str(info.value)


def test_missing_file_says_how_to_fetch(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"does not exist.*vstmon weights fetch"):
        load_model(tmp_path / "swin_tiny.pth")


def test_directory_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is not a file"):
        load_checkpoint_state(tmp_path)
