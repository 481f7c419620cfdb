"""Pictures: valid PNG/SVG/PDF files, the bars and histograms a report calls for, labels
that stay readable at 41 sites, the timeline heatmap, and the missing-matplotlib error.

Expected numbers come from the planted models' construction (``tests/fixtures/planted.py``)
where there is one, otherwise from the report the picture was drawn from.
"""

from __future__ import annotations

import itertools
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from relu_doctor.errors import UsageError
from relu_doctor.output.plots import (
    HISTOGRAM_PREFIX,
    MAX_HISTOGRAMS,
    SITES_AXES,
    SPARSITY_AXES,
    TIMELINE_AXES,
    abbreviate,
    figure_svg,
    report_figure,
    require_matplotlib,
    save_figure,
    timeline_figure,
)
from tests.fixtures import reports

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SVG = "{http://www.w3.org/2000/svg}svg"


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return reports.sample_reports(tmp_path_factory)


@pytest.fixture(scope="module")
def planted(planted_models: Any) -> dict[str, Any]:
    return reports.planted_reports(planted_models)


def _axes(fig: Any, label: str) -> Any:
    found = [ax for ax in fig.axes if ax.get_label() == label]
    assert len(found) == 1, [ax.get_label() for ax in fig.axes]
    return found[0]


def _histograms(fig: Any) -> list[str]:
    return [
        ax.get_label()[len(HISTOGRAM_PREFIX) :]
        for ax in fig.axes
        if ax.get_label().startswith(HISTOGRAM_PREFIX)
    ]


