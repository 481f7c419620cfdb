"""Scan results as frozen data: one ``SiteReport`` per site, one ``ModelReport`` per model.

A report holds data only: the numbers come from the column registry (``columns.py``), the
severity and the confidence bound are computed here, and writing or drawing is left to
``output/``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relu_doctor import __version__
from relu_doctor.activations import Activation
from relu_doctor.analyze.columns import (
    SITE_COLUMNS,
    UNIT_COLUMNS,
    SiteFacts,
    UnitFacts,
    site_values,
)
from relu_doctor.analyze.metrics import Thresholds, unit_metrics
from relu_doctor.scanner.accumulate import UnitTotals
from relu_doctor.scanner.topology import SiteTopology

if TYPE_CHECKING:
    import pandas as pd

#: Dead-fraction cut-offs of the severities (a site's or the model's dead fraction).
SEVERITY_CUTOFFS = (("high", 0.5), ("medium", 0.1), ("low", 0.0))


def severity(fraction: float | None) -> str:
    """``high`` from 50% dead, ``medium`` from 10%, ``low`` above 0, ``none`` at 0, and
    ``n/a`` when there is no fraction (a site that never ran)."""
    if fraction is None:
        return "n/a"
    for name, cut in SEVERITY_CUTOFFS:
        if fraction >= cut and (fraction > 0 or cut > 0):
            return name
    return "none"


@dataclass(frozen=True)
class SiteReport:
    """One row of the report: a call site and its numbers. Every registered column is an
    attribute (``site.dead``, ``site.dead_fraction``); ``totals`` are the raw per-unit
    totals (mergeable), ``topology`` the producing and consuming layers."""

    values: Mapping[str, Any]
    activation: Activation
    totals: UnitTotals | None = field(default=None, repr=False)
    topology: SiteTopology | None = None
    thresholds: Thresholds = field(default_factory=Thresholds, repr=False)
    extras: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values")
        if values is not None and name in values:
            return values[name]
        raise AttributeError(f"SiteReport has no attribute {name!r}")

    @staticmethod
    def from_totals(
        totals: UnitTotals | None,
        activation: Activation,
        *,
        model: str,
        site: str,
        kind: str,
        thresholds: Thresholds | None = None,
        unit_dim: int | None = None,
        topology: SiteTopology | None = None,
        extras: Mapping[str, Any] | None = None,
    ) -> SiteReport:
        """The row of a site from its totals: e.g. totals merged from several processes
        (``totals=None``: an activation module that never ran)."""
        th = thresholds or Thresholds()
        metrics = unit_metrics(totals, activation, th) if totals is not None else None
        extras = dict(extras or {})
        facts = SiteFacts(
            model, site, kind, activation, unit_dim, totals is not None, totals, metrics, extras
        )
        return SiteReport(site_values(facts), activation, totals, topology, th, extras)

    def with_extras(self, **extras: Any) -> SiteReport:
        """This row with more analysis results attached (a timeline's ``died``/``revived``),
        its columns recomputed through the registry."""
        return SiteReport.from_totals(
            self.totals,
            self.activation,
            model=self.model,
            site=self.site,
            kind=self.kind,
            thresholds=self.thresholds,
            unit_dim=self.unit_dim,
            topology=self.topology,
            extras={**self.extras, **extras},
        )

    def row(self) -> dict[str, Any]:
        """The columns of this site, in output order."""
        return dict(self.values)

    @property
    def severity(self) -> str:
        """How bad this site is (``none``...``high``; ``n/a`` when not counted)."""
        return severity(self.dead_fraction) if self.counted else "n/a"

    def unit_rows(self) -> dict[str, Any] | None:
        """Per-unit columns of this site (None for a site that never ran)."""
        if self.totals is None:
            return None
        m = unit_metrics(self.totals, self.activation, self.thresholds)
        facts = UnitFacts(self.model, self.site, self.totals, m, self.extras)
        return {name: col.compute(facts) for name, col in UNIT_COLUMNS.items()}


@dataclass(frozen=True)
class ParamGrad:
    """Mean L2 norm over batches of one parameter's loss gradient."""

    name: str
    shape: tuple[int, ...]
    grad_norm: float | None


@dataclass(frozen=True)
class Suggestion:
    """A repair idea for one site (or ``*`` for the whole model) and why."""

    site: str
    action: str
    reason: str


@dataclass(frozen=True)
class ModelReport:
    """Everything one scan of one model found."""

    model: str
    samples: int
    batches: int
    sites: tuple[SiteReport, ...]
    params: tuple[ParamGrad, ...] = ()
    suggestions: tuple[Suggestion, ...] = ()
    warnings: tuple[str, ...] = ()
    thresholds: Thresholds = field(default_factory=Thresholds)
    grad: bool = True
    mode: str = "eval"
    device: str = "cpu"
    runtime: str = "eager"
    losses: tuple[str, ...] = ()

    @property
    def counted_sites(self) -> tuple[SiteReport, ...]:
        """Sites that count toward the model dead fraction (executed ReLU / ReLU6)."""
        return tuple(s for s in self.sites if s.counted)

    @property
    def dead_units(self) -> int:
        return sum(s.dead for s in self.counted_sites)

    @property
    def total_units(self) -> int:
        return sum(s.units for s in self.counted_sites)

    @property
    def dead_fraction(self) -> float:
        """Dead units / all units over every ReLU-family site."""
        total = self.total_units
        return self.dead_units / total if total else 0.0

    @property
    def severity(self) -> str:
        return severity(self.dead_fraction) if self.counted_sites else "n/a"

    @property
    def min_samples(self) -> int:
        """Samples behind the weakest site (the honest N for "no firing"): counted sites
        first, else any site that ran."""
        counted = [s.samples for s in self.counted_sites]
        ran = [s.samples for s in self.sites if s.executed]
        return min(counted or ran or [0])

    @property
    def dead_bound(self) -> float | None:
        """With N samples and no firing, the true firing rate is below 3/N at 95%
        confidence (the rule of three); None without samples."""
        n = self.min_samples
        return 3 / n if n else None

    def site(self, name: str) -> SiteReport:
        """The site called ``name``; KeyError listing the names otherwise."""
        for s in self.sites:
            if s.site == name:
                return s
        raise KeyError(f"no site {name!r}; sites: {', '.join(s.site for s in self.sites)}")

    def to_frame(self) -> pd.DataFrame:
        """One row per site, in the column registry's order."""
        import pandas as pd

        return pd.DataFrame([s.row() for s in self.sites], columns=list(SITE_COLUMNS))

    def units_frame(self) -> pd.DataFrame:
        """One row per unit of every executed site (the per-unit dump)."""
        import pandas as pd

        frames = [pd.DataFrame(rows) for s in self.sites if (rows := s.unit_rows()) is not None]
        if not frames:
            return pd.DataFrame(columns=list(UNIT_COLUMNS))
        return pd.concat(frames, ignore_index=True)[list(UNIT_COLUMNS)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of this model (one entry of the ``models`` list)."""
        th = self.thresholds
        return clean(
            {
                "model": self.model,
                "samples": self.samples,
                "batches": self.batches,
                "dead_fraction": self.dead_fraction,
                "dead_units": self.dead_units,
                "units": self.total_units,
                "source": self.runtime,
                "mode": self.mode,
                "device": self.device,
                "grad": self.grad,
                "thresholds": {"eps": th.eps, "near_dead": th.near_dead, "tau": th.tau},
                "sites": [s.row() for s in self.sites],
                "params": [
                    {"name": p.name, "shape": list(p.shape), "grad_norm": p.grad_norm}
                    for p in self.params
                ],
                "suggestions": [
                    {"site": x.site, "action": x.action, "reason": x.reason}
                    for x in self.suggestions
                ],
                "warnings": list(self.warnings),
            }
        )


def reports_to_dict(reports: list[ModelReport]) -> dict[str, Any]:
    """The JSON document: tool, version, models."""
    return {"tool": "relu-doctor", "version": __version__, "models": [r.to_dict() for r in reports]}


def clean(value: Any) -> Any:
    """NaN/inf become None and numpy scalars plain Python, so the JSON is strict."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
