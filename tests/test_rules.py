"""The rule registry: stable codes, one record per rule, select/ignore resolution."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

import relu_doctor
from relu_doctor.errors import UsageError
from relu_doctor.gate import RULES, Rule
from relu_doctor.gate.judge import _EVALUATORS, Limits
from relu_doctor.gate.rules import RETIRED, Reference, RuleRegistry, parse_codes, rules_markdown

#: Code -> name, pinned. Add a line for a new rule; never change or delete one: a removed
#: rule's code goes to ``rules.RETIRED`` and is never used again.
PINNED = {
    "RD101": "dead-site",
    "RD102": "dead-model",
    "RD103": "near-dead-site",
    "RD201": "dead-regression",
    "RD202": "site-missing",
    "RD203": "site-new",
    "RD301": "non-finite-activation",
    "RD302": "unbounded-activation",
    "RD401": "dead-by-construction",
    "RD402": "batchnorm-predicted-dead",
    "RD403": "not-executed",
}
SEVERITY = {
    "RD101": "error",
    "RD102": "error",
    "RD103": "error",
    "RD201": "error",
    "RD202": "warning",
    "RD203": "note",
    "RD301": "error",
    "RD302": "error",
    "RD401": "warning",
    "RD402": "warning",
    "RD403": "warning",
}


def _rule(code: str = "RD901", name: str = "x-rule") -> Rule:
    return Rule(code, name, "s.", "w.", "y.", "f.", (), "error", "site")


def test_codes_and_names_are_pinned() -> None:
    live = {r.code: r.name for r in RULES}
    assert set(live) <= set(PINNED), "a new rule needs its line in PINNED"
    for code, name in PINNED.items():
        assert live.get(code) == name or code in RETIRED, f"{code} changed or vanished"
    assert not RETIRED & set(live)


def test_severities_and_scopes() -> None:
    assert {r.code: r.severity for r in RULES} == SEVERITY
    assert [r.code for r in RULES if r.scope == "model"] == ["RD102"]


def test_every_rule_has_one_evaluator_and_thresholds_match_limits() -> None:
    assert set(_EVALUATORS) == set(RULES.codes())
    defaults = Limits()
    for r in RULES:
        if r.param is not None:
            assert getattr(defaults, r.param) == r.default, r.code
    assert {r.code: (r.param, r.default) for r in RULES if r.param} == {
        "RD101": ("max_layer_dead", 0.50),
        "RD102": ("max_dead", 0.10),
        "RD103": ("max_near_dead", None),
        "RD201": ("tolerance", 0.02),
        "RD302": ("max_activation", None),
    }


def test_records_are_complete_and_fix_is_one_line() -> None:
    for r in RULES:
        for field in ("summary", "what_it_does", "why", "fix"):
            text = getattr(r, field)
            assert text.strip() and "\n" not in text, (r.code, field)
        assert r.summary.endswith(".")
        assert len(r.fix) < 200, r.code
        for ref in r.references:
            assert ref.url is None or ref.url.startswith("https://"), ref


def test_help_text_has_every_section() -> None:
    text = RULES["RD101"].help_text()
    assert text.splitlines()[0] == "RD101 dead-site (error, per site)"
    for heading in ("What it does", "Why it matters", "What to do", "References"):
        assert f"\n{heading}\n" in text
    assert "Threshold: max_layer_dead (default 0.50)" in text
    assert "Threshold: max_near_dead (off unless set)" in RULES["RD103"].help_text()
    assert "Threshold" not in RULES["RD301"].help_text()
    assert all(len(line) <= 88 for line in text.splitlines() if not line.startswith("  - "))
    md = RULES["RD101"].help_markdown()
    assert md.startswith("**RD101 dead-site**") and "(https://arxiv.org/abs/1903.06733)" in md


def test_register_refuses_duplicates_retired_and_bad_codes() -> None:
    reg = RuleRegistry(retired=frozenset({"RD999"}))
    reg.register(_rule())
    with pytest.raises(ValueError, match="RD901 is already x-rule"):
        reg.register(_rule(name="other"))
    with pytest.raises(ValueError, match="name x-rule is already taken by RD901"):
        reg.register(_rule(code="RD902"))
    with pytest.raises(ValueError, match="RD999 is retired"):
        reg.register(_rule(code="RD999", name="gone"))
    for bad in ("RD01", "rd101", "RD1000", "XX101", "RD012"):
        with pytest.raises(ValueError, match="not RD followed by three digits"):
            reg.register(_rule(code=bad, name="bad"))
    with pytest.raises(ValueError, match="kebab-case"):
        reg.register(_rule(code="RD903", name="Dead_Site"))
    assert reg.codes() == ("RD901",) and len(reg) == 1 and "RD901" in reg


def test_lookup_is_case_insensitive_and_lists_known_rules() -> None:
    assert RULES.lookup(" rd101 ").name == "dead-site"
    with pytest.raises(UsageError) as exc:
        RULES.lookup("RD999")
    assert exc.value.param == "rule"
    assert str(exc.value).startswith("unknown rule 'RD999'; known rules: RD101, RD102, RD103,")


def test_resolve_codes_prefixes_and_ignore() -> None:
    def codes(select: object = None, ignore: object = None) -> list[str]:
        return [r.code for r in RULES.resolve(select, ignore)]  # type: ignore[arg-type]

    assert codes() == list(PINNED)
    assert codes("RD1") == ["RD101", "RD102", "RD103"]
    assert codes(["rd101", "RD3"]) == ["RD101", "RD301", "RD302"]
    assert codes("RD101, RD2 ,") == ["RD101", "RD201", "RD202", "RD203"]
    assert codes(ignore="RD2,RD4") == ["RD101", "RD102", "RD103", "RD301", "RD302"]
    assert codes("RD1", "RD103") == ["RD101", "RD102"]
    assert codes("RD101", "RD1") == []  # ignore wins over select
    assert codes([]) == []


@pytest.mark.parametrize("arg", ["select", "ignore"])
def test_unknown_entry_names_the_parameter_and_the_known_rules(arg: str) -> None:
    with pytest.raises(UsageError) as exc:
        RULES.resolve(**{arg: ["RD101", "RD9"]})
    assert exc.value.param == arg
    assert str(exc.value) == (
        f"unknown rule 'RD9' in {arg}; known rules: {', '.join(PINNED)} "
        "(a prefix such as RD1 selects a group)"
    )
    assert exc.value.render(lambda p, v: "--" + p).startswith(f"unknown rule 'RD9' in --{arg};")


def test_parse_codes() -> None:
    assert parse_codes(" rd1, ,RD202") == ["RD1", "RD202"]
    assert parse_codes(("a", " ")) == ["A"]


def test_records_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RULES["RD101"].severity = "note"  # type: ignore[misc]
    assert Reference("t").url is None


def test_check_is_the_top_level_api_function() -> None:
    from relu_doctor.gate.judge import check

    assert relu_doctor.check is check


def test_docs_page_is_generated_from_the_records() -> None:
    page = Path(__file__).parent.parent / "docs" / "rules.md"
    text = rules_markdown()
    if os.environ.get("RELU_DOCTOR_UPDATE_GOLDEN"):
        page.write_text(text, encoding="utf-8")
    assert page.read_text(encoding="utf-8") == text, "regenerate: RELU_DOCTOR_UPDATE_GOLDEN=1"
    assert "| RD101 | dead-site | error | site | max_layer_dead (default 0.50) |" in text
    assert text.count("\n## RD") == len(RULES)
