"""The options of ``check`` beyond the scan's: thresholds, the gate (rules, baselines) and
the CI report files. Defaults come from ``gate.Limits``, the same numbers as the rule
records. Importing this module loads neither torch nor pandas."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from relu_doctor.cli.options import Decorator, GroupedOption
from relu_doctor.gate.judge import Limits

#: The threshold options, in ``Limits`` order: (library name, rule, help).
THRESHOLDS = (
    ("max_dead", "RD102", "The model fails when more of its ReLU units than this are dead."),
    ("max_layer_dead", "RD101", "A site fails when more of its units than this are dead."),
    ("max_near_dead", "RD103", "A site fails when more of its units than this are near-dead."),
    ("max_activation", "RD302", "A site fails when its largest activation is above this."),
    ("tolerance", "RD201", "How much a site's dead fraction may grow over --baseline."),
)


class RuleCodes(click.ParamType):
    """Rule codes or prefixes: ``RD101,RD2`` (a TOML list or string in pyproject.toml).
    Whether they exist is checked when the command runs, against the rule registry."""

    name = "CODES"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        items = value if isinstance(value, list) else str(value).split(",")
        codes = tuple(str(v).strip().upper() for v in items if str(v).strip())
        if not codes:
            self.fail(f"{value!r}: expected rule codes like RD101,RD2")
        return codes


def _option(*decls: str, group: str, **kwargs: Any) -> Decorator:
    return click.option(*decls, cls=GroupedOption, group=group, **kwargs)


def _threshold(name: str, rule: str, text: str) -> Decorator:
    default = getattr(Limits(), name)
    unit = "FLOAT" if name == "max_activation" else "FRACTION"
    shown = "off" if default is None else f"{default:g}"
    return _option(
        f"--{name.replace('_', '-')}",
        name,
        type=float,
        default=default,
        metavar=unit,
        group="Thresholds",
        help=f"{text.rstrip('.')} ({rule}) [default: {shown}].",
    )


def check_options() -> Decorator:
    """Thresholds, the gate, and the JUnit/SARIF files."""
    options = [_threshold(*t) for t in THRESHOLDS]
    options += [
        _option(
            "--select",
            type=RuleCodes(),
            default=None,
            group="Gate",
            help="Run only these rules (codes or prefixes: RD101,RD2) [default: all].",
        ),
        _option(
            "--ignore",
            type=RuleCodes(),
            default=None,
            group="Gate",
            help="Skip these rules (codes or prefixes; wins over --select).",
        ),
        _option(
            "--fail-on",
            type=click.Choice(["error", "warning"]),
            default="error",
            show_default=True,
            group="Gate",
            help="The mildest finding severity that makes a model unhealthy.",
        ),
        _option(
            "--baseline",
            metavar="REPORT.json",
            group="Gate",
            help="Compare with the JSON report of an earlier scan or check (RD201-RD203).",
        ),
        _option(
            "--write-baseline",
            metavar="FILE",
            group="Gate",
            help="Record this report (JSON) as the next --baseline, when every model passes.",
        ),
        _option(
            "--junit",
            metavar="FILE",
            group="Output",
            help="Write JUnit XML to FILE (whatever its extension): a case per site and rule.",
        ),
        _option(
            "--sarif",
            metavar="FILE",
            group="Output",
            help="Write SARIF 2.1.0 to FILE (whatever its extension) for code scanning.",
        ),
    ]

    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply
