"""What a repair did to the model: one ``Change`` per repaired site, and the sites it could
not repair, each with the reason."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn


@dataclass(frozen=True)
class Change:
    """One repaired site: its name before and after the repair (a functional call becomes a
    module), what was done, and the units re-initialised (ReDo)."""

    site: str
    after: str
    action: str
    units: tuple[int, ...] = ()


@dataclass
class Outcome:
    """The repaired model, its changes, the refused sites ``(site, reason)``, the other
    sites whose names change (an fx rewrite renumbers the calls it leaves), and notes."""

    model: nn.Module
    changes: list[Change] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def refuse(self, site: str, reason: str) -> None:
        self.refused.append((site, reason))
