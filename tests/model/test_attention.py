"""One attention call per Swin block: it equals the older grouped attention (``tests/swin_grouped.py``), and
``flex_attention`` with the bias and the shift mask as a score modifier equals both."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from tests.helpers.swin import TINY_CLIP, clip, tiny_model
from tests.helpers.swin_grouped import grouped_attention
from vstmon.model.presets import SwinConfig
from vstmon.model.swin3d import SwinTransformerBlock3D, build_model, use_flex_attention

FP32 = {"atol": 1e-5, "rtol": 1e-5}


class _CountAttention(TorchFunctionMode):
    """Counts the attention calls a forward makes (SDPA and flex_attention)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is F.scaled_dot_product_attention:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def _blocks(model: torch.nn.Module) -> int:
    return sum(isinstance(m, SwinTransformerBlock3D) for m in model.modules())


@pytest.mark.parametrize("shape", [TINY_CLIP, (1, 3, 7, 33, 45), (3, 3, 5, 17, 64)])
def test_one_call_per_block_equals_the_grouped_attention_in_fp32(shape: tuple[int, ...]) -> None:
    model, x = tiny_model(), clip(shape)
    with torch.inference_mode():
        single = model.backbone(x, return_stages=True)
        with grouped_attention(model):
            grouped = model.backbone(x, return_stages=True)
    for name, value in grouped.items():
        torch.testing.assert_close(single[name], value, **FP32, msg=lambda m, n=name: f"{n}: {m}")


def test_swin_t_geometry_shifted_block_equals_the_grouped_attention() -> None:
    """A Swin-T stage-3 block (window 8x7x7, N = 392, 12 heads) on a grid that shifts and pads in every
    dimension: 8 window classes, the largest mask there is."""
    torch.manual_seed(0)
    block = SwinTransformerBlock3D(384, 12, (8, 7, 7), (4, 3, 3)).eval()
    torch.nn.init.trunc_normal_(block.attn.relative_position_bias_table, std=0.02)
    x = torch.randn(2, 12, 12, 13, 384)  # pads to 16 x 14 x 14: 2 x 2 x 2 windows
    with torch.inference_mode():
        single = block(x)
        with grouped_attention(block):
            grouped = block(x)
    torch.testing.assert_close(single, grouped, **FP32)


def test_every_block_makes_exactly_one_attention_call() -> None:
    model, x = tiny_model(), clip()
    with torch.inference_mode(), _CountAttention() as counter:
        model(x)
    assert counter.calls == _blocks(model) == 8
    with torch.inference_mode(), grouped_attention(model), _CountAttention() as grouped:
        model(x)
    assert grouped.calls > counter.calls  # the older path: one call per mask group


def test_gradients_equal_the_grouped_attention() -> None:
    model, x = tiny_model(), clip((1, 3, 8, 40, 40))

    def grads(use_grouped: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        if use_grouped:
            with grouped_attention(model):
                model(x).logsumexp(-1).sum().backward()
        else:
            model(x).logsumexp(-1).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    single, grouped = grads(False), grads(True)
    for name, grad in grouped.items():
        torch.testing.assert_close(
            single[name], grad, atol=1e-6, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_flex_attention_equals_sdpa() -> None:
    model, x = tiny_model(), clip()
    with torch.inference_mode():
        expected = model.backbone(x, return_stages=True)
        use_flex_attention(model)
        with warnings.catch_warnings():  # eager flex_attention warns that it is the unfused reference
            warnings.simplefilter("ignore", UserWarning)
            flex = model.backbone(x, return_stages=True)
        use_flex_attention(model, False)
    for name, value in expected.items():
        torch.testing.assert_close(flex[name], value, **FP32, msg=lambda m, n=name: f"{n}: {m}")


def test_flex_swin_t_geometry_shifted_block_equals_sdpa() -> None:
    torch.manual_seed(0)
    block = SwinTransformerBlock3D(96, 3, (8, 7, 7), (4, 3, 3)).eval()
    torch.nn.init.trunc_normal_(block.attn.relative_position_bias_table, std=0.02)
    x = torch.randn(1, 16, 14, 14, 96)
    with torch.inference_mode():
        expected = block(x)
        use_flex_attention(block)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            flex = block(x)
    torch.testing.assert_close(flex, expected, **FP32)


def test_a_model_with_a_temporal_window_of_16_equals_the_grouped_attention() -> None:
    """The Something-Something v2 window (16, 7, 7), scaled down: a shift only in some dimensions."""
    torch.manual_seed(3)
    model = build_model(SwinConfig(embed_dim=8, depths=(2, 2), num_heads=(1, 2), window_size=(4, 3, 3),
                                   drop_path_rate=0.0, num_classes=5))  # fmt: skip
    x = clip((2, 3, 16, 24, 24))  # tokens 8 x 6 x 6, then 8 x 3 x 3: the second stage shifts only in time
    with torch.inference_mode():
        single = model(x)
        with grouped_attention(model):
            grouped = model(x)
    torch.testing.assert_close(single, grouped, **FP32)
