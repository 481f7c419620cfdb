"""What every command that scans does: check the outputs and the model paths up front, load
and scan each model (one failing model does not lose the others), print and write the
outputs, and turn failures into the exit code."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from relu_doctor.analyze.report import ModelReport
from relu_doctor.analyze.timeline import build_timeline, natural_sorted
from relu_doctor.api import scan
from relu_doctor.cli import ARGV, console, render_error
from relu_doctor.device import resolve_device
from relu_doctor.errors import ReluDoctorError, UsageError, param
from relu_doctor.load import specs
from relu_doctor.load.data import batch_factory
from relu_doctor.load.model import LoadedModel, load_model, trust_from_env
from relu_doctor.output import table
from relu_doctor.output.document import Document, Failure
from relu_doctor.output.files import check_writable, write_atomic
from relu_doctor.output.formats import FORMATS, Format, format_for_path
from relu_doctor.scanner.batches import check_batch_args

EXIT_OK, EXIT_UNHEALTHY, EXIT_ERROR = 0, 1, 2


@dataclass(frozen=True)
class Targets:
    """Where output goes: stdout's format, the report files and the per-unit file."""

    stdout: Format | None  # None: quiet
    files: tuple[tuple[str, Format], ...]
    units: tuple[str, Format] | None
    view: table.View = field(default_factory=table.View)


def targets(opts: dict[str, Any], command: str = "scan") -> Targets:
    """Output formats and files, checked before anything is scanned. ``-o`` may be given
    several times; ``-o -`` is stdout; ``--format`` and an extension that say different
    things are refused rather than guessed; extensions name ``command``'s formats only."""
    fmt = opts.get("fmt")
    stdout: Format | None = None
    files = [*_pictures(opts)]
    for out in opts.get("output") or ():
        if out == "-":
            stdout = FORMATS[fmt or "table"]
            continue
        check_writable(out)
        try:
            by_ext: Format | None = format_for_path(out, command=command)
        except UsageError:
            if fmt is None:
                raise
            by_ext = None
        if fmt is not None and by_ext is not None and by_ext.name != fmt:
            raise UsageError(
                f"{param('fmt')} {fmt} contradicts {param('output')} {out}, whose extension "
                f"says {by_ext.name}; drop {param('fmt')} or name the file for {fmt}",
                param="fmt",
            )
        chosen = FORMATS[fmt] if fmt else by_ext
        assert chosen is not None  # an unknown extension without --format raised above
        files.append((out, chosen))
    units = None
    if opts.get("per_unit"):
        check_writable(opts["per_unit"], "per_unit")
        units = (opts["per_unit"], format_for_path(opts["per_unit"], "per_unit", units=True))
    if stdout is None:
        stdout = FORMATS["table"] if opts.get("output") else FORMATS[fmt or "table"]
    if opts.get("summary_only") and stdout.name != "table":
        raise UsageError(
            f"{param('summary_only')} shortens the table, but stdout gets {stdout.name}; drop "
            f"{param('summary_only')} or write {stdout.name} to a file with {param('output')}",
            param="summary_only",
        )
    for _, f in files:
        f.available()
    stdout.available()
    view = table.View(
        opts.get("top"), bool(opts.get("only_unhealthy")), opts.get("sort") or "order"
    )
    return Targets(None if opts.get("quiet") else stdout, tuple(files), units, view)


def _pictures(opts: dict[str, Any]) -> list[tuple[str, Format]]:
    """``--plot FILE`` (a picture format by extension) and ``--html FILE``."""
    out = []
    for option, allowed in (("plot", ("png", "svg", "pdf")), ("html", ("html",))):
        path = opts.get(option)
        if not path:
            continue
        check_writable(path, option)
        suffix = Path(path).suffix.lower()
        fmt = next((FORMATS[n] for n in allowed if suffix in FORMATS[n].extensions), None)
        if fmt is None:
            exts = ", ".join(e for n in allowed for e in FORMATS[n].extensions)
            raise UsageError(f"{param(option)} {path}: name the file {exts}", param=option)
        out.append((path, fmt))
    return out


def display_names(models: Sequence[str]) -> dict[str, str]:
    """File names, or the paths as given where two checkpoints share a file name."""
    base = {m: Path(m).name for m in models}
    clash = {n for n in base.values() if list(base.values()).count(n) > 1}
    return {m: (m if base[m] in clash else base[m]) for m in models}


def check_models(models: Sequence[str]) -> None:
    """Every MODEL path exists (factories are checked when called): a typo fails before the
    first scan, not after the others."""
    missing = [m for m in models if not Path(m).exists() and not specs.looks_like_spec(m)]
    if missing:
        what = f"{missing[0]}: no such file" if len(missing) == 1 else "no such files: "
        raise UsageError(
            f"{what}{', '.join(missing) if len(missing) > 1 else ''}; check the path "
            "(a factory is MODULE:CALLABLE)"
        )


def ordered(models: Sequence[str], opts: dict[str, Any]) -> list[str]:
    """Natural order of the names (``epoch2`` before ``epoch10``) unless ``keep_order``."""
    return list(models) if opts.get("keep_order") else natural_sorted(models)


#: Called with each MODEL argument, its loaded model and its report, while the model is
#: still in memory.
AfterScan = Callable[[str, LoadedModel, ModelReport], None]


