"""The column registry: every per-site and per-unit number, defined once.

Each ``Column`` says how its value is computed from a site's facts (identity, totals,
per-unit metrics and the extras that analyses attach), its CSV/JSON name, and how the
terminal table shows it (header, cell text, priority when the terminal is narrow). The
report rows, the CSV/JSON/Markdown headers and the rich table all iterate this registry,
so a new column is one ``site_column`` (or ``unit_column``) call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from relu_doctor.activations import Activation
from relu_doctor.analyze.metrics import UnitMetrics, finite_median
from relu_doctor.registry import Registry
from relu_doctor.scanner.accumulate import UnitTotals


@dataclass(frozen=True)
class SiteFacts:
    """What a site column computes from."""

    model: str
    site: str
    kind: str
    activation: Activation
    unit_dim: int | None
    executed: bool
    totals: UnitTotals | None
    metrics: UnitMetrics | None
    extras: Mapping[str, Any] = field(default_factory=dict)


def _num(value: Any, fmt: str = ".3g") -> str:
    return "–" if value is None else format(value, fmt)


def _pct(value: Any) -> str:
    return "–" if value is None else f"{value:.1%}"


@dataclass(frozen=True)
class Column:
    """One per-site column. ``header`` None: not in the terminal table. ``severity``: the
    cell takes the site's severity colour. ``priority``: lower is hidden first when the
    terminal is narrow."""

    name: str
    compute: Callable[[SiteFacts], Any]
    header: str | None = None
    cell: Callable[[Any], str] = str
    severity: bool = False
    priority: int = 50
    doc: str = ""


SITE_COLUMNS: Registry[Column] = Registry("site column")


def site_column(column: Column) -> Column:
    """Register a site column (in output order)."""
    return SITE_COLUMNS.add(column.name, column)


def _t(f: SiteFacts) -> UnitTotals:
    assert f.totals is not None
    return f.totals


def _m(f: SiteFacts) -> UnitMetrics:
    assert f.metrics is not None
    return f.metrics


def _executed(fn: Callable[[SiteFacts], Any], idle: Any = None) -> Callable[[SiteFacts], Any]:
    """``fn`` for a site that ran; ``idle`` for an activation module that never did."""
    return lambda f: fn(f) if f.executed and f.totals is not None else idle


def _dead(f: SiteFacts) -> int:
    return int(_m(f).dead.sum())


def _max_activation(f: SiteFacts) -> float | None:
    values = _m(f).max_activation
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else None


def _sparsity(f: SiteFacts) -> float:
    t = _t(f)
    total = t.elements * t.units
    return float(1.0 - t.active.sum() / total) if total else 0.0


def _grad(f: SiteFacts) -> float | None:
    t = _t(f)
    return t.grad_norm_sum / t.grad_calls if t.grad_calls else None


def _fraction(f: SiteFacts) -> float:
    units = _t(f).units
    return _dead(f) / units if units else 0.0


for _column in (
    Column("model", lambda f: f.model, doc="model name (file name)"),
    Column("site", lambda f: f.site, header="site", priority=100, doc="the call site"),
    Column("kind", lambda f: f.kind, header="kind", priority=10, doc="how it is called"),
    Column("calls", _executed(lambda f: _t(f).calls, 0), doc="calls over the scan"),
    Column(
        "units",
        _executed(lambda f: _t(f).units, 0),
        header="units",
        priority=70,
        doc="units (features or channels)",
    ),
    Column("samples", _executed(lambda f: _t(f).samples, 0), doc="samples seen"),
    Column(
        "dead",
        _executed(_dead, 0),
        header="dead",
        severity=True,
        priority=95,
        doc="units that never fired",
    ),
    Column(
        "dead_fraction",
        _executed(_fraction),
        header="dead%",
        cell=_pct,
        severity=True,
        priority=90,
        doc="dead / units",
    ),
    Column(
        "near_dead",
        _executed(lambda f: int(_m(f).near_dead.sum()), 0),
        header="near",
        priority=20,
        doc="units firing on fewer than near_dead of the samples",
    ),
    Column(
        "dormant",
        _executed(lambda f: int(_m(f).dormant.sum()), 0),
        header="dormant",
        priority=40,
        doc="ReDo dormant units (dead included)",
    ),
    Column(
        "sparsity",
        _executed(_sparsity),
        header="sparsity",
        cell=_pct,
        priority=60,
        doc="share of output elements <= eps",
    ),
    Column(
        "max_activation",
        _executed(_max_activation),
        header="max act",
        cell=_num,
        priority=50,
        doc="largest output seen",
    ),
    Column(
        "dead_margin",
        _executed(lambda f: finite_median(_t(f).max_pre[_m(f).dead])),
        header="margin",
        cell=_num,
        priority=30,
        doc="median largest pre-activation of the dead units",
    ),
    Column(
        "grad_norm",
        _executed(_grad),
        header="grad",
        cell=_num,
        priority=25,
        doc="mean L2 norm of the loss gradient w.r.t. the site input",
    ),
    Column("activation", lambda f: f.activation.name, doc="activation class"),
    Column("executed", lambda f: f.executed, doc="ran during the scan"),
    Column(
        "counted",
        lambda f: f.executed and f.activation.relu_family,
        doc="counts toward the model dead fraction",
    ),
    Column("unit_dim", lambda f: f.unit_dim, doc="dim that holds the units"),
    Column(
        "nonfinite",
        _executed(lambda f: int((~_m(f).finite).sum()), 0),
        doc="units that saw NaN or Inf",
    ),
    Column(
        "died",
        _executed(lambda f: f.extras.get("died")),
        doc="units dead now and alive in the previous checkpoint (several models)",
    ),
    Column(
        "revived",
        _executed(lambda f: f.extras.get("revived")),
        doc="units alive now and dead in the previous checkpoint (several models)",
    ),
):
    site_column(_column)


def site_values(facts: SiteFacts) -> dict[str, Any]:
    """Every registered column's value for one site, in output order."""
    return {name: col.compute(facts) for name, col in SITE_COLUMNS.items()}


