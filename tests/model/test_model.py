"""Video Swin network: presets, window rules, eval behaviour, gradient checkpointing, input checks."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

from tests.helpers.swin import TINY, clip, tiny_model
from vstmon.model.presets import PRESETS, SwinConfig
from vstmon.model.swin3d import (
    VideoSwin,
    build_model,
    class_shift_masks,
    effective_window_and_shift,
    padded_grid,
    relative_position_index,
    shift_attention_mask,
    shifted_windows,
    window_classes,
    window_partition,
    window_reverse,
)


def expected_parameters(cfg: SwinConfig) -> int:
    """Parameter count worked out by hand from the architecture (independent of the module code)."""
    pt, ph, pw = cfg.patch_size
    wd, wh, ww = cfg.window_size
    table_rows = (2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1)
    c = cfg.embed_dim
    total = cfg.in_chans * pt * ph * pw * c + c + 2 * c  # conv + bias + patch norm
    for stage, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads, strict=True)):
        hidden = int(c * cfg.mlp_ratio)
        block = 2 * 2 * c + (3 * c * c + 3 * c) + (c * c + c) + table_rows * heads + (c * hidden + hidden)
        block += hidden * c + c
        total += depth * block
        if stage < len(cfg.depths) - 1:
            total += 2 * 4 * c + 4 * c * 2 * c  # merge norm(4C) + reduction 4C -> 2C, no bias
            c *= 2
    total += 2 * c  # final norm
    return total + c * cfg.num_classes + cfg.num_classes  # head


def count_on_meta(cfg: SwinConfig) -> int:
    with torch.device("meta"):
        model = VideoSwin(cfg)
    return sum(p.numel() for p in model.parameters())


# ---- presets ---------------------------------------------------------------------------------------------------


def test_swin_t_has_the_official_parameter_count_including_the_400_class_head() -> None:
    assert count_on_meta(PRESETS["swin_t"]) == 28_158_070
    head = 768 * 400 + 400
    assert count_on_meta(PRESETS["swin_t"]) - head == 27_850_470


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_with_the_expected_parameter_count(name: str) -> None:
    assert count_on_meta(PRESETS[name]) == expected_parameters(PRESETS[name])


@pytest.mark.parametrize(
    ("name", "millions"), [("swin_t", 28.2), ("swin_s", 49.8), ("swin_b", 88.1), ("swin_l", 197.0)]
)
def test_presets_match_the_paper_sizes(name: str, millions: float) -> None:
    # the paper rounds to 0.1 M (Swin-B: 88.049 M is printed as 88.1 M)
    assert count_on_meta(PRESETS[name]) / 1e6 == pytest.approx(millions, abs=0.06)


def test_build_model_is_in_eval_mode_and_num_classes_overrides_the_preset() -> None:
    model = build_model(TINY, num_classes=7)
    assert not model.training
    assert model.cls_head.fc_cls.out_features == 7
    assert model.config.num_classes == 7


def test_build_model_rejects_an_unknown_preset_naming_the_valid_ones() -> None:
    with pytest.raises(KeyError, match="swin_t"):
        build_model("swin_xxl")


def test_state_dict_keys_follow_the_official_layout() -> None:
    keys = set(tiny_model().state_dict())
    for key in (
        "backbone.patch_embed.proj.weight",
        "backbone.patch_embed.norm.bias",
        "backbone.layers.0.blocks.1.norm1.weight",
        "backbone.layers.0.blocks.1.attn.qkv.bias",
        "backbone.layers.0.blocks.1.attn.proj.weight",
        "backbone.layers.0.blocks.1.attn.relative_position_bias_table",
        "backbone.layers.3.blocks.1.mlp.fc2.weight",
        "backbone.layers.2.downsample.reduction.weight",
        "backbone.layers.2.downsample.norm.weight",
        "backbone.norm.weight",
        "cls_head.fc_cls.weight",
        "cls_head.fc_cls.bias",
    ):
        assert key in keys, key
    assert "backbone.layers.0.downsample.reduction.bias" not in keys
    assert not any(k.startswith("backbone.layers.3.downsample") for k in keys)
    assert not any("relative_position_index" in k for k in keys)


# ---- window math -----------------------------------------------------------------------------------------------

# (window, token grid) -> (effective window, effective shift, padded grid): the table of the reference README.
WINDOW_RULES = [
    ((8, 7, 7), (8, 28, 28), (8, 7, 7), (0, 3, 3), (8, 28, 28)),
    ((8, 7, 7), (8, 14, 14), (8, 7, 7), (0, 3, 3), (8, 14, 14)),
    ((8, 7, 7), (8, 7, 7), (8, 7, 7), (0, 0, 0), (8, 7, 7)),
    ((8, 7, 7), (8, 4, 4), (8, 4, 4), (0, 0, 0), (8, 4, 4)),
    ((8, 7, 7), (19, 12, 12), (8, 7, 7), (4, 3, 3), (24, 14, 14)),
    ((8, 7, 7), (19, 6, 6), (8, 6, 6), (4, 0, 0), (24, 6, 6)),
    ((8, 7, 7), (19, 3, 3), (8, 3, 3), (4, 0, 0), (24, 3, 3)),
    ((8, 7, 7), (19, 2, 2), (8, 2, 2), (4, 0, 0), (24, 2, 2)),
    ((16, 7, 7), (16, 24, 24), (16, 7, 7), (0, 3, 3), (16, 28, 28)),
    ((16, 7, 7), (16, 12, 12), (16, 7, 7), (0, 3, 3), (16, 14, 14)),
    ((16, 7, 7), (16, 6, 6), (16, 6, 6), (0, 0, 0), (16, 6, 6)),
    ((16, 7, 7), (16, 3, 3), (16, 3, 3), (0, 0, 0), (16, 3, 3)),
]


@pytest.mark.parametrize(("window", "grid", "win", "shift", "padded"), WINDOW_RULES)
def test_window_and_shift_follow_the_official_rule(
    window: tuple[int, int, int],
    grid: tuple[int, int, int],
    win: tuple[int, int, int],
    shift: tuple[int, int, int],
    padded: tuple[int, int, int],
) -> None:
    nominal_shift = tuple(w // 2 for w in window)
    assert effective_window_and_shift(grid, window, nominal_shift) == (win, shift)
    assert padded_grid(grid, win) == padded
    # an unshifted block stays unshifted whatever the grid
    assert effective_window_and_shift(grid, window, (0, 0, 0))[1] == (0, 0, 0)


def test_relative_position_index_encodes_pair_offsets() -> None:
    index = relative_position_index((2, 3, 3))
    n = 2 * 3 * 3
    assert index.shape == (n, n) and index.dtype == torch.int64
    rows = 3 * 5 * 5
    assert int(index.min()) == 0 and int(index.max()) == rows - 1
    assert torch.all(index.diagonal() == rows // 2)  # offset (0, 0, 0) is the centre row of the table
    assert int(index[0, n - 1]) == 0  # offset (-1, -2, -2)
    assert int(index[n - 1, 0]) == rows - 1  # offset (+1, +2, +2)
    assert int(index[1, 0]) == rows // 2 + 1  # offset (0, 0, +1)
    assert int(index[9, 0]) == rows // 2 + 25  # token (1, 0, 0): offset (+1, 0, 0)


def test_window_partition_and_reverse_are_inverse() -> None:
    x = torch.arange(2 * 4 * 6 * 9 * 3, dtype=torch.float32).reshape(2, 4, 6, 9, 3)
    windows = window_partition(x, (2, 3, 3))
    assert windows.shape == (2, 2 * 2 * 3, 18, 3)
    # the first window holds the top-left-front 2x3x3 block, in d, h, w order
    torch.testing.assert_close(windows[0, 0], x[0, :2, :3, :3].reshape(18, 3))
    torch.testing.assert_close(window_reverse(windows, (2, 3, 3), (4, 6, 9)), x)


def test_shift_mask_separates_the_three_regions_with_minus_100() -> None:
    mask = shift_attention_mask((4, 6, 6), (2, 3, 3), (1, 1, 1))
    assert mask.shape == (2 * 2 * 2, 18, 18)
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    assert torch.all(mask.diagonal(dim1=1, dim2=2) == 0)
    assert torch.all(mask[0] == 0)  # the first window lies inside one region
    assert torch.all(mask == mask.transpose(1, 2))
    # the last window straddles two regions in every dimension; its token 0 (d=2, h=3, w=3) shares its
    # regions only with d=2, h in {3, 4}, w in {3, 4}
    last = mask[-1]
    assert int((last[0] == 0).sum()) == 1 * 2 * 2  # d in [0,1), h in [0,2), w in [0,2)


def test_shift_mask_ignores_an_unshifted_dimension() -> None:
    only_hw = shift_attention_mask((2, 6, 6), (2, 3, 3), (0, 1, 1))
    # with no temporal shift, both frames of a window share regions: the mask repeats along d
    per_window = only_hw.reshape(4, 2, 9, 2, 9)
    torch.testing.assert_close(per_window[:, 0, :, 0], per_window[:, 1, :, 1])
    torch.testing.assert_close(per_window[:, 0, :, 0], per_window[:, 0, :, 1])


@pytest.mark.parametrize(
    ("grid", "window", "shift"),
    [
        ((24, 14, 14), (8, 7, 7), (4, 3, 3)),
        ((16, 28, 28), (16, 7, 7), (0, 3, 3)),
        ((24, 6, 6), (8, 6, 6), (4, 0, 0)),
    ],
)
def test_each_windows_class_mask_is_its_shift_mask_and_the_gather_rolls_and_partitions(
    grid: tuple[int, int, int], window: tuple[int, int, int], shift: tuple[int, int, int]
) -> None:
    full = shift_attention_mask(grid, window, shift)  # (nW, N, N)
    sw = shifted_windows(grid, window, shift)
    shifted_dims = sum(s > 0 for s in shift)
    assert sw.class_masks.shape == (2**shifted_dims, *full.shape[1:])
    assert sw.window_class.shape == (full.shape[0],)
    assert torch.equal(sw.class_masks[sw.window_class], full)  # every window gets exactly its own mask
    assert torch.equal(sw.class_masks, class_shift_masks(window, shift))
    assert torch.equal(window_classes(grid, window, shift), sw.window_class)
    assert len({m.numpy().tobytes() for m in sw.class_masks}) == 2**shifted_dims  # classes are distinct
    n = full.shape[1]
    assert torch.equal(sw.token_index[sw.token_inverse], torch.arange(math.prod(grid)))
    # the gather equals torch.roll by -shift, then window_partition
    x = torch.randn(2, *grid, 3)
    rolled = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
    gathered = x.reshape(2, -1, 3)[:, sw.token_index].reshape(2, -1, n, 3)
    assert torch.equal(gathered, window_partition(rolled, window))


# ---- behaviour of the network ----------------------------------------------------------------------------------


def test_eval_forward_is_deterministic() -> None:
    model, x = tiny_model(), clip()
    with torch.inference_mode():
        first, second = model(x), model(x)
    assert first.shape == (2, 5)
    assert torch.equal(first, second)


def test_dropout_and_drop_path_are_inactive_in_eval() -> None:
    noisy = tiny_model(drop_rate=0.5, attn_drop_rate=0.5, drop_path_rate=0.5, head_dropout=0.5)
    plain = tiny_model(drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, head_dropout=0.0)
    plain.load_state_dict(noisy.state_dict())
    x = clip()
    with torch.inference_mode():
        torch.testing.assert_close(noisy(x), plain(x), atol=0, rtol=0)
        noisy.train()
        assert not torch.allclose(noisy(x), plain(x))  # the rates are real in training


def test_drop_path_rates_increase_linearly_to_the_configured_rate() -> None:
    model = tiny_model(drop_path_rate=0.7)
    rates = [blk.drop_path.drop_prob for layer in model.backbone.layers for blk in layer.blocks]
    assert rates[0] == 0.0
    assert rates[-1] == pytest.approx(0.7)
    steps = [b - a for a, b in pairwise(rates)]
    assert steps == pytest.approx([0.1] * 7)


def _loss_and_grads(model: VideoSwin, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    saved = 0

    def count(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += 1
        return t

    model.train()
    model.zero_grad()
    torch.manual_seed(123)  # same drop-path draws in both runs
    with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
        loss = model(x).logsumexp(-1).sum()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, saved


def test_gradient_checkpointing_gives_the_same_loss_and_gradients() -> None:
    plain = tiny_model(drop_path_rate=0.3, use_checkpoint=False)
    ckpt = tiny_model(drop_path_rate=0.3, use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x = clip()
    loss_a, grads_a, saved_a = _loss_and_grads(plain, x)
    loss_b, grads_b, saved_b = _loss_and_grads(ckpt, x)
    torch.testing.assert_close(loss_b, loss_a)
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        torch.testing.assert_close(
            grads_b[name], grad, atol=1e-6, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}"
        )
    assert grads_a["backbone.layers.0.blocks.1.attn.relative_position_bias_table"].abs().sum() > 0
    assert saved_b < saved_a / 2  # checkpointing really kept fewer activations


@pytest.mark.parametrize("shape", [(1, 3, 7, 33, 45), (1, 3, 1, 4, 4), (3, 3, 5, 17, 64)])
def test_forward_on_odd_sizes(shape: tuple[int, ...]) -> None:
    model = tiny_model()
    with torch.inference_mode():
        logits = model(clip(shape))
    assert logits.shape == (shape[0], 5)
    assert torch.isfinite(logits).all()


def test_batch_rows_are_independent_clips() -> None:
    model, x = tiny_model(), clip((3, 3, 8, 40, 40))
    with torch.inference_mode():
        together = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_the_bias_follows_new_weights() -> None:
    model, x = tiny_model(), clip()
    with torch.inference_mode():
        before = model(x)
    fresh = tiny_model(seed=5)
    model.load_state_dict(fresh.state_dict())
    with torch.inference_mode():
        after, expected = model(x), fresh(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("shape", "what"),
    [((3, 8, 40, 40), "5-D"), ((1, 1, 3, 8, 40, 40), "5-D"), ((1, 4, 8, 40, 40), "3 channels")],
)
def test_wrong_input_shape_is_a_clear_value_error(shape: tuple[int, ...], what: str) -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match=what) as err:
        model(torch.zeros(shape))
    assert str(tuple(shape)) in str(err.value)


def test_integer_input_is_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match="floating-point"):
        tiny_model()(torch.zeros(1, 3, 8, 40, 40, dtype=torch.uint8))


def test_a_shifted_block_alone_equals_the_block_inside_its_stage() -> None:
    stage = tiny_model().backbone.layers[0]
    x = torch.randn(1, 4, 10, 10, 8)
    shifted = stage.blocks[1]
    assert shifted.shift_size == (1, 1, 1)
    with torch.inference_mode():
        torch.testing.assert_close(shifted(x), shifted(x, stage.shifted_windows((4, 10, 10), x.device)))
