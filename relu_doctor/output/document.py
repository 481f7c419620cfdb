"""What a command hands to the emitters: its reports and what it concluded about them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relu_doctor.analyze.report import ModelReport


@dataclass(frozen=True)
class Document:
    """Everything one command produced: the reports, in order, and the command line that
    produced them; ``findings`` (model name -> findings) when the command judged them."""

    reports: tuple[ModelReport, ...]
    command: str = ""
    findings: Mapping[str, Sequence[Any]] | None = field(default=None)
