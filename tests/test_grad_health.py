"""Gradient health (docs/metrics.md): zero-grad units, grad noise and the loss the report
names, against plain-torch gradients of the same batches."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relu_doctor
from relu_doctor.activations import RELU
from relu_doctor.analyze.report import SiteReport
from relu_doctor.output.document import Document
from relu_doctor.output.table import plain_text
from relu_doctor.scanner.accumulate import SiteAccumulator, UnitTotals
from tests.fixtures.models import ConvNet, FunctionalMLP, GradNet, positive_inputs


def unit_column(site: SiteReport, name: str) -> np.ndarray:
    rows = site.unit_rows()
    assert rows is not None
    return np.asarray(rows[name])


@pytest.mark.parametrize(
    ("factory", "shape"),
    [(ConvNet, ConvNet.IN), (FunctionalMLP, (FunctionalMLP.IN,)), (GradNet, (GradNet.IN,))],
)
def test_zero_grad_units_are_the_dead_units_in_eval_mode(factory: Any, shape: tuple) -> None:
    report = relu_doctor.scan(factory(), positive_inputs(32, *shape), batch_size=8)
    for site in report.sites:
        dead = unit_column(site, "dead")
        assert dead.any() or factory is FunctionalMLP  # FunctionalMLP's relu#3 has none
        np.testing.assert_array_equal(unit_column(site, "zero_grad"), dead, err_msg=site.site)
        assert site.zero_grad == site.dead


def per_batch_reference(
    model: GradNet, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, tuple[list[float], np.ndarray]]:
    """Per site: each batch's L2 norm of d loss / d (site input), and per unit the largest
    |d loss / d input| over all batches (cross-entropy loss)."""
    norms: dict[str, list[float]] = {"act": [], "relu#1": []}
    peaks = {"act": np.zeros(8), "relu#1": np.zeros(6)}
    for x, y in batches:
        pre1 = model.fc1(x)
        pre2 = model.fc2(torch.relu(pre1))
        loss = F.cross_entropy(model.fc3(torch.relu(pre2)), y)
        for name, g in zip(("act", "relu#1"), torch.autograd.grad(loss, [pre1, pre2]), strict=True):
            norms[name].append(float(g.norm()))
            peaks[name] = np.maximum(peaks[name], g.abs().amax(0).double().numpy())
    return {name: (norms[name], peaks[name]) for name in norms}


def test_zero_grad_and_grad_noise_match_plain_torch() -> None:
    model = GradNet()  # unit 3 of act is dead (bias -1e4)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, GradNet.IN, generator=g)
    y = torch.randint(0, GradNet.OUT, (40,), generator=g)
    report = relu_doctor.scan(model, (x, y), batch_size=8)
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 40, 8)]
    for name, (norms, peaks) in per_batch_reference(model, batches).items():
        site = report.site(name)
        expected_cv = float(np.std(norms) / np.mean(norms))  # population std
        assert site.grad_noise == pytest.approx(expected_cv, rel=1e-5), name
        np.testing.assert_array_equal(unit_column(site, "zero_grad"), peaks == 0, err_msg=name)
    assert unit_column(report.site("act"), "zero_grad")[3]  # the planted dead unit


def test_a_live_unit_that_nothing_reads_passes_no_gradient() -> None:
    """Unit 2 fires but fc2 ignores it (zero column): zero-grad without being dead."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    with torch.no_grad():
        model[0].weight.abs_()
        model[0].bias.fill_(0.1)
        model[0].bias[4] = -1e4  # dead
        model[2].weight[:, 2] = 0.0
    report = relu_doctor.scan(model, positive_inputs(16, 3), batch_size=8)
    site = report.site("1")
    assert site.dead == 1 and site.zero_grad == 2
    np.testing.assert_array_equal(unit_column(site, "zero_grad"), [0, 0, 1, 0, 1])


