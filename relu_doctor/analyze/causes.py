"""Why each dead unit died: one cause per dead unit, decided from the layer that produces its
pre-activation ``z = w·x + b`` (``layers.py``: BatchNorm folded in), the unit's largest
pre-activation over the scan and the dead units of the site upstream.

In this order (the definitions are in docs/metrics.md, "Why they died"):

- ``collapsed``: ``||w_j|| <= 1e-6 x`` the layer's median row norm and ``b_j <= 0``;
- ``starved``: every input it reads with a non-zero weight was 0 on every sample (dead units
  of the site whose output the producing layer reads);
- ``bias``: ``w·x`` exceeded the firing threshold on some sample and the bias held ``z`` down;
- ``weights``: ``w·x`` never exceeded it;
- ``unknown``: no producing layer, BatchNorm with batch statistics, NaN/Inf, or ``w·x`` so
  close to the threshold that the rounding of ``z`` hides which side it was on.

``max(w·x)`` is not measured separately: it is ``max(z) - b`` exactly in real arithmetic, and
the scan already keeps ``max(z)`` per unit, so it costs nothing. What the float arithmetic
that made ``z`` rounded away is bounded by ``ROUNDING`` unit roundoffs of the terms of ``z``;
within that band of the threshold the cause is ``unknown`` instead of a guess.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from relu_doctor.activations import Activation
from relu_doctor.analyze.layers import Producer, producing_layer
from relu_doctor.scanner.accumulate import UnitTotals
from relu_doctor.scanner.topology import SiteTopology

#: The causes, in the order they are decided (and counted).
CAUSES = ("collapsed", "starved", "bias", "weights", "unknown")
#: One letter per cause for the terminal table.
LETTERS = {"collapsed": "c", "starved": "s", "bias": "b", "weights": "w", "unknown": "?"}
#: A row norm at most this share of the layer's median row norm has collapsed.
COLLAPSED_RATIO = 1e-6
#: Unit roundoffs of the terms of z within which the sign of max(w·x) - eps is not known:
#: ~10 ulps of the largest term, room for the few roundings of a bias added in a blocked
#: matrix product or of a folded BatchNorm.
ROUNDING = 8


class CauseCounts(dict[str, int]):
    """Dead units per cause, in the order of ``CAUSES``, only the causes that occur. JSON
    sees a plain mapping; text (CSV, Markdown) reads ``bias=3 weights=2``."""

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.items())

    def letters(self) -> str:
        """``b3 w2``: the terminal table's cell."""
        return " ".join(f"{LETTERS[k]}{v}" for k, v in self.items())


@dataclass(frozen=True, eq=False)
class UnitCauses:
    """Per unit of one site: ``cause`` and ``note`` (None for units that fired), and
    ``max_wx``, the largest weight part ``w·x`` (NaN where the layer does not tell)."""

    cause: np.ndarray
    note: np.ndarray
    max_wx: np.ndarray
    upstream: str | None = None  # the site whose dead units starve units here

    @property
    def counts(self) -> CauseCounts:
        found = [c for c in self.cause if c is not None]
        return CauseCounts((c, found.count(c)) for c in CAUSES if c in found)


@dataclass(frozen=True)
class SiteView:
    """What the causes of one site are decided from."""

    name: str
    totals: UnitTotals
    dead: np.ndarray
    topology: SiteTopology | None
    activation: Activation
    unit_dim: int | None


@dataclass(frozen=True)
class _Upstream:
    """The site that feeds the producing layer: per layer input, its unit and whether that
    unit was 0 on every sample."""

    name: str
    unit_of: np.ndarray
    zero: np.ndarray


def explain_sites(
    root: nn.Module, sites: Sequence[SiteView], *, train: bool, eps: float
) -> dict[str, UnitCauses]:
    """Causes of the dead units of every site, by site name (``train``: the scan ran in
    train mode; ``eps``: the firing threshold)."""
    modules = dict(root.named_modules())
    out = {}
    for site in sites:
        try:
            producer = producing_layer(
                root, site.topology, site.totals.units, train=train, modules=modules
            )
            upstream = None if isinstance(producer, str) else _upstream(site, sites, producer)
            out[site.name] = decide(site, producer, upstream, eps)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:  # an exotic layer
            where = site.topology.producer if site.topology else None
            why = f"could not read layer {where}: {type(exc).__name__}: {exc}"
            out[site.name] = decide(site, why.splitlines()[0], None, eps)
    return out


