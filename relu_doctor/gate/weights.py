"""Data-free verdicts from weights alone (rules RD401 and RD402).

The pure functions take arrays (numpy, torch tensors or lists; rows along dim 0 are the
units) and need no model and no scan, so they are tested on hand-made numbers:

- ``dead_by_construction(weight, bias)``: a unit whose incoming weights are all exactly zero
  and whose bias is <= 0 has pre-activation ``bias`` for every input, so ``relu`` never
  fires. ``weight`` is ``(units, ...)``: a Linear's ``(out, in)`` or a Conv's ``(out, in,
  *kernel)``; ``bias`` None counts as 0.
- ``fold_batchnorm(...)``: the same layer with a following BatchNorm folded in (eval mode).
- ``bn_predicted_dead(gamma, beta, k)``: channels of a BatchNorm -> ReLU that fire only on
  inputs more than ``k`` running standard deviations above the running mean.

``Producer`` says what computes a site's pre-activation; ``weight_findings(report,
producers)`` turns the verdicts into findings next to the measured counts;
``producers(model, report)`` reads each site's producer from the scan's topology
(``SiteReport.topology``) and its parameters from the scanned model.

Why ``k = 10`` (``BN_K``): under the running statistics the standardised input is roughly
N(0, 1) on training-like data, and a Gaussian exceeds 4 sigma on 3e-5 of draws. But a
channel is alive when it fires on *any* position of *any* sample (a 16x16 map over 4096
samples is 1e6 draws, whose Gaussian maximum is already ~5 sigma), and real inputs are
heavier-tailed. Measured (``python -m tests.fixtures.trained 8 300``: 40 BatchNorm CNNs,
1920 channels, 234 dead on 4096 held-out samples): live channels sat at margins up to
7.6 sigma (selective feature detectors), so k = 4 would call 28 live channels dead and
k = 6 five; k = 8 and k = 10 call none, and k = 10 still finds 83 of the 234 dead. An
exploratory run (more optimiser settings, 1024 samples) saw one live channel at 8.1 sigma,
hence 10 rather than 8.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:
    import numpy as np
    import torch
    from numpy.typing import NDArray

    from relu_doctor.gate.findings import Finding, ReportLike

#: Margin, in running standard deviations, beyond which a BatchNorm channel is predicted dead.
BN_K = 10.0
#: Relative slack when deciding the sign of a folded bias (float rounding in the forward).
_REL_TOL = 1e-6


def _np(x: Any) -> NDArray[np.float64]:
    """A float64 numpy copy of an array-like (torch tensors of any dtype and device too)."""
    import numpy as np

    if hasattr(x, "detach"):  # a torch tensor: bf16 has no numpy dtype, grads must go
        x = x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def _rows(weight: Any) -> NDArray[np.float64]:
    w = _np(weight)
    if w.ndim == 0:
        raise ValueError("weight must have the units along dim 0, got a scalar")
    return w.reshape(w.shape[0], -1)


def _vector(x: Any, n: int, default: float, name: str) -> NDArray[np.float64]:
    import numpy as np

    if x is None:
        return np.full(n, default)
    v = _np(x).reshape(-1)
    if v.shape[0] != n:
        raise ValueError(f"{name} has {v.shape[0]} entries for {n} units")
    return v


def zero_rows(weight: Any) -> NDArray[np.bool_]:
    """Per unit: every incoming weight exactly 0 (NaN is not 0). A torch tensor is compared
    where and as it is: no float64 copy of a large layer, so a check stays cheap."""
    import numpy as np

    if hasattr(weight, "detach"):
        w = weight.detach()
        if w.dim() == 0:
            raise ValueError("weight must have the units along dim 0, got a scalar")
        return np.asarray((~w.reshape(w.shape[0], -1).any(dim=1)).cpu().numpy(), dtype=bool)
    return np.asarray((_rows(weight) == 0).all(axis=1), dtype=bool)


def dead_by_construction(weight: Any, bias: Any = None) -> NDArray[np.bool_]:
    """Per unit: all incoming weights exactly 0 and bias <= 0 (None = 0): never fires."""
    zero = zero_rows(weight)
    b = _vector(bias, zero.shape[0], 0.0, "bias")
    return zero & (b <= 0)


def fold_batchnorm(
    weight: Any,
    bias: Any,
    gamma: Any,
    beta: Any,
    running_mean: Any,
    running_var: Any,
    eps: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(W', b')`` with ``W' x + b' == BN_eval(W x + b)``: ``s = gamma / sqrt(var + eps)``,
    ``W' = s W``, ``b' = s (b - mean) + beta``. ``gamma``/``beta`` None (``affine=False``)
    count as 1/0."""
    import numpy as np

    w = _rows(weight)
    n = w.shape[0]
    b = _vector(bias, n, 0.0, "bias")
    g = _vector(gamma, n, 1.0, "gamma")
    scale = g / np.sqrt(_vector(running_var, n, 1.0, "running_var") + eps)
    shift = scale * (b - _vector(running_mean, n, 0.0, "running_mean"))
    return w * scale[:, None], shift + _vector(beta, n, 0.0, "beta")


