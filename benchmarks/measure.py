"""Rows of the table, interleaved timing, resident memory."""

from __future__ import annotations

import contextlib
import gc
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

GOALS = {
    "forward": 1.10,
    "grad": 1.15,
    "memory": 1.05,
    "mem-plain": 1.10,
    "command": 1.30,
    "startup": 0.5,
}
STRICT = {"startup"}  # goal is "<" rather than "<="
FLOOR_GOAL = 1.03  # where scan/plain misses its goal: scan/floor at most this


@dataclass(frozen=True)
class Row:
    figure: str
    workload: str
    base: float
    measured: float
    unit: str
    note: str = ""
    floor: float | None = None  # the hand-written floor's time (forward and grad figures)
    checked: bool = True  # the floor's numbers matched the scan's

    @property
    def ratio(self) -> float:
        return self.measured / self.base if self.base else float("inf")

    @property
    def floor_ratio(self) -> float | None:
        return self.measured / self.floor if self.floor else None

    @property
    def passed(self) -> bool:
        goal = GOALS[self.figure]
        return self.ratio < goal if self.figure in STRICT else self.ratio <= goal

    @property
    def result(self) -> str:
        """PASS: the goal; FLOOR: missed it, but within FLOOR_GOAL of the floor; MISS."""
        if self.note.startswith("ERROR"):
            return "ERROR"
        if not self.checked:
            return "CHECK"
        if self.passed:
            return "PASS"
        fr = self.floor_ratio
        return "FLOOR" if fr is not None and fr <= FLOOR_GOAL else "MISS"


def interleaved(
    sides: dict[str, Callable[[], object]],
    reps: int,
    device: torch.device,
    warmup: dict[str, Callable[[], object]] | None = None,
) -> tuple[dict[str, float], dict[str, object]]:
    """Fastest milliseconds of each side, run in turn (a, b, c, a, b, c, ...) after one
    warm-up each (``warmup``'s cheaper callables where given, e.g. on the first batch
    only); also what each side returned in the first timed round (for the floor check).

    Noise on a shared machine (another job on a core, an OpenMP thread that lost its CPU)
    only ever adds time, so each side's fastest repetition is the best estimate of its own
    cost (``timeit``'s advice); medians swung by +-20% between identical runs here. The
    garbage collector is off while timing, as in ``timeit``.
    """

    def clock(fn: Callable[[], object]) -> tuple[float, object]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1000, result

    for fn in (warmup or sides).values():
        clock(fn)
    times: dict[str, list[float]] = {name: [] for name in sides}
    first: dict[str, object] = {}
    gc.collect()
    gc.disable()
    try:
        for _ in range(reps):
            for name, fn in sides.items():
                ms, result = clock(fn)
                times[name].append(ms)
                first.setdefault(name, result)
                del result
    finally:
        gc.enable()
    return {name: min(t) for name, t in times.items()}, first


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
