"""Video Swin hyper-parameters as a frozen dataclass, and the official presets.

A variant is only a set of numbers. Numbers from Liu et al., "Video Swin Transformer" (2021), Table 1/7,
and the official configs (SwinTransformer/Video-Swin-Transformer, configs/recognition/swin/).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = ["PRESETS", "SwinConfig", "get_preset"]


@dataclass(frozen=True)
class SwinConfig:
    embed_dim: int = 96  # channels after patch embedding (C); doubles at every merge
    depths: tuple[int, ...] = (2, 2, 6, 2)  # blocks per stage
    num_heads: tuple[int, ...] = (3, 6, 12, 24)  # attention heads per stage
    window_size: tuple[int, int, int] = (8, 7, 7)  # (Wd, Wh, Ww) in tokens
    patch_size: tuple[int, int, int] = (2, 4, 4)  # (Pt, Ph, Pw) in frames/pixels
    in_chans: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_scale: float | None = None  # None -> head_dim ** -0.5
    patch_norm: bool = True  # LayerNorm after the patch embedding
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.2  # stochastic depth (training only)
    layer_norm_eps: float = 1e-5
    num_classes: int = 400
    head_dropout: float = 0.5  # I3D head dropout (training only)
    use_checkpoint: bool = False  # gradient checkpointing per stage (training only)
    extra: dict[str, object] = field(default_factory=dict, compare=False, hash=False)

    @property
    def num_features(self) -> int:
        """Channels of the backbone output (embed_dim * 2 ** (stages - 1))."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    def with_(self, **changes: object) -> SwinConfig:
        return replace(self, **changes)  # type: ignore[arg-type]


_K400 = (8, 7, 7)
_SSV2 = (16, 7, 7)

PRESETS: dict[str, SwinConfig] = {
    "swin_t": SwinConfig(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.1),
    "swin_s": SwinConfig(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    "swin_b": SwinConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.3),
    "swin_l": SwinConfig(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), drop_path_rate=0.3),
}
# Something-Something v2 variants: temporal window 16, 174 classes (the official SSv2 model is Swin-B).
for _name in list(PRESETS):
    PRESETS[f"{_name}_sthv2"] = PRESETS[_name].with_(window_size=_SSV2, num_classes=174)


def get_preset(name: str) -> SwinConfig:
    """Look up a preset by name (``swin_t``, ``swin_b_sthv2``, ...); KeyError lists the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; choose one of {', '.join(sorted(PRESETS))}") from None
