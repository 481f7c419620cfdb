"""The memory figures, each side measured in a fresh child process (``bench.py --child-...``).

- ``memory`` (flat in samples): peak of a grad scan over 40 generated batches against the
  same over 2, after a one-batch warm-up scan in both.
- ``mem-plain`` (next to plain): peak of a forward-only scan against a plain
  ``inference_mode`` forward over the same in-memory batches, no warm-up: everything the
  first scan of a process pays (its lazy imports included) counts. The floor's peak
  (``floor_forward``) says how much of the difference the reductions themselves cause.

Linux: the peak is reset (``/proc/self/clear_refs``) once the model and batches are built
and read from ``VmHWM`` afterwards. The children run with a fixed glibc mmap threshold
(``MALLOC_MMAP_THRESHOLD_=131072``): with glibc's dynamic threshold, a freed 25 MB
activation moves the threshold up and later ones come from the heap, whose fragmentation
made the same ResNet-50 forward peak anywhere between +170 and +350 MB run to run; with
the threshold fixed, tensors are mmapped, freed memory goes back at once, and the peak is
the live memory (to the MB between runs). On CUDA the figures are
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import relu_doctor
from benchmarks.floor import floor_forward
from benchmarks.measure import Row, reset_peak_rss, rss_mb
from benchmarks.workloads import Workload, build, make_batches, stream

MEMORY_BATCHES = (2, 40)
BENCH = Path(__file__).with_name("bench.py")


def _start(device: torch.device) -> dict[str, float]:
    gc.collect()
    reset_peak_rss()
    start = {"start_mb": rss_mb()[0]}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        start["cuda_start_mb"] = torch.cuda.memory_allocated(device) / 2**20
    return start


def _peak(device: torch.device, found: dict[str, float]) -> dict[str, float]:
    found["peak_mb"] = rss_mb()[1]
    if device.type == "cuda":
        torch.cuda.synchronize()
        found["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return found


def child_flat(w: Workload, n: int, device: torch.device) -> dict[str, float]:
    """In a fresh process: peak memory of a grad scan over ``n`` generated batches, and the
    resident memory after the model build and a one-batch warm-up scan."""
    model = build(w, device)
    relu_doctor.scan(model, stream(w, 1, device), grad=True, device=device)
    found = _start(device)
    relu_doctor.scan(model, stream(w, n, device), grad=True, device=device)
    return _peak(device, found)


def child_plain(w: Workload, side: str, device: torch.device) -> dict[str, float]:
    """In a fresh process: peak memory of a forward-only scan (``side`` "scan"), its floor
    ("floor") or a plain ``inference_mode`` forward ("plain") over the timed batches."""
    model = build(w, device)
    batches = make_batches(w, device)
    found = _start(device)
    if side == "scan":
        relu_doctor.scan(model, batches, grad=False, device=device)
    elif side == "floor":
        floor_forward(model, batches, w.functional)
    else:
        with torch.inference_mode():
            for x in batches:
                model(x)
    return _peak(device, found)


def _child(args: argparse.Namespace, flag: str, *values: str) -> dict[str, float]:
    cmd = [sys.executable, str(BENCH), flag, *values, "--device", args.device]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # see the module docstring
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def _row(
    figure: str, w: Workload, device: torch.device, found: list[dict[str, float]], what: str
) -> Row:
    """``found``: baseline, relu-doctor (and floor) child results."""
    key = "cuda_peak_mb" if device.type == "cuda" else "peak_mb"
    start = "cuda_start_mb" if device.type == "cuda" else "start_mb"
    grow = " vs ".join(f"+{r[key] - r[start]:.1f}" for r in found)
    floor = found[2][key] if len(found) > 2 else None
    note = f"{what}; MB above start {grow}"
    return Row(figure, w.name, found[0][key], found[1][key], "MB", note, floor=floor)


def flat(w: Workload, device: torch.device, args: argparse.Namespace) -> Row:
    """Peak RSS (or CUDA memory) of a grad scan over 40 batches vs over 2."""
    found = [_child(args, "--child-memory", w.name, str(n)) for n in MEMORY_BATCHES]
    shape = "x".join(map(str, (w.mem_batch, *(w.mem_sample or w.sample))))
    return _row("memory", w, device, found, f"batches {shape}")


def plain(w: Workload, device: torch.device, args: argparse.Namespace) -> Row:
    """Peak RSS (or CUDA memory) of a forward-only scan vs a plain forward, same batches."""
    found = [_child(args, "--child-rss", w.name, side) for side in ("plain", "scan", "floor")]
    return _row("mem-plain", w, device, found, w.shape_note + " (plain, scan, floor)")
