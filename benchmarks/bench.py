"""relu-doctor benchmark: what a scan costs next to the model's own work (issue 5).

    python benchmarks/bench.py [--quick] [--only NAME] [--device cpu|cuda] [--threads N]

Every figure is a ratio against a plain baseline doing the same work on the SAME batches,
from interleaved repetitions (baseline, scan, baseline, scan, ...) after a warm-up; the
table shows the fastest repetition of each side and their ratio. This is a measurement, not a test:
it always exits 0. See benchmarks/README.md for what each figure means.

--only takes a workload (cnn, mlp, fmlp, resnet50) or a figure (forward, grad, memory,
startup); --threads sets torch.set_num_threads (use 1 on a box shared with other jobs: an
OpenMP thread that loses its core stalls every parallel op and swamps the figures);
--child-memory is internal (one memory measurement in a fresh process).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import relu_doctor

GOALS = {"forward": 1.10, "grad": 1.15, "memory": 1.05, "startup": 0.5}
STRICT = {"startup"}  # goal is "<" rather than "<="
FIGURES = ("forward", "grad", "memory", "startup")
MEMORY_BATCHES = (2, 40)


# --- models ------------------------------------------------------------------------------


def cnn() -> nn.Module:
    """Conv/BatchNorm/in-place ReLU/MaxPool, 3 -> 32 -> 64 -> 128 channels, 32x32 inputs."""
    layers: list[nn.Module] = []
    for cin, cout in ((3, 32), (32, 64), (64, 128)):
        layers += [
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 4 * 4, 10))


def mlp() -> nn.Module:
    """6 x Linear(1024, 1024) each followed by nn.ReLU, then a 10-way head."""
    layers: list[nn.Module] = []
    for _ in range(6):
        layers += [nn.Linear(1024, 1024), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(1024, 10))


class FunctionalMLP(nn.Module):
    """The same MLP, calling F.relu in forward (functional sites)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(1024, 1024) for _ in range(6))
        self.head = nn.Linear(1024, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: 1x1 reduce, 3x3 (stride here), 1x1 expand, residual add."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)  # called 3 times: sites relu#1..#3
        self.down: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.down(x))


def resnet50() -> nn.Module:
    """ResNet-50 layout (blocks [3, 4, 6, 3], widths 64..2048), random weights, 25.6M params."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]
    cin = 64
    for i, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
        for b in range(blocks):
            layers.append(Bottleneck(cin, width, 2 if b == 0 and i > 0 else 1))
            cin = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class Workload:
    name: str
    build: Callable[[], nn.Module]
    sample: tuple[int, ...]  # one sample's shape
    batch: int  # samples per batch
    batches: int  # batches per timed repetition
    mem_batch: int  # samples per batch in the memory figure (40 batches must stay quick)
    mem_sample: tuple[int, ...] | None = None  # one sample's shape there (None: ``sample``)


def workloads(quick: bool) -> dict[str, Workload]:
    """Sizes: the full run fits ~3 minutes on a 2-core CPU box; --quick is a smoke run."""
    if quick:
        return {
            "cnn": Workload("cnn", cnn, (3, 32, 32), 16, 2, 4),
            "mlp": Workload("mlp", mlp, (1024,), 32, 2, 8),
            "fmlp": Workload("fmlp", FunctionalMLP, (1024,), 32, 2, 8),
            "resnet50": Workload("resnet50", resnet50, (3, 64, 64), 1, 1, 1, (3, 32, 32)),
        }
    return {
        # 8 batches: what `relu-doctor scan` feeds by default
        "cnn": Workload("cnn", cnn, (3, 32, 32), 64, 8, 16),
        "mlp": Workload("mlp", mlp, (1024,), 256, 8, 64),
        "fmlp": Workload("fmlp", FunctionalMLP, (1024,), 256, 8, 64),
        "resnet50": Workload("resnet50", resnet50, (3, 224, 224), 8, 2, 1, (3, 112, 112)),
    }


@functools.cache
def build(w: Workload, device: torch.device) -> nn.Module:
    """Seeded; built once per process (a scan leaves the model exactly as it was)."""
    torch.manual_seed(0)
    return w.build().to(device).eval()


def make_batches(w: Workload, device: torch.device) -> list[torch.Tensor]:
    """The timed figures' batches, built once: baseline and scan see the same tensors."""
    g = torch.Generator().manual_seed(1)
    return [torch.randn((w.batch, *w.sample), generator=g).to(device) for _ in range(w.batches)]


def stream(w: Workload, n: int, device: torch.device) -> Iterator[torch.Tensor]:
    """The memory figure's generator of fresh batches: only the current one is alive."""
    g = torch.Generator().manual_seed(1)
    shape = (w.mem_batch, *(w.mem_sample or w.sample))
    for _ in range(n):
        yield torch.randn(shape, generator=g).to(device)


