"""The body of ``relu-doctor scan`` (imported when the command runs, so ``--help`` stays fast)."""

from __future__ import annotations

from typing import Any

from relu_doctor.cli.common import exit_code, scan_document, targets, write_outputs


def run_scan(models: list[str], opts: dict[str, Any]) -> int:
    where = targets(opts)
    doc = scan_document(models, opts)
    write_outputs(doc, where, summary_only=bool(opts.get("summary_only")))
    return exit_code(doc)
