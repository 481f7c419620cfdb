"""Terminal output: the per-site table, the summary, suggestions, warnings and progress.

The only module besides ``cli.py`` that writes to the terminal; both consoles live here.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from relu_doctor.report import ModelReport, SiteStats

_out: Console | None = None
_err: Console | None = None


def out_console() -> Console:
    global _out
    if _out is None:
        _out = Console(highlight=False)
        if not _out.is_terminal and "COLUMNS" not in os.environ:
            _out = Console(highlight=False, width=140)  # piped: don't squeeze into 80 columns
    return _out


def err_console() -> Console:
    global _err
    if _err is None:
        _err = Console(stderr=True, highlight=False)
    return _err


def severity(fraction: float | None) -> str:
    """Colour for a dead fraction: red from 50%, yellow from 10%, orange below, green at 0."""
    if fraction is None:
        return "dim"
    if fraction >= 0.5:
        return "bold red"
    if fraction >= 0.1:
        return "yellow"
    return "dark_orange" if fraction > 0 else "green"


def _num(value: float | None, fmt: str = ".3g") -> str:
    return "–" if value is None else format(value, fmt)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _site_row(s: SiteStats) -> list[Any]:
    if not s.executed:
        return [s.site, s.kind, Text("not executed", style="dim")] + [""] * 8
    style = severity(s.dead_fraction) if s.counted else "dim"
    return [
        s.site,
        s.kind,
        str(s.units),
        Text(str(s.dead), style=style),
        Text(_pct(s.dead_fraction), style=style),
        str(s.near_dead),
        str(s.dormant),
        _pct(s.sparsity),
        _num(s.max_activation),
        _num(s.dead_margin),
        _num(s.grad_norm),
    ]


def site_table(report: ModelReport) -> Table:
    """One row per site, in first-execution order; colours show severity."""
    table = Table(title=f"[bold]{report.model}[/bold]", title_justify="left", expand=False)
    table.add_column("site", no_wrap=True, overflow="fold")
    table.add_column("kind", no_wrap=True)
    for header in (
        "units",
        "dead",
        "dead%",
        "near",
        "dormant",
        "sparsity",
        "max act",
        "margin",
        "grad",
    ):
        table.add_column(header, justify="right", no_wrap=True)
    for s in report.sites:
        table.add_row(*_site_row(s))
    return table


def summary(report: ModelReport) -> Text:
    """Model dead fraction plus the honest statement of what "dead" means for this N."""
    text = Text()
    sites = len(report.counted_sites)
    if sites:
        text.append(f"{report.dead_units} of {report.total_units} ReLU units dead ", style="bold")
        text.append(f"({report.dead_fraction:.1%})", style=severity(report.dead_fraction) + " bold")
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
        f"{'' if report.grad else ', no gradients'}).\n"
    )
    n = report.min_samples or min((s.samples for s in report.sites if s.executed), default=0)
    if n:
        text.append(
            f"Dead = 0 firings in {n} samples: firing rate < 3/{n} = {3 / n:.2%} at 95% "
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


def print_reports(reports: list[ModelReport], console: Console | None = None) -> None:
    console = console or out_console()
    for i, report in enumerate(reports):
        if i:
            console.print()
        console.print(report_view(report))


def plain_table(reports: list[ModelReport]) -> str:
    """The terminal view without colours, for ``-o report.txt``."""
    console = Console(record=True, width=140, color_system=None, file=io.StringIO())
    print_reports(reports, console)
    return console.export_text()


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int | None], None]]:
    """A batch progress bar on stderr, silent when stderr is not a terminal."""
    console = err_console()
    if not console.is_terminal:
        yield lambda done, total: None
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task(label, total=None)
    with bar:
        yield lambda done, total: bar.update(task, completed=done, total=total)
