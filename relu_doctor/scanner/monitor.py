"""Watch a model inside its own training loop: every N-th forward goes through the capture,
the others run untouched.

How a recorded step is covered (README "Monitoring training"):

- a forward pre-hook opens a window when the watched module's forward starts: it installs
  the module-naming hooks on the submodules and pushes the capture's dispatch mode; the
  forward hook (``always_call``, so also when the forward raises) pops the mode and removes
  them again. Between recorded steps these two hooks are all that runs: a counter and a
  return. They are global module hooks that return at once for any other module, so nothing
  of the monitor is stored in the model (``torch.save(model)`` and ``copy.deepcopy`` work).
- gradients come from the training's own backward: the dispatch mode is gone by then, so
  each measured activation output's autograd node (``ReluBackward0`` ...) gets a hook,
  whose ``grad_inputs[0]`` is the gradient w.r.t. the site's input that autograd computes
  anyway (the very tensor a scan catches at ``threshold_backward``). Nothing is recomputed
  and nothing is kept: the hook reduces it to a norm and returns None, so the gradients
  themselves are untouched.
- a window closes at the next counted forward, on exit, or when its numbers are asked for
  (outside distributed runs), so the backward of its step is in it. Under
  ``torch.distributed`` it is all-reduced when it closes, at the next forward or on exit:
  points every rank passes in step.

Only forwards under grad mode are counted (training steps); validation under
``torch.no_grad()`` / ``inference_mode`` neither counts nor is recorded.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)

from relu_doctor.device import model_device
from relu_doctor.errors import UsageError, param
from relu_doctor.scanner.accumulate import SiteAccumulator
from relu_doctor.scanner.batches import iter_tensors
from relu_doctor.scanner.session import RawScan, ScanSession
from relu_doctor.scanner.sites import EagerResolver

#: Called with (step, the window's raw totals, "train" | "eval") when a window closes.
OnWindow = Callable[[int, RawScan, str], None]


class WindowResolver(EagerResolver):
    """Installed from inside a pre-hook of the root's forward: the root's own hooks are
    already being called, so hooks go on the submodules only and the root's frame is pushed
    by hand (the names come out exactly as in a scan)."""

    def install(self) -> None:
        root = self.model
        for path, module in root.named_modules():
            if module is root or isinstance(module, torch.jit.ScriptModule):
                continue
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(path)))
            self._handles.append(module.register_forward_hook(self._post_hook(module)))

    def start_forward(self) -> None:
        self._stack[:] = [("", self.model)]


COMPILED = (
    "monitor() cannot watch a torch.compile'd model: compiled kernels fuse the ReLU where the "
    "capture cannot see it, and running the recorded steps uncompiled would change the "
    "training's numbers; train the uncompiled model under monitor(), or scan saved checkpoints"
)


def watched_module(model: Any) -> nn.Module:
    """The module whose forwards are watched: the model, or the one inside a DDP wrapper.
    Compiled, scripted, exported and DataParallel models are refused with the reason."""
    if not isinstance(model, nn.Module):
        raise UsageError(
            f"monitor() needs a torch.nn.Module, got {type(model).__name__}", param="model"
        )
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    if isinstance(model, nn.DataParallel):
        raise UsageError(
            "monitor() cannot watch nn.DataParallel: its replicas run in threads the capture "
            "does not see; use DistributedDataParallel (statistics are summed over ranks)",
            param="model",
        )
    compiled = [
        path or "the model"
        for path, m in model.named_modules()
        if type(m).__name__ == "OptimizedModule"
        or getattr(m, "_compiled_call_impl", None) is not None
    ]
    if compiled:
        raise UsageError(f"{COMPILED} ({compiled[0]})", param="model")
    if isinstance(model, torch.jit.ScriptModule | torch.fx.GraphModule):
        raise UsageError(
            f"monitor() watches eager training; {type(model).__name__} is not one. Scan it "
            "with relu_doctor.scan",
            param="model",
        )
    return model


class Watcher:
    """The hooks of ``monitor()``: counts forwards, captures every ``every``-th one (and its
    backward with ``grad``), and hands each closed window to ``on_window``."""

    def __init__(
        self,
        model: Any,
        *,
        every: int,
        grad: bool,
        eps: float,
        unit_dim: int | None,
        on_window: OnWindow,
        distributed: bool | None = None,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise UsageError(
                f"{param('every')} must be a positive integer, got {every!r}", param="every"
            )
        self.module = watched_module(model)
        self.every = every
        self.grad = grad
        self.on_window = on_window
        if distributed is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.distributed = distributed
        self.session = ScanSession(
            self.module,
            "eager",
            eps=eps,
            grad=False,  # the capture's own backward catching is not used: see _hook_grads
            unit_dim=unit_dim,
            device=model_device(self.module),
            resolver=WindowResolver(self.module),
        )
        self.session.recorder.on_output = self._on_output
        self.steps = 0  # steps counted so far
        self.warnings: list[str] = []
        self._handles: list[Any] = []
        self._installed = False
        self._capture: ExitStack | None = None  # open during a recorded forward
        self._depth = 0
        self._outputs: list[tuple[SiteAccumulator, torch.Tensor, int]] = []
        self._grad_handles: list[Any] = []
        self._pending: tuple[int, str] | None = None  # (step, mode) of a window not closed

    # -- life cycle --

    def install(self, hooks: bool = True) -> None:
        """Global module hooks, not hooks on the model: nothing of the monitor is stored in
        the model, so ``torch.save(model)`` and ``copy.deepcopy(model)`` work as without it
        (a copy is not watched). Each hook returns at once for every other module."""
        if self._installed:
            raise UsageError(
                "this monitor is already watching; enter it again after its with block ends"
            )
        self._installed = True
        if hooks:  # else the caller marks the steps (begin_step / end_forward)
            self._handles = [
                register_module_forward_pre_hook(self._before),
                register_module_forward_hook(self._after, always_call=True),
            ]

    @property
    def watching(self) -> bool:
        return self._installed

    def remove(self, distributed: bool | None = None) -> None:
        """Close the last window and take every hook away (idempotent)."""
        try:
            self.end_forward(failed=True)  # only open if a step's forward is still running
            self.close(self.distributed if distributed is None else distributed)
        finally:
            for h in self._handles:
                h.remove()
            self._handles.clear()
            self._remove_grad_hooks()
            self._installed = False
            self._depth = 0

    def close(self, distributed: bool) -> None:
        """Close the pending window, all-reducing it when ``distributed``."""
        if self._pending is None:
            return
        step, mode = self._pending
        self._pending = None
        self._remove_grad_hooks()
        try:
            raw = self.session.finish(distributed)
        finally:
            self._reset()
        self.on_window(step, raw, mode)

    def close_local(self) -> None:
        """Close the pending window when that needs no other process (not distributed)."""
        if not self.distributed:
            self.close(False)

    # -- the hooks around the watched module's forward --

    def _before(self, module: nn.Module, args: Any) -> None:
        if module is not self.module:
            return
        if torch.compiler.is_compiling():
            raise UsageError(COMPILED, param="model")
        self._depth += 1
        if self._depth > 1 or not torch.is_grad_enabled():
            return  # a nested call, or a forward that is not a training step
        self.begin_step(next((t.shape[0] for t in iter_tensors(args) if t.ndim), 0))

    def _after(self, module: nn.Module, args: Any, output: Any) -> None:
        if module is not self.module:
            return
        self._depth = max(self._depth - 1, 0)
        if self._depth == 0:
            # ``always_call`` runs this with output None when the forward raised.
            self.end_forward(failed=output is None and sys.exc_info()[1] is not None)

    # -- steps (from the hooks above, or marked by a training framework) --

    def begin_step(self, rows: int) -> None:
        """One step starts: close the window before it, count it, and when it is to be
        recorded start the capture (``rows``: samples in its batch, 0 if unknown)."""
        self.close(self.distributed)
        step, self.steps = self.steps, self.steps + 1
        if step % self.every:
            return
        stack = ExitStack()
        stack.enter_context(self.session.recorder)  # names the submodules' calls
        stack.enter_context(self.session.capturing(rows))  # pushes the dispatch mode
        self._capture = stack
        self._pending = (step, "train" if self.module.training else "eval")

    def end_forward(self, failed: bool = False) -> None:
        """The step's forward is over (its backward may follow): stop the capture; with
        ``grad`` hook the autograd nodes of its outputs. A ``failed`` step is dropped."""
        stack, self._capture = self._capture, None
        if stack is None:
            return
        try:
            stack.close()
        finally:
            outputs, self._outputs = self._outputs, []
            if failed:  # a forward that raised is no step to report
                self._pending = None
                self._reset()
            elif self.grad:
                self._hook_grads(outputs)

    def _reset(self) -> None:
        s = self.session
        s.recorder.reset()
        s.samples = s.batches = 0
        s.warnings.clear()

    # -- gradients from the training's own backward --

    def _on_output(self, acc: SiteAccumulator, out: torch.Tensor, inplace: bool) -> None:
        """Inside the dispatch mode: remember each measured output (autograd wires it up
        when the op returns) and the version it must still have after the forward."""
        if self.grad and torch.is_grad_enabled():
            self._outputs.append((acc, out, out._version + int(inplace)))

    def _hook_grads(self, outputs: list[tuple[SiteAccumulator, torch.Tensor, int]]) -> None:
        changed: set[int] = set()
        for acc, out, version in outputs:
            node = out.grad_fn
            if node is None:
                continue  # no gradient flows here (frozen layers, a detached input)
            if out._version != version or out._is_view():
                changed.add(id(acc))  # changed in place after the ReLU: grad_fn is another op
                continue
            self._grad_handles.append(node.register_hook(partial(_on_grad, acc)))
        if changed:
            self.warnings.append(
                f"{len(changed)} site(s) had their output changed in place after the "
                "activation; their grad_norm is not measured"
            )

    def _remove_grad_hooks(self) -> None:
        for h in self._grad_handles:
            h.remove()
        self._grad_handles.clear()


def _on_grad(acc: SiteAccumulator, grad_inputs: Any, grad_outputs: Any) -> None:
    """Autograd node hook: ``grad_inputs[0]`` is the loss gradient w.r.t. the site's input.
    Returns None, so the training's gradients are unchanged."""
    g = grad_inputs[0] if grad_inputs else None
    if g is not None:
        with torch.no_grad():
            acc.observe_grad(g.detach())
