"""The CI health gate: rules with stable IDs, the ``check`` function and baselines.

``relu_doctor.check`` is both this package and, as DESIGN's API has it, a function:
the package is callable (``relu_doctor.check(report, max_dead=0.1)`` runs
``gate.check``), so the name works whichever of the two a caller imported first.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from relu_doctor.check.baseline import read_baseline
from relu_doctor.check.findings import Finding
from relu_doctor.check.gate import Limits, check, is_healthy
from relu_doctor.check.rules import RULES, Rule
from relu_doctor.check.weights import Producer, sequential_producers, weight_findings

__all__ = [
    "RULES",
    "Finding",
    "Limits",
    "Producer",
    "Rule",
    "check",
    "is_healthy",
    "read_baseline",
    "sequential_producers",
    "weight_findings",
]


class _CallableModule(types.ModuleType):
    def __call__(self, report: Any, **kwargs: Any) -> list[Finding]:
        return check(report, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
