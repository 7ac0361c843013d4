"""One attention call per block against the older grouped attention: forward time and torch calls per forward.

Prints figures; asserts nothing. The older path is ``tests/swin_grouped.py`` (the test reference), put on the
same model and weights. Example (Swin-T, 32 x 224 x 224, batch 1, 2 threads; ~2-3 s per forward on a CPU)::

    python benchmarks/bench_attention.py --arch swin_t --frames 32 --size 224 --batch 1 --threads 2 --iters 2

Counts, for one forward under ``torch.inference_mode``:

- *Python-level torch calls*: every torch function or tensor method called from Python (a
  ``TorchFunctionMode``), the calls that each take the GIL and launch work;
- *aten calls*: every operator that reaches the dispatcher (a ``TorchDispatchMode``), views included.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.swin_grouped import GroupedCaches, grouped_attention  # noqa: E402
from vstmon.model.presets import PRESETS  # noqa: E402
from vstmon.model.swin3d import build_model, use_flex_attention  # noqa: E402

__all__ = ["main"]

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class _PythonCalls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.count += 1
        return func(*args, **(kwargs or {}))


class _AtenCalls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.count += 1
        return func(*args, **(kwargs or {}))


def _counts(forward: Callable[[], Any]) -> tuple[int, int]:
    with _PythonCalls() as python:
        forward()
    with _AtenCalls() as aten:
        forward()
    return python.count, aten.count


def _time(forward: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """One forward: (wall ms, this process's CPU ms). CPU time is the steadier figure on a shared machine."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    forward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - wall) * 1000.0, (time.process_time() - cpu) * 1000.0


@contextlib.contextmanager
def _mode(model: torch.nn.Module, name: str, caches: GroupedCaches) -> Iterator[None]:
    if name == "grouped":
        with grouped_attention(model, caches):
            yield
    elif name == "flex":
        use_flex_attention(model)
        try:
            yield
        finally:
            use_flex_attention(model, False)
    else:
        yield


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="swin_t", choices=sorted(PRESETS))
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=sorted(_DTYPES))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--iters", type=int, default=2, help="timed forwards per path (after one untimed)")
    p.add_argument(
        "--modes", default="grouped,single", help="of grouped, single, flex (flex: eager reference)"
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.arch).to(device)
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size, device=device)
    dtype = _DTYPES[args.precision]
    modes = args.modes.split(",")
    caches = GroupedCaches()
    print(f"{args.arch} {args.batch}x3x{args.frames}x{args.size}x{args.size} {args.precision} on {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")  # fmt: skip

    def forward() -> torch.Tensor:
        return model(x)

    outputs: dict[str, torch.Tensor] = {}
    counts: dict[str, tuple[int, int]] = {}
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    with torch.inference_mode(), autocast:
        for name in modes:  # untimed first forward (caches, allocator), then the counts
            with _mode(model, name, caches):
                outputs[name] = forward().float()
                counts[name] = _counts(forward)
        for _ in range(args.iters):  # the modes take turns, so that a change in the machine's load hits all
            for name in modes:
                with _mode(model, name, caches):
                    times[name].append(_time(forward, device))
    for name in modes:
        wall = statistics.median(t[0] for t in times[name])
        cpu = statistics.median(t[1] for t in times[name])
        python_calls, aten_calls = counts[name]
        print(f"{name:8s} wall {wall:8.1f} ms  cpu {cpu:8.1f} ms  (runs {', '.join(f'{t[0]:.0f}' for t in times[name])})"
              f"  python-level torch calls {python_calls}  aten calls {aten_calls}", flush=True)  # fmt: skip
    for other in modes[1:]:
        diff = (outputs[other] - outputs[modes[0]]).abs().max().item()
        print(f"max |logits {other} - logits {modes[0]}| = {diff:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
