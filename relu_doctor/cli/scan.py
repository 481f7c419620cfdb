"""The body of ``relu-doctor scan`` (imported when the command runs, so ``--help`` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relu_doctor.analyze.report import ModelReport
from relu_doctor.api import scan
from relu_doctor.cli import console
from relu_doctor.device import resolve_device
from relu_doctor.load.data import batch_factory
from relu_doctor.load.model import load_model, trust_from_env
from relu_doctor.output import table
from relu_doctor.output.document import Document
from relu_doctor.output.files import check_writable, write_atomic
from relu_doctor.output.formats import FORMATS, Format, format_for_path
from relu_doctor.scanner.batches import check_batch_args


@dataclass(frozen=True)
class Targets:
    """Where output goes: stdout's format, the report file and the per-unit file."""

    stdout: Format
    report: tuple[str, Format] | None
    units: tuple[str, Format] | None


def targets(opts: dict[str, Any]) -> Targets:
    """Output formats and files, checked before anything is scanned."""
    fmt, output, per_unit = opts.get("fmt"), opts.get("output"), opts.get("per_unit")
    report = None
    if output:
        check_writable(output)
        report = (output, FORMATS[fmt] if fmt else format_for_path(output))
    units = None
    if per_unit:
        check_writable(per_unit, "per_unit")
        units = (per_unit, format_for_path(per_unit, "per_unit", units=True))
    stdout = FORMATS["table"] if output else FORMATS[fmt or "table"]
    return Targets(stdout, report, units)


def display_names(models: list[str]) -> dict[str, str]:
    """File names, or the paths as given where two checkpoints share a file name."""
    base = {m: Path(m).name for m in models}
    clash = {n for n in base.values() if list(base.values()).count(n) > 1}
    return {m: (m if base[m] in clash else base[m]) for m in models}


def scan_models(models: list[str], opts: dict[str, Any]) -> list[ModelReport]:
    """Load and scan each model with the command's options; progress bar on stderr."""
    check_batch_args(opts["batch_size"], opts.get("batches"))
    trust = bool(opts.get("trust")) or trust_from_env()
    device = resolve_device(opts.get("device") or "auto")
    names = display_names(models)
    fresh = batch_factory(opts["data"], batch_size=opts["batch_size"]) if opts.get("data") else None
    reports = []
    for spec in models:
        loaded = load_model(
            spec,
            arch=opts.get("arch"),
            trust=trust,
            device=device,
            verify=opts["verify"],
            strict=opts["strict"],
        )
        data = fresh() if fresh is not None else None
        with console.progress_bar(f"scanning {loaded.name}") as progress:
            reports.append(
                scan(
                    loaded,
                    data,
                    batch_size=opts["batch_size"],
                    batches=opts.get("batches"),
                    grad=opts["grad"],
                    mode=opts["mode"],
                    device=device,
                    eps=opts["eps"],
                    input_shape=opts.get("input_shape"),
                    seed=opts["seed"],
                    unit_dim=opts.get("unit_dim"),
                    near_dead=opts["near_dead"],
                    tau=opts["tau"],
                    name=names[spec] if len(models) > 1 else loaded.name,
                    progress=progress,
                )
            )
    return reports


def write_outputs(doc: Document, where: Targets) -> None:
    """Print stdout's format (warnings to stderr when stdout is data) and write the files."""
    err = console.err_console()
    if where.stdout.name == "table":
        out = console.out_console()
        for part in table.views(doc):
            out.print(part)
    else:
        console.out_console().out(where.stdout.emit(doc), end="", highlight=False)
        for r in doc.reports:
            for w in r.warnings:
                err.print(f"[yellow]warning:[/yellow] {w}")
    if where.report is not None:
        path, fmt = where.report
        write_atomic(path, fmt.emit(doc))
        err.print(f"wrote {path}")
    if where.units is not None:
        path, fmt = where.units
        assert fmt.units is not None
        write_atomic(path, fmt.units(doc))
        err.print(f"wrote {path}")


def run_scan(models: list[str], opts: dict[str, Any]) -> int:
    where = targets(opts)
    reports = scan_models(models, opts)
    write_outputs(Document(tuple(reports)), where)
    return 0
