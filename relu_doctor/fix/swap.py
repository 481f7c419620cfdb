"""Activation swaps: put a LeakyReLU, PReLU or ELU (built by the activation registry's
``swap``) where a ReLU or ReLU6 site was.

- An ``nn.ReLU``/``nn.ReLU6`` module is replaced in its parent. A module called at several
  sites is one object: it is swapped only when every one of its sites is selected.
- A functional call (``F.relu``, ``torch.relu``, ``Tensor.relu_``, ``F.relu6``,
  ``F.hardtanh(x, 0, 6)``) is rewritten with ``torch.fx``: the module whose forward makes
  the call is traced with every submodule kept as a leaf, so only its own code becomes a
  graph; the call becomes a new submodule (``block1:relu#2`` -> ``block1.relu_2``), and the
  traced module replaces the original at the same path. Submodules, parameters and buffers
  keep their names (the state dict keys stay), also those the forward never uses.
- TorchScript and ``torch.export`` forwards are compiled code: their sites are refused.

Works in place on the model it is given (``repair`` hands it a copy).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from relu_doctor.activations import (
    Activation,
    by_op,
    hardtanh_bounds,
    is_relu6_bounds,
    module_activation,
)
from relu_doctor.analyze.report import ModelReport, SiteReport
from relu_doctor.errors import one_line
from relu_doctor.fix.changes import Change, Outcome
from relu_doctor.scanner.sites import SiteKey, site_name

_MODULE_KINDS = ("module", "module-inplace")
_FUNCTIONAL = re.compile(r"^(?:(?P<path>.*):)?(?P<op>[a-z_0-9]+)#(?P<index>\d+)$")
_COMPILED = {
    "script": "a TorchScript forward is compiled code and cannot be rewritten",
    "export": "a torch.export program is a fixed graph and cannot be rewritten",
}
_FUNCTIONS: dict[Any, tuple[str, bool]] = {  # call target -> (op, in place)
    F.relu: ("relu", False),
    torch.relu: ("relu", False),
    torch.relu_: ("relu", True),
    F.relu6: ("relu6", False),
    F.hardtanh: ("relu6", False),  # only with the bounds (0, 6)
    F.hardtanh_: ("relu6", True),
}
_METHODS = {"relu": ("relu", False), "relu_": ("relu", True)}


def swap(
    model: nn.Module,
    runtime: str,
    report: ModelReport,
    sites: Sequence[SiteReport],
    to: str,
    options: dict[str, float],
) -> Outcome:
    """Swap the activation of ``sites`` to ``to`` (an op of the activation registry)."""
    out = Outcome(model)
    act = by_op(to)
    if runtime in _COMPILED:
        for s in sites:
            out.refuse(s.site, f"{_COMPILED[runtime]}; swap it in the source model")
        return out
    modules = [s for s in sites if s.kind in _MODULE_KINDS]
    functional = [s for s in sites if s.kind == "functional"]
    for s in sites:
        if s.kind not in _MODULE_KINDS and s.kind != "functional":
            out.refuse(s.site, f"a {s.kind} site cannot be swapped")
    _swap_modules(out, report, modules, act, options)
    _swap_functional(out, report, functional, act, options)
    return out


# --- modules --------------------------------------------------------------------------------


def _module_path(model: nn.Module, name: str) -> str:
    """The module path of a module site: ``act`` for ``act`` and ``act#2``."""
    if name == "<root>":
        return ""
    if _has_module(model, name):
        return name
    base, _, index = name.rpartition("#")
    return base if index.isdecimal() and _has_module(model, base) else name


