"""The whole command as CI pays it, and the start-up figure (subprocesses, wall time).

``command``: `relu-doctor scan CKPT --arch benchmarks.workloads:resnet50 --no-grad -o
report.json` (the console script next to this Python, else ``python -m relu_doctor``) on a
ResNet-50 state dict saved at bench time in a temporary folder, against
``benchmarks/minimal_scan.py`` on the same file and batches. Both run from the repository
root with it first on PYTHONPATH. Then instrumented runs of each side
(``benchmarks/phases.py``; 3 of each, the fastest per phase) say where the time goes, and
one ``-X importtime`` run of each says which packages the imports cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from benchmarks.measure import Row
from benchmarks.workloads import resnet50

ROOT = Path(__file__).resolve().parent.parent
ARCH = "benchmarks.workloads:resnet50"
PHASES = ("imports", "load", "probe", "forwards", "report+write", "exit")


def cli() -> list[str]:
    exe = Path(sys.executable).with_name("relu-doctor")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "relu_doctor"]


def child_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def wall_ms(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, check=True)
    return (time.perf_counter() - start) * 1000


def phases(cmd: list[str], env: dict[str, str], events_file: Path) -> dict[str, float]:
    """Milliseconds per phase of one instrumented run (see phases.py)."""
    import json

    helper = [sys.executable, str(ROOT / "benchmarks" / "phases.py"), str(events_file)]
    target = cmd[1:] if cmd[0] == sys.executable else ["-m", "relu_doctor", *cmd[1:]]
    spawned = time.time()
    subprocess.run([*helper, *target], cwd=ROOT, env=env, capture_output=True, check=True)
    gone = time.time()
    ev = json.loads(events_file.read_text())
    marks = [
        spawned,
        ev["load_start"],
        ev["forward_first"],
        ev["infer_first"],
        ev["infer_end"],
        ev["end"],
        gone,
    ]
    return {name: (b - a) * 1000 for name, a, b in zip(PHASES, marks[:-1], marks[1:], strict=True)}


def import_costs(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Self time (ms) of every import, summed per top-level package (-X importtime)."""
    if cmd[0] != sys.executable:
        cmd = [sys.executable, "-m", "relu_doctor", *cmd[1:]]
    cmd = [cmd[0], "-X", "importtime", *cmd[1:]]
    err = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stderr
    costs: dict[str, float] = defaultdict(float)
    for line in err.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = (part.strip() for part in line[len("import time:") :].split("|"))
        costs[name.split(".")[0].lstrip("_") or name] += int(self_us) / 1000
    return dict(sorted(costs.items(), key=lambda kv: -kv[1]))


def _imports_line(label: str, costs: dict[str, float], top: int = 6) -> str:
    shown = list(costs.items())[:top]
    rest = sum(costs.values()) - sum(v for _, v in shown)
    parts = [f"{name} {ms:.0f}" for name, ms in shown] + [f"other {rest:.0f}"]
    return f"  {label:<17} {sum(costs.values()):6.0f} ms = {', '.join(parts)}"


def command(args: argparse.Namespace, reps: int) -> tuple[list[Row], list[str]]:
    """The command row and the lines that break it down."""
    batches, batch_size = (2, 4) if args.quick else (8, 32)
    env = child_env(args.threads)
    with tempfile.TemporaryDirectory(prefix="relu-doctor-bench-") as tmp:
        ckpt = Path(tmp) / "resnet50_state.pt"
        torch.manual_seed(0)
        torch.save(resnet50().state_dict(), ckpt)
        mb = ckpt.stat().st_size / 2**20
        sizes = ["--batches", str(batches), "--batch-size", str(batch_size)] if args.quick else []
        common = [*sizes, "--device", args.device]
        sides = {
            "minimal script": [
                sys.executable,
                str(ROOT / "benchmarks" / "minimal_scan.py"),
                str(ckpt),
                *common,
                "-o",
                str(Path(tmp) / "minimal.json"),
            ],
            "relu-doctor scan": [
                *cli(),
                "scan",
                str(ckpt),
                "--arch",
                ARCH,
                "--no-grad",
                *common,
                "-o",
                str(Path(tmp) / "report.json"),
            ],
        }
        times: dict[str, list[float]] = {k: [] for k in sides}
        for rep in range(-1, reps):  # round -1 warms the file cache, uncounted
            for name, cmd in sides.items():
                ms = wall_ms(cmd, env)
                if rep >= 0:
                    times[name].append(ms)
        # instrumented runs, interleaved; per phase the fastest (noise only adds time)
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
        for _ in range(1 if args.quick else 3):
            for k, cmd in sides.items():
                runs[k].append(phases(cmd, env, Path(tmp) / "events.json"))
        split = {k: {p: min(r[p] for r in rs) for p in PHASES} for k, rs in runs.items()}
        imports = {k: import_costs(cmd, env) for k, cmd in sides.items()}
    base, mine = (min(times[k]) for k in sides)
    note = f"{batches} x {batch_size} x 3x32x32 (inferred), -o report.json"
    row = Row("command", "resnet50", base, mine, "ms", note)
    lines = [
        f"command: `relu-doctor scan CKPT --arch {ARCH} --no-grad -o report.json` against "
        "benchmarks/minimal_scan.py;",
        f"  CKPT = ResNet-50 state dict ({mb:.0f} MB); medians of the timed runs: "
        + ", ".join(f"{k} {statistics.median(v):.0f} ms" for k, v in times.items()),
        f"  phases (ms, fastest of {len(next(iter(runs.values())))} instrumented runs of each "
        "side, per phase; benchmarks/phases.py):",
        "  " + f"{'':<17}" + "".join(f"{p:>13}" for p in (*PHASES, "total")),
    ]
    for name, split_ms in split.items():
        cells = "".join(f"{split_ms[p]:13.0f}" for p in PHASES)
        lines.append(f"  {name:<17}{cells}{sum(split_ms.values()):13.0f}")
    a, b = split.values()
    cells = "".join(f"{b[p] - a[p]:+13.0f}" for p in PHASES)
    lines.append(f"  {'difference':<17}{cells}{sum(b.values()) - sum(a.values()):+13.0f}")
    lines.append("  imports (self time per top-level package, -X importtime, ms):")
    lines += [_imports_line(name, costs) for name, costs in imports.items()]
    return [row], lines


def startup(reps: int, warm: bool = True) -> list[Row]:
    """Wall time of `relu-doctor --help` / `--version` vs `python -c "import torch"`."""
    cmds = {
        "import torch": [sys.executable, "-c", "import torch"],
        "--help": [*cli(), "--help"],
        "--version": [*cli(), "--version"],
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
