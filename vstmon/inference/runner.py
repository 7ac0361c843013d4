"""The runner: one model on one device, and everything torch about running a batch on it.

It owns the device, the precision, the host staging buffer, compilation, the attention kernel and the
out-of-memory handling; it knows nothing of streams, slots or fairness (``batcher.Batcher``) nor of threads
(``engine.Engine`` drives it). A remote inference backend replaces this part.

``run`` takes uint8 clips (N, T, H, W, 3) staged in the host buffer, copies them to the device, normalises them
there, runs the model under ``torch.inference_mode()`` and autocast, and returns every clip's fp32 softmax
probabilities.

Precision: by default the weights stay fp32 and a half ``precision`` runs the forward under autocast. With
``cast_weights``, the weights themselves are bf16/fp16 (``model.inference.cast_for_inference``: LayerNorms and
the head stay fp32) and no autocast runs. With ``fold_normalization``, the model normalises through its patch
embedding's weights (``model.inference.fold_input_normalization``) and the clip is only converted to fp32
(``normalize.clips_to_float``). Both are off by default: neither is bit-identical to
the default path (see ``tests/test_inference_setup.py`` for the tolerances).

Staging: one host buffer (pinned on CUDA), allocated once (at construction when ``clip_shape`` is given). The copy
to the device is not overlapped with the previous batch's forward: measured on an H100 (docs/benchmarks.md, the
"staging" table), the copy of a 16-clip batch of 32 x 224 x 224 clips is 1.4 ms, 3.7 % of its 39 ms forward, so
double buffering was left out on purpose.

Start-up (``warm_up``, before the daemon says READY): with ``clip_shape`` known, on CUDA or with ``compile``,
every batch size up to ``max_batch`` is run once. With ``compile``, that is where ``torch.compile`` really
compiles (it is lazy): the model's per-shape constants are prepared first (``VideoSwin.prepare``), the batch
dimension is marked dynamic (one graph for batch 1, one for 2..max), and a compile failure falls back to eager
with one clear log line, at start or on any later batch. An out-of-memory error during warm-up lowers
``max_batch`` before the first real clip arrives.

Attention kernel (CUDA): the model's attention takes a float mask (relative-position bias, plus the shift mask),
which FlashAttention does not take; of the kernels that do (cuDNN, memory-efficient, math), warm-up runs one
forward of ``max_batch`` clips (the size the engine runs under load: on an H100 the faster kernel at batch 1 was
18 % slower at batch 16) with each, and keeps the one with the lowest peak memory, or a faster one whose peak
is within 10 % of it (``pick_attention``; the kit's "attention" table shows the figures per kernel).

Out of memory: the batch is split in halves and ``max_batch`` lowered below the size that failed; the retry
happens after the ``except`` block is left (its traceback holds the failed attempt's tensors), and after
``_GROW_AFTER`` batches in a row that fit, ``max_batch`` grows back by one, up to the configured value.
"""

from __future__ import annotations

import functools
import gc
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from vstmon.inference.cuda_graphs import CudaGraphs
from vstmon.inference.engine_cache import EngineKey, EngineOptions, load_or_build, weights_sha256
from vstmon.inference.kernels import attention_context, copy_clips, is_out_of_memory, sdpa_backend
from vstmon.log import get_logger
from vstmon.model.devices import auto_half_dtype, resolve_devices, resolve_dtype
from vstmon.types import Clip

__all__ = [
    "Runner",
    "attention_context",
    "auto_half_dtype",
    "copy_clips",
    "is_out_of_memory",
    "resolve_devices",
    "resolve_dtype",
    "sdpa_backend",
]

_log = get_logger("runner")

_GROW_AFTER = 50  # batches in a row without out-of-memory before max_batch grows back by one
_ATTENTION_KERNELS = ("cudnn", "efficient", "math")  # SDPA kernels that take a float attention mask
_ATTENTION_MEMORY_SLACK = 1.10  # a kernel within this factor of the lowest peak memory may win on speed

