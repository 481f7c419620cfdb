"""The column registry: every per-site and per-unit number, defined once.

Each ``Column`` says how its value is computed from a site's facts (identity, totals,
per-unit metrics and the extras that analyses attach), its CSV/JSON name, and how the
terminal table shows it (header, cell text, priority when the terminal is narrow). The
report rows, the CSV/JSON/Markdown headers and the rich table all iterate this registry,
so a new column is one ``site_column`` (or ``unit_column``) call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from weakref import WeakKeyDictionary

import numpy as np

from relu_doctor.activations import Activation
from relu_doctor.analyze.causes import CauseCounts, UnitCauses
from relu_doctor.analyze.glyphs import sparkline
from relu_doctor.analyze.metrics import UnitMetrics, finite_median
from relu_doctor.analyze.rank import effective_rank
from relu_doctor.registry import Registry
from relu_doctor.scanner.accumulate import UnitTotals
from relu_doctor.scanner.topology import SiteTopology


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
    topology: SiteTopology | None = None


def _num(value: Any, fmt: str = ".3g") -> str:
    return "–" if value is None else format(value, fmt)


def _pct(value: Any) -> str:
    return "–" if value is None else f"{value:.1%}"


@dataclass(frozen=True)
class Column:
    """One per-site column. ``header`` None: not in the terminal table. ``severity``: the
    cell takes the site's severity colour. ``priority``: lower is hidden first when the
    terminal is narrow. Values are computed when first read (``SiteValues``)."""

    name: str
    compute: Callable[[SiteFacts], Any]
    header: str | None = None
    cell: Callable[[Any], str] = str
    severity: bool = False
    priority: int = 50
    doc: str = ""
    export: bool = True  # False: only the terminal table shows it (not CSV/JSON/Markdown)
    justify: Literal["left", "right"] = "right"  # in the terminal table
    label: Callable[[Mapping[str, Any]], str] | None = None  # the cell from the whole row

    def text(self, values: Mapping[str, Any]) -> str:
        """What the table (terminal, HTML) shows for this column of a row."""
        return self.label(values) if self.label is not None else self.cell(values[self.name])


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


def _sparsity(f: SiteFacts) -> float | None:
    t = _t(f)
    total = t.elements * t.units - int(t.nonfinite.sum())  # finite elements only
    return float(1.0 - t.active.sum() / total) if total else None


def _grad(f: SiteFacts) -> float | None:
    t = _t(f)
    return t.grad_norm_sum / t.grad_calls if t.grad_calls else None


def _site_label(values: Mapping[str, Any]) -> str:
    """A functional site's name says nothing of where it is: add the layer that feeds it."""
    producer = values.get("producer")
    if values["kind"] == "functional" and producer:
        return f"{values['site']} after {producer}"
    return str(values["site"])


def _kind_label(values: Mapping[str, Any]) -> str:
    """The mechanism, and the activation when it is not plain ReLU (``module ReLU6``)."""
    kind, act = values["kind"], values["activation"]
    return kind if act in ("ReLU", kind) else f"{kind} {act}"


def _fraction(f: SiteFacts) -> float:
    units = _t(f).units
    return _dead(f) / units if units else 0.0


def _zero_grad(f: SiteFacts) -> int | None:
    t = _t(f)
    if not t.grad_calls or t.grad_abs_max is None:
        return None
    return int((t.grad_abs_max == 0).sum())


def _grad_noise(f: SiteFacts) -> float | None:
    """Coefficient of variation of the per-batch grad norm: population std / mean."""
    t = _t(f)
    if t.grad_calls < 2 or t.grad_norm_sum <= 0:
        return None
    mean = t.grad_norm_sum / t.grad_calls
    var = max(t.grad_norm_sq_sum / t.grad_calls - mean * mean, 0.0)
    return float(np.sqrt(var) / mean)


#: Effective rank per totals, so the two rank columns share one eigensolve.
_RANKS: WeakKeyDictionary[UnitTotals, float | None] = WeakKeyDictionary()


def _eff_rank(f: SiteFacts) -> float | None:
    t = _t(f)
    if t not in _RANKS:
        _RANKS[t] = effective_rank(t.sample_rows)
    return _RANKS[t]


def _eff_rank_fraction(f: SiteFacts) -> float | None:
    rank, units = _eff_rank(f), _t(f).units
    return None if rank is None or not units else rank / units


def _causes(f: SiteFacts) -> CauseCounts | None:
    found = f.extras.get("causes")
    return found.counts if isinstance(found, UnitCauses) else None


def _letters(value: Any) -> str:
    if not isinstance(value, CauseCounts):
        return "–"
    return value.letters() or "–"


