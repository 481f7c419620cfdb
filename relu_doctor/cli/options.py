"""The options the commands share, in groups, and how a library parameter is spelled as a
flag. Importing this module loads neither torch nor pandas."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import click

from relu_doctor.output.formats import FORMATS, stdout_formats

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
            if isinstance(p, click.Argument):  # click >= 8.3 gives arguments a record
                continue
            record = p.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(p, "group", "Other"), []).append(record)
        for title, records in sections.items():
            with formatter.section(f"{title} options"):
                formatter.write_dl(records)


def examples(*lines: str) -> str:
    """A command's help epilog: an ``Examples:`` block shown after the options."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


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


class OneLineChoice(click.Choice):
    """A choice whose "missing" message fits the one ``Error:`` line."""

    def get_missing_message(self, param: click.Parameter, ctx: click.Context | None) -> str:
        return f"Choose from {', '.join(map(str, self.choices))}."


def _extensions(command: str) -> str:
    """The file extensions ``-o`` understands for ``command`` (``.csv .json ...``)."""
    exts = [e for f in FORMATS.values() if command in f.commands for e in f.extensions[:1]]
    return " ".join(sorted(exts))


class ScaleFactor(click.ParamType):
    """``auto`` or a positive factor: ``1/255``, ``0.5``, ``2`` (a number in pyproject.toml)."""

    name = "auto|FACTOR"

    def convert(self, value: Any, param: Any, ctx: Any) -> float | str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif str(value).strip().lower() == "auto":
            return "auto"
        else:
            top, _, bottom = str(value).strip().partition("/")
            try:
                number = float(top) / float(bottom) if bottom else float(top)
            except (ValueError, ZeroDivisionError):
                self.fail(f"{value!r}: expected auto or a positive number such as 1/255")
        if not 0 < number < float("inf"):
            self.fail(f"{value!r}: expected auto or a positive number such as 1/255")
        return number


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
            "--scale",
            type=ScaleFactor(),
            default="auto",
            show_default=True,
            group="Inputs",
            help="Multiply integer (e.g. uint8 image) or float inputs by FACTOR, e.g. 1/255; "
            "auto: 1/255 for uint8 data that becomes float, else 1.",
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
            help="Seed of the synthetic inputs"
            + (" and of the re-drawn weights." if command == "fix" else "."),
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
        _report_option(command),
    ]
    options += _scan_views() if command != "fix" else []
    options += [
        _option(
            "--per-unit",
            metavar="FILE",
            group="Output",
            help="Write one row per unit to FILE (.csv .json .md)"
            + (", of the model before and after the repair." if command == "fix" else "."),
        ),
        _option(
            "-q",
            "--quiet",
            is_flag=True,
            group="Output",
            help="Print nothing on stdout (only write the files).",
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


def _scan_views() -> list[Decorator]:
    """Pictures and the shape of the table (scan and check; fix prints its own report)."""
    return [
        _option(
            "--plot",
            metavar="FILE",
            group="Output",
            help="Draw the report to FILE (.png .svg .pdf): per-site bars and firing-rate "
            "histograms; several models: a checkpoints x sites heatmap. Needs matplotlib.",
        ),
        _option(
            "--html",
            metavar="FILE",
            group="Output",
            help="Write one self-contained HTML page (opens offline). Needs matplotlib.",
        ),
        _option(
            "--top",
            type=click.IntRange(min=1),
            default=None,
            group="Output",
            help="Show only the N sites with the largest dead fraction in the table.",
        ),
        _option(
            "--only-unhealthy",
            is_flag=True,
            group="Output",
            help="Show only sites with dead, near-dead or non-finite units in the table.",
        ),
        _option(
            "--sort",
            type=click.Choice(["order", "dead", "name"]),
            default="order",
            show_default=True,
            group="Output",
            help="Table order: network order, most dead first, or by name. Files keep every "
            "site in network order.",
        ),
    ]


def _report_option(command: str) -> Decorator:
    """Where the report goes: ``-o FILE`` for scan and check; ``fix`` writes the repaired
    model to ``-o`` and its report to ``--report`` (the same ``output`` parameter)."""
    if command == "fix":
        return _option(
            "--report",
            "output",
            metavar="FILE",
            multiple=True,
            group="Output",
            help="Write the before/after report to FILE (.txt .json .md; '-' for stdout); "
            "the table still prints. Repeat for several files.",
        )
    return _option(
        "-o",
        "--output",
        metavar="FILE",
        multiple=True,
        group="Output",
        help=f"Write the report to FILE ({_extensions(command)}; '-' for stdout); the table "
        "still prints. Repeat for several files.",
    )


def fix_options() -> Decorator:
    """What ``fix`` does and where the repaired model goes."""
    from relu_doctor.fix import TARGETS  # names only: imports nothing heavy

    options = [
        _option(
            "-o",
            "--out",
            metavar="OUT",
            required=True,
            group="Repair",
            help="Write the repaired model to OUT, in the input's form (a pickle stays a "
            "pickle, a state dict a state dict).",
        ),
        _option(
            "--to",
            type=OneLineChoice(TARGETS),
            required=True,
            group="Repair",
            help="Swap the ReLU for an activation that passes gradient, or reinit: "
            "re-draw the dead units' incoming weights and zero their outgoing ones (ReDo).",
        ),
        _option(
            "--sites",
            metavar="NAME,...|all",
            group="Repair",
            help="Sites to repair [default: the sites check flags: a site more than 50% "
            "dead, or every site with dead units when the model is more than 10% dead].",
        ),
        _option(
            "--slope",
            type=float,
            default=0.01,
            show_default=True,
            group="Repair",
            help="Negative slope of leaky_relu, initial slope of prelu.",
        ),
        _option(
            "--alpha",
            type=float,
            default=1.0,
            show_default=True,
            group="Repair",
            help="alpha of elu.",
        ),
        _option(
            "--force",
            is_flag=True,
            group="Repair",
            help="Allow OUT to be the input file (overwrite it).",
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
