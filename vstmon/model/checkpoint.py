"""Checkpoint files: read safely, normalise to the official key layout, infer the architecture, strict load.

Formats understood (each has one remapping function to the official mmaction 0.x layout):

* official / mmaction 0.x: ``{'state_dict': {'backbone.*', 'cls_head.fc_cls.*'}, 'meta', ...}``, with or
  without the ``*.attn.relative_position_index`` buffers (checked against the computed index, then dropped);
* mmaction2 1.x: the same, but the final norm is ``backbone.norm3.*``;
* torchvision ``swin3d_t/s/b``: ``patch_embed.*``, ``features.{2s}.{i}.*`` (blocks), ``features.{2s+1}.*``
  (patch merging), ``mlp.0/3``, ``norm.*``, ``head.*``;
* a bare backbone state dict (``patch_embed.*``, ``layers.*``, ``norm.*``; no head).

A DDP ``module.`` prefix is stripped first. Files are read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from vstmon.errors import CheckpointError
from vstmon.log import get_logger
from vstmon.model.presets import PRESETS, SwinConfig, get_preset
from vstmon.model.swin3d import I3DHead, VideoSwin

__all__ = [
    "FORMATS",
    "checkpoint_id",
    "describe_config",
    "detect_format",
    "file_sha256",
    "infer_config",
    "load_checkpoint_state",
    "load_model",
    "read_meta",
    "remap_bare_backbone",
    "remap_mmaction2",
    "remap_official",
    "remap_torchvision",
]

_log = get_logger("checkpoint")

INDEX_SUFFIX = ".attn.relative_position_index"
_FETCH_HINT = (
    "Download an official checkpoint with `vstmon weights fetch NAME` "
    "(`vstmon weights list` shows the names; see checkpoints/README.md)"
)
_MAX_LISTED = 20  # keys listed per problem kind before "... and N more"


# ---------------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------------
def _sniff(path: Path) -> None:
    """Reject files that cannot be a torch checkpoint before torch sees them (clear words, no traceback)."""
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError as error:
        raise CheckpointError(f"checkpoint {path} cannot be read: {error.strerror}") from None
    if not head:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes): not a checkpoint (an interrupted download?)"
        )
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return  # zip archive (torch.save since 1.6) or a legacy pickle stream
    stripped = head.lstrip()
    if stripped[:1] == b"<":
        kind = "an HTML/XML page (a failed download?)"
    elif stripped[:1] in (b"{", b"["):
        kind = "JSON or other text"
    else:
        try:
            head.decode("utf-8")
            kind = "text"
        except UnicodeDecodeError:
            kind = "unknown binary data"
    raise CheckpointError(
        f"checkpoint {path} is not a PyTorch checkpoint: it holds {kind} "
        "(a checkpoint is a file written by torch.save)"
    )


def _read(path: Path) -> object:
    """``torch.load(weights_only=True)`` with every failure turned into a CheckpointError naming the file."""
    _sniff(path)
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols before failing on them
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise CheckpointError(f"checkpoint {path} cannot be read: {error.strerror or error}") from None
    except Exception as error:  # torch raises many types (UnpicklingError, RuntimeError, EOFError, KeyError)
        text = str(error)
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if unsafe:
            message = (
                f"checkpoint {path} holds pickled Python objects ({unsafe.group(1)}), not only tensors; "
                "vstmon loads checkpoints with weights_only=True and will not run code from a file. "
                "Re-save it as tensors only, e.g. torch.save({'state_dict': model.state_dict()}, path)"
            )
        elif "Weights only load failed" in text:
            message = (
                f"checkpoint {path} is not a PyTorch checkpoint, or is corrupted: "
                "its contents cannot be unpickled as plain tensors"
            )
        elif "central directory" in text or "zip archive" in text or isinstance(error, EOFError):
            message = f"checkpoint {path} is truncated or corrupted (an incomplete download or copy?)"
        else:
            first = text.strip().splitlines()[0][:200] if text.strip() else type(error).__name__
            message = (
                f"checkpoint {path} is not a readable PyTorch checkpoint ({type(error).__name__}: {first})"
            )
        raise CheckpointError(message) from None


def read_meta(path: str | Path) -> dict[str, object]:
    """The ``meta`` mapping of a checkpoint (what ``vstmon train`` records: classes, clip shape), or {}."""
    obj = _read(Path(path))
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    return dict(meta) if isinstance(meta, Mapping) else {}


def _tensor_dict(obj: object, path: Path) -> dict[str, Tensor]:
    """The state dict inside a loaded object (``state_dict`` / ``model`` / ``module`` entry, or the object)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(obj).__name__}, not a dict of tensors (a state_dict)"
        )
    for key in ("state_dict", "model", "module"):
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            obj = inner
            break
    not_tensors = [f"{k} ({type(v).__name__})" for k, v in obj.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"checkpoint {path} is not a state dict: entries that are not tensors: " + _listing(not_tensors)
        )
    if not obj:
        raise CheckpointError(f"checkpoint {path} holds an empty state dict")
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


