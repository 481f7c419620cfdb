"""relu-doctor benchmark: what a scan costs next to the model's own work (issues 5, 14).

    python benchmarks/bench.py [--quick] [--only NAME] [--device cpu|cuda] [--threads N]
    python benchmarks/bench.py --check      # floor == scan on every workload, no timing

Every figure is a ratio against a plain baseline doing the same work on the SAME batches,
from interleaved repetitions (baseline, floor, scan, baseline, ...) after a warm-up; the
table shows the fastest repetition of each side and their ratios. The forward and grad
figures also time the floor (benchmarks/floor.py: the scan's reductions by hand, plain
hooks) and check, on the warm-up's results, that it computed the scan's numbers. This is
a measurement, not a test: it always exits 0 (a figure that fails to run shows as ERROR);
only --check exits 1 when the floor and the scan disagree. See benchmarks/README.md.

--only takes a workload (cnn, mlp, fmlp, resnet50, resnet224, transformer) or a figure
(forward, grad, memory, mem-plain, command, startup); --threads sets
torch.set_num_threads (use 1 on a box shared with other jobs: an OpenMP thread that loses
its core stalls every parallel op and swamps the figures); --child-memory and --child-rss
are internal (one memory measurement in a fresh process).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

import relu_doctor
from benchmarks import command, memory
from benchmarks.floor import compare, floor_forward, floor_grad
from benchmarks.measure import FLOOR_GOAL, GOALS, STRICT, Row, interleaved
from benchmarks.workloads import Workload, build, make_batches, workloads

FIGURES = ("forward", "grad", "memory", "mem-plain", "command", "startup")
PER_WORKLOAD = ("forward", "grad", "memory", "mem-plain")


# --- the plain baselines -------------------------------------------------------------------


def plain_forward(model: torch.nn.Module, batches: list[torch.Tensor]) -> None:
    with torch.inference_mode():
        for x in batches:
            model(x)


def plain_grad(model: torch.nn.Module, batches: list[torch.Tensor]) -> None:
    """Forward plus autograd.grad of the scan's surrogate loss w.r.t. every parameter."""
    params = [p for p in model.parameters() if p.requires_grad]
    for x in batches:
        out = model(x)
        loss = 0.5 * out.float().pow(2).sum() / out.shape[0]
        torch.autograd.grad(loss, params)


# --- the timed figures ---------------------------------------------------------------------


def overhead(w: Workload, figure: str, device: torch.device, reps: int) -> Row:
    """Plain, floor and scan over the same batches; the floor is checked against the scan
    on the first timed round's results. The warm-up runs each side on the first batch
    (every batch has the same shape)."""
    model = build(w, device)
    batches = make_batches(w, device)
    grad = figure == "grad"
    plain = plain_grad if grad else plain_forward
    floor = floor_grad if grad else floor_forward

    def sides(xs: list[torch.Tensor]) -> dict[str, Callable[[], object]]:
        return {
            "plain": lambda: plain(model, xs),
            "floor": lambda: floor(model, xs, w.functional),
            "scan": lambda: relu_doctor.scan(model, xs, grad=grad, device=device),
        }

    times, first = interleaved(
        sides(batches), min(reps, w.reps or reps), device, warmup=sides(batches[:1])
    )
    ok, check = compare(first["floor"], first["scan"])  # type: ignore[arg-type]
    return Row(
        figure,
        w.name,
        times["plain"],
        times["scan"],
        "ms",
        f"{w.shape_note}; {check}",
        floor=times["floor"],
        checked=ok,
    )


def measure(
    figure: str, w: Workload, device: torch.device, args: argparse.Namespace, reps: int
) -> Row:
    """One row; a failure becomes an ERROR row so the other figures still print."""
    try:
        if figure == "memory":
            return memory.flat(w, device, args)
        if figure == "mem-plain":
            return memory.plain(w, device, args)
        return overhead(w, figure, device, reps)
    except Exception as exc:  # report it, keep going: this is a measurement, not a test
        return error_row(figure, w.name, exc)


def error_row(figure: str, name: str, exc: Exception) -> Row:
    stderr = getattr(exc, "stderr", None)
    if isinstance(stderr, bytes):
        stderr = stderr.decode(errors="replace")
    msg = stderr.strip().splitlines()[-1] if stderr and stderr.strip() else repr(exc)
    return Row(figure, name, float("nan"), float("nan"), "", f"ERROR: {msg}")


def check_only(names: list[str], known: dict[str, Workload], device: torch.device) -> int:
    """--check: one floor run and one scan per workload and figure, compared; no timing."""
    failed = 0
    for name in names:
        w = known[name]
        model, batches = build(w, device), make_batches(w, device)
        for figure in ("forward", "grad"):
            if figure not in w.figures:
                continue
            grad = figure == "grad"
            run = floor_grad if grad else floor_forward
            floor = run(model, batches, w.functional)
            report = relu_doctor.scan(model, batches, grad=grad, device=device)
            ok, note = compare(floor, report)
            failed += not ok
            print(f"{figure:8} {name:12} {note}", flush=True)
    print("floor == scan everywhere" if not failed else f"{failed} check(s) FAILED")
    return 1 if failed else 0


