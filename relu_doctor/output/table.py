"""The terminal view of a report: the per-site table, the summary, suggestions and warnings,
as rich renderables (``cli`` prints them) or as plain fixed-width text (``-o x.txt``).

Only drawing happens here: numbers, severities and the confidence bound come from the report,
columns from the column registry.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from relu_doctor.analyze.columns import SITE_COLUMNS, Column
from relu_doctor.analyze.report import WEAK_BOUND_SAMPLES, ModelReport, SiteReport, severity
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
#: Columns never hidden, however narrow the terminal: which site, and how many units died.
_KEPT = ("site", "dead")
_IDLE = "not executed"


def _text(column: Column, site: SiteReport) -> str:
    """A cell's plain text (user strings stay text: a site named ``act[/x]`` is no markup)."""
    if not site.executed and column.name not in ("site", "kind"):
        return ""
    if not site.executed and column.name == "kind":
        return _IDLE
    return column.text(site.values)


def _style(column: Column, site: SiteReport) -> str:
    if not site.executed:
        return "dim" if column.name == "kind" else ""
    if column.severity:
        return STYLES[site.severity] if site.counted else "dim"
    return ""


@dataclass(frozen=True)
class View:
    """Which sites the table shows and in what order (files always carry every site):
    ``top`` the N with the largest dead fraction, ``unhealthy`` only sites with dead,
    near-dead or non-finite units, ``sort`` ``order`` (network), ``dead`` or ``name``."""

    top: int | None = None
    unhealthy: bool = False
    sort: str = "order"


def shown_sites(report: ModelReport, view: View) -> list[SiteReport]:
    sites = list(report.sites)
    if view.unhealthy:
        sites = [s for s in sites if s.executed and (s.dead or s.near_dead or s.nonfinite)]
    if view.top is not None:
        worst = sorted(sites, key=lambda s: (-(s.dead_fraction or 0.0), -s.dead))
        keep = {id(s) for s in worst[: view.top]}
        sites = [s for s in sites if id(s) in keep]
    if view.sort == "dead":
        sites.sort(key=lambda s: (-(s.dead_fraction or 0.0), -s.dead))
    elif view.sort == "name":
        sites.sort(key=lambda s: str(s.site))
    return sites


def _view_note(report: ModelReport, shown: int, view: View) -> Text | None:
    if shown == len(report.sites):
        return None
    why = []
    if view.unhealthy:
        why.append("only sites with dead, near-dead or non-finite units")
    if view.top is not None:
        why.append(f"the {view.top} with the largest dead fraction")
    return Text(f"showing {shown} of {len(report.sites)} sites: {'; '.join(why)}", style="dim")


def fit_columns(
    report: ModelReport, width: int | None, sites: list[SiteReport] | None = None
) -> tuple[list[Column], list[Column]]:
    """(shown, hidden) columns: at ``width`` characters the lowest-priority columns go first
    (kind, the firing glyph, near-dead, grad, margin ...); site and dead always stay."""
    shown = list(_SHOWN)
    rows = report.sites if sites is None else sites
    if width is None:
        return shown, []

    def need(cols: list[Column]) -> int:  # "│ cell " per column, then the closing "│"
        return 1 + sum(
            3 + max([len(c.header or "")] + [len(_text(c, s)) for s in rows]) for c in cols
        )

    hidden: list[Column] = []
    for column in sorted(shown, key=lambda c: c.priority):
        if need(shown) <= width:
            break
        if column.name not in _KEPT:
            shown.remove(column)
            hidden.append(column)
    for column in sorted(hidden, key=lambda c: -c.priority):  # what fits again comes back
        trial = [c for c in _SHOWN if c in shown or c is column]
        if need(trial) <= width:
            shown, hidden = trial, [c for c in hidden if c is not column]
    return shown, hidden


def site_table(
    report: ModelReport, width: int | None = None, sites: list[SiteReport] | None = None
) -> Table:
    """One row per site (``sites``: those to show), in first-execution order; colours show
    severity. With ``width``, columns that do not fit are left out (``hidden_note``)."""
    rows = report.sites if sites is None else sites
    shown, _ = fit_columns(report, width, list(rows))
    table = Table(title=Text(report.model, style="bold"), title_justify="left", expand=False)
    for column in shown:
        assert column.header is not None
        fold = column.name == "site"  # a long site name wraps, never loses characters
        table.add_column(
            column.header,
            justify=column.justify,
            no_wrap=not fold,
            overflow="fold" if fold else "ellipsis",
            min_width=len(column.header) if column.name in _KEPT else None,
        )
    for s in rows:
        table.add_row(*(Text(_text(c, s), style=_style(c, s)) for c in shown))
    return table


def hidden_note(
    report: ModelReport, width: int | None, sites: list[SiteReport] | None = None
) -> Text | None:
    """Which columns a narrow terminal hid, and how to see them."""
    _, hidden = fit_columns(report, width, sites)
    if not hidden:
        return None
    names = ", ".join(c.header or c.name for c in sorted(hidden, key=lambda c: -c.priority))
    return Text(
        f"hidden at {width} columns: {names} (widen the terminal, or -o report.csv for all)",
        style="dim",
    )


