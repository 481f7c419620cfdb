"""The registries: one entry reaches every place that uses it, and a name is never taken twice."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import relu_doctor
from relu_doctor import activations
from relu_doctor.analyze import columns
from relu_doctor.analyze.columns import SITE_COLUMNS, Column, site_column
from relu_doctor.cli import main
from relu_doctor.output import formats
from relu_doctor.output.document import Document
from relu_doctor.output.formats import FORMATS, Format, format_for_path, stdout_formats
from relu_doctor.registry import Registry


def test_a_name_is_never_registered_twice() -> None:
    reg: Registry[int] = Registry("thing")
    reg.add("a", 1)
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        reg.add("a", 2)
    assert reg == {"a": 1}
    with pytest.raises(ValueError, match="already registered"):
        site_column(Column("dead", lambda f: 0))
    with pytest.raises(ValueError, match="already registered"):
        formats.register(Format("csv2", (".csv",), lambda d: ""))
    with pytest.raises(ValueError, match="already registered"):
        activations.register(activations.Activation(op="relu", name="ReLU", relu_family=True))


@pytest.fixture
def extra_column() -> Iterator[str]:
    """A column added for one test (the registry is global: take it out again)."""
    site_column(Column("units_doubled", lambda f: 2 * f.totals.units if f.totals else 0))
    yield "units_doubled"
    del SITE_COLUMNS["units_doubled"]


def test_one_new_column_reaches_every_output(extra_column: str, tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU())
    report = relu_doctor.scan(model, torch.randn(8, 3))
    assert report.site("1").units_doubled == 10
    assert report.to_frame()[extra_column].tolist() == [10]
    assert report.to_dict()["sites"][0][extra_column] == 10
    doc = Document((report,))
    assert extra_column in FORMATS["csv"].emit(doc).splitlines()[0].split(",")
    assert json.loads(FORMATS["json"].emit(doc))["models"][0]["sites"][0][extra_column] == 10
    assert f"| {extra_column} |" in str(FORMATS["markdown"].emit(doc))


def test_the_table_shows_the_columns_with_a_header() -> None:
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU())
    text = str(FORMATS["table"].emit(Document((relu_doctor.scan(model, torch.randn(8, 3)),))))
    header = next(line for line in text.splitlines() if "site" in line and "kind" in line)
    cells = [c.strip() for c in header.strip("┃ ").split("┃")]
    assert cells == [c.header for c in SITE_COLUMNS.values() if c.header]


def test_formats_drive_choices_and_extensions() -> None:
    assert {"table", "csv", "json", "markdown", "html"} <= set(stdout_formats("scan"))
    assert not {"png", "svg", "pdf"} & set(stdout_formats("scan"))  # bytes: files only
    assert set(stdout_formats("check")) - set(stdout_formats("scan")) == {
        "github",
        "junit",
        "sarif",
    }
    for fmt in FORMATS.values():
        for ext in fmt.extensions:
            assert format_for_path(f"report{ext.upper()}") is fmt
            assert format_for_path(f"report{ext}", command="check") is fmt
    with pytest.raises(relu_doctor.errors.UsageError, match="cannot tell the format"):
        format_for_path("report.sarif", command="scan")  # a check format: not for scan
    assert format_for_path("u.md", "per_unit", units=True).name == "markdown"
    with pytest.raises(relu_doctor.errors.UsageError, match="cannot tell the format"):
        format_for_path("report.txt", "per_unit", units=True)  # no per-unit table dump


def test_the_format_option_offers_the_registered_formats() -> None:
    r = CliRunner().invoke(main, ["scan", "m.pt", "--format", "nope"])
    assert r.exit_code == 2
    for name in stdout_formats("scan"):
        assert name in r.stderr


def test_the_activation_registry_feeds_the_dispatch_tables() -> None:
    for act in activations.kinds():
        for op, inplace in act.forward:
            assert activations.FORWARD_OPS[op][:2] == (act, inplace)
        assert activations.BACKWARD_OPS[act.backward] is act
        for name in act.graph_ops:
            assert activations.graph_op(f"aten::{name}") is act
    assert {a.name for a in activations.kinds() if a.relu_family} == {"ReLU", "ReLU6"}
    assert activations.module_activation(nn.ReLU6()) is activations.RELU6
    assert activations.module_activation(nn.Hardtanh()) is None  # bounds (-1, 1)
    assert activations.module_activation(nn.Hardtanh(0.0, 6.0)) is activations.RELU6
    assert columns.SITE_COLUMNS["activation"].compute  # the column reads the registry's name


def test_docs_list_every_column_with_its_meaning() -> None:
    from relu_doctor.analyze.columns import UNIT_COLUMNS

    docs = (Path(__file__).parents[1] / "docs" / "metrics.md").read_text(encoding="utf-8")
    for column in [*SITE_COLUMNS.values(), *UNIT_COLUMNS.values()]:
        assert column.doc, column.name
        assert f"| `{column.name}` | {column.doc} |" in docs, column.name
