"""ReDo re-initialisation (Sokar et al. 2023) of dead units, read off the site topology.

For each dead unit j of a site:

- its incoming weights (row j of the producing Linear, output channel j of the producing
  convolution) and its bias are re-drawn from the layer's own initialiser: an eager layer's
  ``reset_parameters`` on a scratch copy (seeded), and for TorchScript and ``torch.export``
  layers, which keep no Python initialiser, torch's default for Linear and Conv layers
  (Kaiming-uniform with a = sqrt(5), bias uniform in +-1/sqrt(fan_in));
- a BatchNorm between the layer and the ReLU is part of the incoming path: channel j gets
  the BatchNorm's initial values (weight 1, bias 0, running mean 0, running variance 1), so
  its eval pre-activation is the new convolution output itself and training re-estimates
  the statistics;
- its outgoing weights in the consuming layer are zeroed: column j of a Linear, input
  channel j of a convolution (within its group), or the block of columns a flattened
  channel j owns in a Linear head (``in_features / channels`` columns per channel).

The unit output was 0 on every scanned input and now meets zero weights, so the network
computes the same function while the unit can learn again. Any other layout is refused
with the reason. ``repair`` checks each change against the model's outputs and re-draws
units that would not fire.
"""

from __future__ import annotations

import copy
import math
import zlib
from dataclasses import dataclass, field

import torch
from torch import nn

from relu_doctor.analyze.report import SiteReport

_LINEAR = "Linear"
_CONV = "Conv"


@dataclass
class Layer:
    """A producing or consuming layer: its module, path and form (Linear or Conv)."""

    path: str
    module: nn.Module
    form: str

    @property
    def weight(self) -> torch.Tensor:
        w = getattr(self.module, "weight", None)
        assert isinstance(w, torch.Tensor)
        return w

    @property
    def bias(self) -> torch.Tensor | None:
        b = getattr(self.module, "bias", None)
        return b if isinstance(b, torch.Tensor) else None


@dataclass
class Plan:
    """How to re-initialise the dead units of one site."""

    site: str
    units: tuple[int, ...]
    producer: Layer
    consumer: Layer
    norm: nn.Module | None
    eager: bool
    _saved: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list, repr=False)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor a re-initialisation writes to."""
        found = [self.producer.weight, self.consumer.weight]
        if self.producer.bias is not None:
            found.append(self.producer.bias)
        if self.norm is not None:
            for name in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(self.norm, name, None)
                if isinstance(t, torch.Tensor):
                    found.append(t)
        return found

    def save(self) -> None:
        self._saved = [(t, t.detach().clone()) for t in self.tensors()]

    def restore(self) -> None:
        with torch.no_grad():
            for t, copy_ in self._saved:
                t.copy_(copy_)

    def draw(self, units: tuple[int, ...], seed: int, attempt: int) -> None:
        """Re-draw the incoming weights and bias of ``units`` (and reset their BatchNorm
        channel); the same seed, site and attempt always draw the same values."""
        weight, bias = self._fresh(_seed(seed, self.site, attempt))
        idx = list(units)
        with torch.no_grad():
            w = self.producer.weight
            w[idx] = weight[idx].to(w.device, w.dtype)
            b = self.producer.bias
            if b is not None and bias is not None:
                b[idx] = bias[idx].to(b.device, b.dtype)
            if self.norm is not None:
                for name, value in (
                    ("weight", 1.0),
                    ("bias", 0.0),
                    ("running_mean", 0.0),
                    ("running_var", 1.0),
                ):
                    t = getattr(self.norm, name, None)
                    if isinstance(t, torch.Tensor):
                        t[idx] = value

    def silence(self) -> None:
        """Zero the outgoing weights of every planned unit in the consuming layer."""
        w = self.consumer.weight
        with torch.no_grad():
            for j in self.units:
                w[outgoing(self, j)] = 0

    def _fresh(self, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A fresh draw of the whole layer, on the CPU (only the planned rows are used)."""
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the CPU's only: the draw is on the CPU
            module = self.producer.module
            if self.eager and callable(getattr(module, "reset_parameters", None)):
                scratch = Layer("", copy.deepcopy(module).to("cpu"), self.producer.form)
                getattr(scratch.module, "reset_parameters")()  # noqa: B009
                bias = scratch.bias
                return scratch.weight.detach(), None if bias is None else bias.detach()
            return _default_init(self.producer.weight, self.producer.bias)


def _seed(seed: int, site: str, attempt: int) -> int:
    """A draw seed per (seed, site, attempt); stable across processes (no ``hash()``)."""
    return zlib.crc32(f"{seed}:{site}:{attempt}".encode())


