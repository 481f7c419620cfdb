"""The activation registry: everything relu-doctor knows about an activation kind, in one place.

Per kind: the aten ops that implement it (and which are in-place), its module classes, the
op names TorchScript and ``torch.export`` graphs use, its backward op and which saved tensor
identifies the call, whether it dies like ReLU (counted in the model dead fraction), and how
``fix`` builds it as a replacement. Capture, site naming, statistics, suggestions and
errors all read this table; adding a kind is one ``register`` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from relu_doctor.registry import Registry

aten = torch.ops.aten


@dataclass(frozen=True)
class Activation:
    """One activation kind.

    ``op`` names the kind in site keys and functional site names (``block1:relu#2``);
    ``name`` is the class name users know (the ``activation`` column). ``forward`` lists each
    aten overload that computes it, with whether it works in place (under
    ``inference_mode`` composite ops such as ``relu6`` and ``prelu`` arrive undecomposed, so
    both spellings are listed); ``bounded_ops`` only count with the ReLU6 bounds (0, 6).
    ``backward_saved`` is the index of the backward op's argument that is the tensor the
    forward saved: the output for ReLU (``saves_output``), the input for the others.
    ``swap`` builds the module ``fix`` puts in a site's place (``units`` for per-channel
    parameters, ``options`` from the command line: ``slope``, ``alpha``, and ``inplace``
    1.0 where the replaced call worked in place). ``passes_grad`` says, from each unit's
    largest pre-activation, whether the activation's derivative is non-zero for that unit on
    some input (every derivative here is largest at the largest input), i.e. whether a
    gradient arriving at the unit's output reaches its incoming weights.
    """

    op: str
    name: str
    relu_family: bool
    modules: tuple[type[nn.Module], ...] = ()
    forward: tuple[tuple[Any, bool], ...] = ()
    graph_ops: tuple[str, ...] = ()
    backward: Any = None
    backward_saved: int = 1
    saves_output: bool = False
    bounded_ops: frozenset[Any] = frozenset()
    swap: Callable[[int, dict[str, float]], nn.Module] | None = None
    measured: bool = True
    passes_grad: Callable[[np.ndarray, dict[str, float]], np.ndarray] | None = None


_BY_OP: Registry[Activation] = Registry("activation op")
_BY_NAME: Registry[Activation] = Registry("activation")
#: Ops of activations relu-doctor does not measure, named in the "no ReLU found" error.
UNMEASURED: Registry[str] = Registry("unmeasured op")


def register(act: Activation) -> Activation:
    """Add a kind; a second kind with the same op or name is a programming error."""
    _BY_NAME.add(act.name, act)
    return _BY_OP.add(act.op, act)


def unmeasured(name: str, *ops: str) -> None:
    """Name an activation the scan does not measure, by the aten op names it shows up as."""
    for op in ops:
        UNMEASURED.add(op, name)


def by_op(op: str) -> Activation:
    return _BY_OP[op]


def by_name(name: str) -> Activation | None:
    return _BY_NAME.get(name)


def kinds() -> tuple[Activation, ...]:
    return tuple(_BY_OP.values())


def is_relu6_bounds(lo: Any, hi: Any) -> bool:
    """Is ``hardtanh(lo, hi)`` a ReLU6? Written once for modules, calls and graphs."""
    try:
        return float(lo) == 0.0 and float(hi) == 6.0
    except (TypeError, ValueError):
        return False


def hardtanh_bounds(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """The (min_val, max_val) of a hardtanh call, with aten's defaults (-1, 1)."""
    lo = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
    hi = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
    return lo, hi


def module_activation(module: nn.Module) -> Activation | None:
    """The kind an eager module implements (``nn.ReLU6`` is a ``Hardtanh(0, 6)``)."""
    for act in _BY_OP.values():
        if act.modules and isinstance(module, act.modules):
            if act.bounded_ops and not is_relu6_bounds(
                getattr(module, "min_val", None), getattr(module, "max_val", None)
            ):
                continue
            return act
    return None


def script_activation(module: nn.Module) -> Activation | None:
    """Like ``module_activation`` for a TorchScript submodule (by its original class name).

    A scripted ``Hardtanh`` does not show its bounds here; a scripted ReLU6 keeps its name.
    """
    name = getattr(module, "original_name", None)
    act = _BY_NAME.get(str(name))
    return act if act is not None and act.measured else None


def graph_op(name: str) -> Activation | None:
    """The kind of a TorchScript (``aten::relu_``) or export (``relu_``) op name."""
    return _GRAPH_OPS.get(name.removeprefix("aten::"))


