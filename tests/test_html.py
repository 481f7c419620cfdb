"""The HTML page: every site with its numbers, embedded pictures, nothing fetched from
outside, every user string escaped, findings / suggestions / causes / warnings when there
are some, and the command and version that made it.

The page is read back with the standard library's HTML parser (what a browser sees as text
and attributes, entities decoded), not searched as a string, except to prove that raw
markup from names never appears.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from types import SimpleNamespace
from typing import Any

import pytest

from relu_doctor import __version__
from relu_doctor.analyze.glyphs import site_sparklines
from relu_doctor.errors import UsageError
from relu_doctor.output.html import html_page
from tests.fixtures import reports

#: Attributes through which a page can make the browser fetch something.
URL_ATTRS = {"src", "href", "action", "formaction", "poster", "data", "srcset", "background"}
EXTERNAL = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//|^\s*(?:https?|ftp|file):", re.IGNORECASE)
SVG_DATA = "data:image/svg+xml;base64,"


class Page(HTMLParser):
    """What the tests read: table rows by section and table, attributes, texts, scripts."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.attrs: list[tuple[str, str, str]] = []  # (tag, name, value)
        self.tables: dict[tuple[str | None, str], list[dict[str, Any]]] = {}
        self.headings: list[tuple[str | None, str]] = []  # (section model, h2/h3 text)
        self.texts: dict[str, list[str]] = {
            k: [] for k in ("style", "script", "title", "p", "code", "figcaption")
        }
        self.images: list[str] = []
        self._stack: list[str] = []
        self._section: str | None = None
        self._table: list[dict[str, Any]] | None = None
        self._row: dict[str, Any] | None = None
        self._cell: dict[str, Any] | None = None
        self._heading: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.attrs += [(tag, k, v) for k, v in a.items()]
        if tag not in ("meta", "link", "img", "br", "input"):
            self._stack.append(tag)
        if tag == "section":
            self._section = a.get("data-model")
        elif tag == "table":
            self._table = self.tables.setdefault((self._section, a["class"].split()[0]), [])
        elif tag == "tr" and self._table is not None and "thead" not in self._stack:
            self._row = {"attrs": a, "cells": {}}
            self._table.append(self._row)
        elif tag in ("td",) and self._row is not None:
            self._cell = {"v": a.get("data-v"), "text": "", "class": a.get("class", "")}
            self._row["cells"][a["data-col"]] = self._cell
        elif tag in ("h2", "h3"):
            self._heading = []
        elif tag == "img":
            self.images.append(a["src"])

    def handle_endtag(self, tag: str) -> None:
        while self._stack and self._stack.pop() != tag:
            pass
        if tag == "section":
            self._section = None
        elif tag == "table":
            self._table = None
        elif tag == "tr":
            self._row = None
        elif tag == "td":
            self._cell = None
        elif tag in ("h2", "h3") and self._heading is not None:
            self.headings.append((self._section, "".join(self._heading)))
            self._heading = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["text"] += data
        if self._heading is not None:
            self._heading.append(data)
        if self._stack and self._stack[-1] in self.texts:
            self.texts[self._stack[-1]].append(data)

    def rows(self, model: str | None, table: str = "sites") -> list[dict[str, Any]]:
        return self.tables[(model, table)]

    def section_headings(self, model: str) -> list[str]:
        return [text for section, text in self.headings if section == model]


def _svgs(page: Page) -> list[ET.Element]:
    assert page.images and all(src.startswith(SVG_DATA) for src in page.images)
    return [ET.fromstring(base64.b64decode(src[len(SVG_DATA) :])) for src in page.images]


def _fake(**fields: Any) -> Any:
    return SimpleNamespace(**fields)


class Wrapped:
    """A report or site with some attributes replaced or added (as later versions will)."""

    def __init__(self, inner: Any, **override: Any) -> None:
        self._inner = inner
        self.__dict__.update(override)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return reports.sample_reports(tmp_path_factory)


@pytest.fixture(scope="module")
def planted(planted_models: Any) -> dict[str, Any]:
    return reports.planted_reports(planted_models)


def _assert_site_rows(page: Page, report: Any) -> None:
    """One row per site in report order, with the report's numbers."""
    rows = page.rows(str(report.model))
    assert [r["attrs"]["data-site"] for r in rows] == [s.site for s in report.sites]
    sparks = site_sparklines(report)
    for row, s in zip(rows, report.sites, strict=True):
        cells = row["cells"]
        assert cells["site"]["text"].startswith(s.site)
        if not s.executed:
            assert "did not run" in cells["site"]["text"] and cells["dead"]["v"] == ""
            continue
        assert cells["units"]["v"] == str(s.units) and cells["units"]["text"] == str(s.units)
        assert cells["dead"]["v"] == str(s.dead) and cells["dead"]["text"] == str(s.dead)
        assert cells["near_dead"]["v"] == str(s.near_dead)
        assert cells["dormant"]["v"] == str(s.dormant)
        assert float(cells["dead_fraction"]["v"]) == pytest.approx(s.dead_fraction)
        assert cells["dead_fraction"]["text"] == f"{s.dead_fraction:.1%}"
        assert float(cells["sparsity"]["v"]) == pytest.approx(s.sparsity)
        assert cells["firing"]["text"] == sparks[s.site]
        assert ("bad" in cells["dead"]["class"]) == (s.dead > 0)


