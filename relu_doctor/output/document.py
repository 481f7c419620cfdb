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
class Threshold:
    """One ``check`` threshold (None: off) and where its value came from: ``default``,
    ``command line`` or ``pyproject.toml [tool.relu-doctor...]``."""

    value: float | None
    origin: str = "default"


@dataclass(frozen=True)
class Gate:
    """How ``check`` judged: its thresholds (by library name, in ``Limits`` order) with their
    origins, the codes of the rules that ran, the severity that fails a model, the
    baseline it compared with, and each model's file as given on the command line (the
    ``file`` of annotations and SARIF results)."""

    thresholds: Mapping[str, Threshold] = field(default_factory=dict)
    rules: tuple[str, ...] = ()
    fail_on: str = "error"
    baseline: str | None = None
    paths: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Document:
    """Everything one command produced: per model a report or a failure, in order, and the
    command line that produced them; ``findings`` (model name -> findings) and ``gate``
    (how they were judged) when the command judged them; ``proof`` (a
    ``fix.proof.FixReport``) when it repaired one, its items then being the model before and
    after; ``timeline`` (one row per item) when several checkpoints were compared."""

    items: tuple[ModelReport | Failure, ...]
    command: str = ""
    findings: Mapping[str, Sequence[Any]] | None = field(default=None)
    gate: Gate | None = None
    proof: Any = None
    timeline: tuple[TimelineRow, ...] = ()

    @property
    def reports(self) -> tuple[ModelReport, ...]:
        return tuple(i for i in self.items if not isinstance(i, Failure))

    @property
    def failures(self) -> tuple[Failure, ...]:
        return tuple(i for i in self.items if isinstance(i, Failure))