def summary(report: ModelReport) -> Text:
    """Model dead fraction plus the honest statement of what "dead" means for this N."""
    text = Text()
    sites = len(report.counted_sites)
    if sites:
        text.append(f"{report.dead_units} of {report.total_units} ReLU units dead ", style="bold")
        text.append(f"({report.dead_fraction:.1%})", style=STYLES[report.severity] + " bold")
        if report.nonfinite_units:
            text.append(f", {report.nonfinite_units} nonfinite", style="bold magenta")
        text.append(f" across {sites} site{'s' if sites != 1 else ''}")
    else:
        kinds = sorted({s.activation for s in report.sites if s.executed})
        text.append("No ReLU or ReLU6 site", style="bold")
        text.append(
            f": the {', '.join(kinds)} sites are listed for comparison ('dead' = never "
            "positive) and do not count toward a dead fraction"
        )
    text.append(
        f"; {report.samples} samples in {report.batches} "
        f"batch{'es' if report.batches != 1 else ''} ({report.mode} mode, {report.device}"
        f"{_gradients(report)}).\n"
    )
    sentence = bound_sentence(report)
    if sentence is not None:
        text.append(sentence, style="dim")
    if any(s.row().get("causes") for s in report.sites):
        text.append(f"\n{CAUSES_LEGEND}", style="dim")
    return text


def bound_sentence(report: ModelReport) -> str | None:
    """What "dead" means for this N (the rule of three), weak below ``WEAK_BOUND_SAMPLES``
    and never a rate above 100%; None without samples."""
    n, bound = report.min_samples, report.dead_bound
    if bound is None:
        return None
    if not report.bound_is_weak:
        claim = f"firing rate < 3/{n} = {bound:.2%} at 95% confidence."
    elif bound < 1:
        claim = (
            f"firing rate < 3/{n} = {bound:.0%} at 95% confidence, a weak bound below "
            f"{WEAK_BOUND_SAMPLES} samples; scan more batches."
        )
    else:
        claim = "too few to bound the firing rate; scan more batches."
    few = "only " if report.bound_is_weak else ""
    return f"Dead = 0 firings in {few}{n} sample{'s' * (n != 1)}: {claim}"


#: What the letters of the ``causes`` column stand for.
CAUSES_LEGEND = (
    "Causes: c collapsed, s starved, b bias, w weights, ? unknown (evidence per unit in the "
    "per-unit dump)."
)


def _gradients(report: ModelReport) -> str:
    """Which loss the gradients come from (``, surrogate loss``), or that there are none."""
    if not report.grad:
        return ", no gradients"
    if not report.losses:
        return ""
    names = [name.replace("_", "-") for name in report.losses]
    return f", {' and '.join(names)} loss{'es' if len(names) > 1 else ''}"


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
        grid.add_row(Text(f" • {where}:", style="bold"), Text(s.action), Text(s.reason))
    return Group(Text("Suggestions", style="bold"), grid)


def warnings(report: ModelReport) -> Text | None:
    if not report.warnings:
        return None
    text = Text()
    for w in report.warnings:
        text.append("warning: ", style="bold yellow")
        text.append(w + "\n")
    return text


def report_view(report: ModelReport, width: int | None = None, view: View = View()) -> Group:
    """Everything the terminal shows for one model, fitted to ``width`` characters."""
    sites = shown_sites(report, view)
    parts: list[Any] = [
        site_table(report, width, sites),
        _view_note(report, len(sites), view),
        hidden_note(report, width, sites),
        summary(report),
        suggestions(report),
        warnings(report),
    ]
    return Group(*(p for p in parts if p is not None))


def _count(value: int | None) -> str:
    return "–" if value is None else str(value)


def _timeline_cells(row: TimelineRow) -> list[Any]:
    if row.error is not None:
        return [Text(row.model), "", "", "", "", Text("could not be scanned", style="bold red")]
    style = STYLES[severity(row.dead_fraction)]
    dead = "–" if row.dead is None else f"{row.dead} / {row.units}"
    worst = "–" if row.worst_site is None else f"{row.worst_site} ({row.worst_fraction:.1%})"
    return [
        Text(row.model),
        Text("–" if row.dead_fraction is None else f"{row.dead_fraction:.1%}", style=style),
        Text(dead, style=style),
        Text(_count(row.died), style="red" if row.died else ""),
        Text(_count(row.revived), style="green" if row.revived else ""),
        Text(worst),
    ]


def timeline_view(rows: tuple[TimelineRow, ...]) -> Group:
    """One row per checkpoint: model dead fraction, dead units, units that died and revived
    since the checkpoint before, the worst site; notes on what could not be compared."""
    table = Table(title=Text("Timeline", style="bold"), title_justify="left", expand=False)
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


def views(
    doc: Document, width: int | None = None, view: View = View(), summary_only: bool = False
) -> list[Any]:
    """The renderables of a document, models separated by a blank line; for several models
    the timeline after them (``summary_only``: the timeline alone); a judged document
    (``check``) has each model's findings under its table and the verdict at the end."""
    if summary_only and doc.timeline:
        return [timeline_view(doc.timeline)]
    out: list[Any] = []
    for i, item in enumerate(doc.items):
        if i:
            out.append(Text())
        if isinstance(item, Failure):
            out.append(failure_view(item))
        else:
            out.append(report_view(item, width, view))
        if doc.findings is not None and not isinstance(item, Failure):
            from relu_doctor.output.verdict import findings_view

            out.append(findings_view(doc, item.model))
    if len(doc.timeline) > 1:
        out += [Text(), timeline_view(doc.timeline)]
    if doc.findings is not None:  # check: thresholds and the verdict close the output
        from relu_doctor.output.verdict import footer

        out.append(footer(doc))
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
    for part in views(doc, width):
        console.print(part)
    return "\n".join(line.rstrip() for line in console.export_text().split("\n"))
