"""What ``check`` returns: one ``Finding`` per broken rule, plain data ready for JSON.

The protocols below name the only report attributes the gate and the CI emitters read, so
they work on any report object that has them (``ModelReport`` today, wherever it lives).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from relu_doctor.gate.rules import Rule

Severity = Literal["error", "warning", "note"]

#: Severities from worst to mildest; ``error`` fails the gate.
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "note")


class SiteLike(Protocol):
    """The per-site numbers the rules read (README "Columns")."""

    @property
    def site(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def activation(self) -> str: ...
    @property
    def units(self) -> int: ...
    @property
    def dead(self) -> int: ...
    @property
    def dead_fraction(self) -> float | None: ...
    @property
    def near_dead(self) -> int: ...
    @property
    def max_activation(self) -> float | None: ...
    @property
    def executed(self) -> bool: ...
    @property
    def counted(self) -> bool: ...
    @property
    def nonfinite(self) -> int: ...


class ReportLike(Protocol):
    """The per-model numbers the rules read."""

    @property
    def model(self) -> str: ...
    @property
    def samples(self) -> int: ...
    @property
    def sites(self) -> Sequence[SiteLike]: ...
    @property
    def dead_fraction(self) -> float: ...
    @property
    def dead_units(self) -> int: ...
    @property
    def total_units(self) -> int: ...
    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Finding:
    """One broken rule: which, how bad, where, the number measured against its limit, and
    the one-line fix. ``site`` is None for a model-level rule; ``value``/``threshold`` are
    None where the rule has no number (an architecture change, a module that never ran)."""

    rule: str
    severity: Severity
    model: str
    site: str | None
    value: float | None
    threshold: float | None
    message: str
    fix: str

    @classmethod
    def of(
        cls,
        rule: Rule,
        model: str,
        site: str | None,
        message: str,
        *,
        value: float | None = None,
        threshold: float | None = None,
    ) -> Finding:
        """A finding of ``rule`` (severity and fix come from its record)."""
        return cls(rule.code, rule.severity, model, site, value, threshold, message, rule.fix)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: non-finite numbers become null (the message keeps them)."""
        return {
            "rule": self.rule,
            "severity": self.severity,
            "model": self.model,
            "site": self.site,
            "value": _finite(self.value),
            "threshold": _finite(self.threshold),
            "message": self.message,
            "fix": self.fix,
        }


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)