def scan_models(
    models: Sequence[str], opts: dict[str, Any], after: AfterScan | None = None
) -> list[ModelReport | Failure]:
    """Load and scan each model with the command's options, in natural order (or as given
    with ``keep_order``), one at a time and on the very same inputs; a model that fails
    becomes a ``Failure`` in its place (one model alone raises, as before).
    ``after`` sees each loaded model with its report (``check`` reads weights there, so
    nothing is loaded twice); an error it raises counts as that model's failure."""
    check_batch_args(opts["batch_size"], opts.get("batches"))
    check_models(models)
    models = ordered(models, opts)
    trust = bool(opts.get("trust")) or trust_from_env()
    device = resolve_device(opts.get("device") or "auto")
    names = display_names(models)
    fresh = batch_factory(opts["data"], batch_size=opts["batch_size"]) if opts.get("data") else None
    items: list[ModelReport | Failure] = []
    for spec in models:
        try:
            items.append(_scan_one(spec, opts, trust, device, names, fresh, len(models), after))
        except ReluDoctorError as exc:
            if len(models) == 1:
                raise
            items.append(Failure(names[spec], render_error(exc)))
    return items


def scan_options(opts: dict[str, Any], device: Any) -> dict[str, Any]:
    """The keyword arguments of ``scan`` (and of ``repair``'s scans) that the scanning
    options of a command set."""
    return {
        "batch_size": opts["batch_size"],
        "batches": opts.get("batches"),
        "grad": opts["grad"],
        "mode": opts["mode"],
        "device": device,
        "eps": opts["eps"],
        "input_shape": opts.get("input_shape"),
        "seed": opts["seed"],
        "unit_dim": opts.get("unit_dim"),
        "near_dead": opts["near_dead"],
        "tau": opts["tau"],
    }


def load_from_options(spec: str, opts: dict[str, Any], trust: bool, device: Any) -> LoadedModel:
    """``load_model`` with the loading options of a command (``--arch``, ``--verify``,
    ``--strict``)."""
    return load_model(
        spec,
        arch=opts.get("arch"),
        trust=trust,
        device=device,
        verify=opts["verify"],
        strict=opts["strict"],
    )


def _scan_one(
    spec: str,
    opts: dict[str, Any],
    trust: bool,
    device: Any,
    names: dict[str, str],
    fresh: Any,
    count: int,
    after: AfterScan | None = None,
) -> ModelReport:
    with console.spinner(f"loading {names[spec]}"):
        loaded = load_from_options(spec, opts, trust, device)
    with console.progress_bar(f"scanning {loaded.name}") as progress:
        report = scan(
            loaded,
            fresh() if fresh is not None else None,
            **scan_options(opts, device),
            scale=opts.get("scale", "auto"),
            name=names[spec] if count > 1 else loaded.name,
            progress=progress,
        )
    if after is not None:
        after(spec, loaded, report)
    return report


def scan_document(models: Sequence[str], opts: dict[str, Any], **extra: Any) -> Document:
    """Scan the models (``scan_models``) and compare them as a timeline: every site row gets
    ``died``/``revived`` against the checkpoint before, and the document one row per model."""
    timeline = build_timeline(scan_models(models, opts))
    return Document(timeline.items, command=command_line(), timeline=timeline.rows, **extra)


def write_outputs(doc: Document, where: Targets, *, summary_only: bool = False) -> None:
    """Print stdout's format (warnings to stderr when stdout is data) and write the files;
    ``summary_only``: the terminal table shows just the timeline (one row per model)."""
    if where.stdout is None:
        pass
    elif where.stdout.name == "table":
        out = console.out_console()
        parts = table.views(doc, out.width, where.view, summary_only=summary_only)
        if out.is_terminal:
            for part in parts:
                out.print(part)
        else:  # piped: no padding at the ends of lines
            with out.capture() as captured:
                for part in parts:
                    out.print(part)
            click.echo("\n".join(line.rstrip() for line in captured.get().split("\n")), nl=False)
    else:
        console.out_console().out(str(where.stdout.emit(doc)), end="", highlight=False)
        for r in doc.reports:
            for w in r.warnings:
                click.echo(f"warning: {w}", err=True)  # one line each, never wrapped
    for path, fmt in where.files:
        write_atomic(path, fmt.emit(doc))
        click.echo(f"wrote {path}", err=True)
    write_units(where, doc)


def write_units(where: Targets, doc: Document) -> None:
    """The per-unit dump of ``--units FILE``, when asked for."""
    if where.units is not None:
        path, fmt = where.units
        assert fmt.units is not None
        write_atomic(path, fmt.units(doc))
        click.echo(f"wrote {path}", err=True)


def exit_code(doc: Document) -> int:
    """2 when a model could not be scanned (after everything else was written)."""
    if not doc.failures:
        return EXIT_OK
    for f in doc.failures:
        click.echo(f"error: {f.model}: {f.message}", err=True)
    names = ", ".join(f.model for f in doc.failures)
    total = len(doc.items)
    click.echo(
        f"Error: {len(doc.failures)} of {total} models could not be scanned ({names}); "
        "the others are reported",
        err=True,
    )
    return EXIT_ERROR


def command_line() -> str:
    """The command as typed, for reports that say what produced them."""
    return shlex.join(["relu-doctor", *ARGV])
