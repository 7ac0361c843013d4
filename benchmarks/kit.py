"""The GPU proof kit: one command that measures every GPU claim and writes the tables into docs/benchmarks.md.

    python benchmarks/kit.py                      # on a CUDA box: full sizes (Swin-T/S/B, 32x224x224)
    python benchmarks/kit.py --small              # anywhere (CPU: forced): tiny model, 8x64x64, seconds

Sections (``--sections``, all by default; each prints its table and is written to ``--out`` as soon as done):

- ``model``: our Video Swin and torchvision's ``swin3d_*`` (the baseline, same run, same inputs) per arch, batch
  and precision, eager and compiled: clips/s, latency p50/p99, peak memory allocated and reserved, and the
  ratio of our latency to torchvision's.
- ``modes``: each way the engine can run the model (the runner's whole step: uint8 clips staged, normalised,
  forward, softmax, probabilities back), at batch 1, 4, 16 and 32, per arch, ours and torchvision's in the same
  run: eager, compiled (inductor), compiled with flex_attention, CUDA graphs, compiled + CUDA graphs, TensorRT
  (first build and cached start timed), half weights (``cast_weights``), FP8 (torchao, compute capability 8.9+). Clips/s, latency, MFU
  (FLOPs per clip counted with ``torch.utils.flop_counter``, against the GPU's dense half-precision peak, FP8's
  for FP8; ``--peak-tflops`` for a GPU the table lacks) and the max |probability difference| to eager fp32.
- ``attention``: per SDPA kernel (flash, cuDNN, memory-efficient, math), peak memory and latency at batch 1 and
  the largest batch, and the kernel the engine's warm-up picks.
- ``staging``: the host-to-device copy of a full batch of uint8 clips against that batch's forward (why the
  engine does not double-buffer).
- ``streams``: the daemon (worker processes) with 8, 16, 32 and 64 camera-paced 1080p25 H.264 streams (realtime
  files made with ffmpeg; ``--people VIDEO`` makes them from a video with people) sharing one model copy, per
  decode path (``--streams-decodes``, cpu and nvdec on CUDA), with per-subject tracking when ``--detector`` names
  the person-detector graph: labels/s against the demand and against the engine alone at the same batch, the
  engine's busy fraction, batches, latency p50/p99, CPU cores, GPU utilisation, VRAM per stream, frames dropped.
  On a GPU box (the streams-per-box figures of issues 20 and 21)::

      python benchmarks/kit.py --sections streams --detector checkpoints/ssdlite_mobilenet_v2_pedestrian.pb \\
          --people ~/.cache/vstmon/test-assets/vtest.avi
- ``constant``: memory sampled while ``classify`` runs through a generated long video (30 minutes by default)
  and while the daemon runs 4 looping streams (non-realtime: stream time passes faster than wall time); the
  growth after warm-up.
- ``oom``: an engine under a memory cap that the full batch does not fit: the split, the clips delivered, the
  ``max_batch`` timeline and its recovery once the cap is lifted. CUDA only.

On CUDA the memory figures are PyTorch's allocator (``max_memory_allocated`` / ``max_memory_reserved``); on
CPU the memory columns are empty. Timing on CUDA uses CUDA events. The output file keeps one block per kind of
run (``gpu`` / ``cpu``) between markers, so a CPU run never overwrites GPU figures.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.proc_stats import family, rss_mib  # noqa: E402
from vstmon.inference.engine import Engine  # noqa: E402
from vstmon.inference.runner import (  # noqa: E402
    Runner,
    attention_context,
    auto_half_dtype,
)
from vstmon.log import configure_logging  # noqa: E402
from vstmon.model import LoadedModel, build_model  # noqa: E402
from vstmon.model.presets import PRESETS, SwinConfig  # noqa: E402

__all__ = ["main"]

_MIB = 2**20
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_SMALL = SwinConfig(embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 4), window_size=(4, 7, 7))
_SECTIONS = ("model", "modes", "attention", "staging", "oom", "streams", "constant", "compiled")
_MODES = ("eager", "compiled", "compiled + flex", "cuda graphs", "compiled + cuda graphs", "tensorrt", "half weights",
          "fp8")  # fmt: skip
# dense bf16/fp16 tensor-core peak, TFLOP/s, by a name fragment of torch.cuda.get_device_name (first match);
# fp8 is twice that on Hopper and Ada. Vendor data sheets (no sparsity).
_PEAK_HALF_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("GH200", 989.4),
                     ("A100", 312.0), ("L40S", 362.1), ("L40", 181.0), ("L4", 121.0), ("A10", 125.0))  # fmt: skip
_KERNELS = ("flash", "cudnn", "efficient", "math")


@dataclass
class Run:
    """What every section needs: the device, sizes and where the figures go."""

    device: torch.device
    small: bool
    frames: int
    size: int
    iters: int
    out: Path | None
    json_out: Path | None
    command: str
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def kind(self) -> str:
        return "gpu" if self.cuda else "cpu"

    def half(self) -> str:
        """The engine's ``precision: auto`` here (bf16 from compute capability 8.0, fp16 before; fp32 on CPU)."""
        if not self.cuda:
            return "fp32"
        return (
            "bf16"
            if auto_half_dtype(torch.cuda.get_device_capability(self.device)) is torch.bfloat16
            else "fp16"
        )

    def model(self, arch: str) -> nn.Module:
        return build_model(_SMALL if self.small else PRESETS[arch], 400).eval()

    def publish(self, name: str, markdown: str, data: Any) -> None:
        """Print a section's table, keep its figures, and write it into its own block of ``out`` (replacing
        that section's block of an earlier run of the same kind, keeping every other block)."""
        print(markdown, flush=True)
        self.figures[name] = data
        if self.json_out is not None:
            self.json_out.write_text(json.dumps(self.figures, indent=1, default=str))
        if self.out is None:
            return
        text = self.out.read_text() if self.out.exists() else _DOC_HEAD
        text = _replace_block(text, f"kit:{self.kind}:header", _header(self))
        stamp = f"<sub>`{self.command}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}</sub>\n"
        text = _replace_block(text, f"kit:{self.kind}:{name}", markdown + "\n" + stamp)
        self.out.write_text(text)


