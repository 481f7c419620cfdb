"""The producing layer of a site as root causes see it: per unit ``j`` the effective incoming
weights ``w_j`` and bias ``b_j`` of ``z_j = w_j·x + b_j``, a BatchNorm between folded in.

The layer is the one ``SiteReport.topology`` names (module path, class, folded norm); it is
looked up in the scanned module, so eager models, TorchScript and export programs are read
alike. Weights are read, never copied whole: per unit the row norm, and for the dead units
only, which inputs they read with a non-zero weight.

BatchNorm in eval mode is the affine map ``s_j (y - mean_j) + beta_j`` with
``s_j = gamma_j / sqrt(var_j + eps)``, so ``w_j = s_j W_j`` and
``b_j = beta_j + s_j (c_j - mean_j)`` (``c`` the layer's own bias). In train mode, or without
running statistics, it normalises each batch by that batch's mean and variance: ``w`` and
``b`` then change from batch to batch and are not reported (``batch_stats``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from relu_doctor.scanner.topology import SiteTopology

#: Fallback when a graph does not say which eps its BatchNorm used (torch's default).
_DEFAULT_BN_EPS = 1e-5


@dataclass(frozen=True, eq=False)
class Producer:
    """The layer that produces a site's pre-activation, reduced to what causes need:
    ``row_norm`` ``||w_j||`` and ``bias`` ``b_j`` per unit (BatchNorm folded in; ``bias`` is
    NaN under ``batch_stats``), ``bias_scale`` the sum of the magnitudes of the terms that
    make ``b_j`` (what its rounding scales with) and ``resolution`` the unit roundoff of the
    arithmetic that made ``z``."""

    path: str
    kind: str
    norm: str | None
    weight: torch.Tensor
    transposed: bool
    groups: int | None
    row_norm: np.ndarray
    bias: np.ndarray
    bias_scale: np.ndarray
    resolution: float
    batch_stats: bool = False

    def reads(self, units: np.ndarray, inputs: int) -> np.ndarray | None:
        """``(len(units), inputs)``: which of the layer's ``inputs`` input features (Linear)
        or channels (convolution) each of ``units`` reads with a non-zero weight; None when
        the weight does not fit ``inputs``."""
        w = self.weight.detach()
        if w.ndim == 2 and not self.transposed:
            if w.shape[1] != inputs:
                return None
            return (w[torch.from_numpy(units)] != 0).cpu().numpy()
        if w.ndim < 3:
            return None
        if self.transposed:
            return self._reads_transposed(w, units, inputs)
        per_group = w.shape[1]
        groups = self.groups or (inputs // per_group if per_group else 0)
        if not groups or per_group * groups != inputs or w.shape[0] % groups:
            return None
        local = (w[torch.from_numpy(units)] != 0).flatten(2).any(2).cpu().numpy()
        group = units // (w.shape[0] // groups)
        return _spread(local, group * per_group, inputs)

    def _reads_transposed(
        self, w: torch.Tensor, units: np.ndarray, inputs: int
    ) -> np.ndarray | None:
        groups = self.groups or 1
        if w.shape[0] != inputs or inputs % groups:
            return None
        per_group, out_group = inputs // groups, w.shape[1]
        grouped = w.reshape(groups, per_group, out_group, -1)
        g, j = units // out_group, units % out_group
        local = (grouped[torch.from_numpy(g), :, torch.from_numpy(j)] != 0).any(2).cpu().numpy()
        return _spread(local, g * per_group, inputs)


def _spread(local: np.ndarray, offset: np.ndarray, inputs: int) -> np.ndarray:
    """Place each row's group-local input flags at its group's offset among all inputs."""
    out = np.zeros((local.shape[0], inputs), dtype=bool)
    cols = offset[:, None] + np.arange(local.shape[1])[None, :]
    out[np.arange(local.shape[0])[:, None], cols] = local
    return out


def _float(t: torch.Tensor | None, units: int, fill: float) -> np.ndarray:
    if t is None:
        return np.full(units, fill)
    return t.detach().double().cpu().numpy().reshape(-1)


def _row_norms(w: torch.Tensor, transposed: bool, groups: int) -> np.ndarray:
    """``||w_j||`` per output unit, in float64. Summed in the weight's own precision (20x
    faster than converting the whole matrix); the rows whose squares could have overflowed
    or underflowed there (norm not finite, or below ``1e-18``) are summed again in float64."""
    w = w.detach()
    if transposed:  # (in, out / groups, *k) -> per output unit: rows of (groups*out, in/groups*k)
        w = w.reshape(groups, w.shape[0] // groups, w.shape[1], -1).transpose(1, 2)
    rows = w.reshape(_out_units_of(w, transposed), -1)
    norms = torch.linalg.vector_norm(rows, dim=1).double()
    redo = ~torch.isfinite(norms) | (norms < 1e-18)
    if bool(redo.any()):
        norms[redo] = torch.linalg.vector_norm(rows[redo], dim=1, dtype=torch.float64)
    return norms.cpu().numpy()


def _out_units_of(w: torch.Tensor, transposed: bool) -> int:
    return int(w.shape[0] * w.shape[1]) if transposed else int(w.shape[0])


def _out_units(w: torch.Tensor, transposed: bool, groups: int) -> int:
    return int(w.shape[1]) * groups if transposed else int(w.shape[0])


def producing_layer(
    root: nn.Module,
    topology: SiteTopology | None,
    units: int,
    *,
    train: bool,
    modules: Mapping[str, nn.Module] | None = None,
) -> Producer | str:
    """The site's producing layer with its effective weights and bias, or why there is none
    (``train``: the scan ran in train mode, where BatchNorm uses batch statistics;
    ``modules``: ``dict(root.named_modules())``, when the caller has it already)."""
    if topology is None:
        return "the topology of this site is not known"
    if topology.producer is None:
        return f"no producing layer: {topology.producer_note or 'none found'}"
    modules = dict(root.named_modules()) if modules is None else modules
    layer = modules.get(topology.producer)
    weight = getattr(layer, "weight", None) if layer is not None else None
    if not isinstance(weight, torch.Tensor) or weight.ndim < 2:
        return f"layer {topology.producer} has no weight matrix to read"
    kind = topology.producer_kind or type(layer).__name__
    transposed = "Transpose" in kind
    groups_attr = getattr(layer, "groups", None)
    groups = int(groups_attr) if isinstance(groups_attr, int) and groups_attr > 0 else None
    if transposed and groups is None:
        return f"layer {topology.producer}: a transposed convolution without its groups"
    if _out_units(weight, transposed, groups or 1) != units:
        return (
            f"layer {topology.producer} has {_out_units(weight, transposed, groups or 1)} "
            f"outputs, the site {units} units"
        )
    row = _row_norms(weight, transposed, groups or 1)
    layer_bias = getattr(layer, "bias", None)
    c = _float(layer_bias if isinstance(layer_bias, torch.Tensor) else None, units, 0.0)
    if c.shape[0] != units:
        return f"layer {topology.producer}: its bias does not have one value per unit"
    folded = _fold(root, modules, topology.norm, row, c, units, train=train)
    if isinstance(folded, str):
        return folded
    row_norm, bias, bias_scale, batch_stats = folded
    return Producer(
        path=topology.producer,
        kind=kind,
        norm=topology.norm,
        weight=weight,
        transposed=transposed,
        groups=groups,
        row_norm=row_norm,
        bias=bias,
        bias_scale=bias_scale,
        resolution=max(float(torch.finfo(weight.dtype).eps) / 2, 2.0**-24),
        batch_stats=batch_stats,
    )


_Folded = tuple[np.ndarray, np.ndarray, np.ndarray, bool]


def _fold(
    root: nn.Module,
    modules: Mapping[str, nn.Module],
    path: str | None,
    row: np.ndarray,
    c: np.ndarray,
    units: int,
    *,
    train: bool,
) -> _Folded | str:
    """Row norms, bias, bias scale and ``batch_stats`` with the BatchNorm at ``path`` (if
    any) folded in, in eval mode."""
    if path is None:
        return row, c, np.abs(c), False
    bn = modules.get(path)
    if bn is None:
        return f"BatchNorm {path} not found in the model"
    mean, var = getattr(bn, "running_mean", None), getattr(bn, "running_var", None)
    eps, graph_train = _bn_eps(root, bn, path)
    if (
        train
        or graph_train
        or not isinstance(mean, torch.Tensor)
        or not isinstance(var, torch.Tensor)
    ):
        return row, np.full(units, np.nan), np.full(units, np.nan), True
    gamma = _float(getattr(bn, "weight", None), units, 1.0)
    beta = _float(getattr(bn, "bias", None), units, 0.0)
    m, v = _float(mean, units, 0.0), _float(var, units, 1.0)
    if not all(x.shape[0] == units for x in (gamma, beta, m, v)):
        return f"BatchNorm {path} does not have one channel per unit"
    s = gamma / np.sqrt(v + eps)
    scale = np.abs(beta) + np.abs(s) * (np.abs(c) + np.abs(m))
    return np.abs(s) * row, beta + s * (c - m), scale, False


def _bn_eps(root: nn.Module, bn: nn.Module, path: str) -> tuple[float, bool]:
    """The BatchNorm's eps, and whether its graph call normalises with batch statistics.
    Modules carry eps; an export program keeps it only in the graph's call."""
    eps = getattr(bn, "eps", None)
    if isinstance(eps, float):
        return eps, False
    graph = getattr(root, "graph", None)
    for node in getattr(graph, "nodes", ()):
        if node.op != "call_function" or "batch_norm" not in str(node.target):
            continue
        if not any(getattr(a, "target", None) == f"{path}.running_mean" for a in node.args):
            continue
        floats = [a for a in node.args if isinstance(a, float)]
        bools = [a for a in node.args if isinstance(a, bool)]
        training = "no_training" not in str(node.target) and bool(bools and bools[0])
        return (floats[-1] if floats else _DEFAULT_BN_EPS), training
    return _DEFAULT_BN_EPS, False
