"""Bodies of the CLI commands (imported lazily by ``cli.py``, so `--help` stays fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relu_doctor import export, render
from relu_doctor.api import resolve_device, scan
from relu_doctor.inputs import check_batch_args, parse_input_shape
from relu_doctor.load.data import data_source
from relu_doctor.load.model import load_model, trust_from_env
from relu_doctor.report import ModelReport


def _targets(opts: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """(stdout format, report file format, per-unit file format), checked before scanning."""
    fmt = opts.get("fmt")
    output, per_unit = opts.get("output"), opts.get("per_unit")
    file_fmt = None
    if output:
        export.check_writable(output)
        file_fmt = fmt or export.format_for_path(output)
    unit_fmt = None
    if per_unit:
        export.check_writable(per_unit)
        unit_fmt = export.format_for_path(per_unit, "--per-unit", (".csv", ".json", ".md"))
    stdout_fmt = "table" if output else (fmt or "table")
    return stdout_fmt, file_fmt, unit_fmt


def display_names(models: list[str]) -> dict[str, str]:
    """File names, or the paths as given where two checkpoints share a file name."""
    base = {m: Path(m).name for m in models}
    clash = {n for n in base.values() if list(base.values()).count(n) > 1}
    return {m: (m if base[m] in clash else base[m]) for m in models}


def scan_models(models: list[str], opts: dict[str, Any]) -> list[ModelReport]:
    """Load and scan each model with the CLI's options; progress bar on stderr."""
    check_batch_args(opts["batch_size"], opts.get("batches"))
    shape = parse_input_shape(opts["input_shape"]) if opts.get("input_shape") else None
    trust = bool(opts.get("trust")) or trust_from_env()
    device = resolve_device(opts.get("device") or "auto")
    names = display_names(models)
    source = data_source(opts["data"], batch_size=opts["batch_size"]) if opts.get("data") else None
    reports = []
    for spec in models:
        loaded = load_model(spec, arch=opts.get("arch"), trust=trust, device=device)
        data = source() if source is not None else None
        with render.progress_bar(f"scanning {loaded.name}") as progress:
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
                    input_shape=shape,
                    seed=opts["seed"],
                    unit_dim=opts.get("unit_dim"),
                    near_dead=opts["near_dead"],
                    tau=opts["tau"],
                    name=names[spec] if len(models) > 1 else loaded.name,
                    progress=progress,
                )
            )
    return reports


def write_outputs(
    reports: list[ModelReport], opts: dict[str, Any], formats: tuple[str, str | None, str | None]
) -> None:
    stdout_fmt, file_fmt, unit_fmt = formats
    if stdout_fmt == "table":
        render.print_reports(reports)
    else:
        render.out_console().out(export.report_text(reports, stdout_fmt), end="", highlight=False)
        for r in reports:
            for w in r.warnings:
                render.err_console().print(f"[yellow]warning:[/yellow] {w}")
    if file_fmt:
        text = (
            render.plain_table(reports)
            if file_fmt == "table"
            else export.report_text(reports, file_fmt)
        )
        export.write_atomic(opts["output"], text)
        render.err_console().print(f"wrote {opts['output']}")
    if unit_fmt:
        export.write_atomic(opts["per_unit"], export.units_text(reports, unit_fmt))
        render.err_console().print(f"wrote {opts['per_unit']}")


def run_scan(models: list[str], opts: dict[str, Any]) -> int:
    formats = _targets(opts)
    reports = scan_models(models, opts)
    write_outputs(reports, opts, formats)
    return 0