def _replace_block(text: str, name: str, body: str) -> str:
    begin, end = f"<!-- {name} begin -->", f"<!-- {name} end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        return text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    return text.rstrip("\n") + "\n\n" + block + "\n"


_DOC_HEAD = """# Benchmarks: the GPU proof kit

Written by `python benchmarks/kit.py` (see its docstring); each block below is one run of the kit, with the
machine it ran on. Ratios to torchvision carry over to other GPUs better than absolute figures.
"""


def _header(run: Run) -> str:
    lines = [f"## {'GPU' if run.cuda else 'CPU'} run ({'small sizes' if run.small else 'full sizes'})", ""]
    lines.append("- each table below ends with the command and the time of the run that wrote it")
    lines.append(
        f"- torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPU cores"
    )
    if run.cuda:
        props = torch.cuda.get_device_properties(run.device)
        driver = _nvidia_smi("driver_version")
        lines.append(
            f"- GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability "
            f"{props.major}.{props.minor}, driver {driver}, CUDA {torch.version.cuda}"
        )
        lines.append(
            f"- precision `auto` = {run.half()}; fp32 matmuls at torch's default precision ('highest': no TF32)"
        )
    else:
        lines.append(f"- CPU run: {platform.processor() or platform.machine()}; no GPU figures in this block")
    lines.append(f"- clips: {run.frames} frames x {run.size} x {run.size} px")
    return "\n".join(lines) + "\n"


def _nvidia_smi(query: str) -> str:
    try:
        return subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _table(head: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peaks_mib(device: torch.device) -> tuple[float | None, float | None]:
    if device.type != "cuda":
        return None, None
    return torch.cuda.max_memory_allocated(device) / _MIB, torch.cuda.max_memory_reserved(device) / _MIB


def _time_forward(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    dtype: torch.dtype,
    iters: int,
    warmup: int = 2,
    kernel: str | None = None,
) -> dict[str, Any]:
    """Latency per forward (ms, p50/p99), clips/s, peak memory (MiB) and the first call's seconds."""
    device = x.device
    latencies: list[float] = []
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32),
        attention_context(kernel),
    ):
        begin = time.perf_counter()
        forward(x)
        _sync(device)
        first_s = time.perf_counter() - begin
        for _ in range(max(0, warmup - 1)):
            forward(x)
        _sync(device)
        for _ in range(iters):
            if device.type == "cuda":
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                forward(x)
                stop.record()
                stop.synchronize()
                latencies.append(start.elapsed_time(stop))
            else:
                begin = time.perf_counter()
                forward(x)
                latencies.append((time.perf_counter() - begin) * 1000.0)
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    alloc, reserved = _peaks_mib(device)
    return {
        "p50_ms": p50,
        "p99_ms": p99,
        "clips_s": x.shape[0] * 1000.0 / p50,
        "peak_alloc_mib": alloc,
        "peak_reserved_mib": reserved,
        "first_call_s": first_s,
    }


def _torchvision(arch: str, small: bool) -> nn.Module | None:
    try:
        from torchvision.models import video
    except ImportError:
        return None
    if small:  # the same small shape as ours: torchvision's builder takes the sizes as arguments
        from torchvision.models.video.swin_transformer import SwinTransformer3d

        return SwinTransformer3d(
            patch_size=[2, 4, 4],
            embed_dim=_SMALL.embed_dim,
            depths=list(_SMALL.depths),
            num_heads=list(_SMALL.num_heads),
            window_size=list(_SMALL.window_size),
            stochastic_depth_prob=0.0,
            num_classes=400,
        ).eval()
    return getattr(video, {"swin_t": "swin3d_t", "swin_s": "swin3d_s", "swin_b": "swin3d_b"}[arch])().eval()


