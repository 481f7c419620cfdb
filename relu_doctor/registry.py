"""One mechanism behind every registry (activations, columns, output formats, rules)."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


class Registry(dict[str, T]):
    """A name -> entry table in registration order that refuses a second entry under a name:
    two entries with one name are a programming error, never a silent overwrite."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def add(self, name: str, entry: T) -> T:
        if name in self:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self[name] = entry
        return entry
