"""Advice: what to do about the dead units a scan found. Suggestions are pure functions of
the report's numbers, each with its reason."""

from __future__ import annotations

import numpy as np

from relu_doctor.analyze.report import SiteReport, Suggestion

#: A margin deeper than this share of the live units' typical peak counts as "far below zero".
SHALLOW_MARGIN = 0.5

_LEAKY = (
    "{share} but sit just below zero (median margin {margin:.3g}, live units peak near "
    "{scale:.3g}): LeakyReLU(0.01) passes them a gradient so they can recover"
)
_REINIT = (
    "{share} and sit far below zero (median margin {margin:.3g}, {where}): a leaky slope "
    "would pass only ~1% of the gradient; re-initialise their incoming weights and zero "
    "their outgoing weights (ReDo)"
)
_PRELU = (
    "{fraction:.0%} of the layer is dead: PReLU learns a negative slope per channel and keeps "
    "every unit trainable"
)
_ELU = (
    "{fraction:.0%} of all ReLU units are dead across {sites} sites: ELU has a smooth "
    "negative side that never stops the gradient; also check the learning rate and "
    "initialisation, the usual causes of mass dying"
)


def _live_scale(site: SiteReport) -> float | None:
    """Median peak pre-activation of the units that fire: the layer's working scale."""
    u = site.totals
    if u is None:
        return None
    live = u.max_pre[(u.fires > 0) & np.isfinite(u.max_pre)]
    return float(np.median(live)) if live.size else None


def _site_suggestions(site: SiteReport) -> list[Suggestion]:
    if not site.counted or not site.dead or site.dead_margin is None:
        return []
    share = f"{site.dead} of {site.units} units never fire"
    margin, scale = site.dead_margin, _live_scale(site)
    if scale is not None and margin > -SHALLOW_MARGIN * scale:
        text = _LEAKY.format(share=share, margin=margin, scale=scale)
        out = [Suggestion(site.site, "leaky_relu", text)]
    else:
        where = f"live units peak near {scale:.3g}" if scale is not None else "no unit fires"
        text = _REINIT.format(share=share, margin=margin, where=where)
        out = [Suggestion(site.site, "reinit", text)]
    if site.dead_fraction is not None and site.dead_fraction >= 0.5:
        out.append(Suggestion(site.site, "prelu", _PRELU.format(fraction=site.dead_fraction)))
    return out


def suggest(sites: tuple[SiteReport, ...], dead_fraction: float) -> list[Suggestion]:
    """Suggestions for every site with dead units, then one for the whole model."""
    out = [s for site in sites for s in _site_suggestions(site)]
    dying = [s for s in sites if s.counted and s.dead]
    if dead_fraction >= 0.2 and len(dying) > 1:
        text = _ELU.format(fraction=dead_fraction, sites=len(dying))
        out.append(Suggestion("*", "elu", text))
    return out
