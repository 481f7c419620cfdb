"""SARIF 2.1.0 for code-scanning dashboards: the rules come from the registry, each result
points at the model file (``artifactLocation``) and names its site as a logical location.

A model file is binary, so every result sits at line 1 of it; GitHub code scanning needs a
line, and tells two results of one rule in one file apart by their
``partialFingerprints.primaryLocationLineHash``, which is therefore set from the model, the
site and the rule (stable across runs) instead of from the file's first "line".
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import quote

from relu_doctor import __version__
from relu_doctor.gate.findings import Finding, ReportLike
from relu_doctor.gate.rules import Rule

SCHEMA = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
#: Finding severity -> SARIF ``level`` (the same three words).
LEVELS = {"error": "error", "warning": "warning", "note": "note"}


def sarif_log(
    reports: Sequence[ReportLike],
    findings: Iterable[Finding],
    rules: Iterable[Rule],
    model_paths: Mapping[str, str],
) -> dict[str, Any]:
    """The SARIF log (a JSON-ready dict) of one run over ``reports``. ``rules``: the
    registry's rules to describe (every finding's rule must be among them);
    ``model_paths``: model name -> the file it was loaded from (relative to the repository
    root for GitHub; the model name is used where it is missing)."""
    descriptors = [_descriptor(r) for r in rules]
    index = {d["id"]: i for i, d in enumerate(descriptors)}
    results = []
    for f in findings:
        if f.rule not in index:
            raise ValueError(f"finding of rule {f.rule}, which is not among the given rules")
        results.append(_result(f, index[f.rule], model_paths.get(f.model, f.model)))
    artifacts = list(dict.fromkeys(model_paths.get(r.model, r.model) for r in reports))
    return {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "relu-doctor",
                        "version": __version__,
                        "semanticVersion": __version__,
                        "rules": descriptors,
                    }
                },
                "artifacts": [{"location": {"uri": _uri(p)}} for p in artifacts],
                "results": results,
                "columnKind": "unicodeCodePoints",
            }
        ],
    }


def _descriptor(rule: Rule) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": rule.summary},
        "fullDescription": {"text": rule.what_it_does},
        "help": {"text": rule.help_text(), "markdown": rule.help_markdown()},
        "defaultConfiguration": {"level": LEVELS[rule.severity]},
        "properties": {"scope": rule.scope, "tags": ["relu", rule.name]},
    }
    if rule.param is not None:
        d["properties"]["threshold"] = {"parameter": rule.param, "default": rule.default}
    return d


def _result(f: Finding, rule_index: int, path: str) -> dict[str, Any]:
    location: dict[str, Any] = {
        "physicalLocation": {
            "artifactLocation": {"uri": _uri(path)},
            "region": {"startLine": 1},
        }
    }
    if f.site is not None:
        location["logicalLocations"] = [
            {"name": f.site, "fullyQualifiedName": f"{f.model}::{f.site}"}
        ]
    digest = hashlib.sha256(f"{f.model}\0{f.site or ''}\0{f.rule}".encode()).hexdigest()[:16]
    props = {"value": f.to_dict()["value"], "threshold": f.to_dict()["threshold"], "fix": f.fix}
    return {
        "ruleId": f.rule,
        "ruleIndex": rule_index,
        "level": LEVELS[f.severity],
        "message": {"text": f"{f.message}. Fix: {f.fix}"},
        "locations": [location],
        "partialFingerprints": {"primaryLocationLineHash": f"{digest}:1"},
        "properties": props,
    }


def _uri(path: str) -> str:
    """A relative URI reference for a path (``\\`` -> ``/``, spaces etc. percent-encoded);
    an absolute path becomes a ``file://`` URI."""
    posix = path.replace("\\", "/")
    if PurePosixPath(posix).is_absolute():
        return "file://" + quote(posix, safe="/")
    if PureWindowsPath(posix).is_absolute():  # C:/models/x.pt
        return "file:///" + quote(posix, safe="/:")
    return quote(posix, safe="/")
