"""What a command hands to the emitters: its reports (and the models it could not scan), in
the order given, and what it concluded about them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relu_doctor.analyze.report import ModelReport
    from relu_doctor.analyze.timeline import TimelineRow


@dataclass(frozen=True)
class Failure:
    """A model that could not be loaded or scanned, and why (one line)."""

    model: str
    message: str


@dataclass(frozen=True)
class Document:
    """Everything one command produced: per model a report or a failure, in order, and the
    command line that produced them; ``findings`` (model name -> findings) when the command
    judged them; ``timeline`` (one row per item) when several checkpoints were compared."""

    items: tuple[ModelReport | Failure, ...]
    command: str = ""
    findings: Mapping[str, Sequence[Any]] | None = field(default=None)
    timeline: tuple[TimelineRow, ...] = ()

    @property
    def reports(self) -> tuple[ModelReport, ...]:
        return tuple(i for i in self.items if not isinstance(i, Failure))

    @property
    def failures(self) -> tuple[Failure, ...]:
        return tuple(i for i in self.items if isinstance(i, Failure))
