"""`relu-doctor explain RULE` and `relu-doctor rules` (docs/cli.md): every rule's record from
the one registry, an unknown rule is exit 2 with the known codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relu_doctor.gate import RULES
from relu_doctor.gate.rules import rules_markdown
from tests.test_cli import error_line, ok, run


@pytest.mark.parametrize("name", ["RD101", "rd101", "dead-site"])
def test_explain_prints_the_record(name: str) -> None:
    r = ok(run("explain", name))
    assert r.stdout == RULES["RD101"].help_text() + "\n"
    assert "What it does" in r.stdout and "References" in r.stdout


def test_explain_an_unknown_rule() -> None:
    line = error_line(run("explain", "RD999"), "unknown rule 'RD999'")
    assert ", ".join(RULES.codes()) in line


def test_rules_lists_every_rule() -> None:
    lines = ok(run("rules")).stdout.splitlines()
    assert lines[0].split() == ["code", "name", "severity", "per", "threshold", "summary"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == list(RULES.codes())
    assert rows["RD101"].split()[:6] == [
        "RD101",
        "dead-site",
        "error",
        "site",
        "--max-layer-dead",
        "0.5",
    ]
    assert rows["RD103"].split()[4:6] == ["--max-near-dead", "off"]
    assert rows["RD202"].split()[2:5] == ["warning", "site", "–"]


def test_rules_as_json_and_markdown() -> None:
    records = json.loads(ok(run("rules", "--format", "json")).stdout)["rules"]
    assert [r["code"] for r in records] == list(RULES.codes())
    rd102 = records[1]
    assert (rd102["name"], rd102["scope"], rd102["parameter"], rd102["default"]) == (
        "dead-model",
        "model",
        "max_dead",
        0.1,
    )
    assert rd102["fix"] == RULES["RD102"].fix and rd102["references"][0]["url"]
    docs = Path(__file__).parents[1] / "docs" / "rules.md"
    assert ok(run("rules", "--format", "markdown")).stdout == rules_markdown()
    assert docs.read_text(encoding="utf-8") == rules_markdown()


def test_rules_and_explain_read_no_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("pyproject.toml").write_text('[tool.relu-doctor]\nformat = "csv"\nbogus = 1\n')
    assert ok(run("rules")).stdout.startswith("code")  # a shared format is not for rules
    ok(run("explain", "RD102"))
    error_line(run("check", "m.pt"), "unknown key 'bogus'")  # the commands that scan do
