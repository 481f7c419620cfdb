"""Hooks for the tools people train with. Each lives in its own module and imports its tool
only there, so the core never needs them: ``lightning`` (``ReluDoctorCallback``) and
``tensorboard`` (``log_to``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relu_doctor.analyze.report import ModelReport


def metrics(
    report: ModelReport, prefix: str = "relu_doctor", per_site: bool = True
) -> dict[str, float]:
    """The numbers a logger gets for one recorded step: the model dead fraction and dead
    units, and per counted site its dead fraction (and grad norm when measured), under
    ``{prefix}/...`` names."""
    out = {
        f"{prefix}/dead_fraction": float(report.dead_fraction),
        f"{prefix}/dead_units": float(report.dead_units),
    }
    if per_site:
        for s in report.counted_sites:
            out[f"{prefix}/dead_fraction/{s.site}"] = float(s.dead_fraction)
            if s.grad_norm is not None:
                out[f"{prefix}/grad_norm/{s.site}"] = float(s.grad_norm)
    return out