def _has_module(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def _prelu_problem(site: SiteReport, to: Activation) -> str | None:
    """nn.PReLU's per-channel slope sits on dim 1: refuse units on any other dim."""
    if to.op == "prelu" and site.unit_dim not in (None, 1):
        return (
            f"its units are on dim {site.unit_dim}, but nn.PReLU keeps one slope per channel "
            "of dim 1; use leaky_relu or elu here"
        )
    return None


def _swap_modules(
    out: Outcome,
    report: ModelReport,
    sites: Sequence[SiteReport],
    to: Activation,
    options: dict[str, float],
) -> None:
    by_path: dict[str, list[SiteReport]] = defaultdict(list)
    for s in sites:
        by_path[_module_path(out.model, s.site)].append(s)
    for path, chosen in by_path.items():
        every = [
            s
            for s in report.sites
            if s.kind in _MODULE_KINDS and s.executed and _module_path(out.model, s.site) == path
        ]
        names = [s.site for s in chosen]
        missing = [s.site for s in every if s.site not in names]
        if missing:
            why = (
                f"{path or 'the root'} is one module called at {len(every)} sites "
                f"({', '.join(s.site for s in every)}); swapping it changes all of them: "
                f"select {', '.join(missing)} too, or all"
            )
            for name in names:
                out.refuse(name, why)
            continue
        problem = next((p for s in every if (p := _prelu_problem(s, to))), None)
        if problem is None and to.op == "prelu" and len({s.units for s in every}) > 1:
            problem = "its calls have different unit counts; one nn.PReLU cannot serve them all"
        module = out.model.get_submodule(path)
        if problem is None and module_activation(module) is None:
            problem = f"{type(module).__name__} is not a ReLU or ReLU6 module"
        if problem is not None:
            for name in names:
                out.refuse(name, problem)
            continue
        assert to.swap is not None
        inplace = float(bool(getattr(module, "inplace", False)))
        new = to.swap(every[0].units, {**options, "inplace": inplace})
        _set_module(out, path, new)
        for s in every:
            out.changes.append(Change(s.site, s.site, _describe(new)))


def _set_module(out: Outcome, path: str, new: nn.Module) -> None:
    if not path:
        out.model = new
        return
    parent_path, _, name = path.rpartition(".")
    parent = out.model.get_submodule(parent_path)
    parent._modules[name] = new  # Sequential, ModuleList and ModuleDict alike


def _describe(module: nn.Module) -> str:
    """``LeakyReLU(0.01)``, ``PReLU(16 slopes of 0.25)``, ``ELU(alpha=1)``."""
    if isinstance(module, nn.LeakyReLU):
        return f"LeakyReLU({module.negative_slope:g})"
    if isinstance(module, nn.PReLU):
        slope = float(module.weight.detach().flatten()[0])
        return f"PReLU({module.num_parameters} slopes of {slope:g})"
    if isinstance(module, nn.ELU):
        return f"ELU(alpha={module.alpha:g})"
    return type(module).__name__


# --- functional calls (torch.fx) -----------------------------------------------------------


class _OwnCode(fx.Tracer):
    """Traces one module's own forward: every submodule stays a leaf (``call_module``), so
    the sites inside them keep their names and their code is never touched."""

    def __init__(self, root: nn.Module) -> None:
        super().__init__()
        self._root = root

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return m is not self._root


def _call(node: fx.Node) -> tuple[str, bool] | None:
    """(op, in place) of a ReLU or ReLU6 call node; None for anything else."""
    if node.op == "call_method" and isinstance(node.target, str):
        return _METHODS.get(node.target)
    if node.op != "call_function" or node.target not in _FUNCTIONS:
        return None
    op, inplace = _FUNCTIONS[node.target]
    hardtanh = node.target in (F.hardtanh, F.hardtanh_)
    if hardtanh and not is_relu6_bounds(*hardtanh_bounds(tuple(node.args), dict(node.kwargs))):
        return None
    if "inplace" in node.kwargs:
        return op, inplace or bool(node.kwargs["inplace"])
    at = 3 if hardtanh else 1  # F.relu(x, inplace), F.hardtanh(x, lo, hi, inplace)
    return op, inplace or (len(node.args) > at and bool(node.args[at]))


def _parse(name: str) -> SiteKey | None:
    m = _FUNCTIONAL.match(name)
    if m is None:
        return None
    return SiteKey(m.group("path") or "", m.group("op"), False, int(m.group("index")))


def _swap_functional(
    out: Outcome,
    report: ModelReport,
    sites: Sequence[SiteReport],
    to: Activation,
    options: dict[str, float],
) -> None:
    by_path: dict[str, list[tuple[SiteKey, SiteReport]]] = defaultdict(list)
    for s in sites:
        key = _parse(s.site)
        if key is None or not _has_module(out.model, key.path):
            out.refuse(s.site, "its enclosing module could not be found")
            continue
        by_path[key.path].append((key, s))
    for path, chosen in by_path.items():
        _rewrite(out, report, path, chosen, to, options)


def _rewrite(
    out: Outcome,
    report: ModelReport,
    path: str,
    chosen: list[tuple[SiteKey, SiteReport]],
    to: Activation,
    options: dict[str, float],
) -> None:
    """Trace the module at ``path``, replace the chosen calls, put the result in its place."""
    owner = out.model.get_submodule(path)
    where = path or "the model"
    try:
        graph = _OwnCode(owner).trace(owner)
    except Exception as exc:
        why = f"{where} does not trace with torch.fx ({type(exc).__name__}: {one_line(exc, 160)})"
        for _, s in chosen:
            out.refuse(s.site, f"{why}; swap it in the source")
        return
    calls: dict[str, list[tuple[fx.Node, bool]]] = defaultdict(list)
    for node in graph.nodes:
        found = _call(node)
        if found is not None:
            calls[found[0]].append((node, found[1]))
    seen: dict[str, int] = defaultdict(int)
    for s in report.sites:
        key = _parse(s.site) if s.kind == "functional" else None
        if key is not None and key.path == path:
            seen[key.op] += 1
    ok: list[tuple[SiteKey, SiteReport]] = []
    for key, s in chosen:
        if len(calls[key.op]) != seen[key.op]:
            out.refuse(
                s.site,
                f"the traced forward of {where} makes {len(calls[key.op])} {key.op} calls but "
                f"the scan saw {seen[key.op]} (control flow?); swap it in the source",
            )
        elif (problem := _prelu_problem(s, to)) is not None:
            out.refuse(s.site, problem)
        elif to.op == "prelu" and _read_later(*calls[key.op][key.index - 1]):
            out.refuse(
                s.site,
                "an in-place call whose input is read again later; nn.PReLU has no in-place "
                "form: use leaky_relu or elu here",
            )
        else:
            ok.append((key, s))
    if not ok:
        return
    swapped = {(key.op, key.index) for key, _ in ok}
    for key, s in ok:
        node, inplace = calls[key.op][key.index - 1]
        assert to.swap is not None
        new = to.swap(s.units, {**options, "inplace": float(inplace)})
        attr = _free_name(owner, f"{key.op}_{key.index}")
        owner.add_module(attr, new)
        with graph.inserting_before(node):
            replacement = graph.call_module(attr, (node.args[0],))
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
        after = f"{path}.{attr}" if path else attr
        out.changes.append(Change(s.site, after, _describe(new)))
    for op, nodes in calls.items():
        left = [i for i in range(1, len(nodes) + 1) if (op, i) not in swapped]
        for new_index, old_index in enumerate(left, 1):
            if new_index != old_index:
                old = site_name(SiteKey(path, op, False, old_index), False)
                out.renamed[old] = site_name(SiteKey(path, op, False, new_index), False)
    for node in graph.nodes:
        node.meta.pop("nn_module_stack", None)  # the scan's mark of an export program
        node.type = None  # a string annotation (``from __future__ import annotations``)
        # would make the GraphModule impossible to pickle
    graph._tracer_cls = None  # its pickle would name this module's tracer: load with torch's
    traced = fx.GraphModule(owner, graph, class_name=type(owner).__name__)
    _keep_unused(traced, owner)
    traced.train(owner.training)
    _set_module(out, path, traced)
    out.notes.append(
        f"{where} was rewritten with torch.fx: a GraphModule holds its forward now (a pickle "
        "of it runs code on load)"
    )


def _read_later(node: fx.Node, inplace: bool) -> bool:
    """Does an in-place call's input have a reader after the call (who sees the result)?"""
    if not inplace or not isinstance(node.args[0], fx.Node):
        return False
    order = {n: i for i, n in enumerate(node.graph.nodes)}
    return any(order[u] > order[node] for u in node.args[0].users if u is not node)


def _free_name(owner: nn.Module, name: str) -> str:
    while hasattr(owner, name):
        name += "_fixed"
    return name


def _keep_unused(traced: nn.Module, owner: nn.Module) -> None:
    """Tracing keeps only what the forward uses: put back the submodules, parameters and
    buffers it did not (so every state dict key of the original still loads)."""
    for name, child in owner.named_children():
        if traced._modules.get(name) is not child:  # missing, or a stub of what was used
            traced._modules[name] = child
    for name, p in owner.named_parameters(recurse=False):
        if name not in traced._parameters:
            traced.register_parameter(name, p)
    for name, b in owner.named_buffers(recurse=False):
        if name not in traced._buffers:
            persistent = name not in owner._non_persistent_buffers_set
            traced.register_buffer(name, b, persistent=persistent)
