"""Frames as torch tensors on the device that decoded them (NVDEC: the GPU): the same fitting, squeezing and
cropping the CPU path does with OpenCV (:class:`~vstmon.preprocess.FrameFitter`, the detector's 300x300 squeeze,
:class:`~vstmon.ingest.crops.CropFitter`), and a bounded per-stream ring of fitted frames in device memory.

Every function takes an ``(H, W, 3)`` uint8 RGB tensor (what PyNvVideoCodec hands over through DLPack with
``OutputColorType.RGB``) and runs on the tensor's device; nothing here copies to the host. Resizing is bilinear
with half-pixel centres (OpenCV's ``INTER_LINEAR``; torch's ``align_corners=False``) and, where OpenCV would use
``INTER_AREA`` (a crop shrunk to the model's size), antialiased bilinear; tests/test_gpu_frames.py measures both
against OpenCV on real footage (CPU tensors: the arithmetic is the device's).

:class:`GpuFrameRing` is the GPU twin of the host ring's frame store: ``slots`` fitted frames preallocated at
construction, so a stream's VRAM is fixed (``slots * size_px**2 * 3`` bytes: 75 slots of 224 px = 11.3 MB), and
each write overwrites the oldest slot. The ring is written by one thread (the stream's reader) and read by seq.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from vstmon.ingest.fit import fitted_size

__all__ = ["GpuFrameRing", "crop_tensor", "fit_tensor", "resize_tensor", "squeeze_tensor"]


def _check(frame: torch.Tensor) -> None:
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != torch.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB tensor; got {tuple(frame.shape)} {frame.dtype}")


def resize_tensor(
    frame: torch.Tensor, height_px: int, width_px: int, *, antialias: bool = False
) -> torch.Tensor:
    """(H, W, 3) uint8 -> (height_px, width_px, 3) uint8, bilinear with half-pixel centres, rounded."""
    _check(frame)
    if tuple(frame.shape[:2]) == (height_px, width_px):
        return frame
    x = rearrange(frame, "h w c -> 1 c h w").float()
    x = F.interpolate(
        x, size=(height_px, width_px), mode="bilinear", align_corners=False, antialias=antialias
    )
    return rearrange(x.round_().clamp_(0, 255).to(torch.uint8), "1 c h w -> h w c")


def fit_tensor(frame: torch.Tensor, size_px: int) -> torch.Tensor:
    """The model's crop of a frame, as :class:`~vstmon.preprocess.FrameFitter`: short side to ``size_px``, then
    the centre ``size_px`` square. (H, W, 3) uint8 RGB -> (size_px, size_px, 3) uint8 RGB."""
    height, width = int(frame.shape[0]), int(frame.shape[1])
    new_w, new_h = fitted_size(width, height, size_px)
    resized = resize_tensor(frame, new_h, new_w)
    top, left = (new_h - size_px) // 2, (new_w - size_px) // 2
    return resized[top : top + size_px, left : left + size_px]


def squeeze_tensor(frame: torch.Tensor, size_px: int) -> torch.Tensor:
    """The detector's input: the whole frame squeezed to ``size_px`` square, aspect ratio not kept."""
    return resize_tensor(frame, size_px, size_px)


def crop_tensor(frame: torch.Tensor, rect: tuple[int, int, int], size_px: int) -> torch.Tensor:
    """A person's square ``rect`` = (x0, y0, side) in source pixels (:func:`~vstmon.ingest.crops.square_crop_px`),
    resized to ``size_px`` as :class:`~vstmon.ingest.crops.CropFitter` does (shrinking antialiased)."""
    _check(frame)
    left, top, side = rect
    crop = frame[top : top + side, left : left + side]
    if crop.shape[0] != side or crop.shape[1] != side:
        raise ValueError(f"crop {rect} is outside the {frame.shape[1]}x{frame.shape[0]} frame")
    return resize_tensor(crop, size_px, size_px, antialias=side > size_px)


class GpuFrameRing:
    """``slots`` fitted frames of one stream in device memory, preallocated; ``write`` overwrites the oldest.

    ``read(seq)`` returns the slot's tensor (a view: valid until ``slots`` more writes) or None when that frame
    was overwritten or not written yet. The stream's clock time of each frame is kept beside it.
    """

    def __init__(self, slots: int, size_px: int, device: torch.device | str) -> None:
        if slots < 1 or size_px < 1:
            raise ValueError(f"a ring needs slots >= 1 and size_px >= 1; got {slots}, {size_px}")
        self.slots, self.size_px = int(slots), int(size_px)
        self.frames = torch.zeros(
            (self.slots, self.size_px, self.size_px, 3), dtype=torch.uint8, device=device
        )
        self._ts_s = [0.0] * self.slots
        self.next_seq = 0  # the seq the next write gets

    @property
    def vram_bytes(self) -> int:
        """Device memory the ring holds, fixed at construction."""
        return self.frames.numel() * self.frames.element_size()

    def write(self, frame: torch.Tensor, stream_ts_s: float) -> int:
        """Fit a decoded frame ((H, W, 3) uint8 RGB, on the ring's device) into the next slot; its seq."""
        seq = self.next_seq
        slot = seq % self.slots
        self.frames[slot].copy_(fit_tensor(frame, self.size_px))
        self._ts_s[slot] = float(stream_ts_s)
        self.next_seq = seq + 1
        return seq

    def read(self, seq: int) -> tuple[torch.Tensor, float] | None:
        """(frame (size_px, size_px, 3) uint8 RGB view, stream_ts_s) of ``seq``, or None if gone or not yet."""
        if not self.next_seq - self.slots <= seq < self.next_seq or seq < 0:
            return None
        slot = seq % self.slots
        return self.frames[slot], self._ts_s[slot]