for _column in (
    Column("model", lambda f: f.model, doc="model name (file name)"),
    Column(
        "site",
        lambda f: f.site,
        header="site",
        priority=100,
        justify="left",
        label=_site_label,
        doc="the call site",
    ),
    Column(
        "kind",
        lambda f: f.kind,
        header="kind",
        priority=10,
        justify="left",
        label=_kind_label,
        doc="how it is called",
    ),
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
    Column(
        "firing",
        _executed(lambda f: sparkline(_m(f).firing_rate)),
        header="firing",
        priority=15,
        export=False,
        justify="left",
        doc="histogram of the units' firing rates over [0, 1], first bar: never fired "
        "(terminal and HTML only)",
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
        _executed(lambda f: int(_m(f).nonfinite.sum()), 0),
        doc="units with no finite output: neither dead nor alive",
    ),
    Column(
        "producer",
        lambda f: f.topology.producer if f.topology else None,
        doc="the layer whose output is the pre-activation (see Topology)",
    ),
    Column(
        "consumer",
        lambda f: f.topology.consumer if f.topology else None,
        doc="the one layer that reads the output (see Topology)",
    ),
    Column(
        "zero_grad",
        _executed(_zero_grad),
        doc="units whose input gradient was exactly 0 on every batch",
    ),
    Column(
        "grad_noise",
        _executed(_grad_noise),
        doc="coefficient of variation of the grad norm across batches",
    ),
    Column(
        "eff_rank",
        _executed(_eff_rank),
        doc="effective rank of the site's features (at most 1024 sampled rows)",
    ),
    Column(
        "eff_rank_fraction",
        _executed(_eff_rank_fraction),
        header="rank%",
        cell=_pct,
        priority=18,
        doc="eff_rank / units",
    ),
    Column(
        "causes",
        _executed(_causes),
        header="causes",
        cell=_letters,
        priority=35,
        doc="dead units per cause (collapsed, starved, bias, weights, unknown)",
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


class SiteValues(Mapping[str, Any]):
    """Every registered column's value for one site, in output order, each computed when
    first read and then kept: a training loop's history reads a few columns per step, a
    report file all of them, and the costly ones (the effective rank) only when shown."""

    def __init__(self, facts: SiteFacts) -> None:
        self._facts = facts
        self._known: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._known:
            self._known[name] = SITE_COLUMNS[name].compute(self._facts)
        return self._known[name]

    def __contains__(self, name: object) -> bool:
        return name in SITE_COLUMNS

    def __iter__(self) -> Iterator[str]:
        return iter(SITE_COLUMNS)

    def __len__(self) -> int:
        return len(SITE_COLUMNS)


def exported_columns() -> list[str]:
    """Names of the columns CSV, JSON and Markdown carry, in order."""
    return [name for name, col in SITE_COLUMNS.items() if col.export]


def site_values(facts: SiteFacts) -> SiteValues:
    """Every registered column's value for one site, in output order."""
    return SiteValues(facts)


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


def _unit_zero_grad(u: UnitFacts) -> Any:
    t = u.totals
    if not t.grad_calls or t.grad_abs_max is None:
        return None
    return t.grad_abs_max == 0


def _unit_causes(u: UnitFacts, name: str) -> Any:
    found = u.extras.get("causes")
    return getattr(found, name) if isinstance(found, UnitCauses) else None


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
    UnitColumn(
        "margin",
        lambda u: np.where(u.metrics.nonfinite, np.nan, u.totals.max_pre),
        doc="largest finite pre-activation",
    ),
    UnitColumn("max_activation", lambda u: u.metrics.max_activation, doc="largest output"),
    UnitColumn("mean_activation", lambda u: u.metrics.mean_abs, doc="mean |output|"),
    UnitColumn("sparsity", lambda u: u.metrics.sparsity, doc="share of its elements <= eps"),
    UnitColumn("nonfinite", lambda u: u.metrics.nonfinite, doc="no finite output: not judged"),
    UnitColumn(
        "nonfinite_values", lambda u: u.totals.nonfinite, doc="NaN or Inf outputs, left out"
    ),
    UnitColumn("zero_grad", _unit_zero_grad, doc="input gradient exactly 0 on every batch"),
    UnitColumn("max_wx", lambda u: _unit_causes(u, "max_wx"), doc="largest weight part w·x"),
    UnitColumn("cause", lambda u: _unit_causes(u, "cause"), doc="why a dead unit died"),
    UnitColumn("cause_note", lambda u: _unit_causes(u, "note"), doc="the evidence, in numbers"),
):
    unit_column(_unit)
