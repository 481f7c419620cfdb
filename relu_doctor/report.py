"""Scan results as frozen data: one ``SiteStats`` per site, one ``ModelReport`` per model.

The report knows how to become a pandas frame or a JSON-ready dict; writing files is in
``export.py`` and terminal rendering in ``render.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relu_doctor import __version__

if TYPE_CHECKING:
    import pandas as pd

    from relu_doctor.stats import Thresholds, UnitStats

#: Per-site columns, in the contract's order (DESIGN section 3).
SITE_COLUMNS = (
    "model",
    "site",
    "kind",
    "calls",
    "units",
    "samples",
    "dead",
    "dead_fraction",
    "near_dead",
    "dormant",
    "sparsity",
    "max_activation",
    "dead_margin",
    "grad_norm",
)
#: Extra columns that follow the contract's ones.
EXTRA_COLUMNS = ("activation", "executed", "counted", "unit_dim", "nonfinite")
#: Per-unit dump columns.
UNIT_COLUMNS = (
    "model",
    "site",
    "unit",
    "samples",
    "fires",
    "firing_rate",
    "dead",
    "near_dead",
    "dormant",
    "score",
    "margin",
    "max_activation",
    "mean_activation",
    "sparsity",
    "finite",
)


@dataclass(frozen=True)
class SiteStats:
    """One row of the report: a ReLU call site and its numbers (DESIGN section 2)."""

    model: str
    site: str
    kind: str
    calls: int
    units: int
    samples: int
    dead: int
    dead_fraction: float | None
    near_dead: int
    dormant: int
    sparsity: float | None
    max_activation: float | None
    dead_margin: float | None
    grad_norm: float | None
    activation: str = "ReLU"
    executed: bool = True
    counted: bool = True
    unit_dim: int | None = None
    nonfinite: int = 0
    unit_stats: UnitStats | None = field(default=None, repr=False, compare=False)

    def row(self) -> dict[str, Any]:
        """The table columns of this site (contract columns first)."""
        return {c: getattr(self, c) for c in SITE_COLUMNS + EXTRA_COLUMNS}


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
    sites: tuple[SiteStats, ...]
    params: tuple[ParamGrad, ...] = ()
    suggestions: tuple[Suggestion, ...] = ()
    warnings: tuple[str, ...] = ()
    thresholds: Thresholds | None = None
    grad: bool = True
    mode: str = "eval"
    device: str = "cpu"
    source: str = "eager"

    @property
    def counted_sites(self) -> tuple[SiteStats, ...]:
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
        """Dead units / all units over every ReLU-family site (DESIGN section 2)."""
        total = self.total_units
        return self.dead_units / total if total else 0.0

    @property
    def min_samples(self) -> int:
        """Samples behind the weakest counted site (the honest N for "no firing")."""
        counted = [s.samples for s in self.counted_sites]
        return min(counted) if counted else 0

    def site(self, name: str) -> SiteStats:
        """The site called ``name``; KeyError listing the names otherwise."""
        for s in self.sites:
            if s.site == name:
                return s
        raise KeyError(f"no site {name!r}; sites: {', '.join(s.site for s in self.sites)}")

    def to_frame(self) -> pd.DataFrame:
        """One row per site: the contract's columns, then the extra ones."""
        import pandas as pd

        return pd.DataFrame(
            [s.row() for s in self.sites], columns=list(SITE_COLUMNS + EXTRA_COLUMNS)
        )

    def units_frame(self) -> pd.DataFrame:
        """One row per unit of every executed site (the ``--per-unit`` dump)."""
        import pandas as pd

        from relu_doctor.stats import Thresholds, unit_metrics

        th = self.thresholds or Thresholds()
        frames = []
        for s in self.sites:
            if s.unit_stats is None:
                continue
            u = s.unit_stats
            m = unit_metrics(u, s.activation, th)
            frames.append(
                pd.DataFrame(
                    {
                        "model": self.model,
                        "site": s.site,
                        "unit": range(u.units),
                        "samples": u.samples,
                        "fires": u.fires,
                        "firing_rate": m.firing_rate,
                        "dead": m.dead,
                        "near_dead": m.near_dead,
                        "dormant": m.dormant,
                        "score": m.score,
                        "margin": u.max_pre,
                        "max_activation": m.max_activation,
                        "mean_activation": m.mean_abs,
                        "sparsity": m.sparsity,
                        "finite": m.finite,
                    }
                )
            )
        if not frames:
            return pd.DataFrame(columns=list(UNIT_COLUMNS))
        return pd.concat(frames, ignore_index=True)[list(UNIT_COLUMNS)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of this model (one entry of the ``models`` list)."""
        th = self.thresholds
        return _clean(
            {
                "model": self.model,
                "samples": self.samples,
                "batches": self.batches,
                "dead_fraction": self.dead_fraction,
                "dead_units": self.dead_units,
                "units": self.total_units,
                "source": self.source,
                "mode": self.mode,
                "device": self.device,
                "grad": self.grad,
                "thresholds": None
                if th is None
                else {"eps": th.eps, "near_dead": th.near_dead, "tau": th.tau},
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
    """The JSON document of DESIGN section 3: tool, version, models."""
    return {"tool": "relu-doctor", "version": __version__, "models": [r.to_dict() for r in reports]}


def _clean(value: Any) -> Any:
    """NaN/inf become None and numpy scalars plain Python, so the JSON is strict."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
