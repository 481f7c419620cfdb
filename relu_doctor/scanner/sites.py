"""Where a ReLU call happens: site identity, naming, and the resolvers that find the
enclosing module of each call in eager models, TorchScript archives and export programs.

A resolver answers one question per activation call: which module encloses it, and is the
call the forward of an activation module (``nn.ReLU`` -> one *module* site) or a functional
call inside some other module (``block1:relu#2``)?
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from relu_doctor.activations import (
    Activation,
    by_name,
    by_op,
    graph_op,
    hardtanh_bounds,
    is_relu6_bounds,
    module_activation,
    script_activation,
)


@dataclass(frozen=True)
class SiteKey:
    """One site before naming: enclosing module path, op, module-or-functional, call index."""

    path: str
    op: str
    module_site: bool
    index: int

    @property
    def group(self) -> tuple[str, str, bool]:
        return (self.path, self.op, self.module_site)


def site_name(key: SiteKey, repeated: bool) -> str:
    """Display name: ``features.2``, ``act#2`` (module called twice), ``block1:relu#1``."""
    if key.module_site:
        base = key.path or "<root>"
        return f"{base}#{key.index}" if repeated else base
    return f"{key.path}:{key.op}#{key.index}" if key.path else f"{key.op}#{key.index}"


@dataclass(frozen=True)
class Call:
    """What a resolver says about one activation call."""

    path: str
    module_site: bool


class Resolver(Protocol):
    """Finds the enclosing module of each activation call."""

    runtime: str

    def install(self) -> None: ...
    def remove(self) -> None: ...
    def start_forward(self) -> None: ...
    def resolve(self, op: str) -> Call: ...
    def where(self) -> str: ...
    def declared(self) -> dict[str, Activation]: ...
    def warnings(self) -> list[str]: ...


class EagerResolver:
    """Tracks the module stack with forward pre/post hooks on every submodule.

    The post hook is not ``always_call``: when a forward raises, the stack keeps the path
    to the failing module, which is what the error message names.
    """

    runtime = "eager"

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._stack: list[tuple[str, nn.Module]] = []
        self._handles: list[Any] = []
        self._last_entered = ""

    def install(self) -> None:
        for path, module in self.model.named_modules():
            if isinstance(module, torch.jit.ScriptModule):
                continue  # no Python hooks inside TorchScript; its ops land on the parent
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(path)))
            self._handles.append(module.register_forward_hook(self._post_hook(module)))

    def _pre_hook(self, path: str) -> Callable[[nn.Module, Any], None]:
        def hook(module: nn.Module, args: Any) -> None:
            self._stack.append((path, module))
            self._last_entered = path

        return hook

    def _post_hook(self, module: nn.Module) -> Callable[[nn.Module, Any, Any], None]:
        def hook(mod: nn.Module, args: Any, out: Any) -> None:
            # Pop through frames a caught exception may have left behind.
            while self._stack:
                if self._stack.pop()[1] is module:
                    break

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._stack.clear()

    def start_forward(self) -> None:
        self._stack.clear()

    def resolve(self, op: str) -> Call:
        if not self._stack:
            return Call("", False)
        path, module = self._stack[-1]
        act = module_activation(module)
        return Call(path, act is not None and act.op == op)

    def where(self) -> str:
        if not self._stack:
            return ""
        path, module = self._stack[-1]
        return f"{path or '<root>'} ({type(module).__name__})"

    def declared(self) -> dict[str, Activation]:
        return {
            path: act
            for path, mod in self.model.named_modules()
            if (act := module_activation(mod)) is not None
        }

    def warnings(self) -> list[str]:
        scripted = [
            p for p, m in self.model.named_modules() if isinstance(m, torch.jit.ScriptModule)
        ]
        if scripted and not isinstance(self.model, torch.jit.ScriptModule):
            return [
                f"TorchScript submodules ({', '.join(scripted[:3])}) run without module hooks; "
                "their ReLU calls are attributed to the enclosing eager module"
            ]
        return []


@dataclass(frozen=True)
class StaticCall:
    """One activation node of a graph, in execution order."""

    op: str
    path: str
    module_site: bool


