"""The body of ``relu-doctor scan`` (imported when the command runs, so ``--help`` stays fast)."""

from __future__ import annotations

from typing import Any

from relu_doctor.cli.common import command_line, exit_code, scan_models, targets, write_outputs
from relu_doctor.output.document import Document


def run_scan(models: list[str], opts: dict[str, Any]) -> int:
    where = targets(opts)
    doc = Document(tuple(scan_models(models, opts)), command=command_line())
    write_outputs(doc, where)
    return exit_code(doc)