def dead_through_batchnorm(weight: Any, bias: Any, bn: BatchNormParams) -> NDArray[np.bool_]:
    """Units of ``weight`` -> BatchNorm -> ReLU that never fire, in eval *and* train mode.

    A zero row makes the layer's output the constant ``bias``. In eval mode the BatchNorm
    maps it to the folded bias (never fires when that is < 0, with a slack for rounding);
    in train mode the batch mean equals the constant, so the output is ``beta`` (never
    fires when beta < 0). Both must hold: the verdict is about the model, not one mode.
    """
    import numpy as np

    zero = zero_rows(weight)
    n = zero.shape[0]
    beta = _vector(bn.beta, n, 0.0, "beta")
    if bn.running_mean is None or bn.running_var is None or not zero.any():
        return zero & (beta < 0)
    # Only the bias is folded: the weight rows that matter are zero anyway.
    _, folded = fold_batchnorm(
        np.zeros((n, 1)), bias, bn.gamma, bn.beta, bn.running_mean, bn.running_var, bn.eps
    )
    slack = _REL_TOL * (np.abs(beta) + np.abs(folded - beta))
    return zero & (folded < -slack) & (beta < 0)


def bn_margin(gamma: Any, beta: Any) -> NDArray[np.float64]:
    """Per channel ``-beta / |gamma|``: how many running standard deviations above the
    running mean the input must be for the channel to fire (inf when gamma is 0 and beta
    < 0, -inf when gamma is 0 and beta > 0, 0 for both 0)."""
    import numpy as np

    g = np.abs(_np(gamma).reshape(-1))
    b = _np(beta).reshape(-1)
    if g.shape != b.shape:
        raise ValueError(f"gamma has {g.shape[0]} entries, beta {b.shape[0]}")
    with np.errstate(divide="ignore", invalid="ignore"):
        m = -b / g
    return np.where((g == 0) & (b == 0), 0.0, m)


def bn_predicted_dead(gamma: Any, beta: Any, *, k: float = BN_K) -> NDArray[np.bool_]:
    """Per channel of a BatchNorm followed by a ReLU: predicted dead from its parameters
    alone, ``beta < -k |gamma|`` (or gamma == 0 and beta <= 0, which is exact).

    The running mean/variance and a conv bias before the BatchNorm are not needed: the
    BatchNorm standardises its input with them, so the channel's output is ``gamma * x +
    beta`` with ``x`` about N(0, 1) whatever they are. ``k`` trades recall for precision;
    see the module docstring for the measurements behind ``BN_K``.
    """
    import numpy as np

    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    g = np.abs(_np(gamma).reshape(-1))
    b = _np(beta).reshape(-1)
    if g.shape != b.shape:
        raise ValueError(f"gamma has {g.shape[0]} entries, beta {b.shape[0]}")
    return (b < -k * g) | ((g == 0) & (b <= 0))


@dataclass(frozen=True)
class BatchNormParams:
    """A BatchNorm's parameters (None where the module has none: ``affine=False``,
    ``track_running_stats=False``)."""

    name: str
    gamma: Any
    beta: Any
    running_mean: Any
    running_var: Any
    eps: float = 1e-5


@dataclass(frozen=True)
class Producer:
    """What computes a site's pre-activation: ``bn(layer(x))`` with either part optional.
    ``weight`` rows (dim 0) must be the site's units (a Linear's out features, a Conv's out
    channels); a ConvTranspose's weight must be transposed to that first."""

    layer: str | None
    weight: Any = None
    bias: Any = None
    batchnorm: BatchNormParams | None = None


#: Layer classes whose ``weight`` rows are the units of their output (a Linear's out
#: features, a Conv's out channels); export programs keep plain containers, where the
#: topology names them ``Linear``/``Conv`` from the op. Transposed convs are not here: their
#: weight is ``(in, out, ...)``.
_ROW_LAYERS = re.compile(r"(Lazy)?(Linear|Conv[123]d|Conv)")


def producers(model: Any, report: ReportLike) -> dict[str, Producer]:
    """Producer of each ReLU/ReLU6 site of ``report`` whose producing layer the scan's
    topology found (``SiteReport.topology``: the layer, a BatchNorm folded in between),
    with that layer's parameters read from ``model``, the very model that was scanned
    (an ``nn.Module``, TorchScript module, ``ExportedProgram`` or loaded model). Works on
    any architecture, TorchScript and export programs too, because the topology is read
    from the ops of the scan's first forward; nothing runs again.

    A site gets no producer when the topology found none (the pre-activation is a sum, a
    model input...), when the site is not counted (LeakyReLU & co.) or never ran. A layer
    that is not a Linear/Conv (a transposed conv, a custom module) contributes no weight,
    but its BatchNorm still feeds RD402. Empty for what is not a model."""
    module = _module_of(model)
    if module is None:
        return {}
    modules = dict(module.named_modules())  # also TorchScript, which lacks get_submodule
    out: dict[str, Producer] = {}
    for site in report.sites:
        topo = getattr(site, "topology", None)
        if topo is None or topo.producer is None or not (site.counted and site.executed):
            continue
        layer = modules.get(topo.producer)
        weight = getattr(layer, "weight", None)
        kind = topo.producer_kind or ""
        bn_module = modules.get(topo.norm) if topo.norm is not None else None
        bn = _bn_params(topo.norm, bn_module) if bn_module is not None else None
        if _ROW_LAYERS.fullmatch(kind) and _is_tensor(weight) and len(weight.shape) >= 2:
            bias = getattr(layer, "bias", None)
            out[site.site] = Producer(topo.producer, weight, bias if _is_tensor(bias) else None, bn)
        elif bn is not None:
            out[site.site] = Producer(None, batchnorm=bn)
    return out


