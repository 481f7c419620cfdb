"""What ``check`` concluded, in words: which models are healthy, the findings under each
model's table, the thresholds with where they came from, the closing verdict line, and the
``check``/``findings``/``healthy`` additions to the JSON report.

Everything reads a ``Document`` whose ``findings`` (model name -> findings) and ``gate``
(thresholds, rules, ``fail_on``) were filled by the command; only drawing happens here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from relu_doctor.gate.findings import SEVERITIES, Finding
from relu_doctor.gate.judge import is_healthy
from relu_doctor.output.document import Document, Gate

#: Colour of each finding severity in the terminal.
STYLES = {"error": "bold red", "warning": "yellow", "note": "cyan"}


def gate_of(doc: Document) -> Gate:
    return doc.gate if doc.gate is not None else Gate()


def findings_of(doc: Document, model: str) -> list[Finding]:
    return list((doc.findings or {}).get(model, ()))


def all_findings(doc: Document) -> list[Finding]:
    """Every finding, models in document order."""
    return [f for r in doc.reports for f in findings_of(doc, r.model)]


def healthy(doc: Document, model: str) -> bool:
    """No finding of ``model`` as severe as the gate's ``fail_on``."""
    fail_on: Any = gate_of(doc).fail_on
    return is_healthy(findings_of(doc, model), fail_on=fail_on)


def unhealthy(doc: Document) -> list[str]:
    """Models judged unhealthy, in document order."""
    return [r.model for r in doc.reports if not healthy(doc, r.model)]


def passed(doc: Document) -> bool:
    """Every model was scanned and is healthy (exit code 0)."""
    return not doc.failures and not unhealthy(doc)


def counts(findings: Sequence[Finding]) -> str:
    """``2 errors, 1 warning`` (severities worst first; ``no findings`` when empty)."""
    parts = []
    for sev in SEVERITIES:
        n = sum(f.severity == sev for f in findings)
        if n:
            parts.append(f"{n} {sev}{'s' if n != 1 else ''}")
    return ", ".join(parts) or "no findings"


def key(name: str) -> str:
    """A threshold's name as an option and config key: ``max_dead`` -> ``max-dead``."""
    return name.replace("_", "-")


def threshold_text(doc: Document) -> str:
    """``max-dead 0.1 (default), ..., max-near-dead off, ...``."""
    parts = []
    for name, th in gate_of(doc).thresholds.items():
        if th.value is None:
            parts.append(f"{key(name)} off" + ("" if th.origin == "default" else f" ({th.origin})"))
        else:
            parts.append(f"{key(name)} {th.value:g} ({th.origin})")
    return ", ".join(parts)


def verdict_line(doc: Document) -> str:
    """The closing line: PASS, FAIL with the unhealthy models and their failing findings,
    or ERROR when a model could not be scanned."""
    total = len(doc.items)
    bad = unhealthy(doc)
    failed = [f.model for f in doc.failures]
    if not bad and not failed:
        if total == 1:
            return f"PASS: {doc.items[0].model} is healthy"
        return f"PASS: all {total} models are healthy"
    fail_on: Any = gate_of(doc).fail_on
    worst = SEVERITIES.index(fail_on)
    parts = []
    named = []
    for model in bad:
        failing = [f for f in findings_of(doc, model) if SEVERITIES.index(f.severity) <= worst]
        named.append((model, counts(failing)))
    if total == 1 and bad:
        parts.append(f"{named[0][0]} is unhealthy ({named[0][1]})")
    elif bad:
        named_text = ", ".join(f"{m} ({c})" for m, c in named)
        parts.append(f"{len(bad)} of {total} models unhealthy: {named_text}")
    if failed:
        parts.append(f"{len(failed)} of {total} could not be scanned: {', '.join(failed)}")
    return ("FAIL: " if bad else "ERROR: ") + "; ".join(parts)


# --- the terminal ----------------------------------------------------------------------------


def findings_view(doc: Document, model: str) -> Group | Text:
    """The findings of one model under its table: rule, severity, what was measured
    against which limit (the message), and the one-line fix."""
    found = findings_of(doc, model)
    if not found:
        return Text("No findings: every rule that ran passed.", style="green")
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for f in found:
        style = STYLES[f.severity]
        text = Text(f.message)
        text.append(f"\nfix: {f.fix}", style="dim")
        grid.add_row(Text(f" {f.rule}", style=style), Text(f.severity, style=style), text)
    title = Text("Findings", style="bold")
    title.append(f" ({counts(found)})")
    return Group(title, grid)


def footer(doc: Document) -> Text:
    """Thresholds with their origin, the baseline, and the verdict line."""
    gate = gate_of(doc)
    text = Text()
    text.append("\nThresholds: ", style="bold")
    text.append(threshold_text(doc))
    if gate.baseline:
        text.append(f"; baseline {gate.baseline}")
    if gate.fail_on != "error":
        text.append(f"; fails on {gate.fail_on} and worse")
    text.append("\n")
    line = verdict_line(doc)
    style = "bold green" if line.startswith("PASS") else "bold red"
    text.append(line, style=style)
    return text


# --- JSON ------------------------------------------------------------------------------------


def json_additions(data: dict[str, Any], doc: Document) -> dict[str, Any]:
    """``data`` (the scan JSON of ``doc``) with ``check`` after ``version`` (healthy,
    fail_on, rules, thresholds with origin, baseline) and ``findings``/``healthy`` in each
    scanned model."""
    gate = gate_of(doc)
    for entry in data["models"]:
        if "error" in entry:
            continue
        entry["findings"] = [f.to_dict() for f in findings_of(doc, entry["model"])]
        entry["healthy"] = healthy(doc, entry["model"])
    check = {
        "healthy": passed(doc),
        "fail_on": gate.fail_on,
        "rules": list(gate.rules),
        "thresholds": {
            name: {"value": th.value, "origin": th.origin} for name, th in gate.thresholds.items()
        },
        "baseline": gate.baseline,
    }
    head = {k: v for k, v in data.items() if k != "models"}
    return {**head, "check": check, "models": data["models"]}
