"""Where the forward-only overhead of a scan goes (issue 14): a one-off analysis, not a figure.

    python benchmarks/profile_scan.py [--only WORKLOAD] [--threads 1] [--reps 15]

Per workload (cnn and resnet50 unless --only names one; the full bench's sizes): how
many aten ops, module calls and ReLU calls one forward makes; the fastest of ``--reps``
interleaved runs of

- ``plain``: the ``inference_mode`` forward;
- ``mode``: the same under a pass-through ``TorchDispatchMode`` (one Python call per aten
  op and nothing else: the price of seeing every op);
- ``hooks``: the same with a no-op forward pre-hook and hook on every module (what
  tracking the module stack costs);
- ``floor``: benchmarks/floor.py (the reductions, hooks on the ReLUs only);
- ``scan``: ``relu_doctor.scan(grad=False)``;

then the per-op / per-call costs derived from them, torch.profiler's self CPU time of the
ops the reductions add, the fixed cost of one ``scan()`` (a one-sample batch against its
floor) with cProfile's largest relu-doctor entries, and micro-timings of the per-ReLU
reductions on the workload's largest activation (the current passes against one-pass
candidates). It imports relu-doctor's public ``scan`` only; cProfile names internal
functions, which may move.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

import relu_doctor
from benchmarks.floor import floor_forward
from benchmarks.measure import interleaved
from benchmarks.workloads import Workload, build, make_batches, workloads

CPU = torch.device("cpu")


class Counting(TorchDispatchMode):
    """Counts the aten ops one forward makes."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