# --- the plain baselines -----------------------------------------------------------------


def plain_forward(model: nn.Module, batches: list[torch.Tensor]) -> None:
    with torch.inference_mode():
        for x in batches:
            model(x)


def plain_grad(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Forward plus autograd.grad of the scan's surrogate loss w.r.t. every parameter."""
    params = [p for p in model.parameters() if p.requires_grad]
    for x in batches:
        out = model(x)
        loss = 0.5 * out.float().pow(2).sum() / out.shape[0]
        torch.autograd.grad(loss, params)


# --- measuring ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    figure: str
    workload: str
    base: float
    measured: float
    unit: str
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.measured / self.base if self.base else float("inf")

    @property
    def passed(self) -> bool:
        goal = GOALS[self.figure]
        return self.ratio < goal if self.figure in STRICT else self.ratio <= goal


def interleaved(
    base: Callable[[], object], scan: Callable[[], object], reps: int, device: torch.device
) -> tuple[float, float]:
    """Fastest milliseconds of ``base`` and ``scan``, run alternately after one warm-up each.

    Noise on a shared machine (another job on a core, an OpenMP thread that lost its CPU)
    only ever adds time, so each side's fastest repetition is the best estimate of its own
    cost (``timeit``'s advice); medians swung by +-20% between identical runs here. The
    garbage collector is off while timing, as in ``timeit``.
    """

    def clock(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1000

    clock(base), clock(scan)  # warm-up: allocator, kernels, lazy imports
    times: tuple[list[float], list[float]] = ([], [])
    gc.collect()
    gc.disable()
    try:
        for _ in range(reps):
            times[0].append(clock(base))
            times[1].append(clock(scan))
    finally:
        gc.enable()
    return min(times[0]), min(times[1])


def overhead(w: Workload, figure: str, device: torch.device, reps: int) -> Row:
    model = build(w, device)
    batches = make_batches(w, device)
    grad = figure == "grad"
    plain = plain_grad if grad else plain_forward

    def base() -> None:
        plain(model, batches)

    def scan() -> None:
        relu_doctor.scan(model, batches, grad=grad, device=device)

    b, s = interleaved(base, scan, reps, device)
    note = f"{w.batches} x {w.batch} x {'x'.join(map(str, w.sample))}"
    return Row(figure, w.name, b, s, "ms", note)


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MB.

    Linux: VmRSS / VmHWM of /proc/self/status, the peak of this process's own memory.
    ``ru_maxrss`` is the fallback only: on Linux it survives fork+exec, so a child started
    by a big parent reports the parent's peak.
    """
    try:
        fields = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
        )
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb / 1024, kb / 1024


def reset_peak_rss() -> None:
    """Start a new high-water mark (Linux: "5" to clear_refs); elsewhere keep the old one."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def child_memory(w: Workload, n: int, device: torch.device) -> dict[str, float]:
    """In a fresh process: peak memory of a grad scan over ``n`` generated batches, and the
    resident memory after the model build and a one-batch warm-up scan."""
    model = build(w, device)
    relu_doctor.scan(model, stream(w, 1, device), grad=True, device=device)
    gc.collect()
    reset_peak_rss()
    start, _ = rss_mb()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        start_cuda = torch.cuda.memory_allocated(device)
    relu_doctor.scan(model, stream(w, n, device), grad=True, device=device)
    result = {"start_mb": start, "peak_mb": rss_mb()[1]}
    if device.type == "cuda":
        torch.cuda.synchronize()
        result["cuda_start_mb"] = start_cuda / 2**20
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def memory(w: Workload, device: torch.device, args: argparse.Namespace) -> Row:
    """Peak RSS (or CUDA memory) of a scan over 40 batches vs over 2, fresh process each."""
    found = []
    for n in MEMORY_BATCHES:
        cmd = [sys.executable, __file__, "--child-memory", w.name, str(n), "--device", device.type]
        cmd += ["--quick"] if args.quick else []
        cmd += ["--threads", str(args.threads)] if args.threads else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        found.append(json.loads(out.strip().splitlines()[-1]))
    key = "cuda_peak_mb" if device.type == "cuda" else "peak_mb"
    start = "cuda_start_mb" if device.type == "cuda" else "start_mb"
    grow = [f"+{r[key] - r[start]:.1f}" for r in found]
    shape = "x".join(map(str, (w.mem_batch, *(w.mem_sample or w.sample))))
    note = f"batches {shape}; MB above the warm start: {' vs '.join(grow)}"
    return Row("memory", w.name, found[0][key], found[1][key], "MB", note)


def startup(reps: int, warm: bool = True) -> list[Row]:
    """Wall time of `relu-doctor --help` / `--version` vs `python -c "import torch"`."""
    exe = Path(sys.executable).with_name("relu-doctor")
    cli = [str(exe)] if exe.exists() else [sys.executable, "-m", "relu_doctor"]
    cmds = {
        "import torch": [sys.executable, "-c", "import torch"],
        "--help": [*cli, "--help"],
        "--version": [*cli, "--version"],
    }
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for rep in range(-1 if warm else 0, reps):  # round -1 warms the file cache, uncounted
        for key, cmd in cmds.items():
            start = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True)
            if rep >= 0:
                times[key].append((time.perf_counter() - start) * 1000)
    probe = (
        "import sys\nfrom relu_doctor.cli import main\nsys.argv = ['relu-doctor', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(','.join(m for m in ('torch', 'pandas') if m in sys.modules) or 'neither',"
        " file=sys.stderr)"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    note = f"--help loads: {loaded.stderr.strip().splitlines()[-1] if loaded.stderr else '?'}"
    base = statistics.median(times["import torch"])
    return [
        Row(
            "startup",
            key,
            base,
            statistics.median(times[key]),
            "ms",
            note if key == "--help" else "",
        )
        for key in ("--help", "--version")
    ]


# --- the report --------------------------------------------------------------------------


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


def fmt(value: float, unit: str) -> str:
    return f"{value:.1f} {unit}" if unit == "ms" else f"{value:.0f} {unit}"


def table(rows: list[Row]) -> str:
    head = ("figure", "workload", "baseline", "relu-doctor", "ratio", "goal", "result", "note")
    body = [
        (
            r.figure,
            r.workload,
            fmt(r.base, r.unit),
            fmt(r.measured, r.unit),
            f"{r.ratio:.3f}x",
            f"{'<' if r.figure in STRICT else '<='} {GOALS[r.figure]:.2f}x",
            "PASS" if r.passed else "ERROR" if r.note.startswith("ERROR") else "MISS",
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


BASELINES = """\
baselines: forward = plain torch.inference_mode() forward over the same batches;
           grad = plain forward + torch.autograd.grad(0.5*sum(out**2)/N, all parameters);
           memory = peak RSS (CUDA: peak allocated) of a grad scan over 2 generated batches,
                    relu-doctor column = over 40 (each in a fresh process);
           startup = python -c "import torch" (wall time of a subprocess)"""


def measure(
    figure: str, w: Workload, device: torch.device, args: argparse.Namespace, reps: int
) -> Row:
    """One row; a failure becomes an ERROR row so the other figures still print."""
    try:
        if figure == "memory":
            return memory(w, device, args)
        return overhead(w, figure, device, reps)
    except Exception as exc:  # report it, keep going: this is a measurement, not a test
        msg = exc.stderr.strip().splitlines()[-1] if getattr(exc, "stderr", None) else exc
        return Row(figure, w.name, float("nan"), float("nan"), "", f"ERROR: {msg}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run (< 20 s)")
    parser.add_argument("--only", help="one workload (cnn, mlp, fmlp, resnet50) or figure")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions (at least 5)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--child-memory", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    known = workloads(args.quick)
    if args.child_memory:
        name, n = args.child_memory
        print(json.dumps(child_memory(known[name], int(n), device)))
        return 0
    print(header(device, args.quick), flush=True)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch.cuda.is_available() is False here; nothing measured")
        return 0
    reps = max(args.reps, 5)
    names, figures = list(known), list(FIGURES)
    if args.only in known:
        names = [args.only]
        figures.remove("startup")
    elif args.only in FIGURES:
        figures = [args.only]
    elif args.only:
        parser.error(f"--only: pick one of {', '.join([*known, *FIGURES])}")

    began = time.perf_counter()
    rows: list[Row] = []
    for figure in figures:
        if figure == "startup":
            rows += startup(3, warm=False) if args.quick else startup(reps)
            print(f"  {time.perf_counter() - began:5.0f} s  startup", file=sys.stderr)
            continue
        for name in names:
            if figure == "memory" and args.quick and len(names) > 1 and name != names[0]:
                continue  # a smoke run: each memory figure costs two fresh processes
            rows.append(measure(figure, known[name], device, args, reps))
            took = time.perf_counter() - began
            print(f"  {took:5.0f} s  {figure} {name}: {rows[-1].ratio:.3f}x", file=sys.stderr)
    print()
    print(table(rows))
    print()
    print(BASELINES)
    missed = [f"{r.figure}/{r.workload}" for r in rows if not r.passed]
    print(
        f"\n{len(rows) - len(missed)}/{len(rows)} figures meet their goal"
        + (f"; missed: {', '.join(missed)}" if missed else "")
        + f" ({time.perf_counter() - began:.0f} s; fastest of {reps} interleaved reps)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
