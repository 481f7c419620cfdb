"""Advice: what to do about the dead units a scan found. Suggestions are pure functions of the
report's evidence (how far below zero the dead units sit, how much of a layer is dead, why
they died), ranked by how many dead units each addresses, each with its reason in numbers.
docs/metrics.md "What to do about it" lists the rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from relu_doctor.analyze.causes import UnitCauses
from relu_doctor.analyze.report import ModelReport, SiteReport, Suggestion

#: Dead units whose median margin is above -SHALLOW x the live units' peak sit just below zero.
SHALLOW_MARGIN = 0.5
#: ... and below -DEEP x the live units' peak, far below it; in between the margin is moderate.
DEEP_MARGIN = 2.0
#: A layer with at least this share dead is "much of a layer".
MUCH_DEAD = 0.25
#: A model with at least this share of its ReLU units dead has widespread death ...
WIDESPREAD = 0.10
#: ... which is bias-driven when at least this share of its dead units died of their bias.
BIAS_DRIVEN = 0.5

_REDO = "re-initialise their incoming weights and zero their outgoing weights (ReDo)"


@dataclass(frozen=True)
class _Ranked:
    units: int  # dead units the suggestion addresses
    order: int  # the site's place in the report
    suggestion: Suggestion


@dataclass(frozen=True)
class _Margin:
    """Where the dead units that neither collapsed nor starved sit."""

    units: int
    median: float
    scale: float | None  # the live units' median peak pre-activation

    @property
    def depth(self) -> float | None:
        """-median / scale: 0.5 is half the live units' typical peak below zero."""
        return -self.median / self.scale if self.scale else None

    def words(self) -> str:
        if self.scale is None:
            return f"median margin {self.median:.3g}; no unit of the layer fires"
        return f"median margin {self.median:.3g}, live units peak near {self.scale:.3g}"


def _live_scale(site: SiteReport) -> float | None:
    """Median peak pre-activation of the units that fire: the layer's working scale."""
    u = site.totals
    if u is None:
        return None
    live = u.max_pre[(u.fires > 0) & np.isfinite(u.max_pre)]
    scale = float(np.median(live)) if live.size else None
    return scale if scale is not None and scale > 0 else None


def _causes(site: SiteReport) -> UnitCauses | None:
    found = site.extras.get("causes")
    return found if isinstance(found, UnitCauses) else None


_COLLAPSED = (
    "have collapsed incoming weights (|w| <= 1e-6 x the layer median), which no activation "
    "slope can move"
)


def _site_suggestions(site: SiteReport, order: int) -> list[_Ranked]:
    """A site's own suggestions: starved units point upstream, collapsed ones need ReDo, the
    rest go by how far below zero they sit and how much of the layer is dead."""
    u = site.totals
    if not site.counted or not site.dead or u is None:
        return []
    causes = _causes(site)
    cause = causes.cause if causes is not None else np.full(u.units, None, dtype=object)
    collapsed = int((cause == "collapsed").sum())
    starved = int((cause == "starved").sum())
    rest = (u.fires == 0) & (cause != "collapsed") & (cause != "starved") & np.isfinite(u.max_pre)
    out: list[_Ranked] = []
    if starved and causes is not None and causes.upstream:
        up = causes.upstream
        text = (
            f"{starved} of {site.dead} dead units are starved: every input they read with a "
            f"non-zero weight is a dead unit of {up}; fix {up} first and they can fire again"
        )
        out.append(_Ranked(starved, order, Suggestion(site.site, "upstream", text)))
    redo: list[tuple[int, str]] = [(collapsed, _COLLAPSED)] if collapsed else []
    if rest.any():
        margin = _Margin(int(rest.sum()), float(np.median(u.max_pre[rest])), _live_scale(site))
        action, text = _by_margin(site, margin)
        if action == "reinit":
            redo.append((margin.units, text))
        else:
            out.append(_Ranked(margin.units, order, Suggestion(site.site, action, text)))
    if redo:
        out.append(_redo(site, redo, order))
    return out


