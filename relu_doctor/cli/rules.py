"""The bodies of ``relu-doctor rules`` (the rule list) and ``relu-doctor explain`` (one
record), both read from the rule registry. Neither loads torch."""

from __future__ import annotations

import json
from typing import Any

import click

from relu_doctor.gate.rules import RULES, Rule, rules_markdown


def find_rule(text: str) -> Rule:
    """A rule by code (``RD101``, any case) or name (``dead-site``); a UsageError listing
    the known codes otherwise."""
    wanted = text.strip().lower()
    for rule in RULES:
        if rule.name == wanted:
            return rule
    return RULES.lookup(text)


def run_explain(rule: str) -> int:
    click.echo(find_rule(rule).help_text())
    return 0


def rule_record(rule: Rule) -> dict[str, Any]:
    """One rule as JSON: every field of its record."""
    return {
        "code": rule.code,
        "name": rule.name,
        "severity": rule.severity,
        "scope": rule.scope,
        "parameter": rule.param,
        "default": rule.default,
        "summary": rule.summary,
        "what_it_does": rule.what_it_does,
        "why": rule.why,
        "fix": rule.fix,
        "references": [{"title": r.title, "url": r.url} for r in rule.references],
    }


def rules_table(rules: list[Rule]) -> str:
    """Aligned plain text: code, name, severity, per, threshold, summary."""
    header = ("code", "name", "severity", "per", "threshold", "summary")
    rows = [header] + [
        (r.code, r.name, r.severity, r.scope, _threshold(r), r.summary) for r in rules
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines) + "\n"


def _threshold(rule: Rule) -> str:
    if rule.param is None:
        return "–"
    flag = "--" + rule.param.replace("_", "-")
    return f"{flag} off" if rule.default is None else f"{flag} {rule.default:g}"


def run_rules(fmt: str) -> int:
    rules = list(RULES)
    if fmt == "json":
        text = json.dumps({"rules": [rule_record(r) for r in rules]}, indent=2) + "\n"
    elif fmt == "markdown":
        text = rules_markdown(rules)
    else:
        text = rules_table(rules)
    click.echo(text, nl=False)
    return 0
