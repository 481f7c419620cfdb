"""The formats CI reads, from a judged ``Document``: Markdown for a job summary, GitHub
annotation lines, JUnit XML and SARIF 2.1.0 (the last three wrap ``github.py``,
``junit.py`` and ``sarif.py`` and add the models that could not be scanned).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from relu_doctor.analyze.report import ModelReport
from relu_doctor.gate.findings import Finding
from relu_doctor.gate.rules import RULES
from relu_doctor.output import verdict
from relu_doctor.output.document import Document, Failure
from relu_doctor.output.github import escape_data, escape_property, github_annotations
from relu_doctor.output.junit import junit_xml
from relu_doctor.output.markdown import cell, table
from relu_doctor.output.sarif import sarif_log

#: The compact per-site table of the job summary: (header, column, format).
_SITE_CELLS = (
    ("site", "site", None),
    ("activation", "activation", None),
    ("units", "units", None),
    ("dead", "dead", None),
    ("dead %", "dead_fraction", "{:.1%}"),
    ("near-dead", "near_dead", None),
    ("max act", "max_activation", "{:.3g}"),
)


def markdown(doc: Document) -> str:
    """A GitHub job summary: the verdict, one line per model, then per model its findings
    and a compact site table (folded away when the model is healthy)."""
    ok = verdict.passed(doc)
    out = [f"## relu-doctor check: {'✅' if ok else '❌'} {verdict.verdict_line(doc)}", ""]
    rows: list[list[object]] = []
    for item in doc.items:
        if isinstance(item, Failure):
            rows.append([item.model, "error", "", "", "could not be scanned"])
            continue
        found = verdict.findings_of(doc, item.model)
        state = "healthy" if verdict.healthy(doc, item.model) else "**unhealthy**"
        dead = f"{item.dead_units} of {item.total_units} ({item.dead_fraction:.1%})"
        rows.append([item.model, state, dead, item.samples, verdict.counts(found)])
    out += table(["model", "verdict", "dead ReLU units", "samples", "findings"], rows)
    for item in doc.items:
        out.append("")
        if isinstance(item, Failure):
            out += [f"### {item.model}", "", f"error: {cell(item.message)}"]
            continue
        out += _model_section(doc, item)
    out += ["", f"Thresholds: {verdict.threshold_text(doc)}"]
    if verdict.gate_of(doc).baseline:
        out[-1] += f"; baseline `{verdict.gate_of(doc).baseline}`"
    return "\n".join(out) + "\n"


def _model_section(doc: Document, report: ModelReport) -> list[str]:
    found = verdict.findings_of(doc, report.model)
    out = [f"### {report.model}", ""]
    if found:
        out += table(
            ["rule", "severity", "site", "finding", "fix"],
            ([f.rule, f.severity, f.site or "", f.message, f.fix] for f in found),
        )
    else:
        out.append("No findings: every rule that ran passed.")
    sites = [
        [_fmt(s.row()[col], spec) for _, col, spec in _SITE_CELLS]
        for s in report.sites
        if s.executed
    ]
    fold = verdict.healthy(doc, report.model)
    out += ["", "<details>" if fold else "<details open>", "<summary>Sites</summary>", ""]
    out += table([h for h, _, _ in _SITE_CELLS], sites)
    out += ["", "</details>"]
    return out


def _fmt(value: object, spec: str | None) -> object:
    if spec is None or value is None:
        return value
    return spec.format(value)


def github(doc: Document) -> str:
    """``::error file=...,title=RD101::...`` lines; a model that could not be scanned is an
    ``::error`` of its own."""
    paths = verdict.gate_of(doc).paths
    lines = []
    for item in doc.items:
        if isinstance(item, Failure):
            path = paths.get(item.model)
            props = f"file={escape_property(path)}," if path else ""
            msg = escape_data(f"{item.model} could not be scanned: {item.message}")
            lines.append(f"::error {props}title=relu-doctor::{msg}\n")
        else:
            lines.append(github_annotations(verdict.findings_of(doc, item.model), paths))
    return "".join(lines)


def junit(doc: Document) -> str:
    """JUnit XML: a suite per model (``junit.py``); a model that could not be scanned is a
    suite with one errored case, in its place."""
    rules = [RULES[c] for c in verdict.gate_of(doc).rules] if doc.gate else None
    text = junit_xml(list(doc.reports), verdict.all_findings(doc), rules)
    if not doc.failures:
        return text
    root = ET.fromstring(text)
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    for s in list(root):
        root.remove(s)
    for item in doc.items:
        if isinstance(item, Failure):
            root.append(_error_suite(item))
        elif item.model in suites:
            root.append(suites.pop(item.model))
    for s in suites.values():
        root.append(s)
    root.set("errors", str(len(doc.failures)))
    root.set("tests", str(int(root.get("tests", "0")) + len(doc.failures)))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, "unicode") + "\n"


def _error_suite(failure: Failure) -> ET.Element:
    suite = ET.Element(
        "testsuite", name=failure.model, tests="1", failures="0", errors="1", skipped="0"
    )
    case = ET.SubElement(suite, "testcase", classname=failure.model, name="scan")
    err = ET.SubElement(case, "error", message=failure.message, type="scan")
    err.text = f"{failure.model} could not be scanned: {failure.message}"
    return suite


def sarif(doc: Document) -> str:
    """SARIF 2.1.0 (``sarif.py``), every registered rule described; the run's invocation
    says whether every model could be scanned, with one notification per model that
    could not."""
    gate = verdict.gate_of(doc)
    findings: list[Finding] = verdict.all_findings(doc)
    log = sarif_log(list(doc.reports), findings, RULES, gate.paths)
    invocation: dict[str, object] = {"executionSuccessful": not doc.failures}
    if doc.command:
        invocation["commandLine"] = doc.command
    if doc.failures:
        invocation["toolExecutionNotifications"] = [
            {"level": "error", "message": {"text": f"{f.model} could not be scanned: {f.message}"}}
            for f in doc.failures
        ]
    log["runs"][0]["invocations"] = [invocation]
    return json.dumps(log, indent=2, allow_nan=False) + "\n"