def _by_margin(site: SiteReport, margin: _Margin) -> tuple[str, str]:
    """(action, reason) for dead units by their margin: a leaky slope when shallow, PReLU when
    moderate and much of the layer is dead, else ReDo (the reason is then a verb phrase)."""
    depth, fraction = margin.depth, site.dead_fraction or 0.0
    if depth is not None and depth < SHALLOW_MARGIN:
        return "leaky_relu", (
            f"{margin.units} of {site.units} units never fire but sit just below zero "
            f"({margin.words()}): LeakyReLU(0.01) passes them a gradient so they can recover"
        )
    if depth is not None and depth < DEEP_MARGIN and fraction >= MUCH_DEAD:
        return "prelu", (
            f"{fraction:.0%} of the layer is dead ({site.dead} of {site.units}) at moderate "
            f"margins ({margin.words()}): PReLU learns a negative slope per channel (ELU's "
            "smooth negative side also keeps the gradient flowing)"
        )
    if depth is None:
        return "reinit", f"sit below zero ({margin.words()})"
    if depth >= DEEP_MARGIN:
        return "reinit", (
            f"sit far below zero ({margin.words()}), where a 0.01 slope passes ~1% of the gradient"
        )
    return "reinit", f"sit below zero ({margin.words()}, only {fraction:.0%} of the layer dead)"


def _redo(site: SiteReport, parts: list[tuple[int, str]], order: int) -> _Ranked:
    """One ReDo suggestion for every group of units that needs it (count, verb phrase)."""
    units = sum(n for n, _ in parts)
    if len(parts) == 1:
        why = f"{units} of {site.units} units never fire and {parts[0][1]}"
    else:
        each = "; ".join(f"{n} {_singular(p) if n == 1 else p}" for n, p in parts)
        why = f"{units} of {site.units} units never fire: {each}"
    return _Ranked(units, order, Suggestion(site.site, "reinit", f"{why}: {_REDO}"))


def _singular(phrase: str) -> str:
    """``have ...`` -> ``has ...``, ``sit ...`` -> ``sits ...``."""
    verb, _, rest = phrase.partition(" ")
    return f"{'has' if verb == 'have' else verb + 's'} {rest}"


def _bias_driven(report: ModelReport) -> _Ranked | None:
    """Widespread death where the bias did most of the killing: the training, not one layer."""
    sites = [s for s in report.counted_sites if s.dead and _causes(s) is not None]
    dead = report.dead_units
    bias = sum(int((c.cause == "bias").sum()) for s in sites if (c := _causes(s)) is not None)
    if report.dead_fraction < WIDESPREAD or not dead or bias < BIAS_DRIVEN * dead:
        return None
    dying = [s for s in sites if (c := _causes(s)) is not None and (c.cause == "bias").any()]
    bare = [s.site for s in dying if s.topology is None or s.topology.norm is None]
    text = (
        f"{bias} of {dead} dead units ({bias / dead:.0%}) across {len(dying)} "
        f"site{'s' * (len(dying) != 1)} died of their bias: w·x was positive but b held z below "
        f"zero. {report.dead_fraction:.0%} of all ReLU units are dead; large updates drive "
        "biases down: lower the learning rate"
    )
    if bare:
        shown = ", ".join(bare[:4]) + (", ..." if len(bare) > 4 else "")
        text += f", or add a normalisation layer before the ReLU at {shown}"
    else:
        text += "; the layers already have BatchNorm: check its shift (beta) and weight decay"
    return _Ranked(bias, -1, Suggestion("*", "lower_lr", text))


def _healthy(report: ModelReport) -> Suggestion:
    sites = len(report.counted_sites)
    near = sum(s.near_dead for s in report.counted_sites)
    text = (
        f"no ReLU unit is dead in {report.min_samples} samples across {sites} "
        f"site{'s' * (sites != 1)}: nothing to do"
    )
    if near:
        text += (
            f" ({near} units fire on fewer than {report.thresholds.near_dead:.0%} of the samples; "
            "more data tells whether they are alive)"
        )
    return Suggestion("*", "none", text)


def suggest(report: ModelReport) -> list[Suggestion]:
    """Every suggestion for ``report``, the one that addresses the most dead units first;
    "nothing to do" for a model without dead units."""
    if report.counted_sites and not report.dead_units:
        return [_healthy(report)]
    ranked = [r for i, s in enumerate(report.sites) for r in _site_suggestions(s, i)]
    model_wide = _bias_driven(report)
    if model_wide is not None:
        ranked.append(model_wide)
    ranked.sort(key=lambda r: (-r.units, r.order))
    return [r.suggestion for r in ranked]
