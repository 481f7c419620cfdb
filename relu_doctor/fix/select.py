"""Which sites a repair touches: the ones named, ``all``, or by default the sites the health
gate would flag.

The default lives in one function, ``flagged``: until ``relu_doctor.check`` lands it applies
the gate's two default limits itself (a site more than 50% dead, or a model more than 10%
dead); then it becomes a call of ``check(report)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from relu_doctor.analyze.report import ModelReport, SiteReport
from relu_doctor.errors import UsageError, param

#: The gate's default limits (``check``'s ``max_dead`` and ``max_layer_dead``).
MAX_DEAD, MAX_LAYER_DEAD = 0.10, 0.50


@dataclass(frozen=True)
class Selection:
    """The sites to repair, the named ones that cannot be (site, reason), and why these."""

    sites: tuple[SiteReport, ...]
    skipped: tuple[tuple[str, str], ...]
    why: str


def flagged(report: ModelReport) -> tuple[list[SiteReport], str]:
    """The sites the health gate flags, and a sentence saying why (or why none).

    TODO(check): the one place to switch to ``relu_doctor.check.gate.check(report)`` when
    it lands: the sites of its findings that have dead units.
    """
    dying = [s for s in report.counted_sites if s.dead]
    over = [s for s in dying if s.dead_fraction > MAX_LAYER_DEAD]
    model = report.dead_fraction
    if model > MAX_DEAD:
        return dying, f"the model is {model:.1%} dead (limit {MAX_DEAD:.0%})"
    if over:
        names = ", ".join(s.site for s in over)
        return over, f"more than {MAX_LAYER_DEAD:.0%} of {names} is dead"
    return [], (
        f"nothing to fix: {report.dead_units} of {report.total_units} ReLU units dead "
        f"({model:.1%}, limit {MAX_DEAD:.0%}) and no site more than {MAX_LAYER_DEAD:.0%} dead"
    )


def _names(sites: str | Iterable[str]) -> list[str]:
    items = sites.split(",") if isinstance(sites, str) else list(sites)
    names = [str(n).strip() for n in items if str(n).strip()]
    if not names:
        raise UsageError(
            f"{param('sites')} is empty; name sites (comma-separated) or pass 'all'",
            param="sites",
        )
    return names


def select(report: ModelReport, sites: str | Iterable[str] | None) -> Selection:
    """``None``: the flagged sites; ``"all"``: every ReLU and ReLU6 site that ran; else the
    named sites (an unknown name is an error that lists the known ones)."""
    if sites is None:
        chosen, why = flagged(report)
        return Selection(tuple(chosen), (), why)
    if isinstance(sites, str) and sites.strip() == "all":
        return Selection(report.counted_sites, (), "all sites")
    names = list(dict.fromkeys(_names(sites)))
    known = {s.site: s for s in report.sites}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(
            f"{param('sites')}: no site {', '.join(map(repr, unknown))} in {report.model}; "
            f"its sites: {', '.join(known)} (or 'all')",
            param="sites",
        )
    chosen, skipped = [], []
    for name in names:
        site = known[name]
        if not site.executed:
            skipped.append((name, "never ran during the scan: nothing was measured"))
        elif not site.act.relu_family:
            kind = site.act.name
            skipped.append((name, f"is a {kind} site: only ReLU and ReLU6 sites are repaired"))
        else:
            chosen.append(site)
    return Selection(tuple(chosen), tuple(skipped), "the sites named")
