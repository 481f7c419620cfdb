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
    """The sites the health gate (``relu_doctor.check``, rules RD101 dead site and RD102
    dead model, default thresholds) flags, and a sentence saying why (or why none)."""
    from relu_doctor.gate.judge import check

    findings = check(report, select=["RD101", "RD102"])
    dying = [s for s in report.counted_sites if s.dead]
    model = next((f for f in findings if f.rule == "RD102"), None)
    if model is not None and model.value is not None and model.threshold is not None:
        return dying, f"the model is {model.value:.1%} dead (limit {model.threshold:.0%})"
    over = {f.site for f in findings if f.rule == "RD101"}
    if over:
        sites = [s for s in dying if s.site in over]
        limit = next(f.threshold for f in findings if f.rule == "RD101")
        names = ", ".join(s.site for s in sites)
        return sites, f"more than {limit:.0%} of {names} is dead"
    return [], (
        f"nothing to fix: {report.dead_units} of {report.total_units} ReLU units dead "
        f"({report.dead_fraction:.1%}, limit {MAX_DEAD:.0%}) and no site more than "
        f"{MAX_LAYER_DEAD:.0%} dead"
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
