"""What ``relu_doctor.monitor`` costs a training loop (issue 12).

    python benchmarks/monitor_bench.py [--quick] [--only cnn|mlp] [--threads N] [--reps N]

Each figure is the time of a training loop (forward, cross-entropy, backward, SGD step) run
inside ``monitor(model, every=N)`` divided by the same loop without it, on the same batches
and identical copies of the model, from interleaved repetitions (plain, watched, plain, ...)
after a warm-up; the fastest repetition of each side is compared. The monitor is entered
once and stays on across repetitions, so its first recorded step (which also follows every
op to find each site's layers) falls in the warm-up and each timed repetition of ``N * k``
steps holds exactly ``k`` recorded steps, as in a long training run.

Goals: ``every=100`` within 1.02x of the plain loop, ``every=1`` within 1.15x. A measurement,
not a test: it always exits 0.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import relu_doctor

GOALS = {100: 1.02, 1: 1.15}


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


@dataclass(frozen=True)
class Workload:
    name: str
    build: Callable[[], nn.Module]
    sample: tuple[int, ...]
    batch: int


WORKLOADS = {
    "cnn": Workload("cnn", cnn, (3, 32, 32), 32),
    "mlp": Workload("mlp", mlp, (1024,), 64),
}


def make_batches(w: Workload, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(w.batch, *w.sample, generator=g),
            torch.randint(0, 10, (w.batch,), generator=g),
        )
        for _ in range(count)
    ]


def trainer(model: nn.Module) -> Callable[[list[tuple[torch.Tensor, torch.Tensor]]], float]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def run(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        start = time.perf_counter()
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - start

    return run


def figure(w: Workload, every: int, grad: bool, steps: int, reps: int) -> tuple[float, float]:
    """(plain seconds, watched seconds): the fastest of ``reps`` repetitions of ``steps``."""
    torch.manual_seed(0)
    plain = w.build().train()
    watched = copy.deepcopy(plain)
    batches = make_batches(w, steps)
    run_plain, run_watched = trainer(plain), trainer(watched)
    best_plain, best_watched = float("inf"), float("inf")
    with relu_doctor.monitor(watched, every=every, grad=grad) as mon:
        run_plain(batches)  # warm-up; the watched one records its first (topology) step
        run_watched(batches)
        for _ in range(reps):
            best_plain = min(best_plain, run_plain(batches))
            best_watched = min(best_watched, run_watched(batches))
    recorded = len(set(mon.history()["step"]))
    assert recorded == (reps + 1) * steps // every, recorded  # what was timed was recorded
    return best_plain, best_watched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few steps, 2 reps")
    parser.add_argument("--only", choices=sorted(WORKLOADS), help="one workload")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per side")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reps = 2 if args.quick else args.reps
    print(
        f"monitor overhead vs the plain training loop (fastest of {reps} interleaved "
        f"repetitions; torch {torch.__version__}, {args.threads} thread(s), "
        f"{platform.processor() or platform.machine()})"
    )
    print(f"{'workload':<10}{'figure':<20}{'plain ms':>10}{'watched ms':>12}{'ratio':>8}  goal")
    for name, w in WORKLOADS.items():
        if args.only and name != args.only:
            continue
        for every, grad, steps in ((100, False, 100), (1, False, 20), (1, True, 20)):
            steps = max(every, steps // 4) if args.quick else steps
            t0, t1 = figure(w, every, grad, steps, reps)
            ratio, goal = t1 / t0, GOALS[every]
            verdict = f"<= {goal:.2f}x ({'met' if ratio <= goal else 'missed'})"
            label = f"every={every}" + (", grad=True" if grad else "")
            print(
                f"{name:<10}{label:<20}{t0 / steps * 1e3:>10.2f}{t1 / steps * 1e3:>12.2f}"
                f"{ratio:>7.3f}x  {verdict}"
            )


if __name__ == "__main__":
    main()
