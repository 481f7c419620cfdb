"""The rule record and its registry (ruff's model): one ``Rule`` per rule, the single
source for ``check``, ``explain``, ``rules``, JSON, SARIF and the docs.

A registry refuses a duplicate code or name and any code in its ``retired`` set, so a
rule ID found in an old CI log or config always meant the same thing. The rules
themselves are in ``rules.py``.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from relu_doctor.errors import UsageError, param
from relu_doctor.gate.findings import Severity

Scope = Literal["site", "model"]

_CODE = re.compile(r"RD[1-9][0-9]{2}")
_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


@dataclass(frozen=True)
class Reference:
    """A paper or page behind a rule (``url`` None when there is no stable link)."""

    title: str
    url: str | None = None


@dataclass(frozen=True)
class Rule:
    """One rule's record. ``param`` names the ``check`` argument that holds its threshold
    and ``default`` that argument's default (None: the rule is off until it is set)."""

    code: str
    name: str
    summary: str
    what_it_does: str
    why: str
    fix: str
    references: tuple[Reference, ...]
    severity: Severity
    scope: Scope
    param: str | None = None
    default: float | None = None

    @property
    def off_by_default(self) -> bool:
        """True when the rule stays silent until its threshold is set."""
        return self.param is not None and self.default is None

    def threshold_text(self) -> str | None:
        """``max_layer_dead (default 0.50)`` / ``max_near_dead (off unless set)`` / None."""
        if self.param is None:
            return None
        if self.default is None:
            return f"{self.param} (off unless set)"
        return f"{self.param} (default {self.default:.2f})"

    def help_text(self, width: int = 88) -> str:
        """The full record as plain text: what ``relu-doctor explain`` prints."""

        def para(text: str) -> str:
            return textwrap.fill(text, width, initial_indent="  ", subsequent_indent="  ")

        parts = [
            f"{self.code} {self.name} ({self.severity}, per {self.scope})",
            textwrap.fill(self.summary, width),
            "",
            "What it does",
            para(self.what_it_does),
            "",
            "Why it matters",
            para(self.why),
            "",
            "What to do",
            para(self.fix),
        ]
        threshold = self.threshold_text()
        if threshold:
            parts += ["", f"Threshold: {threshold}"]
        if self.references:
            parts += ["", "References"]
            parts += [f"  - {r.title}" + (f" <{r.url}>" if r.url else "") for r in self.references]
        return "\n".join(parts)

    def help_markdown(self) -> str:
        """The record as Markdown (SARIF ``help.markdown``, docs)."""
        parts = [
            f"**{self.code} {self.name}**: {self.summary}",
            f"**What it does.** {self.what_it_does}",
            f"**Why it matters.** {self.why}",
            f"**What to do.** {self.fix}",
        ]
        threshold = self.threshold_text()
        if threshold:
            parts.append(f"**Threshold:** `{threshold}`")
        if self.references:
            refs = [f"[{r.title}]({r.url})" if r.url else r.title for r in self.references]
            parts.append("**References:** " + "; ".join(refs))
        return "\n\n".join(parts)


class RuleRegistry:
    """Rules by code, in registration order; refuses a duplicate or retired code or name."""

    def __init__(self, retired: frozenset[str] = frozenset()) -> None:
        self._rules: dict[str, Rule] = {}
        self._retired = retired

    def register(self, rule: Rule) -> Rule:
        if not _CODE.fullmatch(rule.code):
            raise ValueError(f"rule code {rule.code!r} is not RD followed by three digits")
        if not _NAME.fullmatch(rule.name):
            raise ValueError(f"rule name {rule.name!r} is not kebab-case")
        if rule.code in self._retired:
            raise ValueError(f"rule code {rule.code} is retired and can never be reused")
        if rule.code in self._rules:
            raise ValueError(f"rule code {rule.code} is already {self._rules[rule.code].name}")
        clash = next((r for r in self._rules.values() if r.name == rule.name), None)
        if clash is not None:
            raise ValueError(f"rule name {rule.name} is already taken by {clash.code}")
        self._rules[rule.code] = rule
        return rule

    def __iter__(self) -> Iterator[Rule]:
        return iter(self._rules.values())

    def __len__(self) -> int:
        return len(self._rules)

    def __contains__(self, code: object) -> bool:
        return code in self._rules

    def __getitem__(self, code: str) -> Rule:
        return self._rules[code]

    def get(self, code: str) -> Rule | None:
        return self._rules.get(code)

    def codes(self) -> tuple[str, ...]:
        return tuple(self._rules)

    def lookup(self, code: str) -> Rule:
        """The rule with ``code`` (case-insensitive), or a UsageError listing the known ones
        (what ``relu-doctor explain`` needs)."""
        rule = self._rules.get(code.strip().upper())
        if rule is None:
            raise UsageError(
                f"unknown rule {code!r}; known rules: {', '.join(self._rules)}", param="rule"
            )
        return rule

    def resolve(
        self, select: str | Iterable[str] | None = None, ignore: str | Iterable[str] | None = None
    ) -> tuple[Rule, ...]:
        """The rules that run: every rule matched by ``select`` (all when None) and by no
        entry of ``ignore``. Entries are codes or code prefixes (``RD1`` = every RD1xx), a
        string is a comma list; ignore wins over select. Unknown entries are a UsageError."""
        chosen = self._match(select, "select") if select is not None else set(self._rules)
        dropped = self._match(ignore, "ignore") if ignore is not None else set()
        return tuple(r for c, r in self._rules.items() if c in chosen and c not in dropped)

    def _match(self, entries: str | Iterable[str], name: str) -> set[str]:
        out: set[str] = set()
        for entry in parse_codes(entries):
            hits = {c for c in self._rules if c.startswith(entry)}
            if not hits:
                raise UsageError(
                    f"unknown rule {entry!r} in {param(name)}; known rules: "
                    f"{', '.join(self._rules)} (a prefix such as RD1 selects a group)",
                    param=name,
                )
            out |= hits
        return out


def parse_codes(entries: str | Iterable[str]) -> list[str]:
    """``"RD101, rd2"`` or ``["RD101", "RD2"]`` -> ``["RD101", "RD2"]`` (upper case, no blanks)."""
    items = entries.split(",") if isinstance(entries, str) else list(entries)
    return [e.strip().upper() for e in items if e.strip()]