@pytest.mark.parametrize("name", reports.SAMPLE_NAMES)
def test_sample_model_pages(samples: dict[str, Any], name: str) -> None:
    report = samples[name]
    page = Page(html_page(report, command=f"relu-doctor scan {name}.pt --html out.html"))
    _assert_site_rows(page, report)
    (svg,) = _svgs(page)
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    summary = f"{report.dead_units} of {report.total_units} ReLU units dead"
    assert any(p.startswith(summary) for p in page.texts["p"])


def test_sample_dying_summary(samples: dict[str, Any]) -> None:
    """The README's numbers: 44 of 128 units dead, 256 samples in 8 batches."""
    text = html.unescape(html_page(samples["textbook_dying"]))
    assert "44 of 128 ReLU units dead (34.4%) across 1 site; 256 samples in 8 batches" in text
    assert "3/256 = 1.17% at 95% confidence" in text


@pytest.mark.parametrize("name", reports.PLANTED_NAMES)
def test_planted_model_pages(planted: dict[str, Any], planted_models: Any, name: str) -> None:
    report, truth = planted[name], planted_models[name]
    page = Page(html_page(report))
    _assert_site_rows(page, report)
    rows = {r["attrs"]["data-site"]: r["cells"] for r in page.rows(f"{name}.pt")}
    # The planted numbers, independent of relu-doctor.
    assert {site: (int(c["units"]["v"]), int(c["dead"]["v"])) for site, c in rows.items()} == {
        site: (units, len(dead)) for site, (units, dead) in truth.sites.items()
    }
    assert len(_svgs(page)) == 1


def test_several_models_one_section_each_and_a_timeline(planted: dict[str, Any]) -> None:
    chosen = [planted["mlp"], planted["deep"], planted["all_dead"]]
    page = Page(html_page(chosen))
    overview = page.rows(None, "overview")
    assert [r["attrs"]["data-model"] for r in overview] == ["mlp.pt", "deep.pt", "all_dead.pt"]
    assert [int(r["cells"]["dead"]["v"]) for r in overview] == [3, 5, 16]
    assert [r["cells"]["dead_fraction"]["text"] for r in overview] == ["18.8%", "20.8%", "100.0%"]
    for report in chosen:
        _assert_site_rows(page, report)
    svgs = _svgs(page)
    assert len(svgs) == 4  # the timeline, then one per model
    assert page.texts["figcaption"][0].startswith("Timeline")
    hrefs = [v for tag, k, v in page.attrs if tag == "a" and k == "href"]
    assert hrefs == ["#model-1", "#model-2", "#model-3"]
    ids = [v for tag, k, v in page.attrs if tag == "section" and k == "id"]
    assert ids == ["model-1", "model-2", "model-3"]
    # One model: no overview, no timeline.
    single = Page(html_page([planted["mlp"]]))
    assert (None, "overview") not in single.tables and len(single.images) == 1


def test_nothing_is_fetched_from_outside(planted: dict[str, Any]) -> None:
    text = html_page([planted["mlp"], planted["deep"]], command="relu-doctor scan a.pt b.pt")
    page = Page(text)
    for tag, name, value in page.attrs:
        if name in URL_ATTRS:
            assert not EXTERNAL.search(value), (tag, name, value[:80])
            assert value.startswith(("data:", "#")), (tag, name, value[:80])
    css = " ".join(page.texts["style"])
    assert "@import" not in css and "url(" not in css
    assert not [v for _, k, v in page.attrs if k == "style"]  # no inline style attributes
    # Inside the pictures: references to their own elements and embedded PNG data only
    # (the heatmap is a raster image inside its SVG).
    for svg in _svgs(page):
        for element in svg.iter():
            assert not element.tag.endswith("}script")
            for key, value in element.attrib.items():
                if key.endswith("href"):
                    assert value.startswith(("#", "data:image/png;base64,")), value[:80]
            assert "url(http" not in (element.text or "")
    # The policy forbids every fetch and allows only this page's own script and style.
    policy = next(v for tag, k, v in page.attrs if tag == "meta" and k == "content" and "src" in v)
    assert "default-src 'none'" in policy and "img-src data:" in policy
    for kind in ("script", "style"):
        (body,) = page.texts[kind]
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"{kind}-src 'sha256-{digest}'" in policy
    assert text.count("<script") == 1


