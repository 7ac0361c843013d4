"""Training memory and step time: Swin-T / Swin-S at 32 x 224 x 224, batch 1 and 2, with and without mixed
precision and gradient checkpointing (the training rows of the VRAM table).

Every configuration runs in a fresh child process: the model (untrained weights of the preset, 400 classes, the
preset's stochastic depth), AdamW as ``vstmon train`` builds it, random uint8 clips through the same
``Trainer.train_epoch`` step (normalisation on the device, autocast, loss scaling for fp16). One warm-up step,
then ``--steps`` timed steps. Memory: on CUDA the peak allocated by torch (``max_memory_allocated``) and reserved;
on CPU the child's peak RSS (``VmHWM``, which includes torch itself: the ``idle`` row is that floor).
"AMP" is bf16 autocast (fp16 with loss scaling on GPUs without native bf16). A child that fails (out of memory,
time limit) is reported as such and the others go on.

    .venv/bin/python benchmarks/bench_train.py                      # CPU: Swin-T and Swin-S, all combinations
    .venv/bin/python benchmarks/bench_train.py --device cuda --steps 10
    .venv/bin/python benchmarks/bench_train.py --archs swin_t --batches 1 --steps 1 --amp off
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_MIB = 1024 * 1024


def _child(
    arch: str,
    batch: int,
    amp: bool,
    checkpointing: bool,
    device_name: str,
    steps: int,
    frames: int,
    size: int,
) -> dict:
    import torch

    from vstmon.train.config import TrainConfig
    from vstmon.train.loop import Trainer, build_training_model, resolve_precision

    device = torch.device(device_name)
    cfg = TrainConfig(
        arch=arch,
        batch=batch,
        accumulate=1,
        frames=frames,
        frame_interval=2,
        size_px=size,
        device=device_name,
        epochs=1,
    )
    dtype = resolve_precision("auto" if device.type == "cuda" else "bf16", device) if amp else torch.float32
    model = build_training_model(cfg, 400)
    trainer = Trainer(model, cfg, device, dtype, steps_per_epoch=steps + 1, grad_checkpointing=checkpointing)
    clips = torch.randint(0, 256, (batch, frames, size, size, 3), dtype=torch.uint8)
    labels = torch.arange(batch) % 400
    trainer.train_epoch([(clips, labels)], epoch=0)  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    trainer.train_epoch([(clips, labels)] * steps, epoch=1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - started) / steps
    row = {"step_s": step_s, "dtype": str(dtype).removeprefix("torch.")}
    if device.type == "cuda":
        row["peak_allocated_mib"] = torch.cuda.max_memory_allocated(device) / _MIB
        row["peak_reserved_mib"] = torch.cuda.max_memory_reserved(device) / _MIB
    row["peak_rss_mib"] = _peak_rss_kib() / 1024
    return row


def _peak_rss_kib() -> int:
    """This process's peak RSS (VmHWM; ``ru_maxrss`` would keep a forking parent's peak across execve)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def _idle_rss_mib() -> float:
    code = (
        "import torch, vstmon.train.loop; "
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return int(out.stdout.split()[-1]) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--archs", default="swin_t,swin_s")
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="off,on", help="off, on or off,on")
    parser.add_argument("--checkpointing", default="off,on", help="off, on or off,on")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--timeout-s", type=float, default=1800)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(_child(**spec)))
        return 0
    print(
        f"device {args.device}, clips {args.frames}x{args.size}x{args.size}, {args.steps} timed step(s) each"
    )
    if args.device == "cpu":
        print(f"idle (python + torch + vstmon imported): peak RSS {_idle_rss_mib():.0f} MiB")
    header = f"{'arch':7} {'batch':>5} {'AMP':>5} {'ckpt':>5} {'step s':>8} {'peak MiB':>9}  dtype"
    print(header)
    print("-" * len(header))
    for arch, batch, amp, ckpt in itertools.product(
        args.archs.split(","),
        [int(b) for b in args.batches.split(",")],
        [v == "on" for v in args.amp.split(",")],
        [v == "on" for v in args.checkpointing.split(",")],
    ):
        spec = {"arch": arch, "batch": batch, "amp": amp, "checkpointing": ckpt, "device_name": args.device,
                "steps": args.steps, "frames": args.frames, "size": args.size}  # fmt: skip
        try:
            done = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(spec)],
                capture_output=True, text=True, timeout=args.timeout_s, cwd=REPO,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            print(
                f"{arch:7} {batch:>5} {'on' if amp else 'off':>5} {'on' if ckpt else 'off':>5}  over {args.timeout_s:.0f} s"
            )
            continue
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:80]
            print(
                f"{arch:7} {batch:>5} {'on' if amp else 'off':>5} {'on' if ckpt else 'off':>5}  failed: {why}"
            )
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        peak = row.get("peak_allocated_mib", row["peak_rss_mib"])
        extra = f" (reserved {row['peak_reserved_mib']:.0f})" if "peak_reserved_mib" in row else ""
        print(
            f"{arch:7} {batch:>5} {'on' if amp else 'off':>5} {'on' if ckpt else 'off':>5} "
            f"{row['step_s']:>8.2f} {peak:>9.0f}  {row['dtype']}{extra}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
