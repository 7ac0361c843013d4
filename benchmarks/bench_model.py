"""Video Swin forward latency, throughput and peak memory for a preset, clip shape, batch, device and precision.

Prints figures; asserts nothing. Examples::

    python benchmarks/bench_model.py --arch swin_t --frames 32 --size 224 --batch 1 --threads 2 --iters 5
    python benchmarks/bench_model.py --arch swin_s --device cuda --precision bf16 --batch 1 4 16

Peak memory: on CPU the process's peak RSS (``ru_maxrss``, which never goes down, so it covers everything run
so far in this process); on CUDA ``torch.cuda.max_memory_allocated`` (reset before each batch size).
GFLOP: counted with ``torch.utils.flop_counter`` on one forward (matmuls, convolutions and attention; 2 FLOP per
multiply-add), when that counter works for the configuration.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vstmon.model.presets import PRESETS
from vstmon.model.swin3d import VideoSwin, build_model

__all__ = ["main"]

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="swin_t", choices=sorted(PRESETS), help="model preset")
    p.add_argument("--frames", type=int, default=32, help="clip length T in frames")
    p.add_argument("--size", type=int, default=224, help="square crop size H = W in pixels")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="one or more batch sizes")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=sorted(_DTYPES))
    p.add_argument("--iters", type=int, default=5, help="timed forwards per batch size")
    p.add_argument("--warmup", type=int, default=1, help="untimed forwards per batch size")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave torch's default)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count (one extra forward)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.device == "cpu" and args.precision == "fp16":
        p.error("--precision fp16 is for --device cuda (CPU fp16 matmuls are not a useful figure)")
    if args.iters < 1 or args.warmup < 0 or any(b < 1 for b in args.batch):
        p.error("--iters and every --batch must be at least 1, --warmup at least 0")
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gflop(model: VideoSwin, clip: torch.Tensor, dtype: torch.dtype, device: torch.device) -> float | None:
    try:
        from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

        def cpu_sdpa_flop(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:  # type: ignore[no-untyped-def]
            return sdpa_flop_count(q_shape, k_shape, v_shape)

        # the CPU flash-attention kernel has no registered formula: count it like the other SDPA kernels
        cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
        counter = FlopCounterMode(
            display=False, custom_mapping={cpu_sdpa: cpu_sdpa_flop} if cpu_sdpa else None
        )
        with torch.inference_mode(), _autocast(device, dtype), counter:
            model(clip)
        return counter.get_total_flops() / 1e9
    except Exception:  # the counter is a convenience; the timing does not depend on it
        return None


def _autocast(device: torch.device, dtype: torch.dtype) -> torch.autocast:
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = _DTYPES[args.precision]
    model = build_model(args.arch).to(device)
    params = sum(p.numel() for p in model.parameters())
    shape = f"{args.frames}x{args.size}x{args.size}"
    print(
        f"# torch {torch.__version__}, threads {torch.get_num_threads()}, {args.arch}: {params:,} parameters; "
        f"precision via autocast (fp32 = none); {args.warmup} warm-up + {args.iters} timed forwards"
    )
    header = (
        f"{'arch':<12} {'shape':<12} {'batch':>5} {'device':<6} {'prec':<5} {'median_s':>9} {'p90_s':>9} "
        f"{'clips/s':>8} {'peak_MiB':>9} {'GFLOP/clip':>10}"
    )
    print(header)
    for batch in args.batch:
        clip = torch.randn(batch, 3, args.frames, args.size, args.size, device=device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        times_s: list[float] = []
        with torch.inference_mode(), _autocast(device, dtype):
            for i in range(args.warmup + args.iters):
                _sync(device)
                start = time.perf_counter()
                model(clip)
                _sync(device)
                if i >= args.warmup:
                    times_s.append(time.perf_counter() - start)
        peak_mib = _peak_memory_mib(device)
        median_s = statistics.median(times_s)
        p90_s = sorted(times_s)[min(len(times_s) - 1, round(0.9 * (len(times_s) - 1)))]
        gflop = None if args.no_flops else _gflop(model, clip[:1], dtype, device)
        gflop_text = f"{gflop:10.1f}" if gflop is not None else f"{'n/a':>10}"
        print(
            f"{args.arch:<12} {shape:<12} {batch:>5} {args.device:<6} {args.precision:<5} {median_s:9.3f} "
            f"{p90_s:9.3f} {batch / median_s:8.2f} {peak_mib:9.0f} {gflop_text}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
