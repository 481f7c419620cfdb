"""The body of ``relu-doctor check``: scan each model, judge it right after its scan (the
weights are read from the model still in memory: no second load, no second forward),
print and write the reports, and turn the verdict into the exit code.

Every argument is checked before the first scan: thresholds, rule codes, the baseline
file and every output path.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from relu_doctor.analyze.report import ModelReport
from relu_doctor.analyze.timeline import build_timeline
from relu_doctor.cli.check_options import THRESHOLDS
from relu_doctor.cli.common import (
    EXIT_OK,
    EXIT_UNHEALTHY,
    Targets,
    command_line,
    display_names,
    exit_code,
    scan_models,
    targets,
    write_outputs,
)
from relu_doctor.cli.config import Config
from relu_doctor.gate.baseline import read_baseline
from relu_doctor.gate.findings import Finding
from relu_doctor.gate.judge import Limits, check, resolve_rules
from relu_doctor.gate.weights import producers
from relu_doctor.load.model import LoadedModel
from relu_doctor.output import verdict
from relu_doctor.output.document import Document, Gate, Threshold
from relu_doctor.output.files import check_writable, write_atomic
from relu_doctor.output.formats import FORMATS

#: Rules that read the weights of the producing layers.
WEIGHT_RULES = frozenset({"RD401", "RD402"})


def run_check(ctx: click.Context, models: list[str], opts: dict[str, Any]) -> int:
    limits = Limits(**{name: opts[name] for name, _, _ in THRESHOLDS})
    select, ignore = opts.get("select"), opts.get("ignore")
    rules = tuple(r.code for r in resolve_rules(limits, select, ignore))
    baseline = read_baseline(opts["baseline"]) if opts.get("baseline") else None
    where = _ci_files(targets(opts, "check"), opts)
    if opts.get("write_baseline"):
        check_writable(opts["write_baseline"], "write_baseline")

    findings: dict[str, list[Finding]] = {}
    paths: dict[str, str] = {}

    def judge(spec: str, loaded: LoadedModel, report: ModelReport) -> None:
        weights = producers(loaded, report) if WEIGHT_RULES & set(rules) else None
        findings[report.model] = check(
            report,
            **asdict(limits),
            baseline=baseline,
            select=select,
            ignore=ignore,
            producers=weights,
        )
        if Path(spec).exists():
            paths[report.model] = spec

    items = scan_models(models, opts, after=judge)
    for spec, name in display_names(models).items():  # models that could not be scanned
        if name not in findings and Path(spec).exists():
            paths[name] = spec
    gate = Gate(
        thresholds={
            name: Threshold(getattr(limits, name), origin(ctx, name)) for name, *_ in THRESHOLDS
        },
        rules=rules,
        fail_on=opts["fail_on"],
        baseline=opts.get("baseline"),
        paths=paths,
    )
    timeline = build_timeline(items)
    doc = Document(
        timeline.items,
        command=command_line(),
        findings=findings,
        gate=gate,
        timeline=timeline.rows,
    )
    write_outputs(doc, where, summary_only=bool(opts.get("summary_only")))
    if where.stdout is None or where.stdout.name != "table":  # the table ends with it
        click.echo(verdict.verdict_line(doc), err=True)
    if opts.get("write_baseline"):
        _write_baseline(doc, opts["write_baseline"])
    if doc.failures:
        return exit_code(doc)
    return EXIT_OK if verdict.passed(doc) else EXIT_UNHEALTHY


def _ci_files(where: Targets, opts: dict[str, Any]) -> Targets:
    """``--junit FILE`` and ``--sarif FILE``: ``-o FILE`` in that format, whatever the
    extension."""
    extra = []
    for name in ("junit", "sarif"):
        path = opts.get(name)
        if path:
            check_writable(path, name)
            extra.append((path, FORMATS[name]))
    return Targets(where.stdout, (*where.files, *extra), where.units, where.view)


def _write_baseline(doc: Document, path: str) -> None:
    """The JSON report, for the next ``--baseline``, only when every model passed: a
    baseline records a state the gate accepted, so a regression never becomes the norm."""
    if verdict.passed(doc):
        write_atomic(path, FORMATS["json"].emit(doc))
        click.echo(f"wrote {path} (baseline)", err=True)
    else:
        click.echo(
            f"baseline {path} not written: not every model passed (record any state with "
            "relu-doctor scan MODEL -o FILE.json)",
            err=True,
        )


def origin(ctx: click.Context, name: str) -> str:
    """Where an option's value came from: ``command line``, ``pyproject.toml
    [tool.relu-doctor.check]`` (the command's section), ``pyproject.toml
    [tool.relu-doctor]`` (shared keys) or ``default``."""
    source = ctx.get_parameter_source(name)
    if source == ParameterSource.COMMANDLINE:
        return "command line"
    if source == ParameterSource.ENVIRONMENT:
        return "environment"
    if source != ParameterSource.DEFAULT_MAP:
        return "default"
    config = ctx.find_root().meta.get("config")
    command = ctx.info_name or "check"
    section = config.sections.get(command, {}) if isinstance(config, Config) else {}
    if any(k.replace("-", "_") == name for k in section):
        return f"pyproject.toml [tool.relu-doctor.{command}]"
    return "pyproject.toml [tool.relu-doctor]"
