"""Pictures from the command line and the API: ``--plot``, ``--html``, ``-o x.html``,
``report.plot()``, ``report.to_html()``, and the one-line error without matplotlib."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

import relu_doctor
from tests.test_cli import FAST, error_line, ok, run

pytestmark = pytest.mark.usefixtures("isolated")


MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".pdf": b"%PDF-", ".svg": b"<?xml"}


@pytest.mark.parametrize("ext", [".png", ".svg", ".pdf"])
def test_plot_writes_the_picture_format_of_its_extension(planted_models: Any, ext: str) -> None:
    r = ok(run("scan", planted_models["deep"].path, *FAST, "--plot", f"deep{ext}"))
    assert Path(f"deep{ext}").read_bytes().startswith(MAGIC[ext])
    assert "act1" in r.stdout  # the table still prints


def test_plot_of_several_models_is_the_timeline_heatmap(planted_models: Any) -> None:
    paths = [planted_models[n].path for n in ("mlp", "deep")]
    ok(run("scan", *paths, *FAST, "--plot", "both.svg"))
    svg = Path("both.svg").read_text()
    assert "2 checkpoints" in svg or "across 2" in svg


def test_plot_with_another_extension_fails_before_scanning(planted_models: Any) -> None:
    r = run("scan", planted_models["mlp"].path, *FAST, "--plot", "x.jpg")
    error_line(r, "--plot x.jpg", ".png, .svg, .pdf")
    assert r.stdout == ""


def test_html_page_and_o_html_are_the_same_page(planted_models: Any) -> None:
    deep = planted_models["deep"].path
    ok(run("scan", deep, *FAST, "--html", "a.html"))
    ok(run("scan", deep, *FAST, "-o", "b.html"))
    a = Path("a.html").read_text()
    assert a.startswith("<!DOCTYPE html>")
    assert 'data-site="act1"' in a and 'data-site="act2"' in a
    assert not re.search(r"(src|href)=\"https?:", a)
    strip = re.compile(r"relu-doctor scan[^<]*")  # the pages differ only in the command shown
    assert strip.sub("", a) == strip.sub("", Path("b.html").read_text())


def test_without_matplotlib_pictures_fail_with_the_install_hint(
    planted_models: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for option, path in (("--plot", "x.png"), ("--html", "x.html")):
        r = run("scan", planted_models["mlp"].path, *FAST, option, path)
        error_line(r, "matplotlib", "pip install 'relu-doctor[plots]'")
        assert r.stdout == "" and not Path(path).exists()
    ok(run("scan", planted_models["mlp"].path, *FAST, "--format", "json"))  # the rest works


def test_report_plot_and_to_html(planted_models: Any) -> None:
    import torch

    model = torch.load(planted_models["deep"].path, weights_only=False)
    report = relu_doctor.scan(model, batches=2, name="deep")
    fig = report.plot()
    assert type(fig).__name__ == "Figure"
    page = report.to_html()
    assert page.startswith("<!DOCTYPE html>") and 'data-site="act2"' in page


def test_the_table_shows_a_firing_rate_glyph_and_json_does_not(planted_models: Any) -> None:
    r = ok(run("scan", planted_models["all_dead"].path, *FAST))
    assert "firing" in r.stdout and "█       " in r.stdout  # every unit in the 'never' bin
    r = ok(run("scan", planted_models["all_dead"].path, *FAST, "--format", "json"))
    assert "firing" not in json.loads(r.stdout)["models"][0]["sites"][0]


def test_check_html_carries_the_findings(planted_models: Any) -> None:
    r = run("check", planted_models["all_dead"].path, *FAST, "--html", "gate.html")
    assert r.exit_code == 1  # unhealthy, and the page is written all the same
    page = Path("gate.html").read_text()
    assert 'data-rule="RD101"' in page and 'data-rule="RD102"' in page
