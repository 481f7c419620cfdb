"""What ``relu_doctor.monitor`` costs a training loop (issue 12).

    python benchmarks/monitor_bench.py [--quick] [--only cnn|mlp] [--threads N] [--reps N]

Each figure is the time of a training step (forward, cross-entropy, backward, SGD step) run
inside ``monitor(model, every=N)`` divided by the same step without it, on the same batches
and identical copies of the model, from interleaved chunks (plain, watched, plain, ...)
after a warm-up; the fastest chunk of each side is compared. The monitor is created once and
re-entered for each watched chunk (it goes on counting), so its first recorded step (which
also follows every op to find each site's layers) falls in the warm-up, as in a long run.

``every=100`` is 99 steps with the monitor's hooks only plus one recorded step: it is
computed from the two measured figures "hooks only" and "every=1" (timing 100-step chunks
directly needs minutes per figure and drowns in the noise of a shared box; ``--direct``
does it anyway).

Times are the CPU time of the process (``time.process_time``) with one torch thread: on a
box shared with other jobs wall time swings by tens of percent between repetitions, CPU time
far less. Goals: ``every=100`` within 1.02x of the plain loop, ``every=1`` within 1.15x. A
measurement, not a test: it always exits 0.
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
NEVER = 10**9  # an every that records only step 0 (in the warm-up): the hooks alone


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
        start = time.process_time()
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.process_time() - start

    return run


def figure(w: Workload, every: int, grad: bool, chunk: int, reps: int) -> tuple[float, float, int]:
    """(plain, watched) seconds per step, the fastest of ``reps`` interleaved chunks of
    ``chunk`` steps, and the steps recorded in the timed chunks.

    The plain loop runs outside the monitor (its global module hooks would slow it too); the
    watched one re-enters the same monitor, which goes on counting where it stopped."""
    torch.manual_seed(0)
    plain = w.build().train()
    watched = copy.deepcopy(plain)
    batches = make_batches(w, chunk)
    run_plain, run_watched = trainer(plain), trainer(watched)
    mon = relu_doctor.monitor(watched, every=every, grad=grad)
    run_plain(batches)  # warm-up; the watched one records its first (topology) step
    with mon:
        run_watched(batches)
    best_plain, best_watched = float("inf"), float("inf")
    for _ in range(reps):
        best_plain = min(best_plain, run_plain(batches))
        with mon:
            best_watched = min(best_watched, run_watched(batches))
    recorded = len(set(mon.history()["step"])) - len(range(0, chunk, every))  # minus warm-up
    return best_plain / chunk, best_watched / chunk, recorded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: short chunks, 2 reps")
    parser.add_argument("--only", choices=sorted(WORKLOADS), help="one workload")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--reps", type=int, default=15, help="timed chunks per side")
    parser.add_argument(
        "--direct", action="store_true", help="also time every=100 directly (100-step chunks)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reps, chunk = (2, 4) if args.quick else (args.reps, 10)
    print(
        f"monitor overhead vs the plain training loop (CPU time per step, fastest of {reps} "
        f"interleaved chunks of {chunk} steps; torch {torch.__version__}, {args.threads} "
        f"thread(s), {platform.processor() or platform.machine()})"
    )
    print(f"{'workload':<10}{'figure':<24}{'plain ms':>10}{'watched ms':>12}{'ratio':>8}  goal")

    def line(name: str, label: str, t0: float | None, t1: float, goal: float | None) -> None:
        """A row; ``t0`` None: ``t1`` is a ratio computed from the rows above."""
        ratio = t1 if t0 is None else t1 / t0
        ms = f"{'–':>10}{'–':>12}" if t0 is None else f"{t0 * 1e3:>10.2f}{t1 * 1e3:>12.2f}"
        verdict = "" if goal is None else f"<= {goal:.2f}x ({'met' if ratio <= goal else 'missed'})"
        print(f"{name:<10}{label:<24}{ms}{ratio:>7.3f}x  {verdict}")

    for name, w in WORKLOADS.items():
        if args.only and name != args.only:
            continue
        p_hook, t_hook, rec = figure(w, NEVER, False, chunk, reps)
        assert rec == 0, rec
        line(name, "hooks only (no record)", p_hook, t_hook, None)
        p_rec, t_rec, rec = figure(w, 1, False, chunk, reps)
        assert rec == reps * chunk, rec
        line(name, "every=1", p_rec, t_rec, GOALS[1])
        p_grad, t_grad, _ = figure(w, 1, True, chunk, reps)
        line(name, "every=1, grad=True", p_grad, t_grad, GOALS[1])
        # every=100: 99 steps with the hooks only, one recorded step
        ratio = (t_hook / p_hook * 99 + t_rec / p_rec) / 100
        line(name, "every=100 (from above)", None, ratio, GOALS[100])
        if args.direct:
            p100, t100, rec = figure(w, 100, False, 100, max(reps // 3, 2))
            line(name, "every=100 (timed)", p100, t100, GOALS[100])


if __name__ == "__main__":
    main()
