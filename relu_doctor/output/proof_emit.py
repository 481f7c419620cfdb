"""The repair report (``Document.proof``, a ``fix.proof.FixReport``) as the terminal's
before/after table, plain text (``.txt``), JSON and Markdown. Only drawing happens here:
every number comes from the report."""

from __future__ import annotations

import io
import json
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from relu_doctor.fix.proof import TOLERANCE, FixReport, SiteProof, document
from relu_doctor.output.document import Document
from relu_doctor.output.table import PLAIN_WIDTH, report_view

HEADERS = ("site", "action", "dead", "near-dead", "pass gradient", "re-drawn firing")
_TO = {"reinit": "reinit (ReDo)", "leaky_relu": "LeakyReLU", "prelu": "PReLU", "elu": "ELU"}


def _proof(doc: Document) -> FixReport:
    report = doc.proof
    assert isinstance(report, FixReport), "a fix document carries its FixReport"
    return report


def _pair(values: tuple[int, int | None]) -> str:
    before, after = values
    return f"{before} → {'–' if after is None else after}"


def _site(p: SiteProof) -> str:
    return p.site if p.after == p.site else f"{p.site} → {p.after}"


def _firing(p: SiteProof) -> str:
    if not p.redrawn:
        return "–"
    draws = f" ({p.draws} draw{'s' * (p.draws != 1)})" if p.draws else ""
    return f"{p.firing} of {p.redrawn}{draws}"


def rows(report: FixReport) -> list[list[str]]:
    """The cells of the before/after table, one row per repaired site."""
    return [
        [_site(p), p.action, _pair(p.dead), _pair(p.near_dead), _pair(p.passing), _firing(p)]
        for p in report.sites
    ]


def lines(report: FixReport) -> list[str]:
    """The sentences under the table: model dead fraction, output change, loss, refusals,
    renamed sites and notes."""
    out = [f"Sites: {report.why}."]
    b, a = report.before, report.after
    if a is not None:
        after = f"{a.dead_fraction:.1%}" if a.total_units else "–"
        counts = f"{b.dead_units} of {b.total_units} → {a.dead_units} of {a.total_units} units"
        if report.to != "reinit":
            counts += "; swapped sites no longer count: they are listed as dead = never positive"
        out.append(f"Model dead fraction {b.dead_fraction:.1%} → {after} ({counts}).")
    cmp = report.comparison
    if cmp is not None:
        change = f"Largest output change on the scanned data: {cmp.max_change:.3g} "
        change += f"(largest output {cmp.scale:.3g})"
        if report.to == "reinit":
            same = cmp.max_change <= TOLERANCE * cmp.scale
            verdict = "the function is unchanged" if same else "the function CHANGED"
            out.append(f"{change}: {verdict} (tolerance {TOLERANCE:g} of the largest output).")
        else:
            out.append(f"{change}: a new activation computes a new function; fine-tune it.")
        if cmp.loss is not None and cmp.loss_before is not None and cmp.loss_after is not None:
            out.append(f"Loss, {cmp.loss}: {cmp.loss_before:.4g} → {cmp.loss_after:.4g}.")
    out += [f"Not changed: {site}: {reason}" for site, reason in report.refused]
    out += [f"Renamed by the rewrite: {old} → {new}" for old, new in report.renamed.items()]
    out += [f"Note: {n}" for n in report.notes]
    return out


def _title(report: FixReport) -> str:
    after = report.after.model if report.after is not None else report.model
    return f"{report.model} → {after}: {_TO.get(report.to, report.to)}"


def proof_view(report: FixReport) -> Group:
    """The terminal view: the before/after table and the sentences, or, when there was
    nothing to fix, the scan's own view and why."""
    if not report.changed:
        return Group(
            report_view(report.before), Text(report.why[:1].upper() + report.why[1:] + ".", "bold")
        )
    table = Table(title=f"[bold]{_title(report)}[/bold]", title_justify="left")
    for i, header in enumerate(HEADERS):
        table.add_column(header, justify="left" if i < 2 else "right", no_wrap=i != 1)
    for row in rows(report):
        table.add_row(*row)
    text = Text("\n").join(
        Text(line, style="yellow" if line.startswith(("Not changed", "Note")) else "")
        for line in lines(report)
    )
    return Group(table, text)


def views(doc: Document) -> list[Any]:
    return [proof_view(_proof(doc))]


def text(doc: Document) -> str:
    """The terminal view without colours, at a fixed width (``--report fix.txt``)."""
    console = Console(record=True, width=PLAIN_WIDTH, color_system=None, file=io.StringIO())
    console.print(proof_view(_proof(doc)))
    return "\n".join(line.rstrip() for line in console.export_text().split("\n"))


def json_text(doc: Document) -> str:
    """``{"tool", "version", "fix": {...}, "models": [before, after]}``."""
    return json.dumps(document(_proof(doc)), indent=2, allow_nan=False) + "\n"


def markdown(doc: Document) -> str:
    from relu_doctor.output.markdown import table

    report = _proof(doc)
    if not report.changed:
        return f"**{report.model}**: {report.why}\n"
    out = [f"**{_title(report)}**", ""]
    out += table(list(HEADERS), rows(report))
    out += [""] + [f"- {line}" for line in lines(report)]
    return "\n".join(out) + "\n"
