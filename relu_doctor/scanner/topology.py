"""Topology: the layer that produces each site's pre-activation and the layer that consumes
its output, found once, on the first forward of a scan, or why none could be found.

Root causes need the producing layer's weights and bias (a BatchNorm between folded in);
ReDo re-initialisation also needs the consuming layer, whose incoming weights from a dead
unit it zeroes. The tracker follows every aten op of the first forward through the capture's
dispatch mode, so eager models, TorchScript and export programs are read the same way:

- each op output is labelled with its origin: a layer (an op that reads a module's weight:
  matmul or convolution), that layer followed by a BatchNorm, or another op; pure views and
  copies keep the origin of their input;
- an activation's input names its producer by that label;
- an activation's output is watched: views and channel-preserving ops (pooling, dropout,
  flatten, and a mean/sum/max over dims that are neither the samples nor the units, e.g. a
  global average pool) pass the watch on, and every other op that reads it is a consumer.
  A site has a consumer only when exactly one layer reads it and nothing else does.

Tensors are matched by storage address; every op output overwrites the label at its address,
so a freed and reused address never carries a stale label.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from relu_doctor.scanner.sites import SiteKey

#: Ops that do not change values: the label (or watch) of the input carries over.
_VIEWS = frozenset(
    {
        "view",
        "_unsafe_view",
        "reshape",
        "t",
        "transpose",
        "permute",
        "unsqueeze",
        "squeeze",
        "flatten",
        "alias",
        "clone",
        "contiguous",
        "_to_copy",
        "detach",
        "lift_fresh",
    }
)
#: Ops between a site and its consumer that keep each unit's values in its own channel.
_CHANNEL_PRESERVING = frozenset(
    {
        "max_pool1d",
        "max_pool2d",
        "max_pool3d",
        "max_pool2d_with_indices",
        "max_pool3d_with_indices",
        "avg_pool1d",
        "avg_pool2d",
        "avg_pool3d",
        "adaptive_avg_pool1d",
        "adaptive_avg_pool2d",
        "adaptive_avg_pool3d",
        "_adaptive_avg_pool2d",
        "_adaptive_avg_pool3d",
        "adaptive_max_pool1d",
        "adaptive_max_pool2d",
        "adaptive_max_pool3d",
        "dropout",
        "native_dropout",
        "feature_dropout",
    }
)
_LAYER_OPS = frozenset({"addmm", "mm", "linear", "matmul", "bmm", "baddbmm"})
#: Reductions that keep each unit in its own place when they reduce neither dim 0 nor the
#: units' dim (channels after a Conv, the last dim after a Linear).
_REDUCTIONS = frozenset({"mean", "sum", "amax", "amin"})


def _is_layer_op(name: str) -> bool:
    return name in _LAYER_OPS or ("conv" in name and "backward" not in name)


def _is_norm_op(name: str) -> bool:
    return "batch_norm" in name and "backward" not in name


@dataclass(frozen=True)
class SiteTopology:
    """Where a site sits: the producing layer (module path and class, a BatchNorm folded in
    between) and the consuming layer, each with a note saying why it is missing."""

    producer: str | None = None
    producer_kind: str | None = None
    norm: str | None = None
    producer_note: str = ""
    consumer: str | None = None
    consumer_kind: str | None = None
    via: tuple[str, ...] = ()  # ops between the site and its consumer
    consumer_note: str = ""

    @staticmethod
    def unknown(why: str) -> SiteTopology:
        return SiteTopology(producer_note=why, consumer_note=why)


@dataclass(frozen=True)
class _Origin:
    layer: str | None = None  # module path of the layer whose output this is
    kind: str | None = None
    norm: str | None = None
    op: str = ""  # the op that made it, when not a layer


@dataclass
class _Watch:
    key: SiteKey
    via: tuple[str, ...] = ()


@dataclass
class _Uses:
    layers: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    others: list[str] = field(default_factory=list)


def _module_kind(module: nn.Module) -> str:
    name = getattr(module, "original_name", None)  # TorchScript keeps the class name here
    return str(name) if isinstance(name, str) else type(module).__name__


def _has_running_stats(module: nn.Module) -> bool:
    buffers = dict(module.named_buffers(recurse=False))
    return "running_mean" in buffers and "running_var" in buffers


def _layer_kind(owner_kind: str, op: str) -> str:
    """The layer's class; export programs keep plain ``Module`` containers, so there the op
    tells (``Linear`` for matmuls, ``Conv`` for convolutions)."""
    if owner_kind != "Module":
        return owner_kind
    return "Conv" if "conv" in op else "Linear"


def _tensors(args: Any) -> Iterator[torch.Tensor]:
    for a in args:
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (t for t in a if isinstance(t, torch.Tensor))


def _ptr(t: torch.Tensor) -> int | None:
    try:
        return int(t.data_ptr()) or None
    except RuntimeError:  # tensors without storage
        return None


class TopologyTracker:
    """Follows the ops of one forward (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        self._owner: dict[int, tuple[str, str, bool]] = {}  # ptr -> (path, kind, is_norm)
        for path, module in model.named_modules():
            # An export program's BatchNorm is a plain ``Module`` container: its running
            # statistics give it away.
            is_norm = (
                isinstance(module, nn.modules.batchnorm._BatchNorm)
                or "BatchNorm" in _module_kind(module)
                or _has_running_stats(module)
            )
            tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
            for t in tensors:
                ptr = _ptr(t)
                if ptr is not None and t.dim() > 0:
                    self._owner.setdefault(ptr, (path, _module_kind(module), is_norm))
        self._origin: dict[int, _Origin] = {}
        self._watch: dict[int, _Watch] = {}
        self._producers: dict[SiteKey, SiteTopology] = {}
        self._uses: dict[SiteKey, _Uses] = {}

    # -- called by the capture --

    def on_op(self, func: Any, args: tuple[Any, ...], out: Any) -> None:
        """Any op that is not an activation: note who reads watched outputs, label outputs."""
        name = getattr(func, "_opname", "")
        inputs = list(_tensors(args))
        watched = [
            (t, w) for t in inputs if (p := _ptr(t)) is not None and (w := self._watch.get(p))
        ]
        params = [o for t in inputs if (p := _ptr(t)) is not None and (o := self._owner.get(p))]
        outs = list(_tensors(out if isinstance(out, (tuple, list)) else (out,)))
        passes = name in _VIEWS or name in _CHANNEL_PRESERVING
        if not passes and name in _REDUCTIONS and watched:
            passes = self._keeps_units(watched[0][1].key, args)
        for _, w in watched:
            if passes:
                continue
            uses = self._uses.setdefault(w.key, _Uses())
            if params and _is_layer_op(name) and not params[0][2]:
                uses.layers.append((params[0][0], _layer_kind(params[0][1], name), w.via))
            else:
                uses.others.append(name)
        label = self._label(name, inputs, params)
        for i, t in enumerate(outs):
            ptr = _ptr(t)
            if ptr is None:
                continue
            self._origin[ptr] = label if i == 0 else _Origin(op=name)
            self._watch.pop(ptr, None)
        if passes and watched and outs and (ptr := _ptr(outs[0])) is not None:
            w = watched[0][1]
            step = () if name in _VIEWS else (name,)
            self._watch[ptr] = _Watch(w.key, w.via + step)

    def _keeps_units(self, key: SiteKey, args: tuple[Any, ...]) -> bool:
        """Does a reduction leave the site's units where they are? Only when it names its
        dims, and they include neither the samples nor the units (dim 1 after a Conv, the
        last dim after a Linear)."""
        producer = self._producers.get(key)
        kind = producer.producer_kind if producer is not None else None
        if kind is None or len(args) < 2 or not isinstance(args[0], torch.Tensor):
            return False
        ndim, dims = args[0].dim(), args[1]
        dims = [dims] if isinstance(dims, int) else dims
        if not isinstance(dims, (list, tuple)) or not dims or ndim < 2:
            return False
        unit = 1 if "Conv" in kind else ndim - 1
        reduced = {int(d) % ndim for d in dims}
        return 0 not in reduced and unit not in reduced

    def before_activation(self, key: SiteKey, x: torch.Tensor) -> None:
        if key in self._producers:
            return
        ptr = _ptr(x)
        origin = self._origin.get(ptr) if ptr is not None else None
        if origin is None:
            topo = SiteTopology(producer_note="the pre-activation is a model input")
        elif origin.layer is None:
            topo = SiteTopology(producer_note=f"the pre-activation comes from aten.{origin.op}")
        else:
            topo = SiteTopology(producer=origin.layer, producer_kind=origin.kind, norm=origin.norm)
        self._producers[key] = topo

    def after_activation(self, key: SiteKey, out: torch.Tensor) -> None:
        ptr = _ptr(out)
        if ptr is not None:
            self._origin[ptr] = _Origin(op=f"activation {key.op}")
            self._watch[ptr] = _Watch(key)
            self._uses.setdefault(key, _Uses())

    def result(self) -> dict[SiteKey, SiteTopology]:
        """Producer and consumer of every site seen."""
        out = {}
        for key, topo in self._producers.items():
            uses = self._uses.get(key, _Uses())
            layers = list(dict.fromkeys(uses.layers))
            others = list(dict.fromkeys(uses.others))
            if len(layers) == 1 and not others:
                path, kind, via = layers[0]
                out[key] = _with_consumer(topo, path, kind, via, "")
            elif not layers and not others:
                out[key] = _with_consumer(topo, None, None, (), "the output leaves the model")
            else:
                readers = [p for p, _, _ in layers] + [f"aten.{o}" for o in others]
                note = f"the output is read by {len(readers)} ops ({', '.join(readers[:4])})"
                if not layers:
                    note = f"the output is read by {', '.join(readers[:4])}, not by a layer"
                out[key] = _with_consumer(topo, None, None, (), note)
        return out

    def _label(self, name: str, inputs: list[torch.Tensor], params: list[Any]) -> _Origin:
        if name in _VIEWS and inputs:
            ptr = _ptr(inputs[0])
            found = self._origin.get(ptr) if ptr is not None else None
            return found if found is not None else _Origin(op="input")
        if params and _is_norm_op(name) and params[0][2] and inputs:
            ptr = _ptr(inputs[0])
            src = self._origin.get(ptr) if ptr is not None else None
            if src is not None and src.layer is not None and src.norm is None:
                return _Origin(src.layer, src.kind, params[0][0])
            return _Origin(op=name)
        if params and _is_layer_op(name) and not params[0][2]:
            return _Origin(params[0][0], _layer_kind(params[0][1], name))
        return _Origin(op=name)


def _with_consumer(
    topo: SiteTopology, path: str | None, kind: str | None, via: tuple[str, ...], note: str
) -> SiteTopology:
    return SiteTopology(
        producer=topo.producer,
        producer_kind=topo.producer_kind,
        norm=topo.norm,
        producer_note=topo.producer_note,
        consumer=path,
        consumer_kind=kind,
        via=via,
        consumer_note=note,
    )