def _compiled(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    compiled = torch.compile(model)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            torch._dynamo.mark_dynamic(x, 0)  # as the engine does: one graph for every batch from 2 up
        return compiled(x)

    return forward


def section_compiled(run: Run, args: argparse.Namespace) -> None:
    """The model table again, compiled (``--compile-archs`` at ``--compile-dtypes``)."""
    section_model(run, args, compiled=True)


def section_model(run: Run, args: argparse.Namespace, compiled: bool = False) -> None:
    rows: list[list[Any]] = []
    data: list[dict[str, Any]] = []
    for arch in args.compile_archs if compiled else args.archs:
        for impl in ("vstmon", "torchvision"):
            model = run.model(arch) if impl == "vstmon" else _torchvision(arch, run.small)
            if model is None:
                continue
            model = model.to(run.device)
            if impl == "vstmon":
                model.prepare((run.frames, run.size, run.size), run.device)
            for mode in ["compiled"] if compiled else ["eager"]:
                torch._dynamo.reset()
                forward = model if mode == "eager" else _compiled(model)
                for dtype_name in args.dtypes if mode == "eager" else args.compile_dtypes:
                    for batch in args.compile_batches if compiled else args.batches:
                        _reset_memory(run.device)
                        x = torch.randn(batch, 3, run.frames, run.size, run.size, device=run.device)
                        entry = {
                            "arch": arch,
                            "impl": impl,
                            "mode": mode,
                            "dtype": dtype_name,
                            "batch": batch,
                        }
                        try:
                            entry.update(_time_forward(forward, x, _DTYPES[dtype_name], run.iters))
                        except Exception as error:  # out of memory, unsupported dtype: a row that says so
                            entry["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
                            if "out of memory" not in str(error).lower():
                                print(f"{entry}", flush=True)
                        del x
                        data.append(entry)
                        print(json.dumps(entry, default=str), flush=True)
            del model, forward
            _reset_memory(run.device)
    ours = {(d["arch"], d["mode"], d["dtype"], d["batch"]): d for d in data if d["impl"] == "vstmon"}
    theirs = {(d["arch"], d["mode"], d["dtype"], d["batch"]): d for d in data if d["impl"] == "torchvision"}
    for key, d in ours.items():
        tv = theirs.get(key, {})
        ratio = d["p50_ms"] / tv["p50_ms"] if "p50_ms" in d and "p50_ms" in tv else None
        rows.append(
            [*key, d.get("clips_s"), d.get("p50_ms"), d.get("p99_ms"), d.get("peak_alloc_mib"),
             d.get("peak_reserved_mib"), tv.get("clips_s"), tv.get("p50_ms"), tv.get("peak_alloc_mib"),
             ratio, d.get("error") or tv.get("error")]
        )  # fmt: skip
    head = ["arch", "mode", "dtype", "batch", "clips/s", "p50 ms", "p99 ms", "peak alloc MiB", "peak reserved MiB",
            "tv clips/s", "tv p50 ms", "tv peak alloc MiB", "ours / tv latency", "note"]  # fmt: skip
    compile_s = {
        f"{d['impl']} {d['arch']} {d['dtype']} b{d['batch']}": round(d["first_call_s"], 1)
        for d in data
        if d["mode"] == "compiled" and "first_call_s" in d
    }
    name = "compiled" if compiled else "model"
    text = f"### Model: vstmon against torchvision (`{name}`)\n\n" + _table(head, rows) + "\n"
    if compile_s:
        text += f"\nFirst call of each compiled configuration (compilation included), seconds: {compile_s}\n"
    run.publish(name, text, data)


def _flops_per_clip(model: nn.Module, run: Run) -> float:
    """FLOP of one clip's forward (2 per multiply-add), counted by torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, run.frames, run.size, run.size, device=run.device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


def _peak_tflops(run: Run, args: argparse.Namespace, mode: str) -> float | None:
    if args.peak_tflops:
        peak = args.peak_tflops
    elif run.cuda:
        name = torch.cuda.get_device_name(run.device)
        peak = next((p for fragment, p in _PEAK_HALF_TFLOPS if fragment in name), None)
    else:
        return None
    return None if peak is None else peak * (2 if mode == "fp8" else 1)


def _fp8(model: nn.Module) -> nn.Module:
    """The model with float8 weights and dynamic float8 activations in its Linears (torchao; bf16 elsewhere)."""
    from torchao.quantization import quantize_  # type: ignore[import-not-found]

    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig as Config  # type: ignore
    except ImportError:
        from torchao.quantization import float8_dynamic_activation_float8_weight as Config  # type: ignore
    quantize_(model.to(torch.bfloat16), Config())
    return model


def _mode_runner(
    model: nn.Module, mode: str, run: Run, max_batch: int, engines: Path, precision: str | None = None
) -> tuple[Any, dict[str, Any]]:
    """A runner for ``mode`` (warmed up: compiled, built or captured), and what its start-up cost."""
    from vstmon.inference.runner import Runner

    options: dict[str, Any] = {}
    precision = precision or run.half()
    if mode in ("compiled", "compiled + flex", "compiled + cuda graphs", "fp8"):
        options["compile"] = True
    if mode == "compiled + flex":  # the attention as flex_attention (bias and shift mask as a score_mod)
        from vstmon.model.swin3d import use_flex_attention

        use_flex_attention(model)
    if mode in ("cuda graphs", "compiled + cuda graphs"):
        if not run.cuda:
            raise RuntimeError("CUDA only")
        options["cuda_graphs"] = True
    if mode == "half weights":
        options["cast_weights"] = True
    if mode == "fp8":
        if not run.cuda or torch.cuda.get_device_capability(run.device) < (8, 9):
            raise RuntimeError("needs compute capability 8.9+")
        model, precision = _fp8(model), "bf16"
    if mode == "tensorrt":
        from vstmon.inference.engine_cache import EngineOptions, weights_sha256
        from vstmon.inference.tensorrt import TensorRTBuilder

        TensorRTBuilder().version()  # ImportError here: a row that says so, not a silent fallback
        options["compile"] = "tensorrt"
        options["engine"] = EngineOptions(TensorRTBuilder(), engines, weights_sha256(model), fallback="eager")
    clip_shape = (run.frames, run.size, run.size, 3)
    begin = time.perf_counter()
    runner = Runner(model, run.device, precision, max_batch, clip_shape=clip_shape, **options)
    runner.warm_up()
    start = {"start_s": time.perf_counter() - begin, "backend": runner.backend}
    if mode == "tensorrt":
        if runner.backend != "tensorrt":
            raise RuntimeError("the TensorRT build failed (see the error line above)")
        begin = time.perf_counter()  # a second start: from the cache
        again = Runner(
            copy.deepcopy(model), run.device, precision, max_batch, clip_shape=clip_shape, **options
        )
        again.warm_up()
        start["cached_start_s"] = time.perf_counter() - begin
        del again
    return runner, start


def section_modes(run: Run, args: argparse.Namespace) -> None:
    """Every mode of the engine's step per arch and batch, ours and torchvision's (see the module docstring)."""
    rows: list[list[Any]] = []
    data: list[dict[str, Any]] = []
    batches = args.mode_batches
    clips = torch.randint(0, 256, (max(batches), run.frames, run.size, run.size, 3), dtype=torch.uint8)
    with tempfile.TemporaryDirectory(prefix="kit-engines-") as engines:
        for arch in args.archs:
            for impl in ("vstmon", "torchvision"):
                base = run.model(arch) if impl == "vstmon" else _torchvision(arch, run.small)
                if base is None:
                    continue
                base = base.to(run.device)
                flops = _flops_per_clip(base, run)
                yardstick, _ = _mode_runner(
                    copy.deepcopy(base), "eager", run, max(batches), Path(engines), "fp32"
                )
                expected = yardstick.infer(clips[: max(batches)].numpy())  # eager fp32
                del yardstick
                for mode in args.modes if impl == "vstmon" else ("eager", "compiled"):
                    torch._dynamo.reset()
                    _reset_memory(run.device)
                    entry: dict[str, Any] = {
                        "arch": arch,
                        "impl": impl,
                        "mode": mode,
                        "gflop_per_clip": flops / 1e9,
                    }
                    try:
                        runner, start = _mode_runner(
                            copy.deepcopy(base), mode, run, max(batches), Path(engines)
                        )
                        entry.update(start)
                    except Exception as error:  # not installed, not supported here, out of memory: say so
                        entry["error"] = (
                            f"{type(error).__name__}: {str(error).splitlines()[0][:100] if str(error) else ''}"
                        )
                        data.append(entry)
                        rows.append(
                            [arch, impl, mode, None, None, None, None, None, None, None, entry["error"]]
                        )
                        print(json.dumps(entry, default=str), flush=True)
                        continue
                    assert runner.host is not None
                    runner.host.copy_(clips[: max(batches)])
                    probs = runner.infer(clips[: max(batches)].numpy())
                    diff = float(np.abs(probs - expected).max())
                    for batch in batches:
                        times = []
                        for _ in range(run.iters):
                            begin = time.perf_counter()
                            runner.run(runner.host[:batch])
                            times.append((time.perf_counter() - begin) * 1000.0)
                        p50 = statistics.median(times)
                        clips_s = batch * 1000.0 / p50
                        peak = _peak_tflops(run, args, mode)
                        mfu = clips_s * flops / (peak * 1e12) if peak else None
                        row = {**entry, "batch": batch, "p50_ms": p50, "clips_s": clips_s, "mfu": mfu,
                               "max_prob_diff": diff, "peak_tflops": peak}  # fmt: skip
                        data.append(row)
                        rows.append([arch, impl, mode, batch, clips_s, p50, mfu, diff, start.get("start_s"),
                                     start.get("cached_start_s"), runner.backend])  # fmt: skip
                        print(json.dumps(row, default=str), flush=True)
                    del runner
                    _reset_memory(run.device)
                del base
    head = ["arch", "impl", "mode", "batch", "clips/s", "p50 ms", "MFU", "max dp vs fp32", "start s",
            "cached start s", "backend / note"]  # fmt: skip
    flops_note = {f"{d['impl']} {d['arch']}": float(f"{d['gflop_per_clip']:.4g}") for d in data}
    text = (
        f"### Engine modes at {run.half()} (`modes`)\n\n" + _table(head, rows) + "\n\n"
        f"GFLOP per clip (2 per multiply-add, torch's flop counter): {flops_note}. MFU = clips/s x FLOP per clip /"
        f" the GPU's dense half-precision peak (FP8: twice that); the step timed is the engine's whole batch "
        f"(uint8 in, probabilities out). max dp: max |probability - eager fp32's| on {max(batches)} random clips.\n"
    )
    run.publish("modes", text, data)


def section_attention(run: Run, args: argparse.Namespace) -> None:
    arch = args.archs[0]
    model = run.model(arch).to(run.device)
    dtype_name = run.half()
    rows: list[list[Any]] = []
    data: list[dict[str, Any]] = []
    for batch in sorted({1, max(args.batches)}):
        for kernel in _KERNELS if run.cuda else (None,):
            _reset_memory(run.device)
            x = torch.randn(batch, 3, run.frames, run.size, run.size, device=run.device)
            entry: dict[str, Any] = {
                "arch": arch,
                "dtype": dtype_name,
                "batch": batch,
                "kernel": kernel or "cpu",
            }
            try:
                entry.update(_time_forward(model, x, _DTYPES[dtype_name], run.iters, kernel=kernel))
            except Exception as error:
                entry["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"
            del x
            data.append(entry)
            rows.append(
                [entry["kernel"], batch, entry.get("p50_ms"), entry.get("peak_alloc_mib"), entry.get("error")]
            )
    picked = None
    if run.cuda:
        runner = Runner(model, run.device, dtype_name, 1, clip_shape=(run.frames, run.size, run.size, 3))
        runner.warm_up()
        picked = {"kernel": runner.attention, "figures": runner.attention_figures}
        del runner
    text = (
        f"### Attention kernels, {arch} {dtype_name} (`attention`)\n\n"
        + _table(["kernel", "batch", "p50 ms", "peak alloc MiB", "note"], rows)
        + (f"\n\nThe engine's warm-up picks: {picked}\n" if picked else "\n")
    )
    del model
    _reset_memory(run.device)
    run.publish("attention", text, {"rows": data, "picked": picked})


def section_staging(run: Run, args: argparse.Namespace) -> None:
    batch = max(args.batches)
    shape = (batch, run.frames, run.size, run.size, 3)
    host = torch.zeros(shape, dtype=torch.uint8, pin_memory=run.cuda)
    host.copy_(torch.randint(0, 256, shape, dtype=torch.uint8))
    copies: list[float] = []
    for _ in range(max(3, run.iters)):
        _sync(run.device)
        begin = time.perf_counter()
        on_device = host.to(run.device, non_blocking=True)
        _sync(run.device)
        copies.append((time.perf_counter() - begin) * 1000.0)
        del on_device
    copy_ms = statistics.median(copies)
    forward = next(
        (d for d in run.figures.get("model", []) if d.get("impl") == "vstmon" and d.get("mode") == "eager"
         and d.get("dtype") == run.half() and d.get("batch") == batch and "p50_ms" in d),
        None,
    )  # fmt: skip
    if forward is None:  # the model section did not run: time that forward here
        model = run.model(args.archs[0]).to(run.device)
        x = torch.randn(batch, 3, run.frames, run.size, run.size, device=run.device)
        forward = _time_forward(model, x, _DTYPES[run.half()], run.iters)
        del model, x
    forward_ms = forward["p50_ms"]
    share = copy_ms / forward_ms if forward_ms else None
    text = (
        "### Staging copy against the forward (`staging`)\n\n"
        + _table(
            ["batch", "MiB copied", "copy ms (p50)", "forward ms (p50, model table)", "copy / forward"],
            [[batch, host.numel() / _MIB, copy_ms, forward_ms, share]],
        )
        + "\n"
    )
    run.publish("staging", text, {"copy_ms": copy_ms, "forward_ms": forward_ms, "share": share})


@contextlib.contextmanager
def _daemon(
    run: Run,
    args: argparse.Namespace,
    streams: list[dict[str, Any]],
    hop_s: float,
    tmp: Path,
    model: nn.Module,
    **sections: Any,
) -> Any:
    """The daemon (worker processes: ``auto``, its default) on ``streams``, sharing one copy of ``model``;
    ``sections`` are more config sections."""
    from vstmon.config import parse_config
    from vstmon.service.daemon import Daemon
    from vstmon.service.preflight import preflight

    config = parse_config(
        {
            "model": {"device": str(run.device), "precision": "auto"},
            "clip": {"frames": run.frames, "frame_interval": 1, "size_px": run.size, "hop_s": hop_s},
            "inference": {"max_batch": max(args.batches), "max_wait_ms": 20},
            "streams": streams,
            "publish": {"endpoints": [f"ipc://{tmp}/pub.sock"], "control": None, "heartbeat_s": 1.0},
            "log": {"level": "warning"},
            **sections,
        }
    )
    preflight(config, streams=True)  # what `vstmon run` refuses (e.g. nvdec without a GPU): a VstmonError
    daemon = Daemon(config, LoadedModel(model, [f"class_{i}" for i in range(400)], "kit", untrained=True))
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def _looping_streams(args: argparse.Namespace, count: int, tmp: Path) -> list[dict[str, Any]]:
    """``count`` looping MJPG files with a hard cut each, read as fast as the model allows."""
    from tests.helpers.videos import make_two_scene_video

    width = int(args.video_height * 4 / 3) // 2 * 2
    streams = []
    for i in range(count):
        path = tmp / f"s{i}.avi"
        if not path.exists():
            n_frames = int(args.video_s * 25) + i * 7  # different lengths: the streams drift apart
            make_two_scene_video(path, n_frames, 25.0, (width, args.video_height), codec="MJPG")
        streams.append({"name": f"s{i}", "url": str(path), "loop": True})
    return streams


def _daemon_counts(daemon: Any) -> tuple[int, int]:
    """(frames read, clips classified) over all streams."""
    snapshots = [daemon.host.snapshot(name) for name in daemon.host.names]
    return sum(snap.frames_read for snap in snapshots), sum(snap.clips for snap in snapshots)


class _Utilisation:
    """The GPU's utilisation (``torch.cuda.utilization``, through NVML), sampled every 0.5 s on a thread it owns;
    ``mean`` is None where NVML cannot be read (no CUDA, no ``pynvml``)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kit-gpu-utilisation", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.samples.append(torch.cuda.utilization(self.device) / 100.0)
            except Exception:  # no NVML: no figure
                return

    def __enter__(self) -> _Utilisation:
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


def section_streams(run: Run, args: argparse.Namespace) -> None:
    """Camera-paced H.264 streams (realtime files made with ffmpeg) through the daemon with worker processes, per
    decode path (``--streams-decodes``) and, with ``--detector``, with per-subject tracking on: labels/s against
    the demand (streams / hop) and against the engine alone at the mean batch the daemon reached, the engine's
    busy fraction, latency, CPU cores, GPU utilisation, memory per stream, frames dropped."""
    from benchmarks.bench_streams import camera_video, measure
    from vstmon.errors import VstmonError

    model = run.model(args.archs[0])
    rows: list[list[Any]] = []
    data: list[dict[str, Any]] = []
    dtype = _DTYPES[run.half()]
    cores = os.cpu_count() or 1
    alone_clips_s: dict[int, float] = {}  # batch -> the engine alone's clips/s
    sections: dict[str, Any] = {"reset": {"scene_change": {"enabled": False}}}
    if args.detector is not None:
        sections["subjects"] = {"detector": str(args.detector), "mode": "per_subject", "device": "auto"}
    with tempfile.TemporaryDirectory() as tmp:
        seconds = args.streams_warmup_s + args.streams_s + 30
        video = camera_video(Path(tmp) / "camera.mp4", seconds, args.camera_size, args.people)
        for decode in args.streams_decodes:
            for streams in args.streams:
                _reset_memory(run.device)
                cameras = [{"name": f"cam{i}", "url": str(video), "realtime": True} for i in range(streams)]
                try:
                    with (
                        _daemon(run, args, cameras, args.streams_hop_s, Path(tmp), model,
                                ingest={"decode": decode}, **sections) as daemon,
                        _Utilisation(run.device) as utilisation,
                    ):  # fmt: skip
                        figures = measure(daemon, args.streams_hop_s, args.streams_warmup_s, args.streams_s)
                except VstmonError as error:  # e.g. nvdec without the package: say so, go on with the rest
                    data.append({"decode": decode, "streams": streams, "unavailable": str(error)})
                    rows.append([decode, streams, f"unavailable: {error}"] + [""] * 13)
                    break
                alloc, reserved = _peaks_mib(run.device)
                batch = max(1, round(figures["mean_batch"]))
                if batch not in alone_clips_s:
                    x = torch.randn(batch, 3, run.frames, run.size, run.size, device=run.device)
                    alone = _time_forward(model.to(run.device), x, dtype, run.iters)
                    model.cpu()
                    alone_clips_s[batch] = batch * 1000.0 / alone["p50_ms"]
                entry = {
                    **figures,
                    "decode": decode,
                    "subjects": args.detector is not None,
                    "alone_batch": batch,
                    "alone_clips_s": alone_clips_s[batch],
                    "ratio": figures["labels_s"] / max(1e-9, min(figures["demand"], alone_clips_s[batch])),
                    "cores_busy": figures["cpu_per_stream"] * streams,
                    "gpu_utilisation": utilisation.mean,
                    "peak_alloc_mib": alloc,
                    "peak_reserved_mib": reserved,
                }
                data.append(entry)
                print(json.dumps(entry, default=str), flush=True)
                rows.append([decode, streams, entry["demand"], entry["labels_s"], entry["alone_clips_s"],
                             entry["ratio"], entry["busy"], entry["mean_batch"], entry["forward_ms"],
                             entry["waiting"], f"{entry['p50_ms']:.0f} / {entry['p99_ms']:.0f}",
                             f"{entry['cores_busy']:.1f} of {cores}", entry["gpu_utilisation"], entry["rss_mib"],
                             alloc / streams if alloc else None, entry["frames_dropped"]])  # fmt: skip
    head = ["decode", "streams", "demand clips/s", "labels/s", "engine alone clips/s", "ratio", "engine busy",
            "mean batch", "forward ms", "waiting, no batch", "latency p50 / p99 ms", "CPU cores busy",
            "GPU utilisation", "RSS MiB", "VRAM MiB per stream", "frames dropped"]  # fmt: skip
    tracking = f", per-subject tracking ({Path(args.detector).name})" if args.detector else ""
    pictures = f"{Path(args.people).name} looped" if args.people else "a test pattern"
    text = (
        f"### Camera-paced streams through the daemon (worker processes), {args.archs[0]} untrained, precision "
        f"auto, {args.camera_size} H.264 25 fps ({pictures}){tracking}, clips {run.frames}x{run.size} every "
        f"{args.streams_hop_s} s, max_batch {max(args.batches)}, {args.streams_s:.0f} s each after "
        f"{args.streams_warmup_s:.0f} s (`streams`)\n\n"
        "ratio = labels/s over the smaller of the demand and the engine alone (the same model at the daemon's mean "
        "batch, forward only); CPU cores busy = the daemon's and its workers' CPU time over the window; VRAM per "
        "stream = the peak allocated over the streams.\n\n" + _table(head, rows) + "\n"
    )
    del model
    _reset_memory(run.device)
    run.publish("streams", text, data)


class _Sampler:
    """Samples (seconds, allocated MiB, reserved MiB) every ``period_s`` on a thread it owns."""

    def __init__(self, device: torch.device, period_s: float) -> None:
        self.device = device
        self.period_s = period_s
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kit-memory-sampler", daemon=True)
        self._begin = time.monotonic()

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            self.sample()

    def sample(self) -> None:
        if self.device.type == "cuda":
            alloc = torch.cuda.memory_allocated(self.device) / _MIB
            reserved = torch.cuda.memory_reserved(self.device) / _MIB
        else:
            alloc = reserved = sum(rss_mib(pid) for pid in family())  # with the daemon's worker processes
        self.samples.append((time.monotonic() - self._begin, alloc, reserved))

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def growth(self, warmup_fraction: float = 0.2) -> dict[str, float]:
        """Growth after warm-up: the largest sample in the last quarter of the run after warm-up (the first
        ``warmup_fraction`` of samples) minus the largest in its first quarter. Maxima, not single samples: a
        sample taken during a batch holds its activations, one taken between batches does not."""
        after = self.samples[int(len(self.samples) * warmup_fraction) :]
        quarter = max(1, len(after) // 4)
        first, last = after[:quarter], after[-quarter:]
        return {
            "samples": len(self.samples),
            "alloc_first_max_mib": max(s[1] for s in first),
            "alloc_last_max_mib": max(s[1] for s in last),
            "alloc_growth_mib": max(s[1] for s in last) - max(s[1] for s in first),
            "reserved_first_max_mib": max(s[2] for s in first),
            "reserved_last_max_mib": max(s[2] for s in last),
            "reserved_growth_mib": max(s[2] for s in last) - max(s[2] for s in first),
        }


def section_constant(run: Run, args: argparse.Namespace) -> None:
    from tests.helpers.videos import make_video
    from vstmon.config import parse_config
    from vstmon.offline.classify import classify_file

    rows: list[list[Any]] = []
    data: dict[str, Any] = {}
    model = run.model(args.archs[0]).to(run.device)
    what = "RSS" if not run.cuda else "allocated / reserved"
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "long.mp4"
        begin = time.monotonic()
        make_video(video, int(args.video_min * 60 * 25), 25.0, (160, 120))
        made_s = time.monotonic() - begin
        _reset_memory(run.device)
        clips = 0

        def count(_line: str) -> None:
            nonlocal clips
            clips += 1

        with _Sampler(run.device, args.sample_s) as sampler:
            begin = time.monotonic()
            config = parse_config(
                {"clip": {"frames": run.frames, "frame_interval": 2, "size_px": run.size, "hop_s": 1.0},
                 "model": {"device": str(run.device), "precision": run.half()}},
                require_streams=False,
            )  # fmt: skip
            loaded = LoadedModel(model, [f"c{i}" for i in range(400)], "kit", untrained=True)
            classify_file(video, config, loaded, count, batch=max(args.batches), device=str(run.device))
            wall_s = time.monotonic() - begin
        g = sampler.growth()
        data["classify"] = {
            **g,
            "video_min": args.video_min,
            "clips": clips,
            "wall_s": wall_s,
            "made_s": made_s,
        }
        rows.append([f"classify, {args.video_min:.0f}-min video, batch {max(args.batches)}", clips, wall_s,
                     args.video_min, g["samples"], g["alloc_first_max_mib"], g["alloc_last_max_mib"],
                     g["alloc_growth_mib"], g["reserved_first_max_mib"], g["reserved_last_max_mib"],
                     g["reserved_growth_mib"]])  # fmt: skip
        print(json.dumps(data["classify"]), flush=True)
        model = model.cpu()
        _reset_memory(run.device)
        with (
            _daemon(
                run, args, _looping_streams(args, 4, Path(tmp)), 0.5, Path(tmp), model
            ) as daemon,  # serving
            _Sampler(run.device, args.sample_s) as sampler,
        ):
            begin_frames, begin_clips = _daemon_counts(daemon)
            begin = time.monotonic()
            while time.monotonic() - begin < args.daemon_s:
                time.sleep(0.5)
            wall_s = time.monotonic() - begin
            frames, clips = _daemon_counts(daemon)
        g = sampler.growth()
        stream_min = (frames - begin_frames) / 25.0 / 60.0
        data["daemon"] = {**g, "stream_min": stream_min, "clips": clips - begin_clips, "wall_s": wall_s}
        rows.append([f"daemon, 4 looping streams, max_batch {max(args.batches)}", clips - begin_clips, wall_s,
                     stream_min, g["samples"], g["alloc_first_max_mib"], g["alloc_last_max_mib"],
                     g["alloc_growth_mib"], g["reserved_first_max_mib"], g["reserved_last_max_mib"],
                     g["reserved_growth_mib"]])  # fmt: skip
        print(json.dumps(data["daemon"]), flush=True)
    alloc = "allocated" if run.cuda else "RSS"
    head = ["run", "clips", "wall s", "video min processed", "samples", f"{alloc} max, first quarter MiB",
            "last quarter MiB", "growth MiB", "reserved max, first quarter MiB", "last quarter MiB",
            "reserved growth MiB"]  # fmt: skip
    text = (
        f"### Constant memory over long runs (`constant`; {what}, sampled every {args.sample_s:g} s from the "
        "start of processing; the first 20 % of samples are warm-up; growth = the largest sample of the last "
        "quarter of the rest minus the largest of its first quarter)\n\n" + _table(head, rows) + "\n"
    )
    del model
    _reset_memory(run.device)
    run.publish("constant", text, data)


def section_oom(run: Run, args: argparse.Namespace) -> None:
    if not run.cuda:
        run.publish(
            "oom", "### Out-of-memory path (`oom`)\n\nSkipped: CUDA only (CPU has no memory cap).\n", None
        )
        return
    from vstmon.types import Clip

    batch = max(args.batches)
    small = max(1, batch // 2)
    model = run.model(args.archs[0]).to(run.device)
    dtype = run.half()
    peaks = {}
    for n in (small, batch):
        _reset_memory(run.device)
        x = torch.randn(n, 3, run.frames, run.size, run.size, device=run.device)
        with torch.inference_mode(), torch.autocast("cuda", dtype=_DTYPES[dtype]):
            model(x)
        del x
        peaks[n] = torch.cuda.max_memory_reserved(run.device)
    _reset_memory(run.device)
    total = torch.cuda.get_device_properties(run.device).total_memory
    cap = (peaks[small] + peaks[batch]) / 2  # the half batch fits, the full one does not
    fraction = cap / total
    sizes: list[int] = []
    timeline: list[int] = []
    counts = {"delivered": 0, "submitted": 0}
    lock = threading.Condition()
    holder: list[Engine] = []

    def on_result(_result: Any) -> None:
        with lock:
            counts["delivered"] += 1
            lock.notify_all()

    def on_batch(size: int, _seconds: float) -> None:
        sizes.append(size)
        timeline.append(holder[0].max_batch)

    # no clip_shape: no warm-up, so the first real batch meets the cap (the daemon's warm-up would lower
    # max_batch before any clip arrives)
    runner = Runner(model, run.device, dtype, batch, gpu_memory_fraction=fraction)
    engine = Engine(runner, 50.0, on_result, on_batch=on_batch)
    holder.append(engine)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(batch, run.frames, run.size, run.size, 3), dtype=np.uint8)

    def rounds(count: int) -> None:
        for r in range(count):
            for i in range(batch):
                clip = Clip(
                    f"s{i}", 0, frames[i], r, r, float(r), float(r), float(r), float(r), time.monotonic()
                )
                engine.submit(clip, block=True, timeout_s=60.0)
                counts["submitted"] += 1
            target = counts["submitted"]
            with lock:
                lock.wait_for(lambda target=target: counts["delivered"] >= target, timeout=120.0)

    def state() -> dict[str, int]:
        return {"max_batch": engine.backend.max_batch, "oom_splits": engine.backend.oom_splits, **counts,
                "clips_failed": engine.clips_failed}  # fmt: skip

    engine.start()
    try:
        rounds(args.oom_rounds)
        capped = state()
        torch.cuda.set_per_process_memory_fraction(1.0, run.device)  # the cap is lifted: max_batch grows back
        recover_begin = len(timeline)
        rounds(args.oom_recover_rounds)
        lifted = state()
    finally:
        engine.stop()
        engine.join(30.0)
        torch.cuda.set_per_process_memory_fraction(1.0, run.device)
    data = {
        "cap_mib": cap / _MIB,
        "fraction": fraction,
        "reserved_peak_mib": {n: p / _MIB for n, p in peaks.items()},
        "capped": capped,
        "after_lift": lifted,
        "batch_sizes_first_20": sizes[:20],
        "max_batch_timeline_capped": _runs(timeline[:recover_begin]),
        "max_batch_timeline_after_lift": _runs(timeline[recover_begin:]),
    }
    text = (
        f"### Out-of-memory path (`oom`), {args.archs[0]} {dtype}, max_batch {batch}\n\n"
        f"- memory cap {cap / _MIB:.0f} MiB (fraction {fraction:.4f}); peak reserved alone: batch {small} "
        f"{peaks[small] / _MIB:.0f} MiB, batch {batch} {peaks[batch] / _MIB:.0f} MiB\n"
        f"- under the cap ({args.oom_rounds} rounds of {batch} clips): {capped}\n"
        f"- first batch sizes: {sizes[:20]}\n"
        f"- max_batch over batches, capped (value x batches): {data['max_batch_timeline_capped']}\n"
        f"- cap lifted ({args.oom_recover_rounds} more rounds): {lifted}; max_batch over batches: "
        f"{data['max_batch_timeline_after_lift']}\n"
    )
    del model
    _reset_memory(run.device)
    run.publish("oom", text, data)


def _runs(values: list[int]) -> list[str]:
    """[16, 16, 15, 15, 15] -> ['16x2', '15x3']."""
    out: list[list[int]] = []
    for v in values:
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([v, 1])
    return [f"{v}x{n}" for v, n in out]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="small sizes (forced without CUDA)")
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    p.add_argument(
        "--sections", default=",".join(_SECTIONS), help=f"comma-separated, of {', '.join(_SECTIONS)}"
    )
    p.add_argument(
        "--out", type=Path, default=REPO / "docs" / "benchmarks.md", help="markdown file ('-': none)"
    )
    p.add_argument("--json", type=Path, help="also write every figure as JSON here")
    p.add_argument("--archs", help="model presets (default: swin_t,swin_s,swin_b; small: one tiny model)")
    p.add_argument("--batches", help="batch sizes (default 1,4,16; small: 1,2)")
    p.add_argument("--dtypes", help="eager precisions (default fp32,fp16,bf16 on CUDA; fp32,bf16 on CPU)")
    p.add_argument("--compile-archs", help="archs of the compiled section (default swin_t)")
    p.add_argument("--compile-batches", help="batch sizes of the compiled section (default: --batches)")
    p.add_argument("--compile-dtypes", help="precisions of the compiled runs (default: precision auto)")
    p.add_argument("--iters", type=int, help="timed forwards per configuration (default 20; small: 3)")
    p.add_argument("--streams", help="stream counts of the streams section (default 8,16,32,64; small: 1,2)")
    p.add_argument("--streams-s", type=float, help="seconds per stream count (default 20; small: 8)")
    p.add_argument(
        "--streams-warmup-s", type=float, help="streams: seconds before measuring (default 15; small: 8)"
    )
    p.add_argument("--streams-hop-s", type=float, help="streams: clip.hop_s (default 0.25; small: 1)")
    p.add_argument(
        "--camera-size", help="streams: the cameras' picture, WxH (default 1920x1080; small: 320x240)"
    )
    p.add_argument(
        "--streams-decodes", help="streams: decode paths to compare (default cpu,nvdec on CUDA; cpu)"
    )
    p.add_argument("--detector", type=Path, help="streams: a person-detector graph: per-subject tracking on")
    p.add_argument("--people", type=Path, help="streams: a video with people to make the cameras' files from")
    p.add_argument("--video-min", type=float, help="constant: classify video minutes (default 30; small: 1)")
    p.add_argument("--daemon-s", type=float, help="constant: daemon seconds (default 120; small: 15)")
    p.add_argument("--video-s", type=float, default=8.0, help="length of each looping stream file")
    p.add_argument("--video-height", type=int, default=240, help="height of the generated stream files")
    p.add_argument("--sample-s", type=float, default=1.0, help="constant: memory sampling period")
    p.add_argument("--oom-rounds", type=int, default=20, help="oom: rounds of max_batch clips under the cap")
    p.add_argument("--oom-recover-rounds", type=int, default=60, help="oom: rounds after the cap is lifted")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    p.add_argument(
        "--modes", help=f"modes of the modes section (default: all of {', '.join(_MODES)}; CPU: quick ones)"
    )
    p.add_argument("--mode-batches", help="batch sizes of the modes section (default 1,4,16,32; small: 1,2)")
    p.add_argument(
        "--peak-tflops", type=float, help="the GPU's dense bf16/fp16 peak, for MFU (default: a table)"
    )
    return p.parse_args(argv)


def _list(text: str | None, default: list[Any], kind: type = str) -> list[Any]:
    return default if text is None else [kind(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    configure_logging("warning", "console")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda:0" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)  # fmt: skip
    small = args.small or device.type != "cuda"
    args.archs = _list(args.archs, ["swin_t"] if small else ["swin_t", "swin_s", "swin_b"])
    args.batches = _list(args.batches, [1, 2] if small else [1, 4, 16], int)
    cuda = device.type == "cuda"
    args.dtypes = _list(args.dtypes, ["fp32", "fp16", "bf16"] if cuda else ["fp32", "bf16"])
    args.compile_archs = _list(args.compile_archs, ["swin_t"])
    args.streams = _list(args.streams, [1, 2] if small else [8, 16, 32, 64], int)
    args.streams_s = args.streams_s or (8.0 if small else 20.0)
    args.streams_warmup_s = args.streams_warmup_s or (8.0 if small else 15.0)
    args.streams_hop_s = args.streams_hop_s or (1.0 if small else 0.25)
    args.camera_size = args.camera_size or ("320x240" if small else "1920x1080")
    args.streams_decodes = _list(args.streams_decodes, ["cpu", "nvdec"] if cuda else ["cpu"])
    args.video_min = args.video_min or (1.0 if small else 30.0)
    args.daemon_s = args.daemon_s or (15.0 if small else 120.0)
    run = Run(
        device=device,
        small=small,
        frames=8 if small else 32,
        size=64 if small else 224,
        iters=args.iters or (3 if small else 20),
        out=None if str(args.out) == "-" else args.out,
        json_out=args.json,
        command="python benchmarks/kit.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    args.compile_dtypes = _list(args.compile_dtypes, [run.half()])
    args.compile_batches = _list(args.compile_batches, args.batches, int)
    # on a CPU, compiling takes minutes here and the GPU modes only say so: the quick rows by default
    args.modes = _list(args.modes, list(_MODES) if cuda else ["eager", "cuda graphs", "tensorrt", "fp8"])
    args.mode_batches = _list(args.mode_batches, [1, 2] if small else [1, 4, 16, 32], int)
    sections = {"model": section_model, "modes": section_modes, "attention": section_attention, "staging": section_staging,
                "streams": section_streams, "constant": section_constant, "oom": section_oom, "compiled": section_compiled}  # fmt: skip
    for name in _list(args.sections, list(_SECTIONS)):
        if name not in sections:
            print(f"unknown section {name!r}; choose from {', '.join(_SECTIONS)}", file=sys.stderr)
            return 2
        begin = time.monotonic()
        try:
            sections[name](run, args)
        except Exception as error:  # one section failing must not lose the others' figures
            import traceback

            traceback.print_exc()
            run.publish(
                name, f"### `{name}` failed\n\n{type(error).__name__}: {error}\n", {"error": str(error)}
            )
        print(f"[kit] section {name}: {time.monotonic() - begin:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
