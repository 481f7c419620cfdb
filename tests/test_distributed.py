"""A data-parallel scan (gloo, 2 CPU processes) gives the same report as one process.

Each rank runs this file as a script (as ``torchrun`` would run a user's script): it joins
the process group through MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE, scans its half of
a fixed dataset with ``relu_doctor.scan`` (which detects the initialised group and
all-reduces the statistics) and writes its report as JSON. The test compares every rank's
report with a single-process scan of the whole dataset over the same batches (grad_norm is
a mean over batches, so the batch boundaries must match).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import relu_doctor

WORLD = 2
SAMPLES = 64  # 32 per rank
BATCH = 16  # 2 batches per rank, 4 in the single-process scan
TIMEOUT_S = 90  # generous: both ranks import torch on a loaded CI box

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)


def make_model() -> nn.Module:
    """Seeded, so every process builds the same weights; two conv and two linear sites plus
    a dead conv channel and a dead linear unit."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 32),
        nn.ReLU(),
        nn.Linear(32, 5),
    ).eval()
    with torch.no_grad():
        model[1].bias[3] = -50.0  # channel 3 never fires
        model[5].bias[7] = -50.0  # unit 7 never fires
    return model


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(SAMPLES, 3, 8, 8, generator=g), torch.randint(0, 5, (SAMPLES,), generator=g)


def report_json(report: Any) -> dict[str, Any]:
    """The per-site frame (the columns of docs/metrics.md) plus the model-level numbers."""
    frame = report.to_frame()
    return {
        "samples": report.samples,
        "batches": report.batches,
        "sites": json.loads(frame.to_json(orient="records")),
        "params": [[p.name, p.grad_norm] for p in report.params],
    }


def worker(out: Path) -> None:
    """One rank: join the group, scan this rank's half, write the report."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, y = make_data()
        share = SAMPLES // world
        half = (x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share])
        report = relu_doctor.scan(make_model(), half, batch_size=BATCH, grad=True)
        out.write_text(json.dumps(report_json(report)))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(tmp_path: Path) -> list[dict[str, Any]]:
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(WORLD),
        "OMP_NUM_THREADS": "1",  # two ranks on a small CI box
    }
    outs = [tmp_path / f"rank{r}.json" for r in range(WORLD)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(outs[r])],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(WORLD)
    ]
    try:
        logs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"distributed scan did not finish in {TIMEOUT_S} s")
    for r, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"rank {r} failed:\n{log}"
    return [json.loads(o.read_text()) for o in outs]


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    x, y = make_data()
    return report_json(relu_doctor.scan(make_model(), (x, y), batch_size=BATCH, grad=True))


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path: Path, single: dict[str, Any]) -> None:
    ranks = run_ranks(tmp_path)
    assert single["samples"] == SAMPLES and single["batches"] == SAMPLES // BATCH
    for r, report in enumerate(ranks):
        assert (report["samples"], report["batches"]) == (single["samples"], single["batches"])
        assert [s["site"] for s in report["sites"]] == [s["site"] for s in single["sites"]]
        for got, want in zip(report["sites"], single["sites"], strict=True):
            where = f"rank {r}, site {want['site']}"
            exact = ("kind", "calls", "units", "samples", "dead", "near_dead", "dormant")
            for col in (*exact, "zero_grad", "causes"):
                assert got[col] == want[col], f"{where}: {col}"
            close = ("dead_fraction", "sparsity", "max_activation", "dead_margin", "grad_norm")
            # The 64 rows of the linear site all fit the row sample: its rank is exact there.
            ranked = ("eff_rank",) if want["site"] == "6" else ()
            for col in (*close, "grad_noise", *ranked):
                if want[col] is None:
                    assert got[col] is None, f"{where}: {col}"
                else:
                    assert got[col] == pytest.approx(want[col], rel=1e-6), f"{where}: {col}"
        for (name, got), (_, want) in zip(report["params"], single["params"], strict=True):
            assert got == pytest.approx(want, rel=1e-6), f"rank {r}, param {name}"
    dead = {s["site"]: s["dead"] for s in single["sites"]}
    assert dead["2"] == 1 and dead["6"] >= 1  # the planted units: the check is not vacuous


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
