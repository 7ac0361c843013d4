"""Inference set-up of a Video Swin (``vstmon.model.inference``): half weights end to end with fp32 norms, and the
uint8 normalisation folded into the patch embedding; both through the runner too."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers.swin import TINY
from vstmon.inference.runner import Runner
from vstmon.model.inference import cast_for_inference, fold_input_normalization, fp32_modules
from vstmon.model.normalize import MEAN_RGB, STD_RGB, clips_to_float, normalize_clips
from vstmon.model.swin3d import VideoSwin, build_model

# The bound for half precision against fp32 (on real footage, on a GPU): max |probability difference|.
# On CPU with bf16 weights this model measured 0.015 (26 % headroom); top-1 must agree wherever fp32's two best
# classes are more than twice that bound apart.
MAX_PROB_DIFF = 0.02


def confident_model(seed: int = 0) -> VideoSwin:
    """A small random Video Swin whose head is scaled so that it is confident (max probability ~1), as a trained
    classifier is: near-uniform outputs would make top-1 agreement a coin toss."""
    torch.manual_seed(seed)
    model = build_model(TINY.with_(embed_dim=16, num_heads=(1, 2, 2, 4), num_classes=10))
    nn.init.normal_(model.cls_head.fc_cls.weight, std=1.0)
    return model


def uint8_clips(n: int, shape: tuple[int, int, int] = (8, 40, 40), seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape, 3), dtype=torch.uint8, generator=g)  # (N, T, H, W, 3)


# ---- half weights ----------------------------------------------------------------------------------------------


def test_cast_keeps_norms_and_head_in_fp32_and_everything_else_in_bf16() -> None:
    model = cast_for_inference(confident_model(), torch.bfloat16)
    kept = {id(p) for m in fp32_modules(model) for p in m.parameters()}
    assert any(isinstance(m, nn.LayerNorm) for m in fp32_modules(model))
    for name, param in model.named_parameters():
        expected = torch.float32 if id(param) in kept else torch.bfloat16
        assert param.dtype == expected, name
    assert model.backbone.layers[0].blocks[0].norm1.weight.dtype == torch.float32
    assert model.backbone.layers[0].blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert model.backbone.layers[0].blocks[0].attn.relative_position_bias_table.dtype == torch.bfloat16
    assert model.cls_head.fc_cls.weight.dtype == torch.float32


def test_cast_keeps_the_state_dict_keys() -> None:
    model = confident_model()
    keys = list(model.state_dict())
    assert list(cast_for_inference(model, torch.bfloat16).state_dict()) == keys


def test_bf16_weights_agree_with_fp32_without_autocast() -> None:
    reference = confident_model()
    half = cast_for_inference(copy.deepcopy(reference), torch.bfloat16)
    x = normalize_clips(uint8_clips(32))  # (32, 3, 8, 40, 40) fp32: the patch embedding casts it
    activations: list[torch.Tensor] = []
    hook = (
        half.backbone.layers[1].blocks[0].register_forward_hook(lambda _m, _i, out: activations.append(out))
    )
    with torch.inference_mode():
        expected = reference(x).softmax(-1)
        logits = half(x)
    hook.remove()
    assert activations[0].dtype == torch.bfloat16  # the residual stream is bf16 ...
    assert logits.dtype == torch.float32  # ... and the head fp32
    probs = logits.softmax(-1)
    assert (probs - expected).abs().max().item() <= MAX_PROB_DIFF
    best_two = expected.topk(2).values
    clear = (best_two[:, 0] - best_two[:, 1]) > 2 * MAX_PROB_DIFF
    assert clear.sum() >= 24  # the test means something: most clips have a clear winner
    assert torch.equal(probs.argmax(-1)[clear], expected.argmax(-1)[clear])


def test_layer_norm_of_a_bf16_stream_is_computed_in_fp32() -> None:
    """The norms keep fp32 weights and normalise a bf16 input with fp32 statistics: the result is the fp32
    LayerNorm of that input within bf16 rounding (2 ** -7 relative: at most two roundings)."""
    norm = cast_for_inference(confident_model(), torch.bfloat16).backbone.layers[0].blocks[0].norm1
    x = (torch.randn(64, 16) * 30 + 100).to(torch.bfloat16)  # a large mean: fp32 statistics matter
    expected = torch.nn.functional.layer_norm(x.float(), (16,), norm.weight, norm.bias, norm.eps)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=1e-3, rtol=2**-7)


def test_cast_refuses_a_dtype_that_is_not_half() -> None:
    with pytest.raises(ValueError, match=r"torch\.bfloat16, torch\.float16"):
        cast_for_inference(confident_model(), torch.float64)


# ---- folded normalisation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 40, 40), (7, 33, 45)])  # the second pads in T, H and W
def test_folded_normalisation_equals_normalise_then_embed(shape: tuple[int, int, int]) -> None:
    reference = confident_model()
    folded = fold_input_normalization(copy.deepcopy(reference), MEAN_RGB, STD_RGB)
    clips = uint8_clips(3, shape)
    with torch.inference_mode():
        expected_tokens = reference.backbone.patch_embed(normalize_clips(clips))
        tokens = folded.backbone.patch_embed(clips_to_float(clips))
        expected, logits = reference(normalize_clips(clips)), folded(clips_to_float(clips))
    torch.testing.assert_close(tokens, expected_tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_folding_pads_with_the_mean_the_value_that_normalises_to_zero() -> None:
    """A clip of the mean colour is all zeros once normalised: the padded border must not stand out."""
    model = fold_input_normalization(confident_model(), MEAN_RGB, STD_RGB)
    embed = model.backbone.patch_embed
    embed.norm = None  # compare the convolution alone
    x = torch.tensor(MEAN_RGB).view(1, 3, 1, 1, 1).expand(1, 3, 7, 33, 45).clone()
    with torch.inference_mode():
        tokens = embed(x)  # (1, 4, 9, 12, 16): every patch, padded or not, is the bias
    bias = model.backbone.patch_embed.proj.bias
    torch.testing.assert_close(tokens, bias.expand_as(tokens), atol=1e-5, rtol=0)


def test_folding_leaves_the_state_dict_untouched() -> None:
    model = confident_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    after = fold_input_normalization(model, MEAN_RGB, STD_RGB).state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize(
    ("mean", "std", "message"),
    [((1.0, 2.0), (1.0, 1.0, 1.0), "3 values"), ((1.0, 2.0, 3.0), (1.0, 0.0, 1.0), "positive")],
)
def test_fold_refuses_bad_statistics(mean: tuple[float, ...], std: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fold_input_normalization(confident_model(), mean, std)


# ---- through the runner ----------------------------------------------------------------------------------------


def _probs(runner: Runner, clips: torch.Tensor) -> np.ndarray:
    return runner.infer(clips.numpy())


def test_a_runner_with_folded_normalisation_equals_the_default_runner() -> None:
    model = confident_model()
    clips = uint8_clips(4, (7, 33, 45))
    default = Runner(copy.deepcopy(model), "cpu", "fp32", 4)
    folded = Runner(copy.deepcopy(model), "cpu", "fp32", 4, fold_normalization=True)
    np.testing.assert_allclose(_probs(folded, clips), _probs(default, clips), atol=1e-5, rtol=1e-5)


def test_a_runner_with_bf16_weights_runs_without_autocast_and_agrees_with_fp32() -> None:
    model = confident_model()
    clips = uint8_clips(16)
    reference = Runner(copy.deepcopy(model), "cpu", "fp32", 16)
    for fold in (False, True):
        half = Runner(copy.deepcopy(model), "cpu", "bf16", 16, cast_weights=True, fold_normalization=fold)
        assert half.cast_weights and not half._autocast
        assert half.model.backbone.patch_embed.proj.weight.dtype == torch.bfloat16
        probs = _probs(half, clips)
        expected = _probs(reference, clips)
        assert probs.dtype == np.float32
        assert np.abs(probs - expected).max() <= MAX_PROB_DIFF, fold


def test_a_runner_refuses_folding_with_its_own_normalize() -> None:
    with pytest.raises(ValueError, match="fold_normalization replaces normalize"):
        Runner(confident_model(), "cpu", "fp32", 1, normalize=normalize_clips, fold_normalization=True)
