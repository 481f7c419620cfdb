"""One self-contained HTML page of one or more reports: a file to attach, mail or archive.

The page opens offline: no external script, font, stylesheet or image; CSS and the table
sorter are inline and the pictures are SVG data URIs. Its Content-Security-Policy allows
exactly that (the inline script and style by hash), so nothing can be fetched, and every
string that came from a user (model, site, message) is escaped. No dates: the same
reports give the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any

from relu_doctor import __version__
from relu_doctor.analyze.columns import SITE_COLUMNS
from relu_doctor.errors import UsageError
from relu_doctor.output.plots import figure_svg, report_figure, require_matplotlib, timeline_figure
from relu_doctor.output.table import bound_sentence

STYLE = """
:root { color-scheme: light; --dead: #c62828; --near: #b26a00; --line: #d0d7de; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       margin: 0 auto; padding: 1.5rem; max-width: 80rem; color: #1f2328; }
h1 { margin: 0 0 .25rem; font-size: 1.6rem; } h2 { margin-top: 2.5rem; font-size: 1.3rem;
       border-bottom: 2px solid var(--line); padding-bottom: .2rem; word-break: break-all; }
h3 { margin: 1.5rem 0 .5rem; font-size: 1.05rem; }
code, .spark { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; }
.meta { color: #57606a; margin: 0; } .summary { font-size: 1.05rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: .875rem; margin: .25rem 0 1rem; }
th, td { border-bottom: 1px solid var(--line); padding: .3rem .45rem; text-align: left;
         vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
thead th { background: #f6f8fa; position: sticky; top: 0; white-space: nowrap; }
th[data-type] { cursor: pointer; user-select: none; }
th[data-type]::after { content: " \\2195"; color: #8c959f; }
th[aria-sort=ascending]::after { content: " \\25B2"; color: #1f2328; }
th[aria-sort=descending]::after { content: " \\25BC"; color: #1f2328; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.bad { color: var(--dead); font-weight: 600; } td.warn { color: var(--near); }
tr.idle td { color: #8c959f; } .note { font-size: .8rem; color: #8c959f; }
.spark { white-space: pre; color: #0b4f9c; letter-spacing: 1px; }
.severity-error { color: var(--dead); font-weight: 600; } .severity-warning { color: var(--near); }
figure { margin: 1rem 0; } figure img { display: block; max-width: none; }
figcaption { color: #57606a; font-size: .85rem; }
ul { padding-left: 1.2rem; } li { margin: .2rem 0; }
footer { margin-top: 3rem; color: #57606a; font-size: .85rem; }
"""

SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th[data-type]").forEach(function (th) {
    function sort() {
      var col = Array.prototype.indexOf.call(th.parentNode.children, th);
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th[aria-sort]").forEach(function (h) {
        h.removeAttribute("aria-sort");
      });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var numeric = th.getAttribute("data-type") === "num";
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-v"), y = b.cells[col].getAttribute("data-v");
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        var d = numeric ? Number(x) - Number(y) : x.localeCompare(y);
        return ascending ? d : -d;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    }
    th.tabIndex = 0;
    th.addEventListener("click", sort);
    th.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); }
    });
  });
});
"""

#: A table column: (key, header, numeric: True / False (text) / None (not sortable)).
Column = tuple[str, str, bool | None]
_PERCENT, _GENERAL = "{:.1%}", "{:.3g}"
#: Site-table columns come from the column registry: those the terminal table shows.
_SHOWN = [c for c in SITE_COLUMNS.values() if c.header and c.name not in ("site", "firing")]
_TEXT = ("kind",)
FINDING_COLUMNS = ("rule", "severity", "site", "value", "threshold", "message", "fix")


def html_page(
    reports: Sequence[Any] | Any,
    *,
    findings: Mapping[str, Sequence[Any]] | None = None,
    command: str = "",
    version: str = __version__,
) -> str:
    """The page for ``reports`` (one ``ModelReport`` or several, e.g. checkpoints of a run).

    ``findings``: model name -> ``check`` findings, shown with their model (given at all: a
    model without any says it passed). ``command``: the exact command line that made the page,
    shown with ``version`` so the page can be made again. The pictures need matplotlib:
    without it, a UsageError says how to install it.
    """
    require_matplotlib()
    reports = [reports] if hasattr(reports, "sites") else list(reports)
    if not reports:
        raise UsageError("an HTML report needs at least one scanned model")
    names = [str(r.model) for r in reports]
    title = "relu-doctor: " + ", ".join(names[:3]) + (" …" if len(names) > 3 else "")
    body = [_header(command, version)]
    if len(reports) > 1:
        body.append(_overview(reports, findings))
        body.append(
            _picture(
                timeline_figure(reports),
                "Dead fraction per site (columns) for each model (rows)",
                "Timeline: dead fraction per site across the models, in the order given.",
            )
        )
    for i, report in enumerate(reports, 1):
        body.append(_model_section(report, i, findings))
    others = {k: v for k, v in (findings or {}).items() if k not in names and v}
    if others:
        body.append("<h2>Findings for other models</h2>")
        body.append(_findings_table([f for fs in others.values() for f in fs], with_model=True))
    body.append(_footer(command, version))
    style, script = STYLE.strip(), SCRIPT.strip()
    policy = (
        "default-src 'none'; img-src data:; base-uri 'none'; form-action 'none'; "
        f"style-src '{_sha256(style)}'; script-src '{_sha256(script)}'"
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{policy}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f'<meta name="generator" content="relu-doctor {_e(version)}">',
            f"<title>{_e(title)}</title>",
            '<link rel="icon" href="data:,">',
            f"<style>{style}</style>",
            "</head>",
            "<body>",
            *body,
            f"<script>{script}</script>",
            "</body>",
            "</html>",
            "",
        ]
    )


def _header(command: str, version: str) -> str:
    made = f"relu-doctor {_e(version)}"
    how = f": <code>{_e(command)}</code>" if command else " (from Python)"
    return f'<header><h1>relu-doctor report</h1><p class="meta">Made by {made}{how}</p></header>'


def _footer(command: str, version: str) -> str:
    how = f"Command: <code>{_e(command)}</code>. " if command else ""
    return f"<footer>{how}relu-doctor {_e(version)}; opens offline, fetches nothing.</footer>"


def _overview(reports: Sequence[Any], findings: Mapping[str, Sequence[Any]] | None) -> str:
    head: list[Column] = [
        ("model", "model", False),
        ("sites", "sites", True),
        ("dead", "dead", True),
        ("units", "units", True),
        ("dead_fraction", "dead %", True),
        ("samples", "samples", True),
    ]
    if findings is not None:
        head.append(("findings", "findings", True))
    rows = []
    for i, r in enumerate(reports, 1):
        name = str(r.model)
        cells = [
            _cell("model", name, text=f'<a href="#model-{i}">{_e(name)}</a>'),
            _cell("sites", sum(1 for s in r.sites if s.executed), numeric=True),
            _cell("dead", r.dead_units, numeric=True, css="bad" if r.dead_units else ""),
            _cell("units", r.total_units, numeric=True),
            _cell("dead_fraction", r.dead_fraction, numeric=True, fmt=_PERCENT),
            _cell("samples", r.samples, numeric=True),
        ]
        if findings is not None:
            cells.append(_cell("findings", len(findings.get(name, ())), numeric=True))
        rows.append(f'<tr data-model="{_e(name)}">{"".join(cells)}</tr>')
    return "<h2>Models</h2>" + _table("overview", head, rows)


def _model_section(report: Any, index: int, findings: Mapping[str, Sequence[Any]] | None) -> str:
    model = str(report.model)
    parts = [f'<section class="model" id="model-{index}" data-model="{_e(model)}">']
    parts.append(f"<h2>{_e(model)}</h2>")
    parts.append(f'<p class="summary">{_e(_summary(report))}</p>')
    bound = bound_sentence(report)
    if bound is not None:
        parts.append(f'<p class="meta">{_e(bound)}</p>')
    if findings is not None:
        parts.append("<h3>Findings</h3>")
        mine = list(findings.get(model, ()))
        parts.append(_findings_table(mine) if mine else "<p>No findings: every rule passed.</p>")
    parts.append("<h3>Sites</h3>")
    parts.append(_sites_table(report))
    parts.append(_causes(report))
    if report.suggestions:
        items = [
            f"<li><code>{_e(str(x.site))}</code>: <b>{_e(str(x.action))}</b> – "
            f"{_e(str(x.reason))}</li>"
            for x in report.suggestions
        ]
        parts.append('<h3>Suggestions</h3><ul class="suggestions">' + "".join(items) + "</ul>")
    if report.warnings:
        items = [f"<li>{_e(str(w))}</li>" for w in report.warnings]
        parts.append('<h3>Warnings</h3><ul class="warnings">' + "".join(items) + "</ul>")
    parts.append("<h3>Pictures</h3>")
    parts.append(
        _picture(
            report_figure(report),
            f"Dead, near-dead and alive units per site of {model}, sparsity, and the firing "
            "rates of the worst sites",
            "Bars: share of each site's units that are dead (red), near-dead (orange) and "
            "alive; line: sparsity. Below: firing rates of the sites with the most dead units; "
            "the red bar counts the units that never fired.",
        )
    )
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def _summary(report: Any) -> str:
    executed = sum(1 for s in report.sites if s.executed)
    nonfinite = f", {report.nonfinite_units} nonfinite" if report.nonfinite_units else ""
    return (
        f"{report.dead_units} of {report.total_units} ReLU units dead "
        f"({report.dead_fraction:.1%}){nonfinite} across {executed} site{'s' * (executed != 1)}; "
        f"{report.samples} samples in {report.batches} batches "
        f"({report.mode} mode, {report.device})."
    )


def _sites_table(report: Any) -> str:
    head: list[Column] = [
        ("index", "#", True),
        ("site", "site", False),
        *((c.name, c.header or c.name, c.name not in _TEXT) for c in _SHOWN),
        ("firing", "firing rates", None),
    ]
    rows = []
    for i, s in enumerate(report.sites, 1):
        name = str(s.site)
        label = _e(name) + ("" if s.executed else ' <span class="note">did not run</span>')
        cells = [_cell("index", i, numeric=True), _cell("site", name, text=f"<code>{label}</code>")]
        for c in _SHOWN:
            numeric = c.name not in _TEXT
            value = s.values[c.name] if s.executed or not numeric else None
            css = "bad" if c.severity and value else ""
            css = "warn" if c.name == "near_dead" and value else css
            shown = None if value is None else _e(c.text(s.values))
            cells.append(_cell(c.name, value, numeric=numeric, css=css, text=shown))
        cells.append(
            '<td class="spark" data-col="firing" '
            'title="units per firing-rate bin over [0, 1]; first bin: never fired">'
            f"{_e(s.values.get('firing') or '')}</td>"
        )
        idle = "" if s.executed else ' class="idle"'
        rows.append(f'<tr data-site="{_e(name)}"{idle}>{"".join(cells)}</tr>')
    return _table("sites", head, rows)


def _findings_table(findings: Sequence[Any], *, with_model: bool = False) -> str:
    columns = ("model", *FINDING_COLUMNS) if with_model else FINDING_COLUMNS
    rows = []
    for f in findings:
        cells = []
        for column in columns:
            value = getattr(f, column, None)
            if column == "severity":
                level = str(value).lower()
                css = f"severity-{level}" if re.fullmatch(r"[a-z]+", level) else ""
                cells.append(_cell(column, value, css=css))
            else:
                numeric = column in ("value", "threshold") and _is_number(value)
                cells.append(_cell(column, value, numeric=numeric, fmt=_GENERAL))
        rows.append(f'<tr data-rule="{_e(str(getattr(f, "rule", "")))}">{"".join(cells)}</tr>')
    head: list[Column] = [(c, c, c in ("value", "threshold")) for c in columns]
    return _table("findings", head, rows)


def _causes(report: Any) -> str:
    """Per-site counts of why units died, for sites that carry them (``causes`` mapping)."""
    items = []
    for s in report.sites:
        causes = getattr(s, "causes", None)
        if isinstance(causes, Mapping) and causes:
            ranked = sorted(causes.items(), key=lambda kv: (-_as_float(kv[1]), str(kv[0])))
            text = ", ".join(f"{_e(str(k))}: {_e(str(v))}" for k, v in ranked)
            items.append(f"<li><code>{_e(str(s.site))}</code>: {text}</li>")
    return '<h3>Causes</h3><ul class="causes">' + "".join(items) + "</ul>" if items else ""


def _table(name: str, head: Sequence[Column], rows: list[str]) -> str:
    """A sortable table: a header with ``data-type`` sorts (numeric ``None``: not sortable)."""
    ths = []
    for key, label, numeric in head:
        kind = "" if numeric is None else f' data-type="{"num" if numeric else "text"}"'
        align = ' class="num"' if numeric else ""
        ths.append(f'<th scope="col" data-col="{key}"{kind}{align}>{_e(label)}</th>')
    return (
        f'<div class="scroll"><table class="{name} sortable"><thead><tr>{"".join(ths)}</tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _cell(
    column: str,
    value: Any,
    *,
    numeric: bool | None = False,
    fmt: str = "{}",
    css: str = "",
    text: str | None = None,
) -> str:
    """A ``<td>`` whose ``data-v`` is the raw value the sorter compares (empty: no value)."""
    classes = " ".join(c for c in ("num" if numeric else "", css) if c)
    attr = f' data-col="{column}"' + (f' class="{classes}"' if classes else "")
    if value is None or (_is_number(value) and not math.isfinite(float(value))):
        shown = "–" if value is None else _e(str(value))
        return f'<td{attr} data-v="">{shown if text is None else text}</td>'
    if numeric and _is_number(value):
        raw = str(int(value)) if isinstance(value, numbers.Integral) else repr(float(value))
        shown = _e(fmt.format(value))
    else:
        raw = str(value)
        shown = _e(raw)
    return f'<td{attr} data-v="{_e(raw)}">{shown if text is None else text}</td>'


def _picture(fig: Any, alt: str, caption: str) -> str:
    data = base64.b64encode(figure_svg(fig).encode("utf-8")).decode("ascii")
    return (
        f'<figure class="picture"><div class="scroll">'
        f'<img alt="{_e(alt)}" src="data:image/svg+xml;base64,{data}"></div>'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _is_number(value: Any) -> bool:
    """Python and numpy numbers, not booleans."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _as_float(value: Any) -> float:
    return float(value) if _is_number(value) else 0.0


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def page(doc: Any) -> str:
    """The emitter of the output-format registry: the page of a document."""
    return html_page(list(doc.reports), findings=doc.findings, command=doc.command)
