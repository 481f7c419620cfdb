"""relu-doctor: find, explain, gate and repair dying ReLU units in PyTorch models.

Importing the package is cheap: torch and pandas load only when ``scan`` or a report is
used, so ``relu-doctor --help`` starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "FixReport",
    "ModelReport",
    "Monitor",
    "SiteReport",
    "SiteStats",
    "__version__",
    "check",
    "diagnose",
    "monitor",
    "repair",
    "scan",
]

if TYPE_CHECKING:
    from relu_doctor.analyze.assemble import diagnose
    from relu_doctor.analyze.report import ModelReport, SiteReport
    from relu_doctor.analyze.report import SiteReport as SiteStats
    from relu_doctor.api import scan
    from relu_doctor.fix.proof import FixReport
    from relu_doctor.fix.repair import repair
    from relu_doctor.gate.judge import check
    from relu_doctor.monitoring import Monitor, monitor

#: Public name -> (module, attribute), imported on first use.
_LAZY = {
    "scan": ("relu_doctor.api", "scan"),
    "check": ("relu_doctor.gate.judge", "check"),
    "repair": ("relu_doctor.fix.repair", "repair"),
    "FixReport": ("relu_doctor.fix.proof", "FixReport"),
    "diagnose": ("relu_doctor.analyze.assemble", "diagnose"),
    "monitor": ("relu_doctor.monitoring", "monitor"),
    "Monitor": ("relu_doctor.monitoring", "Monitor"),
    "ModelReport": ("relu_doctor.analyze.report", "ModelReport"),
    "SiteReport": ("relu_doctor.analyze.report", "SiteReport"),
    "SiteStats": ("relu_doctor.analyze.report", "SiteReport"),  # the 0.1 name
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'relu_doctor' has no attribute {name!r}")
