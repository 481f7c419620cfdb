"""NaN and Inf in whole scans (docs/metrics.md, "NaN and Inf"): a unit is judged on its
finite outputs, and a unit with no finite output at all is ``nonfinite``, not dead —
in the report, the table's summary, JSON, CSV, the per-unit dump and the dormant count.

Expected numbers come from the planting of ``tests/fixtures/planted.py`` (dead units have a
zero weight row and bias -1e4) and from plain torch, never from relu-doctor's output.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

import relu_doctor
from relu_doctor.cli import main
from relu_doctor.output.document import Document
from relu_doctor.output.table import plain_text, summary

pytestmark = pytest.mark.usefixtures("isolated")


def run(*args: Any) -> Result:
    result = CliRunner().invoke(main, ["scan", *map(str, args)])
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def nan_model() -> nn.Sequential:
    """fc (4 -> 6) -> ReLU -> out: a NaN weight in every row of fc, so every ReLU output
    is NaN on every input."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].weight[:, 0] = float("nan")
    return model


def half_nan_model() -> nn.Sequential:
    """Like ``nan_model`` but only units 0 and 1 get NaN; units 2 and 3 are planted dead
    (zero weights, bias -1e4), units 4 and 5 fire on positive inputs."""
    model = nan_model()
    with torch.no_grad():
        model[0].weight.copy_(torch.ones(6, 4))
        model[0].bias.fill_(0.1)
        model[0].weight[:2, 0] = float("nan")
        model[0].weight[2:4] = 0.0
        model[0].bias[2:4] = -1e4
    return model


def test_all_nan_model_has_no_dead_units_and_says_why() -> None:
    report = relu_doctor.scan(nan_model(), torch.rand(16, 4), grad=False)
    assert (report.dead_units, report.nonfinite_units, report.total_units) == (0, 6, 6)
    site = report.sites[0]
    assert (site.dead, site.nonfinite, site.dormant, site.near_dead) == (0, 6, 0, 0)
    assert site.sparsity is None and site.max_activation is None
    units = report.units_frame()
    assert not units["dead"].any() and not units["dormant"].any()
    assert units["nonfinite"].all()
    assert (units["nonfinite_values"] == 16).all()
    assert units["firing_rate"].isna().all()
    text = summary(report).plain
    assert text.startswith("0 of 6 ReLU units dead (0.0%), 6 nonfinite across 1 site")
    assert any("count as nonfinite, not dead" in w for w in report.warnings)
    assert not any("not counted as dead" in w for w in report.warnings)


def test_some_nonfinite_units_are_counted_apart_from_the_dead_ones() -> None:
    report = relu_doctor.scan(half_nan_model(), torch.rand(8, 4) + 0.1, grad=False)
    site = report.sites[0]
    assert (site.dead, site.nonfinite, site.units) == (2, 2, 6)
    assert report.dead_fraction == pytest.approx(2 / 6)  # nonfinite units stay in the denominator
    assert site.dead_margin == -1e4
    text = summary(report).plain
    assert text.startswith("2 of 6 ReLU units dead (33.3%), 2 nonfinite across 1 site")
    (warning,) = report.warnings
    assert "NaN or Inf reached 2 units" in warning
    assert "none had a finite output, so they count as nonfinite, not dead" in warning
    data = report.to_dict()
    assert (data["dead_units"], data["nonfinite_units"]) == (2, 2)


def test_a_nan_input_row_leaves_the_planted_dead_units_dead(planted_models: Any) -> None:
    deep = planted_models["deep"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 20, generator=g)
    x[5] = float("nan")  # one bad row: NaN reaches every unit of both sites on it
    np.save("x.npy", x.numpy())
    result = run(deep.path, "--data", "x.npy", "--no-grad", "-o", "r.json", "--per-unit", "u.csv")
    data = json.loads(Path("r.json").read_text())["models"][0]
    assert data["dead_units"] == deep.dead == 5
    assert data["nonfinite_units"] == 0
    sites = {s["site"]: s for s in data["sites"]}
    for name, (_units, dead) in deep.sites.items():
        assert sites[name]["dead"] == len(dead), name
        assert sites[name]["nonfinite"] == 0
        assert sites[name]["dead_margin"] == -1e4  # not hidden by the NaN row
        assert sites[name]["dormant"] >= len(dead)
    with Path("u.csv").open() as f:
        rows = list(csv.DictReader(f))
    dead_rows = {(r["site"], int(r["unit"])) for r in rows if r["dead"] == "True"}
    assert dead_rows == {(s, u) for s, (_, d) in deep.sites.items() for u in d}
    assert {r["nonfinite_values"] for r in rows} == {"1"}  # the NaN row, once per unit
    assert (
        "NaN or Inf reached 24 units (sites act1, act2): they are judged on their finite"
        in " ".join(result.stdout.split())
    )
    # Plain torch on the 63 finite rows: the same firing counts for act1.
    model = torch.load(deep.path, weights_only=False)
    finite = torch.cat([x[:5], x[6:]])
    fires = (model.fc1(finite) > 0).sum(dim=0)
    got = [int(r["fires"]) for r in rows if r["site"] == "act1"]
    assert got == fires.tolist()


def test_all_nan_model_on_the_command_line(tmp_path: Path) -> None:
    torch.save(nan_model(), "nan.pt")
    result = run("nan.pt", "--batches", "2", "--no-grad", "-o", "r.csv", "--per-unit", "u.json")
    assert "0 of 6 ReLU units dead (0.0%), 6 nonfinite" in " ".join(result.stdout.split())
    with Path("r.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert (row["dead"], row["nonfinite"], row["dormant"], row["sparsity"]) == ("0", "6", "0", "")
    units = json.loads(Path("u.json").read_text())
    rows = units["units"]
    assert all(u["nonfinite"] and not u["dead"] and u["firing_rate"] is None for u in rows)


def test_the_table_the_text_report_and_the_html_page_say_nonfinite() -> None:
    report = relu_doctor.scan(nan_model(), torch.rand(4, 4), grad=False)
    text = plain_text(Document((report,)))
    assert "6 nonfinite" in text and "not counted as dead" not in text
    pytest.importorskip("matplotlib")
    from relu_doctor.output.html import html_page

    assert "0 of 6 ReLU units dead (0.0%), 6 nonfinite across 1 site" in html_page(report)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_takes_the_exact_path_and_matches_the_cpu() -> None:
    x = torch.rand(40, 4) + 0.1
    x[3] = float("nan")
    model = half_nan_model()
    cpu = relu_doctor.scan(model, x, batch_size=16, device="cpu")
    gpu = relu_doctor.scan(model, x, batch_size=16, device="cuda")
    assert gpu.device.startswith("cuda")
    for name in ("dead", "nonfinite", "dormant", "near_dead", "dead_margin"):
        assert getattr(gpu.sites[0], name) == getattr(cpu.sites[0], name), name
    a, b = cpu.units_frame(), gpu.units_frame()
    for name in ("fires", "nonfinite", "nonfinite_values", "dead"):
        assert a[name].tolist() == b[name].tolist(), name