# --- the report ----------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU model (platform.processor() only says x86_64 on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(device: torch.device, quick: bool) -> str:
    gpu = device.type == "cuda" and torch.cuda.is_available()
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    lines = [
        f"relu-doctor {relu_doctor.__version__} benchmark{' (--quick)' if quick else ''}",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if gpu else ""),
        f"machine: {cpu_name()}, {os.cpu_count()} CPUs{load}; {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}",
    ]
    return "\n".join(lines)


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    return f"{value:.1f} {unit}" if unit == "ms" else f"{value:.0f} {unit}"


def table(rows: list[Row]) -> str:
    head = (
        "figure",
        "workload",
        "baseline",
        "floor",
        "relu-doctor",
        "ratio",
        "vs floor",
        "goal",
        "result",
        "note",
    )
    body = [
        (
            r.figure,
            r.workload,
            fmt(r.base, r.unit),
            fmt(r.floor, r.unit),
            fmt(r.measured, r.unit),
            f"{r.ratio:.3f}x",
            f"{r.floor_ratio:.3f}x" if r.floor_ratio is not None else "",
            f"{'<' if r.figure in STRICT else '<='} {GOALS[r.figure]:.2f}x",
            r.result,
            r.note,
        )
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body, strict=False)]
    lines = [
        "  ".join(str(c).ljust(wd) for c, wd in zip(line, widths, strict=True)).rstrip()
        for line in (head, *body)
    ]
    lines.insert(1, "  ".join("-" * wd for wd in widths))
    return "\n".join(lines)


BASELINES = f"""\
baselines: forward = plain torch.inference_mode() forward over the same batches;
           grad = plain forward + torch.autograd.grad(0.5*sum(out**2)/N, all parameters);
           floor = the scan's per-unit reductions by hand with plain hooks, no machinery
                   (benchmarks/floor.py); "vs floor" = relu-doctor / floor;
           memory = peak RSS (CUDA: peak allocated) of a grad scan over 2 generated batches,
                    relu-doctor column = over 40 (each in a fresh process);
           mem-plain = peak RSS (CUDA: peak allocated) of a plain forward, relu-doctor
                    column = of a forward-only scan, same batches (each in a fresh process);
           command = benchmarks/minimal_scan.py against `relu-doctor scan CKPT --no-grad`
                    (wall time of subprocesses, fastest run);
           startup = python -c "import torch" (median wall time of a subprocess)
result: PASS meets the goal; FLOOR misses it but is within {FLOOR_GOAL:.2f}x of the floor;
        MISS neither; CHECK the floor's numbers differ from the scan's"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    parser.add_argument("--only", help="one workload or one figure")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--reps", type=int, help="timed repetitions (default 7, at least 5; --quick: 3)"
    )
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--check", action="store_true", help="only check floor == scan (exit 1 if not)"
    )
    parser.add_argument("--child-memory", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-rss", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    known = workloads(args.quick)
    if args.child_memory:
        name, n = args.child_memory
        print(json.dumps(memory.child_flat(known[name], int(n), device)))
        return 0
    if args.child_rss:
        name, side = args.child_rss
        print(json.dumps(memory.child_plain(known[name], side, device)))
        return 0
    print(header(device, args.quick), flush=True)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch.cuda.is_available() is False here; nothing measured")
        return 0
    reps = 3 if args.quick and args.reps is None else max(args.reps or 7, 5)
    names, figures = list(known), list(FIGURES)
    if args.only in known:
        names = [args.only]
        figures = [f for f in figures if f in PER_WORKLOAD]
    elif args.only in FIGURES:
        figures = [args.only]
    elif args.only:
        parser.error(f"--only: pick one of {', '.join([*known, *FIGURES])}")
    if args.check:
        return check_only(names, known, device)

    began = time.perf_counter()
    rows: list[Row] = []
    extra: list[str] = []

    def progress(what: str) -> None:
        took = time.perf_counter() - began
        ratio = f": {rows[-1].ratio:.3f}x" if rows else ""
        print(f"  {took:5.0f} s  {what}{ratio}", file=sys.stderr, flush=True)

    for figure in figures:
        if figure == "startup":
            rows += command.startup(3, warm=False) if args.quick else command.startup(reps)
            progress("startup")
            continue
        if figure == "command":
            try:
                found, lines = command.command(args, 2 if args.quick else min(reps, 5))
                rows += found
                extra += lines
            except Exception as exc:
                rows.append(error_row("command", "resnet50", exc))
            progress("command")
            continue
        for name in names:
            if figure not in known[name].figures:
                continue
            if figure in ("memory", "mem-plain") and args.quick and name != names[0]:
                continue  # a smoke run: each memory figure costs two fresh processes
            rows.append(measure(figure, known[name], device, args, reps))
            progress(f"{figure} {name}")
    print()
    print(table(rows))
    if extra:
        print()
        print("\n".join(extra))
    print()
    print(BASELINES)
    missed = [f"{r.figure}/{r.workload} ({r.result})" for r in rows if r.result != "PASS"]
    print(
        f"\n{len(rows) - len(missed)}/{len(rows)} figures meet their goal"
        + (f"; not: {', '.join(missed)}" if missed else "")
        + f" ({time.perf_counter() - began:.0f} s; fastest of {reps} interleaved reps"
        + "".join(f", {w.name} {min(w.reps, reps)}" for w in known.values() if w.reps)
        + ")"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
