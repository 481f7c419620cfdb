"""The body of ``relu-doctor fix`` (imported when the command runs, so ``--help`` stays fast)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from relu_doctor.cli import console
from relu_doctor.cli.common import (
    Targets,
    check_models,
    command_line,
    load_from_options,
    scan_options,
    targets,
    write_units,
)
from relu_doctor.device import resolve_device
from relu_doctor.errors import RepairError
from relu_doctor.fix import save
from relu_doctor.fix.repair import repair
from relu_doctor.load.data import batch_factory
from relu_doctor.load.model import trust_from_env
from relu_doctor.output import proof_emit
from relu_doctor.output.document import Document
from relu_doctor.output.files import write_atomic
from relu_doctor.scanner.batches import check_batch_args


def run_fix(model: str, opts: dict[str, Any]) -> int:
    """Check everything that can be checked before the work, repair, write OUT, report."""
    where = targets(opts, "fix")
    out, to = opts["out"], opts["to"]
    check_batch_args(opts["batch_size"], opts.get("batches"))
    check_models([model])
    save.check_out(model, out, opts["force"])
    refusal = save.swap_refusal(opts.get("arch"), to)
    if refusal is not None:
        raise RepairError(refusal, param="to")
    trust = bool(opts.get("trust")) or trust_from_env()
    device = resolve_device(opts.get("device") or "auto")
    loaded = load_from_options(model, opts, trust, device)
    data = (
        batch_factory(opts["data"], batch_size=opts["batch_size"])() if opts.get("data") else None
    )
    with console.progress_bar(f"repairing {loaded.name}") as progress:
        fixed, report = repair(
            loaded,
            data,
            to=to,
            sites=opts.get("sites"),
            slope=opts["slope"],
            alpha=opts["alpha"],
            **scan_options(opts, device),
            name=loaded.name,
            repaired_name=Path(out).name,
            progress=progress,
        )
    if report.changed:
        notes = save.save(model, out, fixed, loaded.runtime, trust=trust, to=to)
        report = replace(report, notes=(*report.notes, *notes))
    reports = (report.before,) + ((report.after,) if report.after is not None else ())
    _write(Document(reports, command=command_line(), proof=report), where)
    if report.changed:
        click.echo(f"wrote {out}", err=True)
    return 0


def _write(doc: Document, where: Targets) -> None:
    """The report on stdout (the table, or the chosen format) and in the report files."""
    if where.stdout is None:
        pass
    elif where.stdout.name == "table":
        console.out_console().print(*proof_emit.views(doc))
    else:
        assert where.stdout.fix is not None
        console.out_console().out(str(where.stdout.fix(doc)), end="", highlight=False)
    for path, fmt in where.files:
        assert fmt.fix is not None
        write_atomic(path, fmt.fix(doc))
        click.echo(f"wrote {path}", err=True)
    write_units(where, doc)
