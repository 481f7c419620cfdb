"""JUnit XML for CI test tabs: a test suite per model, a test case per site and per
model-level rule. A case fails when an ``error`` finding names it (the failure carries its
messages and fixes); warnings and notes go to the case's ``system-out`` and pass; a site
that never ran is skipped.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence

from relu_doctor.gate.findings import Finding, ReportLike
from relu_doctor.gate.rules import RULES, Rule


def junit_xml(
    reports: Sequence[ReportLike],
    findings: Iterable[Finding],
    rules: Iterable[Rule] | None = None,
) -> str:
    """The JUnit XML document. ``rules``: the rules that ran (default: all registered); each
    model-level one becomes a test case of every model."""
    found = list(findings)
    model_rules = [r for r in (RULES if rules is None else rules) if r.scope == "model"]
    models = [r.model for r in reports]
    models += sorted({f.model for f in found} - set(models))
    root = ET.Element("testsuites", name="relu-doctor")
    totals = {"tests": 0, "failures": 0, "skipped": 0}
    for model in models:
        report = next((r for r in reports if r.model == model), None)
        mine = [f for f in found if f.model == model]
        suite = ET.SubElement(root, "testsuite", name=model)
        cases: list[tuple[str, list[Finding], bool]] = []
        for rule in model_rules:
            cases.append(
                (f"{rule.code} {rule.name}", [f for f in mine if f.rule == rule.code], False)
            )
        sites = [] if report is None else [s.site for s in report.sites]
        idle = set() if report is None else {s.site for s in report.sites if not s.executed}
        extra = [f.site for f in mine if f.site is not None and f.site not in sites]
        for site in sites + list(dict.fromkeys(extra)):
            cases.append((site, [f for f in mine if f.site == site], site in idle))
        counts = {"tests": len(cases), "failures": 0, "skipped": 0}
        for name, case_findings, skipped in cases:
            outcome = _case(suite, model, name, case_findings, skipped)
            if outcome:
                counts[outcome] += 1
        suite.attrib.update({k: str(v) for k, v in counts.items()}, errors="0")
        for k in totals:
            totals[k] += counts[k]
    root.attrib.update({k: str(v) for k, v in totals.items()}, errors="0")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, "unicode") + "\n"


def _case(
    suite: ET.Element, model: str, name: str, findings: list[Finding], skipped: bool
) -> str | None:
    """Add one test case; returns ``"failures"``, ``"skipped"`` or None (passed)."""
    case = ET.SubElement(suite, "testcase", classname=model, name=name)
    errors = [f for f in findings if f.severity == "error"]
    others = [f for f in findings if f.severity != "error"]
    outcome = None
    if errors:
        fail = ET.SubElement(
            case,
            "failure",
            message="; ".join(f.message for f in errors),
            type=",".join(dict.fromkeys(f.rule for f in errors)),
        )
        fail.text = "\n".join(_line(f) for f in errors)
        outcome = "failures"
    elif skipped:
        ET.SubElement(case, "skipped", message="never ran during the scan")
        outcome = "skipped"
    if others:
        ET.SubElement(case, "system-out").text = "\n".join(_line(f) for f in others)
    return outcome


def _line(f: Finding) -> str:
    return f"{f.rule} ({f.severity}) {f.message}\n  fix: {f.fix}"
