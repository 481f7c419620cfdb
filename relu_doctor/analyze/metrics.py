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
    """Per-unit metrics of one site (the per-unit dump). A ``nonfinite`` unit had no finite
    output at all: it is neither dead nor alive, and its rate, score, mean, largest output
    and sparsity are NaN."""

    firing_rate: np.ndarray
    nonfinite: np.ndarray
    dead: np.ndarray
    near_dead: np.ndarray
    score: np.ndarray
    dormant: np.ndarray
    mean_abs: np.ndarray
    max_activation: np.ndarray
    sparsity: np.ndarray


def unit_metrics(totals: UnitTotals, act: Activation, th: Thresholds) -> UnitMetrics:
    """Firing rate, dead / near-dead / dormant flags and the ReDo score of every unit.

    A unit is judged on its finite outputs (docs/metrics.md): NaN and Inf never fire and are
    left out of its mean and sparsity, so one bad input row hides no dead unit; the firing
    rate still divides by every sample.
    """
    samples = max(totals.samples, 1)
    finite_elements = totals.elements - totals.nonfinite  # per unit
    judged = finite_elements > 0
    nonfinite = ~judged & (totals.elements > 0)
    rate = np.where(judged, totals.fires / samples, np.nan)
    dead = (totals.fires == 0) & judged & (totals.samples > 0)
    near = judged & (totals.fires > 0) & (rate < th.near_dead)
    elements = np.maximum(finite_elements, 1)
    mean_abs = np.where(judged, totals.abs_sum / elements, np.nan)
    layer_mean = float(np.mean(mean_abs[judged])) if judged.any() else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        score = mean_abs / layer_mean if layer_mean > 0 else np.where(judged, 0.0, np.nan)
    dormant = judged & (score <= th.tau)
    if totals.max_out is not None:
        max_act = totals.max_out
    else:
        max_act = activation_of_max(act, totals.max_pre)
    return UnitMetrics(
        firing_rate=rate,
        nonfinite=nonfinite,
        dead=dead,
        near_dead=near,
        score=score,
        dormant=dormant,
        mean_abs=mean_abs,
        max_activation=np.where(judged, max_act, np.nan),
        sparsity=np.where(judged, 1.0 - totals.active / elements, np.nan),
    )


def finite_median(values: np.ndarray) -> float | None:
    """Median of the finite values; None when there are none."""
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else None
