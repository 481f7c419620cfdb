"""``monitor()`` under DistributedDataParallel (gloo, 2 CPU processes): each rank trains on its
half of every batch, and every recorded step's statistics are summed over the ranks, so
each rank's history equals plain torch on the whole batch of that step.

Each rank runs this file as a script (as ``torchrun`` would): it trains a DDP model inside
``monitor(every=2, grad=True)``, computes the reference with plain torch on the batch of both
ranks (gathered; the DDP weights are the same on every rank) and writes both as JSON.
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
import torch.nn.functional as F
from torch import nn

import relu_doctor

WORLD, STEPS, ROWS, EVERY = 2, 5, 8, 2  # 8 rows per rank, 16 per step

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        model[0].bias.sub_(0.8)  # units skip whole batches: per-step dead counts move
    return model


def batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(ROWS, 6, generator=g), torch.randint(0, 3, (ROWS,), generator=g)


def reference(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    with torch.no_grad():
        h = torch.relu(F.linear(x, model[0].weight, model[0].bias))
    return {
        "samples": h.shape[0],
        "dead": int(((h > 0).sum(dim=0) == 0).sum()),
        "sparsity": float((h <= 0).float().mean()),
        "max_activation": float(h.max()),
    }


def worker(out: Path) -> None:
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        inner = make_model()
        model = nn.parallel.DistributedDataParallel(inner)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        expected = {}
        with relu_doctor.monitor(model, every=EVERY, grad=True) as mon:
            for step in range(STEPS):
                x, y = batch(step, rank)
                if step % EVERY == 0:
                    both = [torch.empty_like(x) for _ in range(WORLD)]
                    dist.all_gather(both, x)
                    expected[step] = reference(inner, torch.cat(both))
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        hist = mon.history()
        out.write_text(
            json.dumps(
                {
                    "history": json.loads(hist.to_json(orient="records")),
                    "expected": {str(k): v for k, v in expected.items()},
                }
            )
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_statistics_are_summed_over_ranks(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(WORLD),
        "OMP_NUM_THREADS": "1",
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
        logs = [p.communicate(timeout=120)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("the DDP training did not finish in 120 s")
    for r, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"rank {r} failed:\n{log}"
    results = [json.loads(o.read_text()) for o in outs]
    dead = []
    for r, res in enumerate(results):
        rows = res["history"]
        assert [row["step"] for row in rows] == [0, 2, 4]
        for row in rows:
            want = res["expected"][str(row["step"])]
            assert row["site"] == "1"
            assert row["samples"] == want["samples"] == WORLD * ROWS
            assert row["dead"] == want["dead"], (r, row["step"])
            assert row["sparsity"] == pytest.approx(want["sparsity"], rel=1e-6)
            assert row["max_activation"] == pytest.approx(want["max_activation"], rel=1e-6)
            assert row["grad_norm"] is not None and row["grad_norm"] > 0
            dead.append(row["dead"])
    assert results[0]["history"] == results[1]["history"]  # every rank: the same numbers
    assert max(dead) > 0  # the check is not vacuous


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
