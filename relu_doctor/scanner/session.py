"""One model under capture, one batch at a time: forward (and backward) through the capture,
per-parameter gradient norms, and at the end the raw totals of every site.

``scan()`` feeds it batches with ``run_batch``; code that runs the forward itself (a training
loop under ``monitor()``) wraps its own forward in ``capturing``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from types import TracebackType

import torch
from torch import nn

from relu_doctor.activations import Activation
from relu_doctor.errors import CaptureError, InputError, ReluDoctorError, one_line, param
from relu_doctor.scanner.batches import Batch, iter_tensors
from relu_doctor.scanner.capture import Recorder, SiteRecord
from relu_doctor.scanner.gradients import LOSSES, ParamGrads, backward, loss_name, loss_of
from relu_doctor.scanner.hooks import ModuleHooks
from relu_doctor.scanner.shapes import first_layer, is_arguments_error
from relu_doctor.scanner.sites import Resolver, make_resolver
from relu_doctor.scanner.topology import TopologyTracker

#: Measure batches after the first with module hooks when the model allows it (tests turn it
#: off to compare both paths).
FAST_PATH = True


@dataclass(frozen=True)
class RawScan:
    """What a session measured, before naming and summarising."""

    sites: list[SiteRecord]
    params: list[tuple[str, tuple[int, ...], float | None]]
    samples: int
    batches: int
    warnings: tuple[str, ...]
    ops_seen: set[str]
    losses: tuple[str, ...]  # keys of gradients.LOSSES, in first-use order
    declared: dict[str, Activation]  # activation modules of the model, by path
    capture: str = "dispatch"  # how the batches were measured (see ``ScanSession.capture``)


class ScanSession:
    """Context manager: capture is installed on enter and removed on exit (also on errors)."""

    def __init__(
        self,
        module: nn.Module,
        runtime: str,
        *,
        eps: float,
        grad: bool,
        unit_dim: int | None,
        device: torch.device,
        seed: int = 0,
        resolver: Resolver | None = None,
    ) -> None:
        self.module = module
        self.grad = grad
        self.resolver: Resolver = resolver or make_resolver(module, runtime)
        self.recorder = Recorder(
            self.resolver,
            eps=eps,
            unit_dim=unit_dim,
            grad=grad,
            topology=TopologyTracker(module),
            seed=seed,
        )
        self.params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        # Frozen layers stop the backward before the sites under them: then differentiate
        # w.r.t. the inputs too, so every site's gradient is computed.
        self._lift = not self.params or len(self.params) < sum(1 for _ in module.parameters())
        self.param_grads = ParamGrads(self.params, device)
        self.device = device
        self.warnings: list[str] = []
        self.losses: list[str] = []
        self.samples = 0
        self.batches = 0
        self.hooked = 0  # batches measured by the hooks-only path
        self.fallbacks = 0  # batches it measured again under the dispatch mode
        self._hooks: ModuleHooks | None = None
        self._stack = ExitStack()

    def __enter__(self) -> ScanSession:
        # Unoptimised TorchScript runs op by op, so no fused kernel hides a ReLU.
        self._stack.enter_context(torch.jit.optimized_execution(False))
        self._stack.enter_context(self.recorder)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    @contextmanager
    def capturing(self, rows: int) -> Iterator[Recorder]:
        """Run one forward (and its backward) of ``rows`` samples under the capture."""
        with self.recorder.forward(rows):
            yield self.recorder
        self.samples += rows
        self.batches += 1

    def run_batch(self, batch: Batch) -> None:
        """Forward ``batch``, and with gradients a backward; errors name where it failed.
        After the first batch, the hooks-only path (``hooks.py``) takes over when it can."""
        batch = batch.to(self.device)
        if self.grad and self._lift:
            batch = batch.requiring_grad()
        try:
            if self._hooks is not None and self._hooked_batch(batch):
                return
            with self.capturing(batch.rows):
                self._step(batch)
        except ReluDoctorError:
            raise
        except Exception as exc:
            raise self._forward_error(exc, batch) from exc
        if self.batches == 1 and FAST_PATH:
            self._hooks = ModuleHooks.plan_for(self.recorder, self.module)
            if self._hooks is not None:
                self.resolver.remove()  # the module stack is not needed any more
                self._hooks.install()
                self._stack.callback(self._hooks.remove)

    def _hooked_batch(self, batch: Batch) -> bool:
        """Measure ``batch`` with the module hooks; False (statistics rolled back) when its
        forward did not fire the modules of the first batch."""
        hooks = self._hooks
        assert hooks is not None
        restore, keep = self.recorder.checkpoint()
        self.recorder.begin_batch(batch.rows)
        hooks.start()
        if not self._step(batch, hooks.verify):
            restore()
            self.fallbacks += 1
            hooks.remove()  # the batch again, under the dispatch mode alone
            self.resolver.install()
            try:
                with self.capturing(batch.rows):
                    self._step(batch)
            finally:
                self.resolver.remove()
                hooks.install()
            return True
        keep()
        self.recorder.end_batch()
        self.hooked += 1
        self.samples += batch.rows
        self.batches += 1
        return True

    def _step(self, batch: Batch, verify: Callable[[], str] | None = None) -> bool:
        """Forward, then (with gradients) the loss and a backward; with ``verify``, False
        before any backward when the forward did not match the first batch."""
        if not self.grad:
            with torch.inference_mode():  # as fast as a plain inference forward can be
                batch.forward(self.module)
            return verify is None or not verify()
        out = batch.forward(self.module)
        self.recorder.forward_done()
        if verify is not None and verify():
            return False
        name = loss_name(batch.targets)
        try:
            loss = loss_of(out, batch.targets)
        except (RuntimeError, IndexError, ValueError) as exc:
            raise InputError(
                f"the loss ({LOSSES[name]}) failed on batch {self.batches + 1}: "
                f"{type(exc).__name__}: {one_line(exc)}; check the targets in "
                f"{param('data')}",
                param="data",
            ) from exc
        if loss is None or not loss.requires_grad:
            self.warnings.append("the model's output carries no gradient; grad_norm is empty")
            return True
        if name not in self.losses:
            self.losses.append(name)
        inputs = [t for t in iter_tensors((batch.args, batch.kwargs)) if t.requires_grad]
        grads = backward(loss, [p for _, p in self.params], inputs)
        if grads is not None:
            self.param_grads.add(grads[: len(self.params)])
        return True

    def _forward_error(self, exc: Exception, batch: Batch) -> ReluDoctorError:
        where = self.recorder.where()
        msg = f"forward pass failed in {where or '<root>'}: {type(exc).__name__}: {one_line(exc)}"
        text = str(exc)
        if self.batches == 0 and any(w in text for w in ("dtype", "scalar type", "type (")):
            return self._dtype_error(msg, batch)
        if self.batches == 0 and is_arguments_error(exc):
            return InputError(
                f"{msg}. The batches do not give the arguments the forward takes; pass "
                f"{param('data')} file.py:make_batches, a function returning batches as dicts "
                'of keyword inputs or ((inputs, ...), targets) pairs (README "Your own data")',
                param="data",
            )
        if "more than 1 value per channel when training" in text:
            return InputError(
                f"{msg}. In train mode BatchNorm needs at least 2 samples per batch "
                f"(this one has {batch.rows}): raise {param('batch_size')} or scan in "
                f"{param('mode', 'eval')}",
                param="batch_size",
            )
        shapes = ("shape", "size", "mat1", "channels", "dimension")
        if self.batches == 0 and any(w in text for w in shapes):
            layer = first_layer(self.module)
            hint = f" The first layer is {layer}." if layer else ""
            return InputError(
                f"{msg}.{hint} Check {param('input_shape')} / {param('data')} against the "
                "model's input",
                param="data",
            )
        return CaptureError(msg)

    def _dtype_error(self, msg: str, batch: Batch) -> ReluDoctorError:
        """A forward that failed on the type of its inputs: say which types met."""
        inputs = dict.fromkeys(_name(t.dtype) for t in iter_tensors((batch.args, batch.kwargs)))
        weights = dict.fromkeys(_name(p.dtype) for p in self.module.parameters())
        return InputError(
            f"{msg}. The inputs are {', '.join(inputs)}, the model's weights "
            f"{', '.join(weights) or 'none'}: float inputs take the weights' float type, and "
            "integer inputs become float or token ids only where the first layer tells which "
            f"(Linear, Conv, Embedding, ...); convert the others where {param('data')} makes them",
            param="data",
        )

    def finish(self, distributed: bool) -> RawScan:
        """Totals of every site (summed over ranks when ``distributed``)."""
        samples, batches = self.samples, self.batches
        if distributed:  # every rank joins the collectives, also one with no data
            samples, batches = _sum_counts(samples, batches, self.device)
            if batches:
                self.recorder.all_reduce()
                self.param_grads.all_reduce()
        if batches == 0:
            raise InputError("no data: the input gave no batches to scan", param="data")
        return RawScan(
            self.recorder.results(),
            self.param_grads.result() if self.grad else [],
            samples,
            batches,
            (*dict.fromkeys(self.warnings), *self.resolver.warnings()),
            self.recorder.ops_seen,
            tuple(self.losses),
            self.resolver.declared(),
            self.capture(batches),
        )

    def capture(self, batches: int) -> str:
        """How the batches were measured: ``dispatch`` (every op through the dispatch mode),
        or ``hooks`` with the counts (the first batch always runs under the dispatch mode)."""
        if not self.hooked:
            return "dispatch"
        again = f", {self.fallbacks} measured again under the dispatch mode" * bool(self.fallbacks)
        return f"hooks ({self.hooked} of {batches} batches{again})"


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _sum_counts(samples: int, batches: int, dev: torch.device) -> tuple[int, int]:
    import torch.distributed as dist

    t = torch.tensor([samples, batches], dtype=torch.int64, device=dev)
    dist.all_reduce(t)
    return int(t[0]), int(t[1])
