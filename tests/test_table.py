"""The terminal table as users meet it: readable at any width, user strings never markup.

A 49-site ResNet-50-shaped model (tests/fixtures/resnet.py) is scanned once; the table is
rendered at fixed widths through the real command line (``COLUMNS``) and checked line by line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.fixtures.resnet import INPUT, SITES
from tests.test_cli import ok, run

RESNET = "tests.fixtures.resnet:ResNet50"


pytestmark = pytest.mark.usefixtures("isolated")


def table_lines(stdout: str) -> list[list[str]]:
    """The body rows of the table, as cells."""
    rows = []
    for line in stdout.splitlines():
        if line.startswith("│"):
            rows.append([c.strip() for c in line.strip("│").split("│")])
    return rows


def header(stdout: str) -> list[str]:
    line = next(x for x in stdout.splitlines() if x.startswith("┃"))
    return [c.strip() for c in line.strip("┃").split("┃")]


@pytest.mark.parametrize("width", [60, 80, 100, 200])
def test_a_49_site_table_reads_at_every_width(width: int) -> None:
    shape = ",".join(map(str, INPUT))
    r = ok(
        run(
            "scan",
            RESNET,
            *("--input-shape", shape, "--batches", "1", "--batch-size", "4", "--no-grad"),
            env={"COLUMNS": str(width)},
        )
    )
    lines = r.stdout.splitlines()
    assert max(len(line) for line in lines if not line.startswith(" •")) <= width
    head = header(r.stdout)
    assert head[0] == "site" and "dead" in head
    rows = table_lines(r.stdout)
    names = [row[0] for row in rows]
    assert len(names) == SITES and len(set(names)) == SITES  # no two sites look the same
    assert "layer1.0.relu#1" in names and "layer4.2.relu#3" in names  # never cropped
    dead = head.index("dead")
    assert all(row[dead].isdigit() for row in rows)  # the dead count never blank
    starts = [i for i, line in enumerate(lines) if line.startswith("hidden at")]
    if width == 200:
        assert not starts and {"kind", "near", "grad", "margin", "firing"} <= set(head)
    else:
        assert len(starts) == 1
        note = " ".join(lines[starts[0] : starts[0] + 4])  # the note may wrap
        hidden = note.split(": ", 1)[1].split(" (")[0].split(", ")
        assert not set(hidden) & set(head)  # says exactly what is missing
        assert "kind" in hidden  # the lowest priority goes first


class Hostile(nn.Module):
    """Module names a user may have: brackets (rich markup) and a closing tag."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.add_module("act[/x]", nn.ReLU())
        self.add_module("[bold]b[/bold]", nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = getattr(self, "act[/x]")(self.fc(x))
        return getattr(self, "[bold]b[/bold]")(h)


def test_names_are_text_never_markup(tmp_path: Path) -> None:
    torch.save(Hostile(), "model[v2].pt")
    r = run("scan", "model[v2].pt", "--trust", "--batches", "1", env={"COLUMNS": "140"})
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("model[v2].pt\n")
    names = [row[0] for row in table_lines(r.stdout)]
    assert names == ["act[/x]", "[bold]b[/bold]"]


def test_relu6_sites_show_the_activation_in_the_table(planted_models: Any) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU6())
    torch.save(model, "r6.pt")
    r = ok(run("scan", "r6.pt", "--batches", "1", env={"COLUMNS": "200"}))
    assert table_lines(r.stdout)[0][:2] == ["1", "module ReLU6"]


def test_piped_output_has_no_trailing_whitespace(planted_models: Any) -> None:
    r = ok(run("scan", planted_models["deep"].path, "--batches", "1"))
    assert all(line == line.rstrip() for line in r.stdout.splitlines())
    ok(run("scan", planted_models["deep"].path, "--batches", "1", "-o", "t.txt"))
    assert all(line == line.rstrip() for line in Path("t.txt").read_text().splitlines())
