"""One model under capture, one batch at a time: forward (and backward) through the capture,
per-parameter gradient norms, and at the end the raw totals of every site.

``scan()`` feeds it batches with ``run_batch``; code that runs the forward itself (a training
loop under ``monitor()``) wraps its own forward in ``capturing``.
"""

from __future__ import annotations

from collections.abc import Iterator
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
from relu_doctor.scanner.shapes import first_layer
from relu_doctor.scanner.sites import Resolver, make_resolver
from relu_doctor.scanner.topology import TopologyTracker


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
        """Forward ``batch``, and with gradients a backward; errors name where it failed."""
        batch = batch.to(self.device)
        if self.grad and self._lift:
            batch = batch.requiring_grad()
        try:
            with self.capturing(batch.rows):
                self._step(batch)
        except ReluDoctorError:
            raise
        except Exception as exc:
            raise self._forward_error(exc) from exc

    def _step(self, batch: Batch) -> None:
        if not self.grad:
            with torch.inference_mode():  # as fast as a plain inference forward can be
                batch.forward(self.module)
            return
        out = batch.forward(self.module)
        self.recorder.forward_done()
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
            return
        if name not in self.losses:
            self.losses.append(name)
        inputs = [t for t in iter_tensors((batch.args, batch.kwargs)) if t.requires_grad]
        grads = backward(loss, [p for _, p in self.params], inputs)
        if grads is not None:
            self.param_grads.add(grads[: len(self.params)])

    def _forward_error(self, exc: Exception) -> ReluDoctorError:
        where = self.recorder.where()
        msg = f"forward pass failed in {where or '<root>'}: {type(exc).__name__}: {one_line(exc)}"
        text = str(exc)
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
        )


def _sum_counts(samples: int, batches: int, dev: torch.device) -> tuple[int, int]:
    import torch.distributed as dist

    t = torch.tensor([samples, batches], dtype=torch.int64, device=dev)
    dist.all_reduce(t)
    return int(t[0]), int(t[1])
