"""Timelines: several checkpoints of one run, compared one after the other.

Per site and checkpoint, ``died`` counts the units that are dead in this checkpoint and were
alive in the previous one, ``revived`` the reverse, matched by site name and unit index
(docs/metrics.md, "Timelines"). The first checkpoint has nothing to compare with: both are
empty. A site that is new, gone, or changed its unit count between two checkpoints (the
architecture changed) gets empty died/revived and a warning, never an error. A checkpoint
that could not be scanned is stepped over: the next one is compared with the last one that
was scanned, and both its row and its warnings say so.

Only the dead masks of the previous checkpoint are kept while walking the list (O(units)).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from relu_doctor.analyze.metrics import unit_metrics
from relu_doctor.analyze.report import ModelReport, SiteReport

_DIGITS = re.compile(r"([0-9]+)")
_SEPARATORS = re.compile(r"[/\\]+")


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key for checkpoint names as people mean them: numbers by value (``epoch2`` before
    ``epoch10``), letters without regard to case, paths folder by folder (``run2/x`` before
    ``run10/x``); the name itself breaks ties, so the order is total and repeatable."""
    parts = tuple(
        tuple(
            (0, int(chunk), "") if chunk.isdigit() else (1, 0, chunk.casefold())
            for chunk in _DIGITS.split(part)
            if chunk
        )
        for part in _SEPARATORS.split(name)
    )
    return (parts, name)


def natural_sorted(names: Sequence[str]) -> list[str]:
    """``names`` in natural order (see ``natural_key``)."""
    return sorted(names, key=natural_key)


@dataclass(frozen=True)
class TimelineRow:
    """One checkpoint of a timeline: model totals, changes against ``previous``, the worst
    site; ``error`` for a checkpoint that could not be scanned; ``notes`` say what could not
    be compared (architecture changes, a checkpoint stepped over)."""

    model: str
    previous: str | None = None
    dead_fraction: float | None = None
    dead: int | None = None
    units: int | None = None
    died: int | None = None
    revived: int | None = None
    worst_site: str | None = None
    worst_fraction: float | None = None
    error: str | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "previous": self.previous,
            "dead_fraction": self.dead_fraction,
            "dead_units": self.dead,
            "units": self.units,
            "died": self.died,
            "revived": self.revived,
            "worst_site": self.worst_site,
            "worst_dead_fraction": self.worst_fraction,
            "error": self.error,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Timeline:
    """The checkpoints with died/revived on every site row, and one row per checkpoint."""

    items: tuple[Any, ...]  # ModelReport | output.document.Failure, in order
    rows: tuple[TimelineRow, ...]


def dead_masks(report: ModelReport) -> dict[str, np.ndarray]:
    """Per executed site, which units are dead (the definition of ``unit_metrics``)."""
    return {
        s.site: unit_metrics(s.totals, s.activation, s.thresholds).dead
        for s in report.sites
        if s.executed and s.totals is not None
    }


Changes = dict[str, tuple[int | None, int | None]]


def compare(
    before: dict[str, np.ndarray], after: dict[str, np.ndarray], previous: str
) -> tuple[Changes, list[str]]:
    """died/revived per site of ``after`` against ``before`` and a note on every site that
    cannot be compared (``previous`` names the earlier checkpoint in the note)."""
    changes: Changes = {}
    new, resized = [], []
    for site, now in after.items():
        then = before.get(site)
        if then is None:
            new.append(site)
        elif then.shape != now.shape:
            resized.append(f"{site} ({then.shape[0]} -> {now.shape[0]} units)")
        else:
            changes[site] = (int((now & ~then).sum()), int((then & ~now).sum()))
            continue
        changes[site] = (None, None)
    gone = [site for site in before if site not in after]
    parts = []
    if new:
        parts.append(f"new sites: {', '.join(new)}")
    if gone:
        parts.append(f"sites gone or not run: {', '.join(gone)}")
    if resized:
        parts.append(f"unit counts changed: {', '.join(resized)}")
    if not parts:
        return changes, []
    empty = " (died/revived are empty for them)" if new or resized else ""
    return changes, [f"architecture changed since {previous}: {'; '.join(parts)}{empty}"]


def _worst(report: ModelReport) -> tuple[str | None, float | None]:
    counted = report.counted_sites
    if not counted:
        return None, None
    worst = max(counted, key=lambda s: s.dead_fraction)  # first of equals: max keeps it
    return worst.site, worst.dead_fraction


def _annotate(report: ModelReport, changes: Changes, notes: list[str]) -> ModelReport:
    sites: list[SiteReport] = []
    for s in report.sites:
        died, revived = changes.get(s.site, (None, None))
        sites.append(s.with_extras(died=died, revived=revived))
    return replace(report, sites=tuple(sites), warnings=(*report.warnings, *notes))


def _sum(values: list[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def build_timeline(items: Sequence[Any]) -> Timeline:
    """Compare each scanned checkpoint with the last one scanned before it (items are
    ``ModelReport`` or ``Failure``, in the order to compare)."""
    out: list[Any] = []
    rows: list[TimelineRow] = []
    previous: tuple[str, dict[str, np.ndarray]] | None = None
    skipped: list[str] = []
    for item in items:
        if not isinstance(item, ModelReport):  # a Failure: say it, compare across it
            out.append(item)
            rows.append(TimelineRow(item.model, error=item.message))
            skipped.append(item.model)
            continue
        masks = dead_masks(item)
        changes: Changes = {}
        notes: list[str] = []
        if previous is not None:
            changes, notes = compare(previous[1], masks, previous[0])
            if skipped:
                notes.insert(
                    0,
                    f"compared with {previous[0]}: {', '.join(skipped)} could not be scanned",
                )
        report = _annotate(item, changes, notes)
        counted = {s.site for s in report.counted_sites}
        worst, worst_fraction = _worst(report)
        rows.append(
            TimelineRow(
                report.model,
                previous[0] if previous is not None else None,
                report.dead_fraction if counted else None,
                report.dead_units if counted else None,
                report.total_units if counted else None,
                _sum([changes[s][0] for s in counted if s in changes]),
                _sum([changes[s][1] for s in counted if s in changes]),
                worst,
                worst_fraction,
                notes=tuple(notes),
            )
        )
        out.append(report)
        previous, skipped = (report.model, masks), []
    return Timeline(tuple(out), tuple(rows))
