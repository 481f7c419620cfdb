"""Partial scans merge exactly: a scan of A merged with a scan of B equals a scan of A+B.

This is what lets a scan be split across processes or machines (README "Distributed scans"). The
accumulator-level algebra is in ``test_stats.py``; here whole ``relu_doctor.scan`` calls go
through the real capture (module, in-place, functional and LeakyReLU sites, conv and
linear units, gradients) and their ``totals`` are merged with ``UnitTotals.merge`` and
turned into rows with ``SiteReport.from_totals``.

The model has planted units whose answer depends on which data was seen:

- conv channel 0 never fires (BatchNorm shift -100): dead in every scan;
- conv channel 1 fires only on samples whose input channel 0 has a pixel > 5: one sample
  of A and one of B carry such a pixel, so it is near-dead in every scan;
- conv channel 2 fires only on samples whose input channel 1 has a pixel > 5: only B has
  one, so it is dead in the scan of A and alive in the merged scan.

Batch boundaries line up (A and B are whole multiples of the batch size), so per-batch
numbers (the gradient norm of each batch) are the same on both sides.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relu_doctor
from relu_doctor.analyze.report import ModelReport, SiteReport
from relu_doctor.scanner.accumulate import UnitTotals

BATCH = 16
NEAR_DEAD = 0.05  # one or two firing samples out of 48..80 is near-dead at this threshold


class Net(nn.Module):
    """conv -> BN -> ReLU(inplace) -> fc1 -> F.relu -> fc2 -> LeakyReLU -> out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.act = nn.ReLU(inplace=True)
        self.fc1 = nn.Linear(6 * 6 * 6, 16)
        self.fc2 = nn.Linear(16, 12)
        self.leaky = nn.LeakyReLU(0.1)
        self.out = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn(self.conv(x)))
        h = F.relu(self.fc1(h.flatten(1)))
        return self.out(self.leaky(self.fc2(h)))


def make_model() -> Net:
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        for channel, source in ((1, 0), (2, 1)):  # centre tap of one input channel only
            net.conv.weight[channel] = 0.0
            net.conv.weight[channel, source, 1, 1] = 1.0
            net.conv.bias[channel] = 0.0
            net.bn.bias[channel] = -5.0
        net.bn.bias[0] = -100.0
    return net


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    """A: 48 samples, B: 32; randn never reaches 5 here, the planted pixels do."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(48, 2, 6, 6, generator=g).clamp(-4, 4)
    b = torch.randn(32, 2, 6, 6, generator=g).clamp(-4, 4)
    a[7, 0, 2, 3] = 10.0  # channel 1 fires once in A
    b[3, 0, 4, 4] = 10.0  # ... and once in B
    b[20, 1, 0, 5] = 10.0  # channel 2 fires only in B
    return a, b


def scan(data: torch.Tensor) -> ModelReport:
    return relu_doctor.scan(make_model(), data, batch_size=BATCH, grad=True, near_dead=NEAR_DEAD)


@pytest.fixture(scope="module")
def reports() -> tuple[ModelReport, ModelReport, ModelReport]:
    a, b = make_data()
    return scan(a), scan(b), scan(torch.cat([a, b]))


def stats_of(report: ModelReport) -> dict[str, UnitTotals]:
    out = {}
    for site in report.sites:
        assert site.totals is not None, site.site
        out[site.site] = site.totals
    return out


def test_same_sites_in_every_scan(reports: tuple[ModelReport, ...]) -> None:
    names = [[s.site for s in r.sites] for r in reports]
    assert names[0] == names[1] == names[2] == ["act", "relu#1", "leaky"]


def test_merged_raw_statistics_equal_the_joint_scan(reports: tuple[ModelReport, ...]) -> None:
    ra, rb, joint = reports
    sa, sb, sj = stats_of(ra), stats_of(rb), stats_of(joint)
    for name, both in sj.items():
        merged = sa[name].merge(sb[name])
        for field in ("samples", "calls", "elements", "grad_calls"):
            assert getattr(merged, field) == getattr(both, field), (name, field)
        np.testing.assert_array_equal(merged.fires, both.fires, err_msg=name)
        np.testing.assert_array_equal(merged.active, both.active, err_msg=name)
        np.testing.assert_array_equal(merged.max_pre, both.max_pre, err_msg=name)
        np.testing.assert_allclose(merged.abs_sum, both.abs_sum, rtol=1e-9, err_msg=name)
        assert merged.grad_norm_sum == pytest.approx(both.grad_norm_sum, rel=1e-9), name
        if both.max_out is None:
            assert merged.max_out is None
        else:
            assert merged.max_out is not None
            np.testing.assert_array_equal(merged.max_out, both.max_out, err_msg=name)
    assert sj["act"].samples == 80 and sj["act"].calls == 5 and sj["act"].grad_calls == 5


def test_merged_summary_equals_the_joint_row(reports: tuple[ModelReport, ...]) -> None:
    ra, rb, joint = reports
    sa, sb = stats_of(ra), stats_of(rb)
    for row in joint.sites:
        s = SiteReport.from_totals(
            sa[row.site].merge(sb[row.site]),
            row.act,
            model=joint.model,
            site=row.site,
            kind=row.kind,
            thresholds=joint.thresholds,
        )
        assert (s.units, s.samples, s.calls) == (row.units, row.samples, row.calls), row.site
        assert (s.dead, s.near_dead, s.dormant) == (row.dead, row.near_dead, row.dormant)
        assert s.dead_fraction == row.dead_fraction
        assert s.sparsity == pytest.approx(row.sparsity, rel=1e-12)
        assert s.max_activation == pytest.approx(row.max_activation, rel=1e-12)
        assert s.grad_norm == pytest.approx(row.grad_norm, rel=1e-9)
        if row.dead_margin is None:
            assert s.dead_margin is None
        else:
            assert s.dead_margin == pytest.approx(row.dead_margin, rel=1e-12)


def test_planted_units_change_state_only_with_the_data_that_wakes_them(
    reports: tuple[ModelReport, ...],
) -> None:
    ra, rb, joint = reports
    act = {name: r.site("act") for name, r in (("a", ra), ("b", rb), ("joint", joint))}
    assert act["a"].dead == 2  # channels 0 and 2
    assert act["b"].dead == 1  # channel 0
    assert act["joint"].dead == 1  # channel 2 woke up in B
    assert act["a"].near_dead == 1 and act["joint"].near_dead == 2  # 1/48; 2/80 and 1/80
    assert act["joint"].dead_margin is not None and act["joint"].dead_margin < -90
    fires = stats_of(joint)["act"].fires
    assert fires[0] == 0 and fires[1] == 2 and fires[2] == 1
