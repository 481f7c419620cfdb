"""Per-unit verdicts derived from ``UnitTotals``: firing rate, dead, near-dead, dormant.

The definitions are the ones in README "What the numbers mean".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from relu_doctor.activations import RELU6, Activation
from relu_doctor.errors import UsageError, param
from relu_doctor.scanner.accumulate import UnitTotals


@dataclass(frozen=True)
class Thresholds:
    """The knobs of the definitions: firing threshold, near-dead rate, ReDo dormant tau."""

    eps: float = 0.0
    near_dead: float = 0.01
    tau: float = 0.025

    def __post_init__(self) -> None:
        if self.eps < 0:
            raise UsageError(f"{param('eps')} must be >= 0, got {self.eps}", param="eps")
        if not 0 < self.near_dead <= 1:
            raise UsageError(
                f"{param('near_dead')} must be in (0, 1], got {self.near_dead}", param="near_dead"
            )
        if self.tau < 0:
            raise UsageError(f"{param('tau')} must be >= 0, got {self.tau}", param="tau")


def activation_of_max(act: Activation, max_pre: np.ndarray) -> np.ndarray:
    """Largest output per unit from the largest pre-activation (ReLU and ReLU6 are monotone)."""
    out = np.maximum(max_pre, 0.0)
    return np.minimum(out, 6.0) if act is RELU6 else out


@dataclass(frozen=True, eq=False)
class UnitMetrics:
    """Per-unit metrics of one site (the per-unit dump)."""

    firing_rate: np.ndarray
    finite: np.ndarray
    dead: np.ndarray
    near_dead: np.ndarray
    score: np.ndarray
    dormant: np.ndarray
    mean_abs: np.ndarray
    max_activation: np.ndarray
    sparsity: np.ndarray


def unit_metrics(totals: UnitTotals, act: Activation, th: Thresholds) -> UnitMetrics:
    """Firing rate, dead / near-dead / dormant flags and the ReDo score of every unit."""
    samples = max(totals.samples, 1)
    elements = max(totals.elements, 1)
    rate = totals.fires / samples
    # NaN/Inf elements never count as firing; a unit that saw them is flagged (``finite``)
    # but still judged on its firing, so one bad input row does not hide the dead units.
    finite = np.isfinite(totals.abs_sum) & ~np.isnan(totals.max_pre)
    dead = (totals.fires == 0) & (totals.samples > 0)
    near = (rate > 0) & (rate < th.near_dead)
    mean_abs = totals.abs_sum / elements
    layer_mean = float(np.mean(mean_abs[finite])) if finite.any() else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        score = mean_abs / layer_mean if layer_mean > 0 else np.zeros_like(mean_abs)
    dormant = (score <= th.tau) & finite
    if totals.max_out is not None:
        max_act = totals.max_out
    else:
        max_act = activation_of_max(act, totals.max_pre)
    return UnitMetrics(
        firing_rate=rate,
        finite=finite,
        dead=dead,
        near_dead=near,
        score=score,
        dormant=dormant,
        mean_abs=mean_abs,
        max_activation=max_act,
        sparsity=1.0 - totals.active / elements,
    )


def finite_median(values: np.ndarray) -> float | None:
    """Median of the finite values; None when there are none."""
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else None