def _upstream(site: SiteView, sites: Sequence[SiteView], producer: Producer) -> _Upstream | None:
    """The one ReLU site whose output the producing layer reads (the topology's consumer of
    that site is this site's producer), or None when it is not exactly one."""
    feeders = [s for s in sites if s.topology is not None and s.topology.consumer == producer.path]
    produced = [s for s in sites if s.topology is not None and s.topology.producer == producer.path]
    if len(feeders) != 1 or len(produced) != 1 or not feeders[0].activation.relu_family:
        return None
    up = feeders[0]
    mx = up.totals.max_pre
    zero = np.isfinite(mx) & (mx <= 0) & (up.totals.samples > 0)
    w = producer.weight
    inputs = int(w.shape[1]) if w.ndim == 2 else up.totals.units
    units = up.totals.units
    if inputs == units:
        unit_of = np.arange(units)
    elif w.ndim == 2 and units and inputs % units == 0:  # a flattened (N, C, *spatial) output
        per_unit = inputs // units
        channel_major = up.unit_dim in (None, 1)
        unit_of = np.arange(inputs) // per_unit if channel_major else np.arange(inputs) % units
    else:
        return None
    return _Upstream(up.name, unit_of, zero[unit_of])


def decide(
    site: SiteView, producer: Producer | str, upstream: _Upstream | None, eps: float = 0.0
) -> UnitCauses:
    """The cause of each dead unit of ``site`` (see the module docstring)."""
    units = site.totals.units
    cause = np.full(units, None, dtype=object)
    note = np.full(units, None, dtype=object)
    dead = np.flatnonzero(site.dead)
    if isinstance(producer, str):
        cause[dead], note[dead] = "unknown", producer
        return UnitCauses(cause, note, np.full(units, np.nan))
    max_pre = site.totals.max_pre.astype(np.float64)
    wx = max_pre - producer.bias
    tol = ROUNDING * producer.resolution * (np.abs(max_pre) + producer.bias_scale)
    median = float(np.median(producer.row_norm)) if units else 0.0
    collapsed = (producer.row_norm <= COLLAPSED_RATIO * median) & (producer.bias <= 0)
    starved = _starved(producer, upstream, dead[~collapsed[dead]])
    # Python floats: per-unit numpy scalars would cost more than the decisions themselves
    wx_l, tol_l, max_l, b_l = (a.tolist() for a in (wx, tol, max_pre, producer.bias))
    for j in dead.tolist():
        if collapsed[j]:
            cause[j] = "collapsed"
            note[j] = (
                f"incoming weights collapsed: |w| = {producer.row_norm[j]:.3g}, at most 1e-06 x "
                f"the layer median {median:.3g}, and b = {producer.bias[j]:.3g} <= 0: z = b on "
                "every input"
            )
        elif j in starved:
            cause[j], note[j] = "starved", starved[j]
        else:
            cause[j], note[j] = _weight_part(producer, b_l[j], wx_l[j], tol_l[j], max_l[j], eps)
    return UnitCauses(cause, note, wx, upstream.name if starved and upstream else None)


def _starved(producer: Producer, upstream: _Upstream | None, units: np.ndarray) -> dict[int, str]:
    """Notes of the ``units`` whose inputs read with a non-zero weight were all 0."""
    if upstream is None or units.size == 0:
        return {}
    reads = producer.reads(units, upstream.zero.shape[0])
    if reads is None:
        return {}
    reads_any = reads.any(axis=1)
    reads_live = (reads & ~upstream.zero[None, :]).any(axis=1)
    out = {}
    for row in np.flatnonzero(reads_any & ~reads_live):  # usually few: a note each
        ids = np.unique(upstream.unit_of[reads[row]])
        shown = ", ".join(str(i) for i in ids[:6]) + (", ..." if ids.size > 6 else "")
        out[int(units[row])] = (
            f"reads only units {shown} of {upstream.name} with a non-zero weight, and those "
            f"were 0 on every sample: fix {upstream.name} first"
        )
    return out


def _weight_part(
    producer: Producer, b: float, wx: float, tol: float, max_pre: float, eps: float
) -> tuple[str, str]:
    """``bias``, ``weights`` or ``unknown`` from the largest weight part ``w·x`` (``b`` the
    unit's bias)."""
    if producer.batch_stats:
        return "unknown", (
            f"{producer.norm} normalises each batch with that batch's statistics (train mode, "
            "or no running statistics), so b changes per batch: scan in eval mode to tell "
            "bias from weights"
        )
    if not (math.isfinite(max_pre) and math.isfinite(wx)):
        return "unknown", "its pre-activation saw NaN or Inf"
    threshold = "0" if eps == 0 else f"eps = {eps:g}"
    if wx > eps + tol:
        return "bias", (
            f"w·x reached {wx:.3g} but the bias b = {b:.3g} held z at or below {max_pre:.3g}"
        )
    if wx <= eps - tol:
        never = "never positive" if eps == 0 else f"never above {threshold}"
        return "weights", (
            f"w·x peaked at {wx:.3g}, {never}: the weights point away from every input "
            f"(b = {b:.3g})"
        )
    return "unknown", (
        f"w·x peaked at {wx:.3g} +- {tol:.2g}, within the rounding of z next to b = {b:.3g}: "
        f"cannot tell whether it passed {threshold}"
    )