def _assert_files(fig: Any, folder: Path, stem: str) -> None:
    """PNG, SVG and PDF of ``fig`` are valid files of their kind, the PNG of the right size."""
    png = save_figure(fig, folder / f"{stem}.png").read_bytes()
    assert png[:8] == PNG_MAGIC and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    expected = fig.get_size_inches() * fig.dpi
    assert abs(width - expected[0]) <= 1 and abs(height - expected[1]) <= 1
    svg = save_figure(fig, folder / f"{stem}.svg")
    root = ET.parse(svg).getroot()
    assert root.tag == SVG
    assert "<dc:date>" not in svg.read_text()
    pdf = save_figure(fig, folder / f"{stem}.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert b"/CreationDate" not in pdf


def _assert_bars(fig: Any, report: Any) -> None:
    """One stacked bar per executed site, in report order, with the report's numbers."""
    executed = [s for s in report.sites if s.executed]
    ax = _axes(fig, SITES_AXES)
    dead, near, alive = ax.containers
    assert [c.get_label() for c in ax.containers] == ["dead", "near-dead", "alive"]
    assert len(dead) == len(near) == len(alive) == len(executed)
    for bar_dead, bar_near, bar_alive, s in zip(dead, near, alive, executed, strict=True):
        assert bar_dead.get_height() == pytest.approx(100 * s.dead / s.units)
        assert bar_near.get_height() == pytest.approx(100 * s.near_dead / s.units)
        total = bar_dead.get_height() + bar_near.get_height() + bar_alive.get_height()
        assert total == pytest.approx(100)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == [abbreviate(s.site).replace("$", r"\$") for s in executed]
    (line,) = _axes(fig, SPARSITY_AXES).get_lines()
    assert line.get_ydata() == pytest.approx([100 * s.sparsity for s in executed])
    title = fig.get_suptitle()
    assert f"{report.dead_units} of {report.total_units} ReLU units dead" in title
    assert f"({report.dead_fraction:.1%})" in title


@pytest.mark.parametrize("name", reports.SAMPLE_NAMES)
def test_sample_model_pictures(samples: dict[str, Any], name: str, tmp_path: Path) -> None:
    report = samples[name]
    fig = report_figure(report)
    _assert_bars(fig, report)
    _assert_files(fig, tmp_path, name)
    executed = [s for s in report.sites if s.executed]
    assert len(_histograms(fig)) == min(len(executed), MAX_HISTOGRAMS)


def test_sample_dying_numbers(samples: dict[str, Any]) -> None:
    """The README's sample: 44 of 128 units dead (sample_models/README.md)."""
    fig = report_figure(samples["textbook_dying"])
    assert "44 of 128 ReLU units dead (34.4%)" in fig.get_suptitle()
    (dead,) = _axes(fig, HISTOGRAM_PREFIX + "relu").containers[1]  # the red bar at rate 0
    assert dead.get_height() == 44


@pytest.mark.parametrize("name", reports.PLANTED_NAMES)
def test_planted_model_pictures(
    planted: dict[str, Any], planted_models: Any, name: str, tmp_path: Path
) -> None:
    report, truth = planted[name], planted_models[name]
    fig = report_figure(report)
    _assert_bars(fig, report)
    _assert_files(fig, tmp_path, name)
    # The planted numbers, not the report's: dead share per site and in the title.
    dead = _axes(fig, SITES_AXES).containers[0]
    expected = [100 * len(d) / units for units, d in truth.sites.values()]
    assert [bar.get_height() for bar in dead] == pytest.approx(expected)
    assert f"{truth.dead} of {truth.units} ReLU units dead" in fig.get_suptitle()
    # Histograms: the worst site first; its red bar counts exactly the planted dead units.
    worst = max(truth.sites, key=lambda s: len(truth.sites[s][1]) / truth.sites[s][0])
    assert _histograms(fig)[0] == worst
    red = _axes(fig, HISTOGRAM_PREFIX + worst).containers[1]
    assert red[0].get_height() == len(truth.sites[worst][1])


def test_sites_that_did_not_run_are_left_out() -> None:
    """NamingNet's ``never`` is declared but never called: no bar for it."""
    import relu_doctor
    from tests.fixtures.models import NamingNet

    report = relu_doctor.scan(NamingNet(), input_shape=(4,))
    assert any(not s.executed for s in report.sites)
    fig = report_figure(report)
    _assert_bars(fig, report)
    assert "never" not in [t.get_text() for t in _axes(fig, SITES_AXES).get_xticklabels()]


def test_many_sites_stay_readable() -> None:
    """41 sites with 33-character names: abbreviated, no two labels overlap, all inside."""
    report = reports.many_sites(40)
    fig = report_figure(report)
    _assert_bars(fig, report)
    small = report_figure(reports.many_sites(3))
    assert fig.get_size_inches()[0] > 1.5 * small.get_size_inches()[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = _axes(fig, SITES_AXES)
    ticks = ax.get_xticklabels()
    assert len(ticks) == 41
    assert all(len(t.get_text()) <= 24 for t in ticks)
    assert any("…" in t.get_text() for t in ticks)
    boxes = [t.get_window_extent(renderer) for t in ticks]
    for left, right in itertools.pairwise(boxes):
        assert left.x1 <= right.x0, (left, right)
    others = [ax.xaxis.label.get_window_extent(renderer)]
    others += [
        a.get_tightbbox(renderer) for a in fig.axes if a.get_label().startswith(HISTOGRAM_PREFIX)
    ]
    for box in boxes:
        assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)
        assert not any(box.overlaps(other) for other in others)
    assert len(_histograms(fig)) == MAX_HISTOGRAMS


def test_hostile_names_draw_literally() -> None:
    """``$x$`` would be mathtext; markup is just text in a picture."""
    report = reports.hostile()
    fig = report_figure(report)
    fig.canvas.draw()
    _assert_bars(fig, report)
    texts = [t.get_text() for t in _axes(fig, SITES_AXES).get_xticklabels()]
    assert r"a\$x\$b & 'q' " + '"dq"' in texts
    ET.fromstring(figure_svg(fig))  # markup in names stays text in the SVG


def test_timeline_matches_sites_by_name(planted: dict[str, Any], tmp_path: Path) -> None:
    """mlp has act1 only, deep act1 and act2: act2 is blank for mlp."""
    fig = timeline_figure([planted["mlp"], planted["deep"]])
    ax = _axes(fig, TIMELINE_AXES)
    values = ax.images[0].get_array()
    assert values.shape == (2, 2)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["act1", "act2"]
    assert values.mask.tolist() == [[False, True], [False, False]]
    assert values.filled(-1).ravel().tolist() == pytest.approx([3 / 16, -1, 3 / 16, 2 / 8])
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows == ["mlp.pt (19%)", "deep.pt (21%)"]
    _assert_files(fig, tmp_path, "timeline")


def test_timeline_keeps_network_order() -> None:
    """A site first seen in a later checkpoint goes after its predecessor there."""

    def fake(model: str, names: list[str]) -> Any:
        sites = [SimpleNamespace(site=n, executed=True, dead_fraction=0.5) for n in names]
        return SimpleNamespace(model=model, sites=sites, dead_fraction=0.5)

    fig = timeline_figure([fake("a", ["stem", "b1", "head"]), fake("b", ["b1", "b2", "head"])])
    ax = _axes(fig, TIMELINE_AXES)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["stem", "b1", "b2", "head"]
    assert ax.images[0].get_array().mask.tolist() == [
        [False, False, True, False],
        [True, False, False, False],
    ]
    with pytest.raises(UsageError, match="at least one report"):
        timeline_figure([])


def test_save_figure_formats(planted: dict[str, Any], tmp_path: Path) -> None:
    fig = report_figure(planted["mlp"])
    assert save_figure(fig, tmp_path / "UPPER.PNG").read_bytes()[:8] == PNG_MAGIC
    for bad in ("plot.gif", "plot.jpg", "plot"):
        with pytest.raises(UsageError, match=r"\.png, \.svg, \.pdf") as info:
            save_figure(fig, tmp_path / bad)
        assert bad in str(info.value)
        assert not (tmp_path / bad).exists()


def test_files_are_deterministic(planted: dict[str, Any], tmp_path: Path) -> None:
    """Same report, same bytes: no dates, a fixed SVG hash salt (ids stay the same)."""
    fig, same = report_figure(planted["deep"]), report_figure(planted["deep"])
    for suffix in (".png", ".svg", ".pdf"):
        first = save_figure(fig, tmp_path / f"a{suffix}").read_bytes()
        assert save_figure(same, tmp_path / f"b{suffix}").read_bytes() == first, suffix
        assert save_figure(fig, tmp_path / f"c{suffix}").read_bytes() == first, suffix
    assert figure_svg(fig).encode() == (tmp_path / "a.svg").read_bytes()


def test_require_matplotlib_says_how_to_install(
    planted: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    require_matplotlib()  # installed here
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now fails
    for call in (
        require_matplotlib,
        lambda: report_figure(planted["mlp"]),
        lambda: timeline_figure([planted["mlp"]]),
    ):
        with pytest.raises(UsageError) as info:
            call()
        message = str(info.value)
        assert "pip install 'relu-doctor[plots]'" in message
        assert "matplotlib" in message and "\n" not in message


def test_importing_the_output_modules_does_not_import_matplotlib() -> None:
    code = (
        "import sys, relu_doctor.output.plots, relu_doctor.output.html, "
        "relu_doctor.analyze.glyphs; assert 'matplotlib' not in sys.modules, 'imported'"
    )
    root = Path(__file__).parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=False
    )
    assert done.returncode == 0, done.stderr


def test_histogram_counts_match_the_units(planted: dict[str, Any]) -> None:
    """Every unit is in exactly one bar: the red (rate 0) or one of the live bins."""
    report = planted["deep"]
    fig = report_figure(report)
    for site in report.sites:
        live, red = _axes(fig, HISTOGRAM_PREFIX + site.site).containers
        assert red[0].get_height() == site.dead
        assert red[0].get_height() + sum(b.get_height() for b in live) == site.units
        assert np.all([b.get_x() >= 0 for b in live])