# -- per-unit columns (the --per-unit dump) -------------------------------------------------


@dataclass(frozen=True)
class UnitFacts:
    """What a unit column computes from: one site's per-unit arrays."""

    model: str
    site: str
    totals: UnitTotals
    metrics: UnitMetrics
    extras: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UnitColumn:
    """One per-unit column: a scalar (broadcast) or an array with one value per unit."""

    name: str
    compute: Callable[[UnitFacts], Any]
    doc: str = ""


UNIT_COLUMNS: Registry[UnitColumn] = Registry("unit column")


def unit_column(column: UnitColumn) -> UnitColumn:
    """Register a per-unit column (in output order)."""
    return UNIT_COLUMNS.add(column.name, column)


for _unit in (
    UnitColumn("model", lambda u: u.model, doc="model name"),
    UnitColumn("site", lambda u: u.site, doc="the call site"),
    UnitColumn("unit", lambda u: np.arange(u.totals.units), doc="index along the unit dim"),
    UnitColumn("samples", lambda u: u.totals.samples, doc="samples seen"),
    UnitColumn("fires", lambda u: u.totals.fires, doc="samples on which the unit fired"),
    UnitColumn("firing_rate", lambda u: u.metrics.firing_rate, doc="fires / samples"),
    UnitColumn("dead", lambda u: u.metrics.dead, doc="never fired"),
    UnitColumn("near_dead", lambda u: u.metrics.near_dead, doc="0 < firing rate < near_dead"),
    UnitColumn("dormant", lambda u: u.metrics.dormant, doc="ReDo score <= tau"),
    UnitColumn("score", lambda u: u.metrics.score, doc="ReDo score"),
    UnitColumn("margin", lambda u: u.totals.max_pre, doc="largest pre-activation"),
    UnitColumn("max_activation", lambda u: u.metrics.max_activation, doc="largest output"),
    UnitColumn("mean_activation", lambda u: u.metrics.mean_abs, doc="mean |output|"),
    UnitColumn("sparsity", lambda u: u.metrics.sparsity, doc="share of its elements <= eps"),
    UnitColumn("finite", lambda u: u.metrics.finite, doc="saw no NaN or Inf"),
):
    unit_column(_unit)