class StaticResolver:
    """Names calls from a graph read ahead of time: the k-th activation op that runs in a
    forward is the k-th activation node of the graph. A graph with control flow can break
    that match; then calls are named by order under the root and a warning says so.
    """

    def __init__(
        self, runtime: str, calls: list[StaticCall], declared: dict[str, Activation]
    ) -> None:
        self.runtime = runtime
        self._calls = calls
        self._declared = declared
        self._i = 0
        self._mismatch = False
        self._last = ""

    def install(self) -> None:
        pass

    def remove(self) -> None:
        pass

    def start_forward(self) -> None:
        self._i = 0

    def resolve(self, op: str) -> Call:
        i, self._i = self._i, self._i + 1
        if i < len(self._calls) and self._calls[i].op == op and not self._mismatch:
            call = self._calls[i]
            self._last = call.path
            return Call(call.path, call.module_site)
        self._mismatch = True
        return Call("", False)

    def where(self) -> str:
        return self._last or "<root>"

    def declared(self) -> dict[str, Activation]:
        return self._declared

    def warnings(self) -> list[str]:
        if self._mismatch:
            return [
                f"the {self.runtime} graph has control flow the scan could not follow; "
                "some sites are named by call order under the root"
            ]
        return []


_FRAME = re.compile(r"([^.()]*)\(([^()]*)\)")


def _script_nodes(block: Any) -> Iterator[Any]:
    for node in block.nodes():
        yield node
        for sub in node.blocks():
            yield from _script_nodes(sub)


def _script_call(node: Any) -> StaticCall | None:
    act = graph_op(node.kind())
    if act is None:
        return None
    if act.bounded_ops and node.kind().startswith("aten::hardtanh"):
        try:
            lo, hi = (node.inputsAt(i).toIValue() for i in (1, 2))
        except RuntimeError:
            return None
        if not is_relu6_bounds(lo, hi):
            return None
    op = act.op
    frames = [
        (name, typ)
        for name, typ in _FRAME.findall(node.getModuleHierarchy())
        if name != "UNKNOWN_INSTANCE"
    ]
    path = ".".join(name for name, _ in frames)
    return StaticCall(op, path, bool(frames) and _class_op(frames[-1][1]) == op)


def _class_op(class_name: str) -> str | None:
    """The op of an activation module class named in a graph (``ReLU`` -> ``relu``)."""
    act = by_name(class_name.rsplit(".", 1)[-1])
    return act.op if act is not None else None


def script_resolver(model: torch.jit.ScriptModule) -> StaticResolver:
    """Read the inlined TorchScript graph: each node knows its module hierarchy."""
    graph = model.inlined_graph
    torch._C._jit_pass_constant_propagation(graph)  # fold `if inplace:` branches
    calls = [c for n in _script_nodes(graph) if (c := _script_call(n)) is not None]
    declared = {p: act for p, mod in model.named_modules() if (act := script_activation(mod))}
    return StaticResolver("script", calls, declared)


def _export_call(node: Any) -> StaticCall | None:
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return None
    name = node.target._opname
    act = graph_op(name)
    if act is None:
        return None
    if name.startswith("hardtanh") and not is_relu6_bounds(
        *hardtanh_bounds(tuple(node.args), dict(node.kwargs))
    ):
        return None
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    path, type_name = stack[-1] if stack else ("", "")
    return StaticCall(act.op, str(path), bool(path) and _class_op(str(type_name)) == act.op)


def export_resolver(graph_module: torch.fx.GraphModule) -> StaticResolver:
    """Read an export graph: ``nn_module_stack`` metadata names each node's module."""
    calls = [c for n in graph_module.graph.nodes if (c := _export_call(n)) is not None]
    declared = {c.path: by_op(c.op) for c in calls if c.module_site}
    return StaticResolver("export", calls, declared)


def make_resolver(model: nn.Module, runtime: str) -> Resolver:
    """The resolver for a model that runs as ``eager``, ``script`` or ``export``."""
    if runtime == "script":
        if not isinstance(model, torch.jit.ScriptModule):
            raise TypeError("runtime 'script' needs a ScriptModule")
        return script_resolver(model)
    if runtime == "export":
        if not isinstance(model, torch.fx.GraphModule):
            raise TypeError("runtime 'export' needs the GraphModule of ep.module()")
        return export_resolver(model)
    return EagerResolver(model)


def detect_runtime(model: nn.Module) -> str:
    """Guess how a module given to the API runs: TorchScript, an export graph, or eager."""
    if isinstance(model, torch.jit.ScriptModule):
        return "script"
    if isinstance(model, torch.fx.GraphModule) and any(
        "nn_module_stack" in n.meta for n in model.graph.nodes
    ):
        return "export"
    return "eager"