def _default_init(
    weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """torch's own initialiser of Linear and ConvNd layers, for a weight of this shape."""
    w = torch.empty(weight.shape, dtype=torch.float32)
    nn.init.kaiming_uniform_(w, a=math.sqrt(5))
    if bias is None:
        return w, None
    fan_in = w[0].numel()
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return w, torch.empty(bias.shape, dtype=torch.float32).uniform_(-bound, bound)


def outgoing(plan: Plan, j: int) -> tuple[slice | int, ...]:
    """The index of unit ``j``'s outgoing weights in the consumer's weight."""
    w = plan.consumer.weight
    units = plan.producer.weight.shape[0]
    if plan.consumer.form == _LINEAR:
        block = w.shape[1] // units  # 1, or the positions of a flattened channel
        return (slice(None), slice(j * block, (j + 1) * block))
    per_group = w.shape[1]  # input channels each group of the convolution reads
    group = j // per_group
    out_per_group = w.shape[0] // (units // per_group)
    return (slice(group * out_per_group, (group + 1) * out_per_group), j - group * per_group)


# --- planning -------------------------------------------------------------------------------


def _form(module: nn.Module, kind: str | None) -> str | None:
    """Linear or Conv (not transposed) for the layers ReDo knows; None otherwise."""
    if isinstance(module, nn.Linear):
        return _LINEAR
    if isinstance(module, nn.modules.conv._ConvNd):
        return None if module.transposed else _CONV
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        return None
    # TorchScript keeps the class as ``original_name``; an export program keeps plain
    # Modules, whose kind the topology read off the op (Linear or Conv).
    name = str(getattr(module, "original_name", "") or "")
    if not name and type(module) is nn.Module:
        name = kind or ""
    if name == "Linear" and w.ndim == 2:
        return _LINEAR
    if name in ("Conv", "Conv1d", "Conv2d", "Conv3d") and w.ndim in (3, 4, 5):
        return _CONV
    return None


def _is_batchnorm(module: nn.Module) -> bool:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return True
    named = "BatchNorm" in str(getattr(module, "original_name", ""))
    return named or isinstance(getattr(module, "running_var", None), torch.Tensor)


def plan(model: nn.Module, site: SiteReport, eager: bool) -> Plan | str:
    """How to re-initialise ``site``'s dead units, or why it cannot be done."""
    units = tuple(int(j) for j in _dead_units(site))
    topo = site.topology
    if topo is None:
        return "its topology is unknown"
    if topo.producer is None:
        return f"no layer produces its pre-activation ({topo.producer_note})"
    if topo.consumer is None:
        return f"no single layer consumes its output ({topo.consumer_note})"

    def get(path: str) -> nn.Module:
        return submodule(model, path)

    producer = get(topo.producer)
    p_form = _form(producer, topo.producer_kind)
    if p_form is None:
        kind = topo.producer_kind or type(producer).__name__
        return f"its producing layer {topo.producer} is a {kind}; ReDo handles Linear and Conv"
    consumer = get(topo.consumer)
    c_form = _form(consumer, topo.consumer_kind)
    if c_form is None:
        kind = topo.consumer_kind or type(consumer).__name__
        return f"its consuming layer {topo.consumer} is a {kind}; ReDo handles Linear and Conv"
    prod = Layer(topo.producer, producer, p_form)
    cons = Layer(topo.consumer, consumer, c_form)
    out = prod.weight.shape[0]
    if out != site.units:
        return f"{topo.producer} makes {out} outputs but the site has {site.units} units"
    problem = _consumer_problem(prod, cons)
    if problem is not None:
        return problem
    norm = None
    if topo.norm is not None:
        norm = get(topo.norm)
        features = getattr(norm, "running_var", getattr(norm, "weight", None))
        if not _is_batchnorm(norm) or not isinstance(features, torch.Tensor):
            return f"{topo.norm} between the layer and the ReLU is not a BatchNorm"
        if features.shape[0] != out:
            return f"{topo.norm} has {features.shape[0]} channels, {topo.producer} {out}"
    return Plan(site.site, units, prod, cons, norm, eager)


def submodule(model: nn.Module, path: str) -> nn.Module:
    """The module at ``path`` (``get_submodule`` refuses TorchScript modules)."""
    found = model
    for name in path.split(".") if path else ():
        found = getattr(found, name)
    return found


def _consumer_problem(prod: Layer, cons: Layer) -> str | None:
    units, w = prod.weight.shape[0], cons.weight
    what = f"its consuming layer {cons.path}"
    if cons.form == _LINEAR:
        if prod.form == _LINEAR and w.shape[1] != units:
            return f"{what} reads {w.shape[1]} features, not the site's {units}"
        if w.shape[1] % units:
            return f"{what} reads {w.shape[1]} features, not a block per each of {units} channels"
        return None
    if prod.form == _LINEAR:
        return f"{what} is a convolution fed by a Linear's features: their channels are unknown"
    per_group = w.shape[1]
    if units % per_group or w.shape[0] % (units // per_group):
        return f"{what} reads {per_group} channels per group, which does not fit {units}"
    return None


def _dead_units(site: SiteReport) -> list[int]:
    totals = site.totals
    if totals is None:
        return []
    return [j for j in range(totals.units) if totals.fires[j] == 0 and totals.samples > 0]