_PRECISION_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _one_line(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _default_engine_options(model: nn.Module) -> EngineOptions:
    """TensorRT without a cache (a runner made without ``engine``): the weights' id from the state dict."""
    from vstmon.inference.tensorrt import TensorRTBuilder

    return EngineOptions(TensorRTBuilder(), None, weights_sha256(model))


class Runner:
    """One model on one device (see the module docstring). Not thread-safe: one thread runs it."""

    remote = False  # the model runs in this process (``triton_runner.TritonRunner``: on a server)

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device,
        precision: str,
        max_batch: int,
        gpu_memory_fraction: float | None = None,
        compile: bool | str = False,
        normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
        name: str | None = None,
        clip_shape: Sequence[int] | None = None,
        compile_backend: Any = "inductor",
        cast_weights: bool = False,
        fold_normalization: bool = False,
        engine: EngineOptions | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if fold_normalization and normalize is not None:
            raise ValueError("fold_normalization replaces normalize: pass one or the other")
        if compile not in (False, True, "inductor", "tensorrt"):
            raise ValueError(f"compile must be false, true (inductor) or tensorrt; got {compile!r}")
        self.device = resolve_devices(str(device))[0] if isinstance(device, str) else device
        self.dtype = resolve_dtype(precision, self.device)
        self.name = name or str(self.device)
        if (
            compile == "tensorrt"
        ):  # the engine is built from the model as it is: half weights for a half engine
            cast_weights = True
        # half weights end to end (model.inference.cast_for_inference) instead of autocast; fp32: nothing to cast
        self.cast_weights = bool(cast_weights) and self.dtype != torch.float32
        self.fold_normalization = bool(fold_normalization)
        if fold_normalization:  # the model normalises through its patch embedding; the clip is converted once
            from vstmon.model.normalize import clips_to_float

            normalize = functools.partial(clips_to_float, dtype=torch.float32)  # the folded conv runs in fp32
        elif normalize is None:
            from vstmon.model.normalize import normalize_clips

            normalize = normalize_clips
        self._normalize = normalize
        self.max_batch = int(max_batch)
        self._configured_max_batch = self.max_batch  # what max_batch grows back to after out-of-memory splits
        self._fits_in_a_row = 0
        if self.device.type == "cuda" and gpu_memory_fraction is not None:
            torch.cuda.set_per_process_memory_fraction(float(gpu_memory_fraction), self.device)
        self.model = model.to(self.device).eval()
        if self.cast_weights:
            from vstmon.model.inference import cast_for_inference

            cast_for_inference(self.model, self.dtype)
        if self.fold_normalization:
            from vstmon.model.inference import fold_input_normalization
            from vstmon.model.normalize import MEAN_RGB, STD_RGB

            fold_input_normalization(self.model, MEAN_RGB, STD_RGB)
        self._forward: Callable[[torch.Tensor], torch.Tensor] = self.model
        self._compile_backend = (
            compile_backend if compile in (True, "inductor") else None
        )  # compiled in warm_up
        self._engine: EngineOptions | None = None  # compile: tensorrt, built or loaded in warm_up
        if compile == "tensorrt":
            self._engine = engine or _default_engine_options(self.model)
            self._compile_backend = compile_backend if self._engine.fallback == "inductor" else None
        self.forward_mode = "eager"  # what forwards run: eager, inductor (torch.compile) or tensorrt
        self.compiled = False  # the forward in use is a compiled one (inductor or tensorrt)
        self._want_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        self._graphs: CudaGraphs | None = None  # captured at warm-up (CUDA only)
        self.attention: str | None = None  # the SDPA kernel forwards run with (CUDA, picked at warm-up)
        self.attention_figures: dict[str, dict[str, float]] = {}  # kernel -> peak MiB and ms (warm-up)
        self._autocast = self.dtype != torch.float32 and not self.cast_weights
        self.oom_splits = 0
        self.oom_dropped_batches = 0  # batches of one clip that did not fit even alone
        self.host: torch.Tensor | None = None  # (max_batch, T, H, W, 3) uint8, pinned on CUDA
        self._host_np: np.ndarray | None = None  # numpy view of host
        self.clip_shape: tuple[int, ...] | None = None
        if clip_shape is not None:
            shape = tuple(int(n) for n in clip_shape)
            if len(shape) != 4 or shape[-1] != 3 or min(shape) < 1:
                raise ValueError(f"clip_shape must be (T, H, W, 3), got {shape}")
            self.clip_shape = shape
            self._allocate_staging(shape)

    def warm_up(self) -> None:
        """Build or load the engine, or compile (if asked), run every batch size once and capture CUDA graphs
        (if asked), on CUDA or when compiling; a no-op otherwise or without a known clip shape. Blocks; the
        engine calls it in ``start``, before its thread runs (and the daemon before READY)."""
        accelerated = self._compile_backend is not None or self._engine is not None
        if self.host is None or (self.device.type != "cuda" and not accelerated):
            return
        start_s = time.monotonic()
        flex = any(
            getattr(m, "flex", False) for m in self.model.modules()
        )  # swin3d.use_flex_attention: no SDPA
        if self.device.type == "cuda" and not flex:
            self.attention = self.pick_attention()
        prepare = getattr(self.model, "prepare", None)
        t, h, w, _ = self.host.shape[1:]
        if self._engine is not None:
            self._build_engine((t, h, w), prepare)
        if self._compile_backend is not None and not self.compiled:
            try:
                if prepare is not None:
                    prepare((t, h, w), self.device)
                self._forward = torch.compile(self.model, backend=self._compile_backend)  # type: ignore[assignment]
                self.compiled = True
                self.forward_mode = "inductor"
            except Exception as error:  # an optional speed-up must never stop the daemon
                self._fall_back_to_eager(error)
        self.host.zero_()
        size = 1
        while size <= self.max_batch:  # an out-of-memory error lowers max_batch and ends the loop
            if self.run(self.host[:size]) is None:
                break
            size += 1
            if self.device.type == "cuda":  # each size's cached blocks go back before the next size: kept,
                torch.cuda.empty_cache()  # they added up to 10.4 GiB reserved for Swin-T sizes 1-16 on an H100
        if self._want_graphs:
            self._capture_graphs()
        _log.info(
            "runner warmed up",
            device=self.name,
            dtype=str(self.dtype).removeprefix("torch."),
            backend=self.forward_mode,
            compiled=self.compiled,
            cast_weights=self.cast_weights,
            cuda_graphs=sorted(self._graphs.sizes()) if self._graphs is not None else None,
            attention=self.attention,
            max_batch=self.max_batch,
            seconds=round(time.monotonic() - start_s, 2),
        )

    def _build_engine(self, clip_shape: tuple[int, int, int], prepare: Callable[..., None] | None) -> None:
        """Load the cached engine or build one (``inference_cache.load_or_build``); on any failure (builder not
        installed, build error) log one error line and go on with the fallback (torch.compile or eager)."""
        assert self._engine is not None and self.host is not None
        options = self._engine
        begin_s = time.monotonic()
        try:
            if prepare is not None:
                prepare(clip_shape, self.device)
            key = EngineKey.for_device(options.builder.version(), self.device, self.max_batch, clip_shape,
                                       _PRECISION_NAMES[self.dtype], options.weights_sha256,
                                       backend=options.builder.backend)  # fmt: skip
            with torch.inference_mode():
                example = self._normalize(self.host[:1].to(self.device))  # (1, 3, T, H, W) as forwards get it
            example = example.clone()  # a normal tensor: export refuses inference tensors
            engine, built = load_or_build(options, key, self.model, example, self.device)
        except Exception as error:  # an optional speed-up must never stop the daemon
            _log.error(
                f"{options.builder.backend} engine unavailable; running {options.fallback} instead",
                device=self.name,
                error=_one_line(error),
                seconds=round(time.monotonic() - begin_s, 1),
            )
            return
        self._forward = engine
        self.compiled = True
        self.forward_mode = options.builder.backend
        self._compile_backend = None  # no torch.compile fallback at start: the engine is there
        _log.info(
            f"{options.builder.backend} engine ready",
            device=self.name,
            built=built,
            seconds=round(time.monotonic() - begin_s, 1),
            digest=key.digest(),
        )

    def _capture_graphs(self) -> None:
        """Capture one CUDA graph per batch size (largest first, one memory pool), from static buffers."""
        assert self.host is not None
        graphs = CudaGraphs(self.device, tuple(self.host.shape[1:]))
        for size in range(self.max_batch, 0, -1):
            try:
                graphs.capture(size, self._graph_step)
            except Exception as error:  # out of memory, an op that cannot be captured: eager for this size
                _log.warning("cuda graph not captured", device=self.name, batch=size, error=_one_line(error))
        self._graphs = graphs if graphs.sizes() else None

    def _graph_step(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (N, T, H, W, 3) on the device -> fp32 probabilities (N, C): what a graph captures."""
        x = self._normalize(frames)  # (N, 3, T, H, W)
        with (
            torch.autocast(self.device.type, dtype=self.dtype, enabled=self._autocast, cache_enabled=False),
            attention_context(self.attention),
        ):
            logits = self._forward(x)  # (N, C)
        return torch.softmax(logits.float(), dim=-1)  # (N, C) fp32

    def pick_attention(self) -> str | None:
        """Run one forward of ``max_batch`` clips with each attention kernel that takes a float mask; return the
        one with the lowest peak memory, or a faster one within ``_ATTENTION_MEMORY_SLACK`` of it (None: none
        ran, leave it to torch). CUDA only; uses the staging buffer (a kernel out of memory is left out)."""
        assert self.host is not None
        batch = self.host[: self.max_batch]
        figures: dict[str, dict[str, float]] = {}
        for name in _ATTENTION_KERNELS:
            self.attention = name
            try:
                self._infer(batch)  # first run: kernel selection, workspace, cuDNN plans
                torch.cuda.synchronize(self.device)
                base = torch.cuda.memory_allocated(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
                begin_s = time.perf_counter()
                self._infer(batch)
                torch.cuda.synchronize(self.device)
                elapsed_ms = (time.perf_counter() - begin_s) * 1000.0
                peak_mib = (torch.cuda.max_memory_allocated(self.device) - base) / 2**20
            except Exception as error:  # not supported for this shape, dtype or GPU
                _log.info("attention kernel unusable", device=self.name, kernel=name, error=str(error)[:200])
                continue
            figures[name] = {"peak_mib": round(peak_mib, 1), "ms": round(elapsed_ms, 2)}
        self.attention_figures = figures
        if not figures:
            return None
        lowest = min(f["peak_mib"] for f in figures.values())
        eligible = [n for n, f in figures.items() if f["peak_mib"] <= lowest * _ATTENTION_MEMORY_SLACK]
        chosen = min(eligible, key=lambda n: figures[n]["ms"])
        _log.info("attention kernel chosen", device=self.name, kernel=chosen, figures=figures)
        return chosen

    def _fall_back_to_eager(self, error: BaseException) -> None:
        what = (
            "torch.compile"
            if self.forward_mode in ("eager", "inductor")
            else f"the {self.forward_mode} engine"
        )
        _log.error(
            f"{what} failed; running eager from now on",
            device=self.name,
            backend=self._compile_backend
            if self.forward_mode in ("eager", "inductor")
            else self.forward_mode,
            error=_one_line(error),
        )
        self._forward = self.model
        self.compiled = False
        self.forward_mode = "eager"
        self._graphs = None  # they captured the failed forward

    def _allocate_staging(self, shape: tuple[int, ...]) -> None:
        pin = self.device.type == "cuda"
        self.host = torch.zeros((self._configured_max_batch, *shape), dtype=torch.uint8, pin_memory=pin)
        self._host_np = self.host.numpy()
        _log.debug("staging buffer allocated", device=self.name, shape=list(self.host.shape), pinned=pin)

    def stage(self, clips: Sequence[Clip]) -> torch.Tensor:
        """Copy the clips' frames into the host buffer (allocated at the first call without ``clip_shape``);
        returns its view of ``len(clips)`` rows."""
        copy_clips(clips, self._staging(clips[0]), self.clip_shape or ())
        return self.staged(len(clips))

    def stage_row(self, row: int, clip: Clip) -> None:
        """Copy one clip's frames into row ``row`` of the host buffer (a caller that fills it clip by clip)."""
        copy_clips([clip], self._staging(clip)[row : row + 1], self.clip_shape or ())

    def staged(self, n: int) -> torch.Tensor:
        """The first ``n`` rows of the host buffer, as ``run`` takes them."""
        assert self.host is not None
        return self.host[:n]

    def _staging(self, clip: Clip) -> np.ndarray:
        if self.host is None:  # no clip_shape given: the first clip's
            self.clip_shape = tuple(clip.frames.shape)
            self._allocate_staging(self.clip_shape)
        assert self._host_np is not None
        return self._host_np

    def run(self, host: torch.Tensor) -> np.ndarray | None:
        """Run ``host`` (n clips); on out-of-memory lower ``max_batch`` and run the halves. Rows of clips that do
        not fit even alone are NaN (dropped by the caller); None when none fitted.

        The retry happens after the ``except`` block is left: the exception's traceback holds the failed
        attempt's frames (staged input, normalised tensor, activations), and retrying under it would need that
        memory twice. After ``_GROW_AFTER`` batches in a row without an out-of-memory error, ``max_batch`` grows
        back by one, up to the configured value.
        """
        out_of_memory = False
        failed_compiled: BaseException | None = None
        try:
            probs = self._infer(host)
        except Exception as error:
            if not is_out_of_memory(error):
                if not self.compiled and self._graphs is None:
                    raise
                failed_compiled = error
            out_of_memory = failed_compiled is None
        if failed_compiled is not None:  # outside the except: the failed attempt's memory is released
            self._fall_back_to_eager(failed_compiled)
            del failed_compiled
            return self.run(host)
        if not out_of_memory:
            self._grow_back()
            return probs
        gc.collect()  # frames of the failed attempt can sit in reference cycles
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        n = host.shape[0]
        self._fits_in_a_row = 0
        if n <= 1:
            _log.error("out of memory on a single clip; clip dropped", device=self.name)
            self.oom_dropped_batches += 1
            return None
        self.max_batch = max(1, min(self.max_batch, n - 1))  # below the smallest size that failed
        self.oom_splits += 1
        _log.warning(
            "out of memory: batch split, max_batch lowered",
            device=self.name,
            batch=n,
            max_batch=self.max_batch,
        )
        halves = [self.run(host[: n // 2]), self.run(host[n // 2 :])]
        if all(h is None for h in halves):
            return None
        width = next(h.shape[1] for h in halves if h is not None)
        return np.concatenate(
            [h if h is not None else np.full((len(part), width), np.nan, np.float32)
             for h, part in zip(halves, (host[: n // 2], host[n // 2 :]), strict=True)],
            axis=0,
        )  # fmt: skip

    def _grow_back(self) -> None:
        self._fits_in_a_row += 1
        if self.max_batch < self._configured_max_batch and self._fits_in_a_row >= _GROW_AFTER:
            self.max_batch += 1
            self._fits_in_a_row = 0
            _log.info(
                "max_batch raised again after batches that fitted", device=self.name, max_batch=self.max_batch
            )

    def _infer(self, host: torch.Tensor) -> np.ndarray:
        if self._graphs is not None:
            probs = self._graphs.replay(host)  # (N, C) fp32 on the device, or None: no graph of that size
            if probs is not None:
                return probs.cpu().numpy()  # a synchronous copy, before any other replay
        with torch.inference_mode():
            frames = host.to(self.device, non_blocking=True)  # (N, T, H, W, 3) uint8
            x = self._normalize(frames)  # (N, 3, T, H, W) float
            if self.forward_mode == "inductor" and x.shape[0] > 1:
                torch._dynamo.mark_dynamic(x, 0)  # one graph for every batch size from 2 up (1 has its own)
            with (
                torch.autocast(self.device.type, dtype=self.dtype, enabled=self._autocast),
                attention_context(self.attention),
            ):
                logits = self._forward(x)  # (N, C)
            probs = torch.softmax(logits.float(), dim=-1)  # (N, C) fp32
            return probs.cpu().numpy()

    def infer(self, frames: np.ndarray) -> np.ndarray:
        """Run uint8 clips (N, T, H, W, 3) synchronously, the same way as a batch (copy, normalise, autocast
        forward, fp32 softmax) -> probabilities (N, C). For benchmarks and tools."""
        return self._infer(torch.from_numpy(np.ascontiguousarray(frames)))

    def stats(self) -> dict[str, Any]:
        """The local backend's own figures: precision, what forwards run with, out-of-memory splits."""
        return {
            "kind": "local",
            "device": str(self.device),
            "dtype": _PRECISION_NAMES.get(self.dtype, str(self.dtype)),
            "max_batch": self.max_batch,
            "forward": self.forward_mode,
            "compiled": self.compiled,
            "cuda_graphs": self._graphs is not None,
            "attention": self.attention,
            "attention_figures": self.attention_figures,
            "oom_splits": self.oom_splits,
            "oom_dropped_batches": self.oom_dropped_batches,
        }

    def close(self) -> None:
        """Nothing to close (the model goes with the process)."""
