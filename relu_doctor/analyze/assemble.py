"""Turn a raw scan into a ``ModelReport``: site names, rows, the activation modules that
never ran, warnings, suggestions, and the loud "no ReLU found" error."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from relu_doctor.activations import UNMEASURED, Activation
from relu_doctor.analyze.advice import suggest
from relu_doctor.analyze.causes import SiteView, UnitCauses, explain_sites
from relu_doctor.analyze.metrics import Thresholds, unit_metrics
from relu_doctor.analyze.report import ModelReport, ParamGrad, SiteReport
from relu_doctor.errors import CaptureError
from relu_doctor.scanner.session import RawScan
from relu_doctor.scanner.sites import site_name

if TYPE_CHECKING:
    from torch import nn


def _not_executed(
    model: str, path: str, act: Activation, runtime: str, th: Thresholds
) -> SiteReport:
    kind = act.name if not act.relu_family else ("module" if runtime == "eager" else runtime)
    return SiteReport.from_totals(None, act, model=model, site=path, kind=kind, thresholds=th)


def _no_relu_error(model: str, raw: RawScan, declared: dict[str, Activation]) -> CaptureError:
    if declared:
        names = ", ".join(list(declared)[:5])
        return CaptureError(
            f"{model}: its activation modules ({names}) never ran during the scan, so nothing "
            "was measured; the forward may bypass them or run code the capture cannot see "
            "(e.g. a compiled graph). Scan the uncompiled model"
        )
    others = sorted({v for k, v in UNMEASURED.items() if k in raw.ops_seen})
    has = f"it uses {', '.join(others)}" if others else "it calls no activation function at all"
    return CaptureError(
        f"no ReLU found in {model}: {has}. relu-doctor measures ReLU and ReLU6 (modules, "
        "F.relu, Tensor.relu, TorchScript, torch.export) and lists LeakyReLU/PReLU/ELU"
    )


def _warnings(raw: RawScan, sites: list[SiteReport], loading: tuple[str, ...]) -> list[str]:
    out = [*loading, *raw.warnings]
    idle = [s.site for s in sites if not s.executed]
    if idle:
        out.append(f"activation modules never executed during the scan: {', '.join(idle[:6])}")
    touched = {s.site: int((s.totals.nonfinite > 0).sum()) for s in sites if s.totals is not None}
    touched = {site: n for site, n in touched.items() if n}
    if touched:
        out.append(_nonfinite_warning(touched, sum(s.nonfinite for s in sites)))
    return out


def _nonfinite_warning(touched: dict[str, int], lost: int) -> str:
    """Where NaN or Inf reached units (docs/metrics.md): ``touched`` units per site, ``lost``
    of them with no finite output at all."""
    units = sum(touched.values())
    names = ", ".join(list(touched)[:4]) + (", ..." if len(touched) > 4 else "")
    if lost == units:
        judged = "none had a finite output, so they count as nonfinite, not dead"
    elif lost:
        judged = (
            f"{lost} had no finite output and count as nonfinite, not dead; the others are "
            "judged on their finite outputs"
        )
    else:
        judged = "they are judged on their finite outputs"
    return (
        f"NaN or Inf reached {units} unit{'s' if units != 1 else ''} (site"
        f"{'s' if len(touched) != 1 else ''} {names}): {judged}. Check the inputs and the weights"
    )


def build_report(
    model: str,
    raw: RawScan,
    th: Thresholds,
    *,
    grad: bool,
    mode: str,
    device: str,
    runtime: str,
    warnings: tuple[str, ...] = (),
    module: nn.Module | None = None,
) -> ModelReport:
    """Name the sites (``act#2`` only for modules that ran more than once per forward);
    with the scanned ``module``, say why each dead unit died."""
    repeats = Counter(r.key.group for r in raw.sites)
    names = [site_name(r.key, repeats[r.key.group] > 1) for r in raw.sites]
    causes: dict[str, UnitCauses] = {}
    if module is not None:
        views = [
            SiteView(
                name,
                r.totals,
                unit_metrics(r.totals, r.info.activation, th).dead,
                r.topology,
                r.info.activation,
                r.info.unit_dim,
            )
            for name, r in zip(names, raw.sites, strict=True)
        ]
        causes = explain_sites(module, views, train=mode == "train", eps=th.eps)
    sites = [
        SiteReport.from_totals(
            r.totals,
            r.info.activation,
            model=model,
            site=name,
            kind=r.info.kind,
            thresholds=th,
            unit_dim=r.info.unit_dim,
            topology=r.topology,
            extras={"causes": causes[name]} if name in causes else None,
        )
        for name, r in zip(names, raw.sites, strict=True)
    ]
    declared = raw.declared
    ran = {r.key.path for r in raw.sites if r.key.module_site}
    sites += [_not_executed(model, p, a, runtime, th) for p, a in declared.items() if p not in ran]
    if not any(s.executed for s in sites):
        raise _no_relu_error(model, raw, declared)
    report = ModelReport(
        model=model,
        samples=raw.samples,
        batches=raw.batches,
        sites=tuple(sites),
        params=tuple(ParamGrad(n, shape, g) for n, shape, g in raw.params),
        warnings=tuple(_warnings(raw, sites, warnings)),
        thresholds=th,
        grad=grad,
        mode=mode,
        device=device,
        runtime=runtime,
        losses=raw.losses,
        capture=raw.capture,
    )
    return replace(report, suggestions=tuple(suggest(report)))


def diagnose(report: ModelReport, model: Any) -> ModelReport:
    """``report`` with the causes of its dead units decided (again) from ``model`` (anything
    ``scan`` takes), and the suggestions that follow: e.g. for rows rebuilt from totals
    merged across processes."""
    from relu_doctor.scanner.runner import as_target

    module = as_target(model).module
    views = [
        SiteView(
            s.site,
            s.totals,
            unit_metrics(s.totals, s.act, report.thresholds).dead,
            s.topology,
            s.act,
            s.unit_dim,
        )
        for s in report.sites
        if s.totals is not None
    ]
    found = explain_sites(module, views, train=report.mode == "train", eps=report.thresholds.eps)
    sites = tuple(
        s.with_extras(causes=found[s.site]) if s.site in found else s for s in report.sites
    )
    report = replace(report, sites=sites)
    return replace(report, suggestions=tuple(suggest(report)))
