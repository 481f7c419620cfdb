"""Turn captured per-site statistics into a ``ModelReport``: names, rows, the activation
modules that never ran, warnings, suggestions, and the loud "no ReLU found" error.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from relu_doctor.capture import CapturedSite
from relu_doctor.errors import CaptureError
from relu_doctor.repair import suggest
from relu_doctor.report import ModelReport, ParamGrad, SiteStats
from relu_doctor.sites import Resolver, site_name
from relu_doctor.stats import RELU_FAMILY, Thresholds, summarize

#: Op names of activations relu-doctor does not measure, named in the "no ReLU" error.
OTHER_ACTIVATION_OPS = {
    "gelu": "GELU",
    "silu": "SiLU",
    "tanh": "Tanh",
    "sigmoid": "Sigmoid",
    "softplus": "Softplus",
    "mish": "Mish",
    "hardswish": "Hardswish",
    "hardsigmoid": "Hardsigmoid",
    "selu": "SELU",
    "celu": "CELU",
    "glu": "GLU",
    "hardtanh": "Hardtanh",
    "threshold": "Threshold",
    "clamp_min": "clamp_min",
    "log_sigmoid_forward": "LogSigmoid",
    "_softmax": "Softmax",
}


@dataclass(frozen=True)
class Captured:
    """Raw output of a scan loop, before naming and summarising."""

    sites: list[CapturedSite]
    params: list[tuple[str, tuple[int, ...], float | None]]
    samples: int
    batches: int
    warnings: tuple[str, ...]
    ops_seen: set[str]


def _row(model: str, name: str, cs: CapturedSite, th: Thresholds) -> SiteStats:
    s = summarize(cs.stats, cs.info.activation, th)
    return SiteStats(
        model=model,
        site=name,
        kind=cs.info.kind,
        calls=s.calls,
        units=s.units,
        samples=s.samples,
        dead=s.dead,
        dead_fraction=s.dead_fraction,
        near_dead=s.near_dead,
        dormant=s.dormant,
        sparsity=s.sparsity,
        max_activation=s.max_activation,
        dead_margin=s.dead_margin,
        grad_norm=s.grad_norm,
        activation=cs.info.activation,
        executed=True,
        counted=cs.info.activation in RELU_FAMILY,
        unit_dim=cs.info.unit_dim,
        nonfinite=s.nonfinite,
        unit_stats=cs.stats,
    )


def _not_executed(model: str, path: str, activation: str, source: str) -> SiteStats:
    kind = (
        activation if activation not in RELU_FAMILY else ("module" if source == "eager" else source)
    )
    return SiteStats(
        model=model,
        site=path,
        kind=kind,
        calls=0,
        units=0,
        samples=0,
        dead=0,
        dead_fraction=None,
        near_dead=0,
        dormant=0,
        sparsity=None,
        max_activation=None,
        dead_margin=None,
        grad_norm=None,
        activation=activation,
        executed=False,
        counted=False,
    )


def _no_relu_error(model: str, captured: Captured, declared: dict[str, str]) -> CaptureError:
    if declared:
        names = ", ".join(list(declared)[:5])
        return CaptureError(
            f"{model}: its activation modules ({names}) never ran during the scan, so nothing "
            "was measured; the forward may bypass them or run code the capture cannot see "
            "(e.g. a compiled graph). Scan the uncompiled model"
        )
    others = sorted({v for k, v in OTHER_ACTIVATION_OPS.items() if k in captured.ops_seen})
    has = f"it uses {', '.join(others)}" if others else "it calls no activation function at all"
    return CaptureError(
        f"no ReLU found in {model}: {has}. relu-doctor measures ReLU and ReLU6 (modules, "
        "F.relu, Tensor.relu, TorchScript, torch.export) and lists LeakyReLU/PReLU/ELU"
    )


def _warnings(captured: Captured, resolver: Resolver, sites: list[SiteStats]) -> list[str]:
    out = list(captured.warnings) + resolver.warnings()
    idle = [s.site for s in sites if not s.executed]
    if idle:
        out.append(f"activation modules never executed during the scan: {', '.join(idle[:6])}")
    bad = [s for s in sites if s.nonfinite]
    if bad:
        units = sum(s.nonfinite for s in bad)
        out.append(
            f"NaN or Inf reached {units} units (sites {', '.join(s.site for s in bad[:4])}); "
            "they are not counted as dead: check the inputs and the weights"
        )
    return out


def build_report(
    model: str,
    captured: Captured,
    resolver: Resolver,
    th: Thresholds,
    *,
    grad: bool,
    mode: str,
    device: str,
    source: str,
) -> ModelReport:
    """Name the sites (``act#2`` only for modules that ran more than once per forward)."""
    repeats = Counter(cs.key.group for cs in captured.sites)
    sites = [
        _row(model, site_name(cs.key, repeats[cs.key.group] > 1), cs, th) for cs in captured.sites
    ]
    declared = resolver.declared()
    ran = {cs.key.path for cs in captured.sites if cs.key.module_site}
    sites += [_not_executed(model, p, a, source) for p, a in declared.items() if p not in ran]
    if not any(s.executed for s in sites):
        raise _no_relu_error(model, captured, declared)
    report = ModelReport(
        model=model,
        samples=captured.samples,
        batches=captured.batches,
        sites=tuple(sites),
        params=tuple(ParamGrad(n, shape, g) for n, shape, g in captured.params),
        warnings=tuple(_warnings(captured, resolver, sites)),
        thresholds=th,
        grad=grad,
        mode=mode,
        device=device,
        source=source,
    )
    return _with_suggestions(report)


def _with_suggestions(report: ModelReport) -> ModelReport:
    from dataclasses import replace

    return replace(report, suggestions=tuple(suggest(report.sites, report.dead_fraction)))
