"""GitHub-flavoured Markdown, the job-summary format: per model a heading, the summary, the
per-site table (no model column), suggestions and warnings, and a timeline for several
models; and the per-unit dump."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from relu_doctor.analyze.columns import exported_columns
from relu_doctor.analyze.report import ModelReport
from relu_doctor.output.document import Document, Failure


def cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def summary(r: ModelReport) -> str:
    """The summary line, with the honest bound of what "dead" means for this N."""
    from relu_doctor.output.table import bound_sentence

    nonfinite = f", {r.nonfinite_units} nonfinite" if r.nonfinite_units else ""
    text = (
        f"{r.dead_units} of {r.total_units} ReLU units dead ({r.dead_fraction:.1%}){nonfinite} "
        f"across {len(r.counted_sites)} site{'s' * (len(r.counted_sites) != 1)}; "
        f"{r.samples} samples in {r.batches} batch{'es' * (r.batches != 1)} "
        f"({r.mode} mode, {r.device})."
    )
    bound = bound_sentence(r)
    return text if bound is None else f"{text} {bound}"


def model_section(r: ModelReport) -> list[str]:
    cols = [c for c in exported_columns() if c != "model"]
    out = [f"### {cell(r.model)}", "", summary(r), ""]
    out += table(cols, ([s.row()[c] for c in cols] for s in r.sites))
    if r.suggestions:
        out += ["", "**Suggestions**", ""]
        out += [
            f"- `{'whole model' if s.site == '*' else s.site}`: **{s.action}**: {cell(s.reason)}"
            for s in r.suggestions
        ]
    if r.warnings:
        out += ["", "**Warnings**", ""]
        out += [f"- {cell(w)}" for w in r.warnings]
    return [*out, ""]


def sites(doc: Document) -> str:
    """Per model a heading, the summary, the site table, suggestions and warnings; a judged
    document (``check``) gets the job summary of ``check_emit.markdown`` instead."""
    if doc.findings is not None:
        from relu_doctor.output.check_emit import markdown

        return markdown(doc)
    out = []
    for r in doc.items:
        if isinstance(r, Failure):
            out += [f"### {cell(r.model)}", "", f"**error**: {cell(r.message)}", ""]
        else:
            out += model_section(r)
    if len(doc.timeline) > 1:
        out += ["**Timeline**", ""]
        out += table(
            ["model", "dead_fraction", "dead", "died", "revived", "worst_site", "note"],
            (
                [
                    row.model,
                    row.dead_fraction,
                    row.dead,
                    row.died,
                    row.revived,
                    row.worst_site,
                    f"error: {row.error}" if row.error else "; ".join(row.notes),
                ]
                for row in doc.timeline
            ),
        )
        out.append("")
    return "\n".join(out)


def units(doc: Document) -> str:
    import pandas as pd

    frame = pd.concat([r.units_frame() for r in doc.reports], ignore_index=True)
    return "\n".join(table(list(frame.columns), frame.itertuples(index=False))) + "\n"
