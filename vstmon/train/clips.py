"""Clips for training and evaluation: which frames, decoded how, cropped how.

Frames are sampled as at inference: ``frames`` (T) frames ``frame_interval`` (I) apart, a span of
``(T - 1) * I + 1`` source frames. Training takes one span at a random offset; evaluation takes ``clips`` spans
evenly over the video (the official test sampling, the middle of each of ``clips`` equal parts). A video shorter
than a span loops (index modulo its length), as the official sampler does.

Pixels: evaluation uses the daemon's own preprocessing (``FrameFitter``: short side to ``size_px``, centre crop,
RGB), so a model evaluated here sees what it sees in service; ``crops=3`` adds the left and right (or top and
bottom) squares of the official three-crop test. Training resizes the short side to ``size_px * 256 / 224``,
takes one random resized crop per clip (area ``min_crop_area``-1, aspect 3/4-4/3), resizes it to ``size_px`` and
flips it half the time (``flip``). Clips leave here as uint8 (T, S, S, 3) RGB; ``normalize_clips`` runs on the
device, as at inference. All randomness of a sample comes from ``(seed, epoch, index)``: the same sample is the
same in any worker process and after a resume.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from vstmon.ingest.fit import FrameFitter, fitted_size
from vstmon.train.data import Video

__all__ = [
    "ClipSpec",
    "EpochBatches",
    "EvalClips",
    "TrainClips",
    "decode_frames",
    "eval_offsets",
    "make_loader",
    "three_crops",
]


@dataclass(frozen=True)
class ClipSpec:
    frames: int
    frame_interval: int
    size_px: int

    @property
    def span(self) -> int:
        return (self.frames - 1) * self.frame_interval + 1

    def indices(self, video: Video, offset: int) -> np.ndarray:
        """Frame indices in the file (looping inside the video's range when it is shorter than a span)."""
        steps = offset + np.arange(self.frames) * self.frame_interval
        return video.first + steps % video.frames


def eval_offsets(video_frames: int, span: int, clips: int) -> list[int]:
    """Starts of ``clips`` evenly spread spans (official test mode); 0 when the video is not longer than a span."""
    room = video_frames - span + 1
    if room <= 1:
        return [0] * clips
    step = room / clips
    return [int(i * step + step / 2) for i in range(clips)]


def decode_frames(video: Video, indices: np.ndarray) -> dict[int, np.ndarray]:
    """BGR frames at ``indices`` (file frame numbers), read in order; a frame past a short file's real end is
    its last decoded frame (containers may over-report their length)."""
    wanted = sorted(set(int(i) for i in indices))
    capture = cv2.VideoCapture(str(video.path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        raise OSError(f"{video.path}: cannot be opened")
    frames: dict[int, np.ndarray] = {}
    try:
        position, last = 0, None
        for index in wanted:
            while position < index and capture.grab():
                position += 1
            if position == index and capture.grab():
                ok, frame = capture.retrieve()
                position += 1
                if ok:
                    last = frame
            if last is None:
                raise OSError(f"{video.path}: frame {index} could not be decoded")
            frames[index] = last
    finally:
        capture.release()
    return frames


def three_crops(frame_bgr: np.ndarray, size_px: int, out: np.ndarray) -> np.ndarray:
    """(3, S, S, 3) RGB: short side to ``size_px``, then the first, middle and last squares along the long side."""
    height, width = frame_bgr.shape[:2]
    new_w, new_h = fitted_size(width, height, size_px)
    resized = cv2.resize(frame_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    rgb = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    if new_w >= new_h:
        starts = [0, (new_w - size_px) // 2, new_w - size_px]
        crops = [rgb[:, s : s + size_px] for s in starts]
    else:
        starts = [0, (new_h - size_px) // 2, new_h - size_px]
        crops = [rgb[s : s + size_px] for s in starts]
    for i, crop in enumerate(crops):
        out[i] = crop
    return out


def _seeded(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


class TrainClips(TorchDataset):
    """Training samples: ``dataset[(index, epoch)]`` -> (uint8 (T, S, S, 3) clip, class index)."""

    def __init__(
        self, videos: Sequence[Video], spec: ClipSpec, seed: int, flip: bool, min_crop_area: float
    ) -> None:
        self.videos = list(videos)
        self.spec = spec
        self.seed = seed
        self.flip = flip
        self.min_crop_area = min_crop_area
        self.scale_px = round(spec.size_px * 256 / 224)

    def __len__(self) -> int:
        return len(self.videos)

    def _crop_box(self, rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, h, w) of a random resized crop (10 tries, then the centred largest square)."""
        area = height * width
        for _ in range(10):
            target = area * rng.uniform(self.min_crop_area, 1.0)
            aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
        side = min(height, width)
        return (height - side) // 2, (width - side) // 2, side, side

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, epoch = key
        video, spec = self.videos[index], self.spec
        rng = _seeded(self.seed, epoch, index)
        offset = int(rng.integers(0, max(1, video.frames - spec.span + 1)))
        wanted = spec.indices(video, offset)
        decoded = decode_frames(video, wanted)
        height, width = next(iter(decoded.values())).shape[:2]
        scaled_w, scaled_h = fitted_size(width, height, self.scale_px)
        top, left, h, w = self._crop_box(rng, scaled_h, scaled_w)
        flip = self.flip and rng.random() < 0.5
        size = spec.size_px
        clip = np.empty((spec.frames, size, size, 3), np.uint8)
        scaled = np.empty((scaled_h, scaled_w, 3), np.uint8)
        for t, frame_index in enumerate(wanted):
            cv2.resize(
                decoded[int(frame_index)], (scaled_w, scaled_h), dst=scaled, interpolation=cv2.INTER_LINEAR
            )
            crop = cv2.resize(
                scaled[top : top + h, left : left + w], (size, size), interpolation=cv2.INTER_LINEAR
            )
            if flip:
                crop = crop[:, ::-1]
            clip[t] = crop[..., ::-1]  # BGR -> RGB
        return torch.from_numpy(clip), video.label


class EvalClips(TorchDataset):
    """Evaluation samples: ``dataset[i]`` -> (uint8 (clips * crops, T, S, S, 3) views of video i, class index)."""

    def __init__(self, videos: Sequence[Video], spec: ClipSpec, clips: int = 1, crops: int = 1) -> None:
        if crops not in (1, 3):
            raise ValueError(f"crops must be 1 (centre) or 3 (three-crop test); got {crops}")
        self.videos = list(videos)
        self.spec = spec
        self.clips = clips
        self.crops = crops

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        video, spec = self.videos[index], self.spec
        offsets = eval_offsets(video.frames, spec.span, self.clips)
        wanted = [spec.indices(video, o) for o in offsets]
        decoded = decode_frames(video, np.concatenate(wanted))
        size = spec.size_px
        views = np.empty((self.clips, self.crops, spec.frames, size, size, 3), np.uint8)
        fitter = FrameFitter(size)
        crops = np.empty((3, size, size, 3), np.uint8)
        for c, indices in enumerate(wanted):
            for t, frame_index in enumerate(indices):
                frame = decoded[int(frame_index)]
                if self.crops == 1:
                    fitter.fit(frame, views[c, 0, t])
                else:
                    views[c, :, t] = three_crops(frame, size, crops)
        return torch.from_numpy(views.reshape(-1, spec.frames, size, size, 3)), video.label


class EpochBatches:
    """Batch sampler of one run: epoch ``e`` yields lists of ``(index, e)`` in a seeded order, ``batch`` at a time.

    ``set_epoch`` picks the epoch; the order depends only on (seed, epoch), so a resumed run sees the same
    batches. The last batch of an epoch may be smaller.
    """

    def __init__(self, size: int, batch: int, seed: int) -> None:
        self.size = size
        self.batch = batch
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        return [int(i) for i in np.random.default_rng([self.seed, self.epoch, 2**31]).permutation(self.size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.order()
        for start in range(0, self.size, self.batch):
            yield [(i, self.epoch) for i in order[start : start + self.batch]]

    def __len__(self) -> int:
        return math.ceil(self.size / self.batch)


def _quiet_worker(_worker_id: int) -> None:
    cv2.setNumThreads(1)  # one decoder thread per worker process: the workers are the parallelism
    torch.set_num_threads(1)


def make_loader(dataset: TorchDataset, workers: int, device: torch.device, **kwargs: object) -> DataLoader:
    """A DataLoader decoding in ``workers`` processes (0: in this one), pinned for CUDA."""
    return DataLoader(
        dataset,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        worker_init_fn=_quiet_worker if workers > 0 else None,
        **kwargs,  # type: ignore[arg-type]
    )
