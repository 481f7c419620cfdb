"""Reports as CSV, JSON and Markdown text, and atomic file writes."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from relu_doctor.errors import UsageError
from relu_doctor.report import EXTRA_COLUMNS, SITE_COLUMNS, ModelReport, reports_to_dict

FORMATS = ("table", "csv", "json", "markdown")
_EXTENSIONS = {
    ".csv": "csv",
    ".json": "json",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "table",
}


def format_for_path(
    path: str, option: str = "-o", allowed: tuple[str, ...] = (".csv", ".json", ".md", ".txt")
) -> str:
    """The output format a file name asks for (``report.json`` -> ``json``)."""
    suffix = Path(path).suffix.lower()
    fmt = _EXTENSIONS.get(suffix)
    if fmt is None or suffix not in (*allowed, ".markdown"):
        hint = ", or pass --format" if option == "-o" else ""
        raise UsageError(
            f"{option} {path}: cannot tell the format from the extension; "
            f"use {', '.join(allowed)}{hint}"
        )
    return fmt


def check_writable(path: str) -> None:
    """Fail before scanning when an output file could not be written."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"cannot write {path}: folder {str(folder)!r} does not exist")
    if target.is_dir():
        raise UsageError(f"cannot write {path}: it is a directory")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write {path}: folder {str(folder)!r} is not writable")


def write_atomic(path: str, text: str) -> None:
    """Write via a temporary file and rename, so a failure never leaves half a report."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or Path("."))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sites_csv(reports: list[ModelReport]) -> str:
    import pandas as pd

    frames = [r.to_frame() for r in reports]
    return pd.concat(frames, ignore_index=True).to_csv(index=False)


def sites_json(reports: list[ModelReport]) -> str:
    return json.dumps(reports_to_dict(reports), indent=2, allow_nan=False) + "\n"


def _md_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def sites_markdown(reports: list[ModelReport]) -> str:
    """A GitHub-flavoured Markdown table per model with a summary line above it."""
    cols = list(SITE_COLUMNS + EXTRA_COLUMNS)
    out = []
    for r in reports:
        out.append(
            f"**{r.model}**: {r.dead_units} of {r.total_units} ReLU units dead "
            f"({r.dead_fraction:.1%}) in {r.samples} samples\n"
        )
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "---|" * len(cols))
        for s in r.sites:
            row = s.row()
            out.append("| " + " | ".join(_md_cell(row[c]) for c in cols) + " |")
        out.append("")
    return "\n".join(out)


def units_text(reports: list[ModelReport], fmt: str) -> str:
    """The per-unit dump (one row per unit) as CSV, JSON or Markdown."""
    import pandas as pd

    frame = pd.concat([r.units_frame() for r in reports], ignore_index=True)
    if fmt == "json":
        records = json.loads(frame.to_json(orient="records"))
        return json.dumps({"units": records}, indent=1) + "\n"
    if fmt == "markdown":
        cols = list(frame.columns)
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += [
            "| " + " | ".join(_md_cell(v) for v in rec) + " |"
            for rec in frame.itertuples(index=False)
        ]
        return "\n".join(lines) + "\n"
    return frame.to_csv(index=False)


def report_text(reports: list[ModelReport], fmt: str) -> str:
    """CSV, JSON or Markdown text of the per-site report."""
    if fmt == "csv":
        return sites_csv(reports)
    if fmt == "json":
        return sites_json(reports)
    if fmt == "markdown":
        return sites_markdown(reports)
    raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
