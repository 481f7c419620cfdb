"""What `relu-doctor check` costs next to `relu-doctor scan` on the ResNet-50 workload.

    python benchmarks/check_cost.py [--quick] [--reps 3] [--threads N]

Saves the ResNet-50 of ``bench.py`` (random weights, 25.6 M parameters) as a state dict in
a temporary folder, then runs the real command lines in this process, interleaved and after
a warm-up, and prints the fastest repetition of each:

- scan:  ``relu-doctor scan  resnet50.pt --arch benchmarks/workloads.py:resnet50 ...``
- check: ``relu-doctor check resnet50.pt --arch benchmarks/workloads.py:resnet50 ...`` (same
  options; every rule, the weight rules included);
- judge: the judging alone on a finished report (``weights.producers`` + ``check``), which
  is what check adds to the scan: no second load, no second forward.

Both commands write JSON to a file (stdout stays quiet). A measurement, not a test: it always
exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import relu_doctor
from relu_doctor.cli import main
from relu_doctor.gate.weights import producers

HERE = Path(__file__).resolve().parent
ARCH = f"{HERE / 'workloads.py'}:resnet50"


def _cli(args: list[str]) -> int:
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            main(args)
        except SystemExit as exc:
            code = int(exc.code or 0)
    if code >= 2:  # 1 is check's verdict; 2 and up mean the command itself failed
        raise SystemExit(f"relu-doctor {args[0]} failed (exit {code}): {err.getvalue().strip()}")
    return code


def _fastest(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Fastest of ``reps`` interleaved runs of each (after one warm-up of each)."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, fn in fns.items():
            gc.collect()
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64x64 inputs, 1 batch of 2")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    from workloads import resnet50  # the workload of make bench

    shape, batch, batches = ((3, 64, 64), 2, 1) if args.quick else ((3, 224, 224), 8, 2)
    torch.manual_seed(0)
    model = resnet50().eval()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "resnet50.pt"
        torch.save(model.state_dict(), path)
        common = [str(path), "--arch", ARCH, "--input-shape", ",".join(map(str, shape))]
        common += ["--batch-size", str(batch), "--batches", str(batches)]
        out = str(Path(folder) / "out.json")
        codes: dict[str, int] = {}

        def command(name: str) -> Callable[[], object]:
            return lambda: codes.__setitem__(name, _cli([name, *common, "-o", out]))

        report = relu_doctor.scan(
            model, input_shape=shape, batch_size=batch, batches=batches, name="resnet50"
        )
        found: list[object] = []

        def judge() -> None:
            found[:] = relu_doctor.check(report, producers=producers(model, report))

        times = _fastest(
            {"scan": command("scan"), "check": command("check"), "judge": judge}, args.reps
        )
    sites = len(report.sites)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; ResNet-50 state dict, "
        f"{batches} x {batch} inputs {'x'.join(map(str, shape))}, {sites} sites"
    )
    print(f"scan    {times['scan']:8.3f} s   (exit {codes.get('scan')})")
    print(f"check   {times['check']:8.3f} s   (exit {codes.get('check')}, {len(found)} findings)")
    print(f"judge   {times['judge'] * 1e3:8.1f} ms  (producers + rules on the finished report)")
    print(f"check / scan = {times['check'] / times['scan']:.3f}")


if __name__ == "__main__":
    main_()
