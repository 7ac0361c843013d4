"""The model names ``model.arch`` accepts, known without importing the model.

``vstmon.model.presets.PRESETS`` defines the networks and imports nothing heavy, but ``vstmon.model`` itself
depends on this package (``model/bundle.py`` loads ``Config``'s model section): the config reading the presets
would run an import back up a layer. The names are therefore listed here, and a test
(``tests/config/test_arch_names.py``) keeps them equal to ``PRESETS``' keys.
"""

from __future__ import annotations

__all__ = ["ARCH_NAMES", "check_arch"]

_BASES = ("swin_t", "swin_s", "swin_b", "swin_l")
# every preset, and its Something-Something v2 variant (temporal window 16, 174 classes)
ARCH_NAMES: frozenset[str] = frozenset(_BASES + tuple(f"{name}_sthv2" for name in _BASES))


def check_arch(value: str) -> str:
    """``value`` when it is ``auto`` or a preset name; ValueError listing the names otherwise."""
    if value != "auto" and value not in ARCH_NAMES:
        raise ValueError(f"unknown arch {value!r}; use auto or one of {', '.join(sorted(ARCH_NAMES))}")
    return value