class Passthrough(TorchDispatchMode):
    """One Python call per aten op, nothing else (Dynamo's shim skipped, as the scanner
    does)."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return func(*args, **(kwargs or {}))


def plain(model: nn.Module, batches: list[torch.Tensor]) -> None:
    with torch.inference_mode():
        for x in batches:
            model(x)


def under_mode(model: nn.Module, batches: list[torch.Tensor]) -> None:
    with torch.inference_mode():
        for x in batches:
            with Passthrough():
                model(x)


def with_hooks(model: nn.Module, batches: list[torch.Tensor]) -> None:
    def pre(m: nn.Module, a: Any) -> None:
        pass

    def post(m: nn.Module, a: Any, o: Any) -> None:
        pass

    handles = []
    for m in model.modules():
        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        plain(model, batches)
    finally:
        for h in handles:
            h.remove()


def counts(model: nn.Module, x: torch.Tensor) -> tuple[int, int, int]:
    """(aten ops, module calls, ReLU calls) of one forward."""
    calls = [0]

    def hook(m: nn.Module, a: Any) -> None:
        calls[0] += 1

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        with torch.inference_mode(), Counting() as mode:
            model(x)
    finally:
        handle.remove()
    relus = sum(n for op, n in mode.ops.items() if op.startswith(("aten.relu", "aten.hardtanh")))
    return sum(mode.ops.values()), calls[0], relus


def best(fn: Callable[[], object], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def largest_relu_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    found: list[torch.Tensor] = []

    def hook(m: nn.Module, args: Any) -> None:
        found.append(args[0].detach().clone())

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if type(m) is nn.ReLU]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    with torch.inference_mode(False):
        return max(found, key=lambda t: t.numel()).clone()


def reductions(pre: torch.Tensor, reps: int) -> list[str]:
    """Micro-timings (ms) of the per-call passes on one activation, units at dim 1."""
    out = torch.relu(pre)
    inner = tuple(range(2, pre.ndim))
    buf = torch.empty_like(out)
    flags = torch.empty(out.shape, dtype=torch.bool)
    copy = best(lambda: buf.copy_(pre), reps)
    cases: dict[str, Callable[[], object]] = {
        "amax(pre, dims=(0, *inner))  [margin]": lambda: pre.amax(dim=(0, *inner)),
        "sign(out, out=scratch)": lambda: torch.sign(out, out=buf),
        "sum(out, dims=(0, *inner))  [mass]": lambda: out.sum(dim=(0, *inner)),
        "sum(signs, dims=inner)  [active per sample]": lambda: buf.sum(dim=inner),
        "candidate: count_nonzero(out, dims=inner)": lambda: torch.count_nonzero(out, dim=inner),
        "candidate: (out > 0).sum(dims=inner)": lambda: (out > 0).sum(dim=inner),
        "candidate: gt(out, 0, out=bools)": lambda: torch.gt(out, 0, out=flags),
        "candidate: bools as uint8, int32 sum(dims=inner)": lambda: flags.view(torch.uint8).sum(
            dim=inner, dtype=torch.int32
        ),
        "candidate: amax(pre, dims=inner)  [per-sample max: firing + margin]": lambda: pre.amax(
            dim=inner
        ),
    }
    shape = "x".join(map(str, pre.shape))
    relu = best(lambda: buf.copy_(pre).relu_(), reps) - copy
    lines = [
        f"  per-call passes on the largest ReLU input ({shape}, {pre.numel() / 1e6:.1f} M):",
        f"    {relu:8.3f} ms  relu_ itself (in place, on a copy, less the copy)",
    ]
    for name, fn in cases.items():
        lines.append(f"    {best(fn, reps):8.3f} ms  {name}")
    return lines


def profiled_ops(fn: Callable[[], object], top: int) -> dict[str, tuple[float, int]]:
    """Self CPU ms and call count per aten op over one run of ``fn``."""
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {
        e.key: (e.self_cpu_time_total / 1000, e.count)
        for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
        if e.key.startswith("aten::")
    }


def fixed_cost(model: nn.Module, x: torch.Tensor, functional: bool, reps: int) -> list[str]:
    """One scan() of a one-sample batch against the floor of the same batch, and where
    cProfile sees relu-doctor's time go."""
    one = [x[:1]]
    times, _ = interleaved(
        {
            "floor": lambda: floor_forward(model, one, functional),
            "scan": lambda: relu_doctor.scan(model, one, grad=False, device=CPU),
        },
        reps,
        CPU,
    )
    lines = [
        f"  fixed cost of one scan() (1 batch of 1 sample): scan {times['scan']:.1f} ms, "
        f"floor {times['floor']:.1f} ms, difference {times['scan'] - times['floor']:.1f} ms",
        "  cProfile of that scan (cumulative ms; relu_doctor functions, largest first):",
    ]
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(10):
        relu_doctor.scan(model, one, grad=False, device=CPU)
    prof.disable()
    stats = pstats.Stats(prof)
    rows = []
    for (file, _, func), (_, _, _, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
        if "relu_doctor" in file:
            rows.append((cum * 100, f"{Path(file).parent.name}/{Path(file).name}:{func}"))
    for ms, name in sorted(rows, reverse=True)[:14]:
        lines.append(f"    {ms:7.2f} ms  {name}")
    return lines


class Adds(nn.Module):
    """``k`` aten adds on a tiny tensor, then one nn.ReLU (a scan needs a ReLU)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.k):
            x = x + 1.0
        return self.act(x)


def micro(reps: int) -> list[str]:
    """Per-op, per-module-call, per-ReLU-call, per-batch and per-scan costs (us), from the
    slopes of synthetic models on (1, 8) tensors: overhead only, so the fastest of many
    short runs stays stable on a busy machine."""
    k = 200
    models = {
        "aten op": (Adds(0), Adds(k)),
        "module call": (
            nn.Sequential(nn.ReLU()),
            nn.Sequential(*[nn.Identity() for _ in range(k)], nn.ReLU()),
        ),
        "ReLU call": (nn.Sequential(nn.ReLU()), nn.Sequential(*[nn.ReLU() for _ in range(k)])),
    }
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn((1, 8), generator=g) for _ in range(8)]
    sides: dict[str, Callable[[nn.Module, list[torch.Tensor]], object]] = {
        "plain": plain,
        "floor": lambda m, b: floor_forward(m, b, False),
        "scan": lambda m, b: relu_doctor.scan(m, b, grad=False, device=CPU),
    }

    def slope(pair: tuple[nn.Module, nn.Module], side: str) -> float:
        small, big = pair
        fn = sides[side]
        return (best(lambda: fn(big, batches), reps) - best(lambda: fn(small, batches), reps)) / (
            k * len(batches)
        )

    lines = [f"micro-costs (us; slopes over {k} extra ops / modules / ReLUs, 8 batches of 1x8):"]
    for what, pair in models.items():
        s = {side: slope(pair, side) * 1000 for side in sides}
        lines.append(
            f"  per {what:<12} plain {s['plain']:6.2f}  floor {s['floor']:6.2f}  "
            f"scan {s['scan']:6.2f}  -> scan - floor {s['scan'] - s['floor']:+6.2f}"
        )
    one = Adds(0)

    def run(side: str, n: int) -> float:
        fn = sides[side]
        return best(lambda: fn(one, batches[:n]), reps) * 1000

    fixed = {side: run(side, 1) for side in sides}
    per_batch = {
        side: (run(side, len(batches)) - fixed[side]) / (len(batches) - 1) for side in sides
    }
    lines.append(
        "  per batch    "
        + "  ".join(f"{side} {v:6.1f}" for side, v in per_batch.items())
        + f"  -> scan - floor {per_batch['scan'] - per_batch['floor']:+6.1f}"
    )
    lines.append(
        "  per scan()   "
        + "  ".join(f"{side} {v:6.0f}" for side, v in fixed.items())
        + f"  -> scan - floor {fixed['scan'] - fixed['floor']:+6.0f} (1 batch, 1 ReLU site)"
    )
    return lines


def analyse(w: Workload, reps: int) -> list[str]:
    model = build(w, CPU)
    batches = make_batches(w, CPU)
    ops, modules, relus = counts(model, batches[0])
    n = len(batches)
    times, _ = interleaved(
        {
            "plain": lambda: plain(model, batches),
            "mode": lambda: under_mode(model, batches),
            "hooks": lambda: with_hooks(model, batches),
            "floor": lambda: floor_forward(model, batches, w.functional),
            "scan": lambda: relu_doctor.scan(model, batches, grad=False, device=CPU),
        },
        reps,
        CPU,
    )
    p = times["plain"]
    mode_us = (times["mode"] - p) / (ops * n) * 1000
    hook_us = (times["hooks"] - p) / (modules * n) * 1000
    red_us = (times["floor"] - p) / (relus * n) * 1000
    lines = [
        f"{w.name}: {w.shape_note}; one forward = {ops} aten ops, {modules} module calls, "
        f"{relus} ReLU calls",
        "  fastest ms: " + ", ".join(f"{k} {v:.1f} ({v / p:.3f}x)" for k, v in times.items()),
        f"  pass-through dispatch mode: {times['mode'] - p:+.1f} ms = {mode_us:.1f} us per aten op",
        f"  no-op pre+post hooks on every module: {times['hooks'] - p:+.1f} ms = "
        f"{hook_us:.1f} us per module call",
        f"  reductions (floor - plain): {times['floor'] - p:+.1f} ms = {red_us:.0f} us per ReLU "
        "call",
        f"  scan - floor: {times['scan'] - times['floor']:+.1f} ms (mode + module-stack hooks + "
        "per-call bookkeeping + fixed per-scan costs)",
    ]
    scan_ops = profiled_ops(lambda: relu_doctor.scan(model, batches, grad=False, device=CPU), 30)
    plain_ops = profiled_ops(lambda: plain(model, batches), 30)
    lines.append("  torch.profiler, self CPU ms (calls) per run, scan vs plain:")
    for op, (ms, count) in scan_ops.items():
        base_ms, base_count = plain_ops.get(op, (0.0, 0))
        lines.append(
            f"    {op:<28} {ms:8.2f} ({count:4d})   plain {base_ms:8.2f} ({base_count:4d})"
        )
    lines += fixed_cost(model, batches[0], w.functional, reps)
    lines += reductions(largest_relu_input(model, batches[0]), reps)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", choices=sorted(workloads(quick=False)), help="one workload")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    known = workloads(quick=False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), cpu")
    print("\n".join(micro(args.reps * 2)), flush=True)
    for name in [args.only] if args.only else ["cnn", "resnet50"]:
        print("\n".join(analyse(known[name], args.reps)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