_GRAPH_OPS: dict[str, Activation] = {}
#: aten forward op -> (kind, in place?, needs the ReLU6 bounds check?)
FORWARD_OPS: dict[Any, tuple[Activation, bool, bool]] = {}
BACKWARD_OPS: dict[Any, Activation] = {}


def _index() -> None:
    """Derived lookup tables of the dispatch mode and graph readers."""
    for act in _BY_OP.values():
        for op, inplace in act.forward:
            FORWARD_OPS[op] = (act, inplace, op in act.bounded_ops)
        if act.backward is not None:
            BACKWARD_OPS[act.backward] = act
        for name in act.graph_ops:
            _GRAPH_OPS[name] = act


def _elu_passes(max_pre: np.ndarray, alpha: float) -> np.ndarray:
    """ELU's slope below zero is ``alpha * exp(x)``, which is 0 in float32 far below zero
    (about -104): a unit that deep passes no gradient through an ELU either."""
    below = np.float32(alpha) * np.exp(np.minimum(max_pre, 0).astype(np.float32))
    return (max_pre > 0) | (below != 0)


RELU = register(
    Activation(
        op="relu",
        name="ReLU",
        relu_family=True,
        modules=(nn.ReLU,),
        forward=((aten.relu.default, False), (aten.relu_.default, True)),
        graph_ops=("relu", "relu_"),
        backward=aten.threshold_backward.default,
        backward_saved=1,
        saves_output=True,
        swap=lambda units, o: nn.ReLU(),
        passes_grad=lambda max_pre, o: max_pre > 0,
    )
)
RELU6 = register(
    Activation(
        op="relu6",
        name="ReLU6",
        relu_family=True,
        modules=(nn.Hardtanh,),
        forward=(
            (aten.hardtanh.default, False),
            (aten.hardtanh_.default, True),
            (aten.relu6.default, False),
            (aten.relu6_.default, True),
        ),
        graph_ops=("relu6", "relu6_", "hardtanh", "hardtanh_"),
        backward=aten.hardtanh_backward.default,
        bounded_ops=frozenset({aten.hardtanh.default, aten.hardtanh_.default}),
        swap=lambda units, o: nn.ReLU6(),
        # Its derivative is 1 on (0, 6): a unit above 6 on every input would count too.
        passes_grad=lambda max_pre, o: max_pre > 0,
    )
)
LEAKY_RELU = register(
    Activation(
        op="leaky_relu",
        name="LeakyReLU",
        relu_family=False,
        modules=(nn.LeakyReLU,),
        forward=((aten.leaky_relu.default, False), (aten.leaky_relu_.default, True)),
        graph_ops=("leaky_relu", "leaky_relu_"),
        backward=aten.leaky_relu_backward.default,
        swap=lambda units, o: nn.LeakyReLU(o.get("slope", 0.01), bool(o.get("inplace"))),
        passes_grad=lambda max_pre, o: (max_pre > 0) | (o.get("slope", 0.01) != 0),
    )
)
ELU = register(
    Activation(
        op="elu",
        name="ELU",
        relu_family=False,
        modules=(nn.ELU,),
        forward=((aten.elu.default, False), (aten.elu_.default, True)),
        graph_ops=("elu", "elu_"),
        backward=aten.elu_backward.default,
        backward_saved=5,
        swap=lambda units, o: nn.ELU(o.get("alpha", 1.0), bool(o.get("inplace"))),
        passes_grad=lambda max_pre, o: _elu_passes(max_pre, o.get("alpha", 1.0)),
    )
)
PRELU = register(
    Activation(
        op="prelu",
        name="PReLU",
        relu_family=False,
        modules=(nn.PReLU,),
        forward=((aten._prelu_kernel.default, False), (aten.prelu.default, False)),
        graph_ops=("prelu", "_prelu_kernel"),
        backward=aten._prelu_kernel_backward.default,
        swap=lambda units, o: nn.PReLU(units, init=o.get("slope", 0.01)),
        passes_grad=lambda max_pre, o: (max_pre > 0) | (o.get("slope", 0.01) != 0),
    )
)
_index()

for _name, _ops in {
    "GELU": ("gelu",),
    "SiLU": ("silu",),
    "Tanh": ("tanh",),
    "Sigmoid": ("sigmoid",),
    "Softplus": ("softplus",),
    "Mish": ("mish",),
    "Hardswish": ("hardswish",),
    "Hardsigmoid": ("hardsigmoid",),
    "SELU": ("selu",),
    "CELU": ("celu",),
    "GLU": ("glu",),
    "Hardtanh": ("hardtanh",),
    "Threshold": ("threshold",),
    "clamp_min": ("clamp_min",),
    "LogSigmoid": ("log_sigmoid_forward",),
    "Softmax": ("_softmax",),
}.items():
    unmeasured(_name, *_ops)