def _module_of(model: Any) -> Any:
    """The ``nn.Module`` that a scan of ``model`` ran (None for what is not a model)."""
    from relu_doctor.errors import UsageError
    from relu_doctor.scanner.runner import as_target

    try:
        return as_target(model).module
    except UsageError:
        return None


def _is_tensor(x: Any) -> TypeGuard[torch.Tensor]:
    import torch

    return isinstance(x, torch.Tensor)


def _bn_params(name: str, bn: Any) -> BatchNormParams:
    """A BatchNorm's parameters; an export program's container has no ``eps`` (it lives in
    the graph), so the BatchNorm default 1e-5 stands in (it only nudges RD401's fold)."""

    def get(attr: str) -> Any:
        value = getattr(bn, attr, None)
        return value if _is_tensor(value) else None

    eps = getattr(bn, "eps", 1e-5)
    return BatchNormParams(
        name, get("weight"), get("bias"), get("running_mean"), get("running_var"), float(eps)
    )


def construction_findings(report: ReportLike, producers: Mapping[str, Producer]) -> list[Finding]:
    """RD401 per site whose producing layer has units dead by construction."""
    from relu_doctor.gate.findings import Finding
    from relu_doctor.gate.rules import RULES

    rule = RULES["RD401"]
    out = []
    for site, prod in _matched(report, producers):
        if prod.weight is None or prod.layer is None:
            continue
        if prod.batchnorm is None:
            dead = dead_by_construction(prod.weight, prod.bias)
            how = f"their rows of {prod.layer} are all zero and their bias is <= 0"
        else:
            dead = dead_through_batchnorm(prod.weight, prod.bias, prod.batchnorm)
            how = (
                f"their rows of {prod.layer} are all zero and {prod.batchnorm.name} maps "
                "the constant below zero"
            )
        n = int(dead.sum())
        if n:
            msg = (
                f"{site.site}: {n} of {site.units} units can never fire: {how} "
                f"(units {_indices(dead)}; the scan measured {site.dead} dead)"
            )
            out.append(Finding.of(rule, report.model, site.site, msg, value=float(n)))
    return out


def batchnorm_findings(
    report: ReportLike, producers: Mapping[str, Producer], *, k: float = BN_K
) -> list[Finding]:
    """RD402 per site fed by a BatchNorm whose parameters predict dead channels."""
    from relu_doctor.gate.findings import Finding
    from relu_doctor.gate.rules import RULES

    rule = RULES["RD402"]
    out = []
    for site, prod in _matched(report, producers):
        bn = prod.batchnorm
        if bn is None or bn.beta is None:
            continue
        gamma = bn.gamma if bn.gamma is not None else [1.0] * site.units
        pred = bn_predicted_dead(gamma, bn.beta, k=k)
        n = int(pred.sum())
        if n:
            msg = (
                f"{site.site}: {bn.name} predicts {n} of {site.units} channels dead from its "
                f"parameters alone (beta < -{k:g}|gamma|: channels {_indices(pred)}); "
                f"the scan measured {site.dead} dead"
            )
            out.append(Finding.of(rule, report.model, site.site, msg, value=float(n)))
    return out


def weight_findings(
    report: ReportLike, producers: Mapping[str, Producer], *, k: float = BN_K
) -> list[Finding]:
    """RD401 and RD402 findings of ``report``'s sites that have a producer."""
    return construction_findings(report, producers) + batchnorm_findings(report, producers, k=k)


def _matched(
    report: ReportLike, producers: Mapping[str, Producer]
) -> Iterator[tuple[Any, Producer]]:
    """(site, producer) for executed sites whose producer has as many rows as the site has
    units (otherwise the units are not the producer's rows, e.g. another unit dim)."""
    for site in report.sites:
        prod = producers.get(site.site)
        if prod is None or not site.executed:
            continue
        rows = _producer_rows(prod)
        if rows == site.units:
            yield site, prod


def _producer_rows(prod: Producer) -> int | None:
    if prod.weight is not None:
        return len(prod.weight)
    if prod.batchnorm is not None and prod.batchnorm.beta is not None:
        return len(prod.batchnorm.beta)
    return None


def _indices(mask: Any, limit: int = 8) -> str:
    idx = [int(i) for i in mask.nonzero()[0]]
    shown = ", ".join(map(str, idx[:limit]))
    return shown + (f" and {len(idx) - limit} more" if len(idx) > limit else "")
