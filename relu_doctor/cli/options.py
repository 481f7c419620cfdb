"""The options the commands share, in groups, and how a library parameter is spelled as a
flag. Importing this module loads neither torch nor pandas."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import click

from relu_doctor.output.formats import stdout_formats

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


class GroupedOption(click.Option):
    """An option that belongs to a help section (``Loading``, ``Inputs`` ...)."""

    def __init__(self, *args: Any, group: str = "Other", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group


class GroupedCommand(click.Command):
    """Shows options under their section headings, in the order the sections first appear."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for p in self.get_params(ctx):
            record = p.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(p, "group", "Other"), []).append(record)
        for title, records in sections.items():
            with formatter.section(f"{title} options"):
                formatter.write_dl(records)


def _option(*decls: str, group: str, **kwargs: Any) -> Decorator:
    return click.option(*decls, cls=GroupedOption, group=group, **kwargs)


class InputShape(click.ParamType):
    """One sample's shape: ``3,32,32``, ``3x32x32``, ``(3, 32, 32)`` or ``784`` (a list in
    pyproject.toml)."""

    name = "SHAPE"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        text = str(value)
        core = text.strip().strip("()[]").strip()
        parts = re.split(r"\s*[,xX×]\s*", core)
        if len(parts) > 1 and parts[-1] == "":
            parts.pop()  # "(784,)"
        if not core or not all(p.isdecimal() and int(p) > 0 for p in parts):
            self.fail(f"{text!r}: expected comma-separated positive integers like 3,32,32")
        return tuple(int(p) for p in parts)


def scan_options(command: str) -> Decorator:
    """Everything that loads a model, feeds it and shapes the output."""
    options = [
        _option(
            "--arch",
            metavar="MODULE:CALLABLE",
            group="Loading",
            help="Builds the model that a state dict fills (also path/to/file.py:Name).",
        ),
        _option(
            "--trust",
            is_flag=True,
            group="Loading",
            help="Allow a file to run code (only for files you trust). Also RELU_DOCTOR_TRUST=1.",
        ),
        _option(
            "--verify/--no-verify",
            default=True,
            show_default=True,
            group="Loading",
            help="Check every record of a zip-format file against its CRC-32 before loading.",
        ),
        _option(
            "--strict/--no-strict",
            default=True,
            show_default=True,
            group="Loading",
            help="A state dict must fill --arch exactly (training leftovers aside); "
            "--no-strict loads the keys that fit.",
        ),
        _option(
            "--input-shape",
            type=InputShape(),
            group="Inputs",
            help="One sample's shape for synthetic inputs, e.g. 784 or 3,32,32.",
        ),
        _option(
            "--data",
            metavar="FILE|MODULE:CALLABLE",
            group="Inputs",
            help="Your data: .pt .npy .npz .csv .parquet, or a callable that returns "
            "an iterable of batches.",
        ),
        _option(
            "--batch-size",
            type=int,
            default=32,
            show_default=True,
            group="Inputs",
            help="Samples per batch.",
        ),
        _option(
            "--batches",
            type=int,
            default=None,
            group="Inputs",
            help="Batches to scan [default: 8 synthetic, or all of --data].",
        ),
        _option(
            "--seed",
            type=int,
            default=0,
            show_default=True,
            group="Inputs",
            help="Seed of the synthetic inputs.",
        ),
        _option(
            "--device",
            default="auto",
            show_default=True,
            metavar="auto|cpu|cuda[:N]",
            group="Running",
            help="Where to run the scan.",
        ),
        _option(
            "--mode",
            type=click.Choice(["eval", "train"]),
            default="eval",
            show_default=True,
            group="Running",
            help="Module mode during the scan (restored after).",
        ),
        _option(
            "--grad/--no-grad",
            default=True,
            show_default=True,
            group="Running",
            help="Also run a backward pass for gradient norms.",
        ),
        _option(
            "--eps",
            type=float,
            default=0.0,
            show_default=True,
            group="Definitions",
            help="A unit fires on a sample when an output element is > eps.",
        ),
        _option(
            "--near-dead",
            type=float,
            default=0.01,
            show_default=True,
            group="Definitions",
            help="Firing rate below which a live unit counts as near-dead.",
        ),
        _option(
            "--tau",
            type=float,
            default=0.025,
            show_default=True,
            group="Definitions",
            help="ReDo dormant threshold on the normalised activation score.",
        ),
        _option(
            "--unit-dim",
            type=int,
            default=None,
            group="Definitions",
            help="Dim that holds the units of every site [default: features of "
            "(N,F), channels of conv outputs, last dim after a Linear].",
        ),
        _option(
            "--keep-order",
            is_flag=True,
            group="Loading",
            help="Scan and compare several MODELs in the order given [default: natural "
            "order of the names, epoch2 before epoch10].",
        ),
        _option(
            "--summary-only",
            is_flag=True,
            group="Output",
            help="The terminal shows only the timeline: one row per MODEL (dead, died, "
            "revived, worst site).",
        ),
        _option(
            "--format",
            "fmt",
            type=click.Choice(stdout_formats(command)),
            default=None,
            group="Output",
            help="Output format [default: table, or from -o's extension].",
        ),
        _option(
            "-o",
            "--output",
            metavar="FILE",
            multiple=True,
            group="Output",
            help="Write the report to FILE (.csv .json .md .txt; '-' for stdout); the table "
            "still prints. Repeat for several files.",
        ),
        _option(
            "--per-unit",
            metavar="FILE",
            group="Output",
            help="Write one row per unit to FILE (.csv .json .md).",
        ),
        _option(
            "--debug",
            is_flag=True,
            group="Output",
            callback=_remember_debug,
            help="Show tracebacks.",
        ),
    ]

    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


#: Set by ``--debug`` (from the command line or the config) once the options are parsed.
DEBUG = {"on": False}


def _remember_debug(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    DEBUG["on"] = bool(value)
    return value


def spell(params: list[click.Parameter], name: str, value: str | None = None) -> str:
    """How a library parameter (``eps``, ``grad`` with value ``False``) is written on the
    command line, from the click parameters themselves."""
    for p in params:
        if p.name != name or not isinstance(p, click.Option):
            continue
        longs = [o for o in p.opts if o.startswith("--")] or list(p.opts)
        if value is None:
            return longs[0]
        if p.is_flag and p.secondary_opts and value.lower() in ("false", "0"):
            return p.secondary_opts[0]
        if p.is_flag:
            return longs[0]
        return f"{longs[0]} {value}"
    return name if value is None else f"{name}={value}"
