"""The terminal view of a report: the per-site table, the summary, suggestions and warnings,
as rich renderables (``cli`` prints them) or as plain fixed-width text (``-o x.txt``).

Only drawing happens here: numbers, severities and the confidence bound come from the report,
columns from the column registry.
"""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from relu_doctor.analyze.columns import SITE_COLUMNS, Column
from relu_doctor.analyze.report import ModelReport, SiteReport, severity
from relu_doctor.analyze.timeline import TimelineRow
from relu_doctor.output.document import Document, Failure

#: Colour of each severity.
STYLES = {
    "high": "bold red",
    "medium": "yellow",
    "low": "dark_orange",
    "none": "green",
    "n/a": "dim",
}
PLAIN_WIDTH = 140  # the width of ``-o x.txt`` and of piped output without COLUMNS

_SHOWN = [c for c in SITE_COLUMNS.values() if c.header is not None]


def _cell(column: Column, site: SiteReport) -> Any:
    value = site.row()[column.name]
    text = column.cell(value)
    if column.severity:
        return Text(text, style=STYLES[site.severity] if site.counted else "dim")
    return text


def _row(site: SiteReport) -> list[Any]:
    if site.executed:
        return [_cell(c, site) for c in _SHOWN]
    # An activation module that never ran: its name and kind, then the note.
    cells: list[Any] = [_cell(c, site) if c.name in ("site", "kind") else "" for c in _SHOWN]
    cells[2] = Text("not executed", style="dim")
    return cells


def site_table(report: ModelReport) -> Table:
    """One row per site, in first-execution order; colours show severity."""
    table = Table(title=f"[bold]{report.model}[/bold]", title_justify="left", expand=False)
    for i, column in enumerate(_SHOWN):
        assert column.header is not None
        if i == 0:
            table.add_column(column.header, no_wrap=True, overflow="fold")
        elif i == 1:
            table.add_column(column.header, no_wrap=True)
        else:
            table.add_column(column.header, justify="right", no_wrap=True)
    for s in report.sites:
        table.add_row(*_row(s))
    return table


def summary(report: ModelReport) -> Text:
    """Model dead fraction plus the honest statement of what "dead" means for this N."""
    text = Text()
    sites = len(report.counted_sites)
    if sites:
        text.append(f"{report.dead_units} of {report.total_units} ReLU units dead ", style="bold")
        text.append(f"({report.dead_fraction:.1%})", style=STYLES[report.severity] + " bold")
        text.append(f" across {sites} site{'s' if sites != 1 else ''}")
    else:
        kinds = sorted({s.activation.name for s in report.sites if s.executed})
        text.append("No ReLU or ReLU6 site", style="bold")
        text.append(
            f": the {', '.join(kinds)} sites are listed for comparison ('dead' = never "
            "positive) and do not count toward a dead fraction"
        )
    text.append(
        f"; {report.samples} samples in {report.batches} "
        f"batch{'es' if report.batches != 1 else ''} ({report.mode} mode, {report.device}"
        f"{'' if report.grad else ', no gradients'}).\n"
    )
    n, bound = report.min_samples, report.dead_bound
    if bound is not None:
        text.append(
            f"Dead = 0 firings in {n} samples: firing rate < 3/{n} = {bound:.2%} at 95% "
            "confidence.",
            style="dim",
        )
    return text


def suggestions(report: ModelReport) -> Group | None:
    """What to do, one line per suggestion; long reasons wrap under themselves."""
    if not report.suggestions:
        return None
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True, style="cyan")
    grid.add_column(overflow="fold")
    for s in report.suggestions:
        where = "whole model" if s.site == "*" else s.site
        grid.add_row(Text(f" • {where}:", style="bold"), s.action, s.reason)
    return Group(Text("Suggestions", style="bold"), grid)


def warnings(report: ModelReport) -> Text | None:
    if not report.warnings:
        return None
    text = Text()
    for w in report.warnings:
        text.append("warning: ", style="bold yellow")
        text.append(w + "\n")
    return text


def report_view(report: ModelReport) -> Group:
    """Everything the terminal shows for one model."""
    parts: list[Any] = [site_table(report), summary(report)]
    parts += [p for p in (suggestions(report), warnings(report)) if p is not None]
    return Group(*parts)


def _count(value: int | None) -> str:
    return "–" if value is None else str(value)


def _timeline_cells(row: TimelineRow) -> list[Any]:
    if row.error is not None:
        return [row.model, "", "", "", "", Text("could not be scanned", style="bold red")]
    style = STYLES[severity(row.dead_fraction)]
    dead = "–" if row.dead is None else f"{row.dead} / {row.units}"
    worst = "–" if row.worst_site is None else f"{row.worst_site} ({row.worst_fraction:.1%})"
    return [
        row.model,
        Text("–" if row.dead_fraction is None else f"{row.dead_fraction:.1%}", style=style),
        Text(dead, style=style),
        Text(_count(row.died), style="red" if row.died else ""),
        Text(_count(row.revived), style="green" if row.revived else ""),
        worst,
    ]


def timeline_view(rows: tuple[TimelineRow, ...]) -> Group:
    """One row per checkpoint: model dead fraction, dead units, units that died and revived
    since the checkpoint before, the worst site; notes on what could not be compared."""
    table = Table(title="[bold]Timeline[/bold]", title_justify="left", expand=False)
    table.add_column("model", no_wrap=True, overflow="fold")
    for header in ("dead%", "dead", "died", "revived"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("worst site", overflow="fold")
    for row in rows:
        table.add_row(*_timeline_cells(row))
    lines = [
        Text(
            "died / revived: units dead now and alive in the checkpoint before / the "
            "reverse, matched by site and unit.",
            style="dim",
        )
    ]
    for row in rows:
        lines += [Text.assemble((f"{row.model}: ", "bold"), note) for note in row.notes]
    return Group(table, Text("\n").join(lines))


def views(doc: Document, summary_only: bool = False) -> list[Any]:
    """The renderables of a document, models separated by a blank line; for several models
    the timeline after them (``summary_only``: the timeline alone)."""
    if summary_only and doc.timeline:
        return [timeline_view(doc.timeline)]
    out: list[Any] = []
    for i, item in enumerate(doc.items):
        if i:
            out.append(Text())
        out.append(failure_view(item) if isinstance(item, Failure) else report_view(item))
    if len(doc.timeline) > 1:
        out += [Text(), timeline_view(doc.timeline)]
    return out


def failure_view(failure: Failure) -> Text:
    """A model that could not be scanned, in its place among the reports."""
    text = Text(failure.model + "\n", style="bold")
    text.append("error: ", style="bold red")
    text.append(failure.message)
    return text


def plain_text(doc: Document, width: int = PLAIN_WIDTH) -> str:
    """The terminal view without colours, at a fixed width (``-o report.txt``)."""
    console = Console(record=True, width=width, color_system=None, file=io.StringIO())
    for part in views(doc):
        console.print(part)
    return console.export_text()