def _accumulate(pres: list[torch.Tensor], grads: list[torch.Tensor]) -> UnitTotals:
    acc = SiteAccumulator(pres[0].shape[1], 1, torch.device("cpu"), relu_like=True)
    for pre, grad in zip(pres, grads, strict=True):
        acc.observe_pre(pre, 0.0)
        acc.observe_out(torch.relu(pre), 0.0)
        acc.observe_grad(grad)
        acc.observe_grad_units(grad)
    return acc.finalize()


def test_conv_zero_grad_is_per_channel_over_every_position_and_merges() -> None:
    """Channel 1's gradient is 0 everywhere; channel 0's only at one pixel of batch 2;
    channel 2 is a NaN gradient (not zero)."""
    pres = [torch.randn(2, 3, 4, 4), torch.randn(3, 3, 4, 4)]
    grads = [torch.zeros(2, 3, 4, 4), torch.zeros(3, 3, 4, 4)]
    grads[1][2, 0, 3, 1] = -1e-30
    grads[0][:, 2] = float("nan")
    both = _accumulate(pres, grads)
    assert both.grad_abs_max is not None
    np.testing.assert_array_equal(both.grad_abs_max == 0, [False, True, False])
    first = _accumulate(pres[:1], grads[:1])
    assert first.grad_abs_max is not None
    np.testing.assert_array_equal(first.grad_abs_max == 0, [True, True, False])
    merged = first.merge(_accumulate(pres[1:], grads[1:]))
    assert merged.grad_abs_max is not None
    np.testing.assert_array_equal(merged.grad_abs_max, both.grad_abs_max)


def test_grad_noise_merges_exactly() -> None:
    torch.manual_seed(0)
    pres = [torch.randn(4, 5) for _ in range(6)]
    grads = [torch.randn(4, 5) * (i + 1) for i in range(6)]
    both = _accumulate(pres, grads)
    merged = _accumulate(pres[:2], grads[:2]).merge(_accumulate(pres[2:], grads[2:]))
    norms = [float(g.norm()) for g in grads]
    expected = float(np.std(norms) / np.mean(norms))
    for totals in (both, merged):
        row = SiteReport.from_totals(totals, RELU, model="m", site="s", kind="k")
        assert row.grad_noise == pytest.approx(expected, rel=1e-6)


def test_no_gradients_or_one_batch_leave_the_columns_empty() -> None:
    x = positive_inputs(16, GradNet.IN)
    forward_only = relu_doctor.scan(GradNet(), x, batch_size=8, grad=False)
    assert forward_only.site("act").zero_grad is None
    assert forward_only.site("act").grad_noise is None
    rows = forward_only.site("act").unit_rows()
    assert rows is not None and rows["zero_grad"] is None
    one_batch = relu_doctor.scan(GradNet(), x, batch_size=16)
    assert one_batch.site("act").grad_noise is None
    assert one_batch.site("act").zero_grad == one_batch.site("act").dead >= 1


@pytest.mark.parametrize(
    ("targets", "loss"),
    [("int", "cross_entropy"), ("float", "mse"), (None, "surrogate")],
)
def test_the_report_names_its_loss(targets: str | None, loss: str) -> None:
    x = torch.randn(16, GradNet.IN)
    data: Any = x
    if targets == "int":
        data = (x, torch.randint(0, GradNet.OUT, (16,)))
    elif targets == "float":
        data = (x, torch.randn(16, GradNet.OUT))
    report = relu_doctor.scan(GradNet(), data, batch_size=8)
    assert report.losses == (loss,)
    assert report.to_dict()["losses"] == [loss]
    text = plain_text(Document((report,)))
    assert f"(eval mode, cpu, {loss.replace('_', '-')} loss)." in text
    forward_only = relu_doctor.scan(GradNet(), data, batch_size=8, grad=False)
    assert forward_only.to_dict()["losses"] == []
    assert "(eval mode, cpu, no gradients)." in plain_text(Document((forward_only,)))
