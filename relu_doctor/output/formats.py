"""The output-format registry: per format its name, file extensions and emitters.

The click ``--format`` choices, ``-o``'s extension detection and the writing of every file
read this table; a new format is one ``register`` call plus its emitter module. Emitters
take a ``Document`` and return text (or bytes, for binary formats).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from relu_doctor.errors import UsageError, param
from relu_doctor.registry import Registry

if TYPE_CHECKING:
    from relu_doctor.output.document import Document

Emitter = Callable[["Document"], "str | bytes"]


@dataclass(frozen=True)
class Format:
    """One output format. ``units``: the per-unit dump in this format, if it has one;
    ``fix``: the repair report (``Document.proof``) in this format, if it has one;
    ``stdout``: it can be printed (a ``--format`` choice); ``commands``: where it applies."""

    name: str
    extensions: tuple[str, ...]
    emit: Emitter
    units: Emitter | None = None
    stdout: bool = True
    commands: tuple[str, ...] = ("scan", "check")
    picture: bool = False  # needs matplotlib (an optional extra)

    def available(self) -> None:
        """Fail now, before any scan, when the format needs what is not installed."""
        if self.picture:
            from relu_doctor.output.plots import require_matplotlib

            require_matplotlib()

    fix: Emitter | None = None


FORMATS: Registry[Format] = Registry("output format")
_EXTENSIONS: Registry[Format] = Registry("file extension")


def register(fmt: Format) -> Format:
    """Add a format; a name or extension registered twice is a programming error."""
    for ext in fmt.extensions:
        _EXTENSIONS.add(ext, fmt)
    return FORMATS.add(fmt.name, fmt)


def stdout_formats(command: str = "scan") -> list[str]:
    """Names ``--format`` accepts for ``command``."""
    return [f.name for f in FORMATS.values() if f.stdout and command in f.commands]


def format_for_path(
    path: str, option: str = "output", units: bool = False, command: str | None = None
) -> Format:
    """The format a file name asks for (``report.json`` -> json); ``units`` for the per-unit
    dump, which only some formats have; ``command``: only the formats it writes."""
    suffix = Path(path).suffix.lower()

    def fits(f: Format) -> bool:
        return (f.units is not None or not units) and (command is None or command in f.commands)

    for fmt in FORMATS.values():
        if suffix in fmt.extensions and fits(fmt):
            return fmt
    allowed = [e for f in FORMATS.values() if fits(f) for e in f.extensions[:1]]
    hint = f", or pass {param('fmt')}" if option == "output" else ""
    raise UsageError(
        f"{param(option)} {path}: cannot tell the format from the extension; "
        f"use {', '.join(allowed)}{hint}",
        param=option,
    )


def _table(doc: Document) -> str:
    from relu_doctor.output.table import plain_text

    return plain_text(doc)


def _lazy(module: str, name: str) -> Emitter:
    """An emitter imported on first use (the registry itself stays cheap to import)."""

    def emit(doc: Document) -> str | bytes:
        import importlib

        fn: Emitter = getattr(importlib.import_module(f"relu_doctor.output.{module}"), name)
        return fn(doc)

    return emit


_FIX = ("scan", "check", "fix")
register(Format("table", (".txt",), _table, commands=_FIX, fix=_lazy("proof_emit", "text")))
register(Format("csv", (".csv",), _lazy("csv_emit", "sites"), _lazy("csv_emit", "units")))
register(
    Format(
        "json",
        (".json",),
        _lazy("json_emit", "sites"),
        _lazy("json_emit", "units"),
        commands=_FIX,
        fix=_lazy("proof_emit", "json_text"),
    )
)
register(
    Format(
        "markdown",
        (".md", ".markdown"),
        _lazy("markdown", "sites"),
        _lazy("markdown", "units"),
        commands=_FIX,
        fix=_lazy("proof_emit", "markdown"),
    )
)
register(Format("html", (".html", ".htm"), _lazy("html", "page"), picture=True))
for _name in ("png", "svg", "pdf"):
    register(Format(_name, (f".{_name}",), _lazy("plots", _name), stdout=False, picture=True))
register(Format("github", (), _lazy("check_emit", "github"), commands=("check",)))
register(Format("junit", (".xml",), _lazy("check_emit", "junit"), commands=("check",)))
register(Format("sarif", (".sarif",), _lazy("check_emit", "sarif"), commands=("check",)))
