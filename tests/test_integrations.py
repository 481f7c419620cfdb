"""The hooks for training tools (README "Monitoring training"): the TensorBoard ``log_to``
callback and the Lightning ``ReluDoctorCallback``, each against the monitor's own history,
with the real package when it is installed (skipped otherwise)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relu_doctor
from relu_doctor.errors import UsageError
from relu_doctor.integrations import metrics
from relu_doctor.integrations.tensorboard import log_to


def net() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 2)
    )
    with torch.no_grad():
        model[0].bias.sub_(0.7)
    return model


def data(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    return [
        (torch.randn(8, 8, generator=g), torch.randint(0, 2, (8,), generator=g))
        for _ in range(steps)
    ]


class Scalars:
    """A writer that keeps what it is given (``add_scalar`` is all log_to needs)."""

    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, value: float, global_step: int) -> None:
        self.scalars.append((tag, value, global_step))


def train_with(callback: Any, every: int = 2, steps: int = 5, grad: bool = True) -> Any:
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    with relu_doctor.monitor(model, every=every, grad=grad, callback=callback) as mon:
        for x, y in data(steps):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return mon


def test_log_to_writes_the_history_at_its_steps() -> None:
    writer = Scalars()
    mon = train_with(log_to(writer))
    hist = mon.history()
    got = {(tag, step): value for tag, value, step in writer.scalars}
    for row in hist.to_dict("records"):
        assert (
            got[(f"relu_doctor/dead_fraction/{row['site']}", row["step"])] == row["dead_fraction"]
        )
        assert got[(f"relu_doctor/grad_norm/{row['site']}", row["step"])] == pytest.approx(
            row["grad_norm"]
        )
    for step, frame in hist.groupby("step"):
        dead, units = int(frame["dead"].sum()), int(frame["units"].sum())
        assert got[("relu_doctor/dead_units", step)] == dead
        assert got[("relu_doctor/dead_fraction", step)] == pytest.approx(dead / units)
    assert {s for _, _, s in writer.scalars} == {0, 2, 4}
    assert hist["dead"].sum() > 0  # the check is not vacuous


def test_log_to_refuses_what_is_not_a_writer() -> None:
    with pytest.raises(UsageError, match="add_scalar") as exc:
        log_to(object())
    assert exc.value.param == "writer"


def test_metrics_of_a_scan_report() -> None:
    report = relu_doctor.scan(net(), torch.randn(32, 8), grad=False)
    values = metrics(report, prefix="x", per_site=False)
    assert values == {"x/dead_fraction": report.dead_fraction, "x/dead_units": report.dead_units}


def test_real_summary_writer(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as writer:
        mon = train_with(log_to(writer, prefix="rd"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    hist = mon.history()
    for site, frame in hist.groupby("site"):
        scalars = events.Scalars(f"rd/dead_fraction/{site}")
        assert [e.step for e in scalars] == list(frame["step"])
        assert [e.value for e in scalars] == pytest.approx(list(frame["dead_fraction"]))


def test_the_core_never_imports_the_tools() -> None:
    code = (
        "import sys, relu_doctor, torch\n"
        "m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU())\n"
        "with relu_doctor.monitor(m, every=1) as mon:\n"
        "    m(torch.randn(4, 3))\n"
        "mon.report(); relu_doctor.scan(m, torch.randn(4, 3))\n"
        "bad = [n for n in sys.modules if n.split('.')[0] in "
        "('lightning', 'pytorch_lightning', 'tensorboard', 'relu_doctor.integrations')]\n"
        "print(bad)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --- Lightning --------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.slow
def test_lightning_callback_logs_each_recorded_step(tmp_path: Path) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import Logger

    from relu_doctor.integrations.lightning import ReluDoctorCallback

    class Memory(Logger):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.logged: list[tuple[int | None, dict[str, float]]] = []

        @property
        def name(self) -> str:
            return "memory"

        @property
        def version(self) -> str:
            return "0"

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            pass

        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            self.logged.append((step, dict(metrics)))

    class Module(pl.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = net()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.model(x), y)  # not through self(x): still measured

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", F.cross_entropy(self(x), y))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.3)

    loader = torch.utils.data.DataLoader(data(6), batch_size=None)
    logger = Memory()
    callback = ReluDoctorCallback(every=2, grad=True)
    trainer = pl.Trainer(
        max_steps=6,
        logger=logger,
        callbacks=[callback],
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,  # runs without gradients: not a step
        val_check_interval=3,
        default_root_dir=str(tmp_path),
    )
    module = Module()
    trainer.fit(module, loader, loader)
    assert callback.monitor is not None
    hist = callback.monitor.history()
    assert sorted(set(hist["step"])) == [0, 2, 4]
    assert hist["grad_norm"].notna().all() and (hist["samples"] == 8).all()
    ours = {step: m for step, m in logger.logged if "relu_doctor/dead_fraction" in m}
    assert sorted(ours) == [0, 2, 4]
    for row in hist.to_dict("records"):
        assert row["site"] in ("model.1", "model.3")
        assert ours[row["step"]][f"relu_doctor/dead_fraction/{row['site']}"] == row["dead_fraction"]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())
    assert torch._C._len_torch_dispatch_stack() == 0
