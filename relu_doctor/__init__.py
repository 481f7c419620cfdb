"""relu-doctor: find, explain, gate and repair dying ReLU units in PyTorch models.

Importing the package is cheap: torch and pandas load only when `scan` or a report is used,
so `relu-doctor --help` starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["ModelReport", "SiteStats", "__version__", "scan"]

if TYPE_CHECKING:
    from relu_doctor.api import scan
    from relu_doctor.report import ModelReport, SiteStats


def __getattr__(name: str) -> Any:
    if name == "scan":
        from relu_doctor.api import scan

        return scan
    if name in ("ModelReport", "SiteStats"):
        from relu_doctor import report

        return getattr(report, name)
    raise AttributeError(f"module 'relu_doctor' has no attribute {name!r}")