def test_hostile_names_are_escaped() -> None:
    report = reports.hostile()
    finding = _fake(
        rule="RD101", severity="<i>error</i>", model=report.model, site=reports.HOSTILE_SITES[1],
        value="<b>0.25</b>", threshold=0.1, message="<script>alert(2)</script>",
        fix="</td></tr></table><script>alert(3)</script>",
    )  # fmt: skip
    command = "relu-doctor check '<script>alert(4)</script>.pt' --html \"a&b.html\""
    text = html_page([report], findings={report.model: [finding]}, command=command)
    for raw in (*reports.HOSTILE_SITES[1:], reports.HOSTILE_MODEL, command, finding.fix):
        assert raw not in text
        assert html.escape(raw) in text
    assert text.count("<script") == 1 and "<img src=x" not in text and "<i>" not in text
    page = Page(text)  # ... and read back, every name is intact
    _assert_site_rows(page, report)
    (row,) = page.rows(reports.HOSTILE_MODEL, "findings")
    assert row["cells"]["message"]["text"] == finding.message
    assert row["cells"]["fix"]["text"] == finding.fix
    assert row["cells"]["severity"]["class"] == ""  # not a plain word: no class from it
    assert command in " ".join(page.texts.get("code", []))
    assert reports.HOSTILE_MODEL in page.texts["title"][0]


def test_findings_suggestions_causes_and_warnings(planted: dict[str, Any]) -> None:
    deep, mlp = planted["deep"], planted["mlp"]
    act1, act2 = deep.sites
    report = Wrapped(
        deep,
        sites=(Wrapped(act1, causes={"bias pushed below zero": 2, "<dead input>": 1}), act2),
        warnings=("only <8> batches",),
    )
    findings = {
        "deep.pt": [
            _fake(rule="RD101", severity="error", model="deep.pt", site="act2", value=0.25,
                  threshold=0.1, message="2 of 8 units dead", fix="relu-doctor fix --to reinit"),
            _fake(rule="RD102", severity="warning", model="deep.pt", site=None, value=None,
                  threshold=None, message="model dead fraction", fix=""),
        ],
        "gone.pt": [
            _fake(rule="RD105", severity="error", model="gone.pt", site="act9", value=1.0,
                  threshold=0.5, message="site disappeared", fix="rescan"),
        ],
    }  # fmt: skip
    page = Page(html_page([report, mlp], findings=findings))
    rows = page.rows("deep.pt", "findings")
    assert [r["attrs"]["data-rule"] for r in rows] == ["RD101", "RD102"]
    first, second = (r["cells"] for r in rows)
    assert first["value"]["text"] == "0.25" and first["threshold"]["v"] == "0.1"
    assert "severity-error" in first["severity"]["class"]
    assert second["site"]["text"] == "–" and second["site"]["v"] == ""
    assert "No findings: every rule passed." in html.unescape(html_page([mlp], findings={}))
    (other,) = page.rows(None, "findings")
    assert other["cells"]["model"]["text"] == "gone.pt"
    assert "Findings for other models" in [h for _, h in page.headings]
    overview = {r["attrs"]["data-model"]: r["cells"] for r in page.rows(None, "overview")}
    assert (
        overview["deep.pt"]["findings"]["v"] == "2" and overview["mlp.pt"]["findings"]["v"] == "0"
    )
    # Causes only where a site has some, most frequent first; warnings escaped.
    assert "Causes" in page.section_headings("deep.pt")
    assert "Causes" in page.section_headings("mlp.pt")  # the scan's own: 3 zeroed rows
    healthy = Page(html_page([planted["healthy"]]))
    assert "Causes" not in healthy.section_headings("healthy.pt")
    text = html.unescape(re.sub(r"<[a-z/][^>]*>", "", html_page(report)))
    assert "act1: bias pushed below zero: 2, <dead input>: 1" in text
    assert "act1: collapsed: 3" in html.unescape(re.sub(r"<[a-z/][^>]*>", "", html_page(mlp)))
    assert "Warnings" in page.section_headings("deep.pt")
    assert "only &lt;8&gt; batches" in html_page(report)
    # Suggestions of the report, each with its site and action.
    assert "Suggestions" in page.section_headings("deep.pt")
    for s in deep.suggestions:
        assert html.escape(s.reason) in html_page(report)
    # Without findings: no findings section at all.
    assert "Findings" not in Page(html_page([mlp])).section_headings("mlp.pt")


def test_sites_that_did_not_run() -> None:
    import relu_doctor
    from tests.fixtures.models import NamingNet

    report = relu_doctor.scan(NamingNet(), input_shape=(4,), name="naming")
    page = Page(html_page(report))
    _assert_site_rows(page, report)
    idle = [r for r in page.rows("naming") if r["attrs"].get("class") == "idle"]
    assert [r["attrs"]["data-site"] for r in idle] == ["never"]


def test_command_version_and_determinism(planted: dict[str, Any]) -> None:
    command = "relu-doctor scan mlp.pt --html report.html"
    text = html_page([planted["mlp"]], command=command, version="9.9.9")
    page = Page(text)
    assert page.texts["code"].count(command) == 2  # header and footer
    assert "relu-doctor 9.9.9" in html.unescape(text)
    assert html_page([planted["mlp"]], command=command, version="9.9.9") == text
    assert not re.search(r"20\d\d-\d\d-\d\d", text)  # no dates
    default = html.unescape(html_page(planted["mlp"]))
    assert f"relu-doctor {__version__} (from Python)" in default


def test_errors(planted: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="at least one scanned model"):
        html_page([])
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UsageError, match=re.escape("pip install 'relu-doctor[plots]'")):
        html_page(planted["mlp"])
