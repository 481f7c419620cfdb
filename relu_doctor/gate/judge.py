"""The health gate: ``check(report, ...) -> list[Finding]``.

Pure: it reads a finished report (plus, optionally, a baseline document and the producing
layers' weights), never prints, never exits and never runs the model again, so a ``check``
costs the scan plus milliseconds. Each rule of the registry has one evaluator here.

Boundaries: a number equal to its limit passes (``0.50`` dead with ``max_layer_dead=0.50``
is fine; a limit says how much is tolerated). Fractions are ratios of unit counts, so the
comparison allows a 1e-9 relative slack: a fraction that equals the limit in exact
arithmetic never fails from float rounding (e.g. growth ``0.2075 - 0.1875`` vs ``0.02``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from relu_doctor import __version__
from relu_doctor.errors import InputError, UsageError, param
from relu_doctor.gate.baseline import TOOL, baseline_model, validate_baseline
from relu_doctor.gate.findings import SEVERITIES, Finding, ReportLike, Severity
from relu_doctor.gate.rules import RULES, Rule, parse_codes
from relu_doctor.gate.weights import Producer, batchnorm_findings, construction_findings

_SLACK = 1e-9


@dataclass(frozen=True)
class Limits:
    """The thresholds of one ``check`` (defaults as in the rule records)."""

    max_dead: float = 0.10
    max_layer_dead: float = 0.50
    max_near_dead: float | None = None
    max_activation: float | None = None
    tolerance: float = 0.02

    def __post_init__(self) -> None:
        for name in ("max_dead", "max_layer_dead", "max_near_dead", "tolerance"):
            _fraction(name, getattr(self, name))
        v = self.max_activation
        if v is not None and (not _is_number(v) or not v > 0):
            raise UsageError(
                f"{param('max_activation')} must be a number > 0, got {v!r}",
                param="max_activation",
            )


@dataclass(frozen=True)
class _Context:
    report: ReportLike
    limits: Limits
    baseline: dict[str, Any] | None  # the baseline's entry for this model
    producers: Mapping[str, Producer] | None


Evaluator = Callable[[_Context, Rule], Iterable[Finding]]
_EVALUATORS: dict[str, Evaluator] = {}


def check(
    report: ReportLike,
    *,
    max_dead: float = 0.10,
    max_layer_dead: float = 0.50,
    max_near_dead: float | None = None,
    max_activation: float | None = None,
    baseline: Mapping[str, Any] | ReportLike | None = None,
    tolerance: float = 0.02,
    select: str | Iterable[str] | None = None,
    ignore: str | Iterable[str] | None = None,
    producers: Mapping[str, Producer] | None = None,
) -> list[Finding]:
    """The findings of ``report``: model-level first, then per site in scan order.

    ``baseline``: the parsed JSON report of an earlier scan/check (``read_baseline``) or
    an earlier ``ModelReport``; its sites are matched to this report's by name.
    ``select``/``ignore``: rule codes or prefixes (``"RD1"``), a list or a comma string.
    ``producers``: site -> producing layer (``weights.Producer``) for the weight rules
    RD401/RD402, which are skipped without it.
    """
    limits = Limits(max_dead, max_layer_dead, max_near_dead, max_activation, tolerance)
    rules = resolve_rules(limits, select, ignore)
    base = _baseline_entry(baseline, report) if baseline is not None else None
    ctx = _Context(report, limits, base, producers)
    found = [f for rule in rules for f in _EVALUATORS[rule.code](ctx, rule)]
    return _ordered(found, report, base)


def resolve_rules(
    limits: Limits,
    select: str | Iterable[str] | None = None,
    ignore: str | Iterable[str] | None = None,
) -> tuple[Rule, ...]:
    """The rules a ``check`` with these arguments runs, in registry order; a UsageError for
    an unknown code or a selected rule that could never fire. Callers that judge many
    reports (the command line) call it once up front, before anything is scanned."""
    rules = RULES.resolve(select, ignore)
    if select is not None:
        _require_thresholds(select, limits)
    return rules


def is_healthy(findings: Iterable[Finding], *, fail_on: Severity = "error") -> bool:
    """True when no finding is as severe as ``fail_on`` (errors fail; warnings and notes
    are reported but pass, unless ``fail_on`` is ``"warning"`` or ``"note"``)."""
    if fail_on not in SEVERITIES:
        raise UsageError(
            f"{param('fail_on')} must be one of {', '.join(SEVERITIES)}, got {fail_on!r}",
            param="fail_on",
        )
    worst = SEVERITIES.index(fail_on)
    return not any(SEVERITIES.index(f.severity) <= worst for f in findings)


def _evaluates(code: str) -> Callable[[Evaluator], Evaluator]:
    def register(fn: Evaluator) -> Evaluator:
        if code not in RULES or code in _EVALUATORS:
            raise ValueError(f"evaluator for unknown or already evaluated rule {code}")
        _EVALUATORS[code] = fn
        return fn

    return register


# --- RD1xx: measured death -----------------------------------------------------------------


@_evaluates("RD101")
def _dead_site(ctx: _Context, rule: Rule) -> Iterator[Finding]:
    limit = ctx.limits.max_layer_dead
    for s in _counted(ctx.report):
        frac = s.dead / s.units
        if _exceeds(frac, limit):
            msg = f"{s.site}: {s.dead} of {s.units} units dead ({frac:.1%}), limit {_pct(limit)}"
            yield Finding.of(rule, ctx.report.model, s.site, msg, value=frac, threshold=limit)


@_evaluates("RD102")
def _dead_model(ctx: _Context, rule: Rule) -> Iterator[Finding]:
    r, limit = ctx.report, ctx.limits.max_dead
    if r.total_units and _exceeds(r.dead_fraction, limit):
        n = len(list(_counted(r)))
        msg = (
            f"{r.dead_units} of {r.total_units} ReLU units dead ({r.dead_fraction:.1%}) across "
            f"{n} site{'s' if n != 1 else ''}, limit {_pct(limit)}"
        )
        yield Finding.of(rule, r.model, None, msg, value=r.dead_fraction, threshold=limit)


@_evaluates("RD103")
def _near_dead_site(ctx: _Context, rule: Rule) -> Iterator[Finding]:
    limit = ctx.limits.max_near_dead
    if limit is None:
        return
    for s in _counted(ctx.report):
        share = s.near_dead / s.units
        if _exceeds(share, limit):
            msg = f"{s.site}: {s.near_dead} of {s.units} units near-dead ({share:.1%})"
            msg += f", limit {_pct(limit)}"
            yield Finding.of(rule, ctx.report.model, s.site, msg, value=share, threshold=limit)


# --- RD2xx: baseline -----------------------------------------------------------------------


@_evaluates("RD201")
def _regression(ctx: _Context, rule: Rule) -> Iterator[Finding]:
    if ctx.baseline is None:
        return
    tol, base = ctx.limits.tolerance, _base_sites(ctx.baseline)
    then_n, now_n = ctx.baseline.get("samples"), ctx.report.samples
    note = f" (baseline scanned {then_n} samples, this scan {now_n})" if then_n != now_n else ""
    for s in ctx.report.sites:
        b = base.get(s.site)
        then = None if b is None else b.get("dead_fraction")
        if s.dead_fraction is None or then is None or not _is_number(then):
            continue
        grew = s.dead_fraction - float(then)
        if _exceeds(grew, tol):
            msg = (
                f"{s.site}: dead fraction {then:.1%} -> {s.dead_fraction:.1%} since the "
                f"baseline (+{100 * grew:.1f} points, tolerance {100 * tol:g} points){note}"
            )
            yield Finding.of(rule, ctx.report.model, s.site, msg, value=grew, threshold=tol)


@_evaluates("RD202")
def _site_missing(ctx: _Context, rule: Rule) -> Iterator[Finding]:
    if ctx.baseline is None:
        return
    now = {s.site for s in ctx.report.sites}
    for name in _base_sites(ctx.baseline):
        if name not in now:
            msg = f"{name}: in the baseline but not in this model (architecture changed?)"
            yield Finding.of(rule, ctx.report.model, name, msg)


@_evaluates("RD203")
def _site_new(ctx: _Context, rule: Rule) -> Iterator[Finding]:
    if ctx.baseline is None:
        return
    then = _base_sites(ctx.baseline)
    for s in ctx.report.sites:
        if s.site not in then:
            msg = f"{s.site}: new site, not in the baseline"
            yield Finding.of(rule, ctx.report.model, s.site, msg)


# --- RD3xx: numerics -----------------------------------------------------------------------


@_evaluates("RD301")
def _non_finite(ctx: _Context, rule: Rule) -> Iterator[Finding]:
    for s in ctx.report.sites:
        if s.nonfinite:
            msg = f"{s.site}: NaN or Inf reached {s.nonfinite} of {s.units} units"
            yield Finding.of(rule, ctx.report.model, s.site, msg, value=float(s.nonfinite))


@_evaluates("RD302")
def _unbounded(ctx: _Context, rule: Rule) -> Iterator[Finding]:
    limit = ctx.limits.max_activation
    if limit is None:
        return
    for s in ctx.report.sites:
        top = s.max_activation
        if top is not None and _exceeds(top, limit):
            msg = f"{s.site}: largest activation {top:.4g}, limit {limit:g}"
            yield Finding.of(rule, ctx.report.model, s.site, msg, value=top, threshold=limit)


# --- RD4xx: weights and structure ----------------------------------------------------------


@_evaluates("RD401")
def _by_construction(ctx: _Context, rule: Rule) -> list[Finding]:
    return [] if ctx.producers is None else construction_findings(ctx.report, ctx.producers)


@_evaluates("RD402")
def _bn_predicted(ctx: _Context, rule: Rule) -> list[Finding]:
    return [] if ctx.producers is None else batchnorm_findings(ctx.report, ctx.producers)


@_evaluates("RD403")
def _not_executed(ctx: _Context, rule: Rule) -> Iterator[Finding]:
    for s in ctx.report.sites:
        if not s.executed:
            msg = f"{s.site}: {s.activation} module never ran during the scan"
            yield Finding.of(rule, ctx.report.model, s.site, msg)


# --- helpers -------------------------------------------------------------------------------


def _counted(report: ReportLike) -> Iterator[Any]:
    """Executed ReLU/ReLU6 sites with units: the ones the death rules judge."""
    return (s for s in report.sites if s.counted and s.executed and s.units)


def _exceeds(value: float, limit: float) -> bool:
    return value - limit > _SLACK * max(1.0, abs(limit))


def _pct(x: float) -> str:
    """``0.5`` -> ``50%``, ``0.125`` -> ``12.5%`` (limits as the user wrote them)."""
    return f"{100 * x:.2f}".rstrip("0").rstrip(".") + "%"


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v)


def _fraction(name: str, v: Any) -> None:
    if v is None and name in ("max_near_dead",):
        return
    if not _is_number(v) or not 0 <= v <= 1:
        raise UsageError(
            f"{param(name)} must be a fraction in [0, 1] (e.g. 0.1 for 10%), got {v!r}",
            param=name,
        )


def _require_thresholds(select: str | Iterable[str], limits: Limits) -> None:
    """A rule that is off until its threshold is set, selected by its full code without
    that threshold, would pass silently: say so instead."""
    for code in parse_codes(select):
        rule = RULES.get(code)
        if rule is None or rule.param is None or not rule.off_by_default:
            continue
        if getattr(limits, rule.param) is None:
            raise UsageError(
                f"{code} ({rule.name}) is selected but {param(rule.param)} is not set, "
                f"so it could never fire; set {param(rule.param)} or drop {code} from "
                f"{param('select')}",
                param=rule.param,
            )


def _baseline_entry(baseline: Mapping[str, Any] | ReportLike, report: ReportLike) -> dict[str, Any]:
    if isinstance(baseline, Mapping):
        doc = validate_baseline(baseline)
    else:
        doc = {"tool": TOOL, "version": __version__, "models": [baseline.to_dict()]}
    entry = baseline_model(doc, report.model)
    then = (entry.get("thresholds") or {}).get("eps")
    now = (report.to_dict().get("thresholds") or {}).get("eps")
    if then is not None and now is not None and then != now:
        raise InputError(
            f"the {param('baseline')} was scanned with eps={then} and this report with "
            f"eps={now}, so their dead counts do not compare; scan both with the same eps",
            param="baseline",
        )
    return entry


def _base_sites(entry: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {s["site"]: s for s in entry["sites"]}


def _ordered(
    found: list[Finding], report: ReportLike, base: Mapping[str, Any] | None
) -> list[Finding]:
    order = {s.site: i for i, s in enumerate(report.sites)}
    for name in _base_sites(base) if base is not None else ():
        order.setdefault(name, len(order))

    def key(f: Finding) -> tuple[int, str]:
        return (-1 if f.site is None else order.get(f.site, len(order)), f.rule)

    return sorted(found, key=key)
