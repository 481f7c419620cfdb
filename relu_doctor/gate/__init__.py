"""The CI health gate: rules with stable IDs (``rules.py``), the judgement of a report
(``judge.py``: ``relu_doctor.check``), baselines and the data-free weight rules."""

from __future__ import annotations

from relu_doctor.gate.baseline import read_baseline
from relu_doctor.gate.findings import Finding
from relu_doctor.gate.judge import Limits, check, is_healthy
from relu_doctor.gate.rules import RULES, Rule

__all__ = ["RULES", "Finding", "Limits", "Rule", "check", "is_healthy", "read_baseline"]
