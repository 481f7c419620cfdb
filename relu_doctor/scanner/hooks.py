"""The hooks-only path: when every ReLU of a model is applied by ``nn.ReLU``/``nn.ReLU6``
modules, batches after the first are measured with forward hooks on those modules alone.

The dispatch mode (``capture.py``) sees every aten op of the model: convolutions, BatchNorm,
pooling each cost a Python call. The first batch always runs under it and records where each
activation op came from; when every one came from the forward of a ReLU or ReLU6 module of an
eager model, later batches run with a pre-hook (the pre-activation, before an in-place ReLU
overwrites it) and a post-hook (the output) on those modules only, and the gradient w.r.t.
each site's input is read from its autograd node's hook (the node's own result: the very
tensor the dispatch mode sees as the output of ``threshold_backward``). The reductions are
the same calls on the same tensors, so the numbers are identical either way.

Each batch verifies that the same modules fired the same number of times as in the first
batch, before its backward runs; when they did not (data-dependent control flow), the
batch's statistics are rolled back and the batch is measured again under the dispatch mode.
A functional ReLU that appears only in a later batch cannot be seen by module hooks: the
path is only taken when the first batch had none.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from relu_doctor.activations import RELU, RELU6, Activation
from relu_doctor.scanner.accumulate import SiteAccumulator
from relu_doctor.scanner.capture import Recorder

Hook = Callable[..., None]


class ModuleHooks:
    """Pre/post hooks on the ReLU modules of one model, for the batches after the first."""

    def __init__(self, recorder: Recorder, plan: dict[str, tuple[nn.Module, Activation, int]]):
        self.recorder = recorder
        self.plan = plan  # module path -> (module, activation, calls per forward)
        self._calls: dict[str, int] = {}
        self._pending: dict[str, list[SiteAccumulator]] = {}
        self._handles: list[Any] = []
        self.mismatch = ""  # why this batch does not match the first one ('' when it does)

    @staticmethod
    def plan_for(recorder: Recorder, module: nn.Module) -> ModuleHooks | None:
        """The hooks for ``module`` when its first batch allows them, else None."""
        if recorder.resolver.runtime != "eager" or isinstance(module, torch.jit.ScriptModule):
            return None
        calls: Counter[str] = Counter()
        acts: dict[str, Activation] = {}
        for key, info in recorder.sites().items():
            if not key.module_site or info.activation not in (RELU, RELU6):
                return None  # a functional call or another activation: dispatch mode only
            calls[key.path] += 1
            acts[key.path] = info.activation
        modules = dict(module.named_modules())
        plan = {p: (modules[p], acts[p], n) for p, n in calls.items() if p in modules}
        return ModuleHooks(recorder, plan) if plan and len(plan) == len(calls) else None

    def install(self) -> None:
        for path, (module, act, _) in self.plan.items():
            self._handles.append(module.register_forward_pre_hook(self._pre(path, act)))
            self._handles.append(module.register_forward_hook(self._post(path)))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def start(self) -> None:
        """A new batch: no call counted yet."""
        self._calls.clear()
        self._pending.clear()
        self.mismatch = ""

    def verify(self) -> str:
        """'' when this batch's forward fired the same modules as often as the first one."""
        if self.mismatch:
            return self.mismatch
        expected = {path: n for path, (_, _, n) in self.plan.items()}
        if self._calls != expected:
            return f"ReLU modules fired {self._calls} times, not {expected}"
        return ""

    def _pre(self, path: str, act: Activation) -> Hook:
        rec = self.recorder

        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if self.mismatch:
                return
            index = self._calls.get(path, 0) + 1
            self._calls[path] = index
            x = args[0] if args else None
            found = rec.known_site(path, act, index, x) if isinstance(x, torch.Tensor) else None
            if found is None:
                self.mismatch = f"call {index} of {path} is not a site of the first batch"
                return
            acc, view = found
            with torch.no_grad():
                acc.observe_pre(view, rec.eps)
            self._pending.setdefault(path, []).append(acc)

        return hook

    def _post(self, path: str) -> Hook:
        rec = self.recorder

        def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            stack = self._pending.get(path)
            if self.mismatch or not stack or not isinstance(out, torch.Tensor):
                return
            acc = stack.pop()
            with torch.no_grad():
                rec.observe_out(acc, out)
            node = out.grad_fn
            if rec.grad and node is not None:
                node.register_hook(self._grad(acc))

        return hook

    def _grad(self, acc: SiteAccumulator) -> Hook:
        """The activation node's result is the gradient w.r.t. the site's input."""
        rec = self.recorder

        def hook(grad_inputs: tuple[Any, ...], grad_outputs: tuple[Any, ...]) -> None:
            grad = grad_inputs[0] if grad_inputs else None
            if isinstance(grad, torch.Tensor):
                with torch.no_grad():
                    rec.observe_grad(acc, grad)

        return hook