# ---------------------------------------------------------------------------------------------------------
# key remapping: one function per format, each returning the official layout
# ---------------------------------------------------------------------------------------------------------
def remap_official(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official / mmaction 0.x: already the target layout."""
    return dict(state)


def remap_mmaction2(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """mmaction2 1.x: ``backbone.norm3.*`` (the norm of output stage 3) -> ``backbone.norm.*``."""
    return {re.sub(r"^backbone\.norm3\.", "backbone.norm.", k): v for k, v in state.items()}


_TV_BLOCK = re.compile(r"^features\.(\d+)\.(\d+)\.(.*)$")
_TV_MERGE = re.compile(r"^features\.(\d+)\.(reduction|norm)\.(.*)$")
_TV_MLP = {"mlp.0.": "mlp.fc1.", "mlp.3.": "mlp.fc2."}


def remap_torchvision(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision ``SwinTransformer3d``: ``features.{2s}.{i}`` -> blocks, ``features.{2s+1}`` -> downsample."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if merge := _TV_MERGE.match(key):
            index, part, rest = merge.groups()
            if int(index) % 2 == 1:
                out[f"backbone.layers.{int(index) // 2}.downsample.{part}.{rest}"] = value
                continue
        if block := _TV_BLOCK.match(key):
            index, block_index, rest = block.groups()
            if int(index) % 2 == 0:
                for old, new in _TV_MLP.items():
                    if rest.startswith(old):
                        rest = new + rest.removeprefix(old)
                out[f"backbone.layers.{int(index) // 2}.blocks.{block_index}.{rest}"] = value
                continue
        if key.startswith("head."):
            out["cls_head.fc_cls." + key.removeprefix("head.")] = value
        elif key.startswith(("patch_embed.", "norm.")):
            out["backbone." + key] = value
        else:
            out[key] = value  # left for the strict load to report as unexpected
    return out


def remap_bare_backbone(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A backbone saved on its own (``patch_embed.*``, ``layers.*``, ``norm.*``): add the ``backbone.`` prefix."""
    return {f"backbone.{k}": v for k, v in state.items()}


FORMATS: dict[str, Callable[[dict[str, Tensor]], dict[str, Tensor]]] = {
    "official": remap_official,
    "mmaction2": remap_mmaction2,
    "torchvision": remap_torchvision,
    "bare_backbone": remap_bare_backbone,
}


def detect_format(state: Mapping[str, Tensor]) -> str | None:
    """Which key layout ``state`` uses (a key of ``FORMATS``), or None when it is no Video Swin layout."""
    keys = list(state)
    if any(k.startswith("backbone.norm3.") for k in keys):
        return "mmaction2"
    if any(k.startswith("backbone.") for k in keys):
        return "official"
    if any(k.startswith("features.") for k in keys) and any(k.startswith("patch_embed.") for k in keys):
        return "torchvision"
    if any(k.startswith("layers.") for k in keys) and any(k.startswith("patch_embed.") for k in keys):
        return "bare_backbone"
    return None


def load_checkpoint_state(path: str | Path) -> dict[str, Tensor]:
    """Read ``path`` (weights only) and return its tensors under the official mmaction 0.x key names.

    ``*.attn.relative_position_index`` buffers, when the file has them, are kept (``load_model`` checks and
    drops them). Raises CheckpointError for a missing, unreadable or foreign file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist. {_FETCH_HINT}.")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    state = _tensor_dict(_read(path), path)
    fmt = detect_format(state)
    if fmt is None:
        raise CheckpointError(
            f"checkpoint {path} is not a Video Swin checkpoint: none of the known layouts (official "
            "'backbone.*', mmaction2, torchvision 'features.*', bare backbone) fits its keys, e.g. "
            + ", ".join(list(state)[:5])
        )
    return FORMATS[fmt](state)


# ---------------------------------------------------------------------------------------------------------
# architecture inference
# ---------------------------------------------------------------------------------------------------------
_BLOCK_KEY = re.compile(r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.")


def _window_from_table(rows: int, tokens: int | None) -> tuple[int, int, int]:
    """(Wd, Wh, Ww) with Wh == Ww from ``rows = (2Wd-1)(2Wh-1)(2Ww-1)`` (and ``tokens = Wd*Wh*Ww`` if known)."""
    candidates: list[tuple[int, int, int]] = []
    side = 1
    while (2 * side - 1) ** 2 <= rows:
        square = (2 * side - 1) ** 2
        if rows % square == 0 and (rows // square) % 2 == 1:
            depth = (rows // square + 1) // 2
            if tokens is None or depth * side * side == tokens:
                candidates.append((depth, side, side))
        side += 1
    if tokens is None and len(candidates) > 1:
        candidates = [c for c in candidates if c[1] > 1] or candidates  # a 1x1 spatial window is no Swin
    for preferred in candidates:
        if preferred[1] == 7:
            return preferred
    if len(candidates) == 1:
        return candidates[0]
    raise ValueError(
        f"a relative-position table of {rows} rows fits several windows {candidates}"
        if candidates
        else f"a relative-position table of {rows} rows fits no window with Wh == Ww"
    )


def infer_config(state: Mapping[str, Tensor]) -> SwinConfig:
    """The ``SwinConfig`` that ``state`` (official layout) was made with, from tensor shapes and key presence.

    Raises ValueError naming what is missing or inconsistent. ``num_classes`` is 0 when there is no head.
    """
    proj = state.get("backbone.patch_embed.proj.weight")
    if proj is None or proj.ndim != 5:
        raise ValueError("no 5-D backbone.patch_embed.proj.weight (embed_dim, in_chans, Pt, Ph, Pw)")
    embed_dim, in_chans, *patch = (int(n) for n in proj.shape)
    blocks: dict[int, set[int]] = {}
    for key in state:
        if match := _BLOCK_KEY.match(key):
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    if not blocks:
        raise ValueError("no backbone.layers.{s}.blocks.{i}.* tensors")
    stages = max(blocks) + 1
    missing_stages = [s for s in range(stages) if s not in blocks]
    if missing_stages:
        raise ValueError(f"stages {missing_stages} have no blocks")
    depths = tuple(max(blocks[s]) + 1 for s in range(stages))
    heads: list[int] = []
    windows: set[tuple[int, int, int]] = set()
    for s in range(stages):
        table = state.get(f"backbone.layers.{s}.blocks.0.attn.relative_position_bias_table")
        if table is None or table.ndim != 2:
            raise ValueError(f"no 2-D backbone.layers.{s}.blocks.0.attn.relative_position_bias_table")
        index = state.get(f"backbone.layers.{s}.blocks.0{INDEX_SUFFIX}")
        tokens = int(index.shape[0]) if index is not None and index.ndim == 2 else None
        heads.append(int(table.shape[1]))
        windows.add(_window_from_table(int(table.shape[0]), tokens))
    if len(windows) != 1:
        raise ValueError(f"the stages use different windows {sorted(windows)}")
    fc1 = state.get("backbone.layers.0.blocks.0.mlp.fc1.weight")
    if fc1 is None:
        raise ValueError("no backbone.layers.0.blocks.0.mlp.fc1.weight")
    head = state.get("cls_head.fc_cls.weight")
    fields = dict(
        embed_dim=embed_dim,
        depths=depths,
        num_heads=tuple(heads),
        window_size=windows.pop(),
        patch_size=tuple(patch),
        in_chans=in_chans,
        mlp_ratio=int(fc1.shape[0]) / embed_dim,
        qkv_bias="backbone.layers.0.blocks.0.attn.qkv.bias" in state,
        patch_norm="backbone.patch_embed.norm.weight" in state,
        num_classes=int(head.shape[0]) if head is not None else 0,
    )
    # start from a matching preset so training-only fields (drop path) get its values
    for name, preset in PRESETS.items():
        same = all(getattr(preset, k) == v for k, v in fields.items() if k != "num_classes")
        if same:
            return preset.with_(num_classes=fields["num_classes"], extra={"preset": name})
    return SwinConfig(**fields)  # type: ignore[arg-type]


def describe_config(cfg: SwinConfig) -> str:
    """A one-line summary of the shape-defining fields."""
    return (
        f"embed_dim={cfg.embed_dim} depths={list(cfg.depths)} num_heads={list(cfg.num_heads)} "
        f"window={list(cfg.window_size)} patch={list(cfg.patch_size)} mlp_ratio={cfg.mlp_ratio:g} "
        f"classes={cfg.num_classes}"
    )


# ---------------------------------------------------------------------------------------------------------
# strict load
# ---------------------------------------------------------------------------------------------------------
def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (constant memory)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_id(path: str | Path) -> str:
    """``<file stem>@<first 12 hex of the file's SHA-256>``, e.g. ``swin_tiny_..._1k@1a2b3c4d5e6f``."""
    return f"{Path(path).stem}@{file_sha256(path)[:12]}"


def _listing(items: list[str]) -> str:
    shown = items[:_MAX_LISTED]
    more = len(items) - len(shown)
    return "; ".join(shown) + (f"; ... and {more} more" if more > 0 else "")


def _shape(t: Tensor) -> str:
    return str(tuple(t.shape))


def _check_fit(model: VideoSwin, state: Mapping[str, Tensor]) -> list[str]:
    """Every disagreement between ``state`` and the model: missing, unexpected, mis-shaped, wrong index."""
    expected = model.state_dict()
    buffers = dict(model.named_buffers())
    problems_missing = [f"{k} {_shape(v)}" for k, v in expected.items() if k not in state]
    unexpected: list[str] = []
    mismatched: list[str] = []
    for key, value in state.items():
        if key.endswith(INDEX_SUFFIX) and key in buffers:
            own = buffers[key]
            if tuple(value.shape) != tuple(own.shape):
                mismatched.append(f"{key}: checkpoint {_shape(value)}, model {_shape(own)}")
            elif not torch.equal(value.to(own.dtype), own):
                mismatched.append(
                    f"{key}: values differ from the index the model computes for its window "
                    f"{list(model.config.window_size)}"
                )
        elif key not in expected:
            unexpected.append(f"{key} {_shape(value)}")
        elif tuple(value.shape) != tuple(expected[key].shape):
            mismatched.append(f"{key}: checkpoint {_shape(value)}, model {_shape(expected[key])}")
    problems: list[str] = []
    if mismatched:
        problems.append(f"{len(mismatched)} mis-shaped/different: " + _listing(mismatched))
    if problems_missing:
        problems.append(f"{len(problems_missing)} missing from the checkpoint: " + _listing(problems_missing))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected in the checkpoint: " + _listing(unexpected))
    return problems


def _resolve_arch(arch: str | SwinConfig, inferred: SwinConfig | None, error: str, path: Path) -> SwinConfig:
    if isinstance(arch, SwinConfig):
        return arch
    if arch == "auto":
        if inferred is None:
            raise CheckpointError(f"checkpoint {path}: cannot infer the architecture (arch: auto): {error}")
        return inferred
    try:
        return get_preset(arch)
    except KeyError as err:
        raise CheckpointError(f"checkpoint {path}: {err.args[0]} (or auto)") from None


def load_model(
    checkpoint: str | Path, arch: str | SwinConfig = "auto", num_classes: int | None = None
) -> VideoSwin:
    """A ``VideoSwin`` in eval mode with the weights of ``checkpoint`` (strict: every tensor must fit).

    ``arch``: ``"auto"`` (inferred from the tensors), a preset name, or a ``SwinConfig``. The number of
    classes comes from the checkpoint's head; ``num_classes``, when given, must match it, or (bare backbone)
    sizes a new, freshly initialised head. Sets ``model.checkpoint_id`` (``<stem>@<sha256[:12]>``).
    """
    path = Path(checkpoint)
    state = load_checkpoint_state(path)
    inferred: SwinConfig | None = None
    infer_error = ""
    try:
        inferred = infer_config(state)
    except ValueError as error:
        infer_error = str(error)
    cfg = _resolve_arch(arch, inferred, infer_error, path)
    arch_name = arch if isinstance(arch, str) else "the given SwinConfig"

    head_weight = state.get("cls_head.fc_cls.weight")
    new_head = head_weight is None
    if new_head:
        if num_classes is None:
            raise CheckpointError(
                f"checkpoint {path} has no classifier head (no cls_head.fc_cls.* / head.* tensors): it is a "
                "bare backbone. Give num_classes (model.num_classes in config.yaml) to attach a new, "
                "UNTRAINED head for fine-tuning, or use a checkpoint with a head"
            )
        cfg = cfg.with_(num_classes=num_classes)
    else:
        head_classes = int(head_weight.shape[0])
        if num_classes is not None and num_classes != head_classes:
            raise CheckpointError(
                f"checkpoint {path} has a head with {head_classes} classes but num_classes is {num_classes}; "
                f"set num_classes to {head_classes} (or leave it unset)"
            )
        cfg = cfg.with_(num_classes=head_classes)

    # build without initialising (meta tensors), then take the checkpoint's tensors as parameters
    with torch.device("meta"):
        model = VideoSwin(cfg)
    if new_head:
        model.cls_head = I3DHead(cfg.num_features, cfg.num_classes, cfg.head_dropout)
        state = {**state, **{f"cls_head.{k}": v for k, v in model.cls_head.state_dict().items()}}
    problems = _check_fit(model, state)
    if problems:
        hint = ""
        if inferred is not None and arch != "auto":
            hint = f" The checkpoint's tensors look like: {describe_config(inferred)} (arch: auto infers it)."
        raise CheckpointError(
            f"checkpoint {path} does not fit arch {arch_name} ({describe_config(cfg)}). "
            + " | ".join(problems)
            + "."
            + hint
        )
    weights = {
        k: (v.float() if v.is_floating_point() else v)
        for k, v in state.items()
        if not k.endswith(INDEX_SUFFIX)
    }
    model.load_state_dict(weights, strict=True, assign=True)
    model.eval()
    model.checkpoint_id = checkpoint_id(path)  # type: ignore[assignment]
    if new_head:
        _log.warning(
            "checkpoint has no head: attached a new, untrained head",
            checkpoint=str(path),
            num_classes=cfg.num_classes,
        )
    return model
