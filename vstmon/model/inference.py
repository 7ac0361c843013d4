"""Set-up of a Video Swin for inference: low-precision weights, and the input normalisation folded into it.

Both change how a loaded model runs, never its state-dict keys, and are applied by whatever runs the model
(``runner.Runner``), after loading and after moving it to its device:

- ``cast_for_inference(model, dtype)``: weights in bf16/fp16 end to end instead of autocast re-casting every
  Linear input. LayerNorms keep fp32 weights (torch's LayerNorm then normalises a half input with fp32
  statistics and returns the input's dtype, so the residual stream stays half); the classification head stays
  fp32 (it is tiny, and the logits feed a softmax); attention softmax accumulates in fp32 inside SDPA. No
  autocast is needed (nor wanted) around such a model.
- ``fold_input_normalization(model, mean, std)``: the model then takes the raw clip (uint8 values as floats,
  (N, 3, T, H, W)) and applies ``(x - mean) / std`` through its patch embedding's weights (see
  ``swin3d.PatchEmbed3D``): the clip is converted to float once instead of making passes to normalise it.
  Not bit-identical to normalising first (the rounding differs: ~1e-6 relative in fp32), hence an option.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vstmon.model.swin3d import I3DHead, PatchEmbed3D

__all__ = ["HALF_DTYPES", "cast_for_inference", "fold_input_normalization", "fp32_modules"]

HALF_DTYPES = (torch.bfloat16, torch.float16)


def fp32_modules(model: nn.Module) -> list[nn.Module]:
    """The modules ``cast_for_inference`` keeps in fp32: every LayerNorm and the classification head."""
    return [m for m in model.modules() if isinstance(m, nn.LayerNorm | I3DHead)]


def cast_for_inference(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast ``model``'s weights to ``dtype`` (bf16 or fp16; fp32 leaves it as it is) except its LayerNorms and
    head, in place; returns the model. Call after ``model.to(device)``; run it without autocast."""
    if dtype == torch.float32:
        return model
    if dtype not in HALF_DTYPES:
        raise ValueError(
            f"cast_for_inference: dtype must be torch.bfloat16, torch.float16 or float32; got {dtype}"
        )
    model.to(dtype)
    for module in fp32_modules(model):
        module.float()
    return model


def fold_input_normalization(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """Make ``model`` take raw clips (0-255 floats): its patch embedding applies ``(x - mean) / std`` (per input
    channel) through its weights. In place (two non-persistent buffers; the weights are untouched); returns the
    model. Undone by setting the patch embedding's ``input_mean`` and ``input_std`` back to None."""
    embeds = [m for m in model.modules() if isinstance(m, PatchEmbed3D)]
    if len(embeds) != 1:
        raise ValueError(
            f"fold_input_normalization: expected one PatchEmbed3D in the model, found {len(embeds)}"
        )
    embed = embeds[0]
    if len(mean) != embed.in_chans or len(std) != embed.in_chans:
        raise ValueError(
            f"fold_input_normalization: mean and std need {embed.in_chans} values (one per input channel); "
            f"got {len(mean)} and {len(std)}"
        )
    if min(std) <= 0:
        raise ValueError(f"fold_input_normalization: std must be positive; got {list(std)}")
    device = embed.proj.weight.device
    embed.input_mean = torch.tensor(mean, dtype=torch.float32, device=device)
    embed.input_std = torch.tensor(std, dtype=torch.float32, device=device)
    return model
