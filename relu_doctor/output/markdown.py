"""GitHub-flavoured Markdown: a summary line and a table per model (and a timeline for several);
the per-unit dump."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from relu_doctor.analyze.columns import SITE_COLUMNS
from relu_doctor.output.document import Document, Failure


def cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def table(header: list[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def sites(doc: Document) -> str:
    cols = list(SITE_COLUMNS)
    out = []
    for r in doc.items:
        if isinstance(r, Failure):
            out += [f"**{r.model}**: error: {r.message}", ""]
            continue
        out.append(
            f"**{r.model}**: {r.dead_units} of {r.total_units} ReLU units dead "
            f"({r.dead_fraction:.1%}) in {r.samples} samples\n"
        )
        out += table(cols, ([s.row()[c] for c in cols] for s in r.sites))
        out.append("")
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
