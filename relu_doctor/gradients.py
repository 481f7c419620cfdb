"""The backward side of a scan: the loss, one forward/backward step, and per-parameter
gradient norms. ``torch.autograd.grad`` is used throughout, so ``.grad`` is never touched.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from relu_doctor.errors import CaptureError, InputError
from relu_doctor.inputs import Batch, iter_tensors


def run(module: nn.Module, batch: Batch) -> Any:
    return module(*batch.args, **batch.kwargs)


def short(exc: BaseException | None, limit: int = 300) -> str:
    """One line of an exception's message, cut to ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def loss_of(output: Any, targets: torch.Tensor | None) -> torch.Tensor | None:
    """Cross-entropy for integer targets, MSE for float targets shaped like the output, and
    without targets the surrogate ``0.5 * mean_batch(sum(output**2))``. None when nothing
    in the output carries a gradient.
    """
    outs = [t for t in iter_tensors(output) if t.is_floating_point() and t.requires_grad]
    if not outs:
        return None
    if targets is None:
        total = sum(
            0.5 * t.float().pow(2).sum() / max(t.shape[0] if t.ndim else 1, 1) for t in outs
        )
        return total if isinstance(total, torch.Tensor) else None
    out = outs[0]
    if not targets.is_floating_point() and out.ndim >= 2 and out.shape[0] == targets.shape[0]:
        return torch.nn.functional.cross_entropy(out.float(), targets.long())
    if targets.is_floating_point() and targets.shape == out.shape:
        return torch.nn.functional.mse_loss(out.float(), targets.float())
    raise InputError(
        f"targets of shape {tuple(targets.shape)} ({targets.dtype}) fit neither cross-entropy "
        f"(integer class ids per sample) nor MSE (floats shaped like the output "
        f"{tuple(out.shape)}); drop the targets to use the surrogate loss"
    )


class ParamGrads:
    """Sum over batches of each parameter's gradient norm, kept on the device."""

    def __init__(self, params: list[tuple[str, nn.Parameter]], device: torch.device) -> None:
        self.params = params
        self.sums = torch.zeros(len(params), dtype=torch.float64, device=device)
        self.counts = torch.zeros(len(params), dtype=torch.int64, device=device)

    def add(self, grads: Iterable[torch.Tensor | None]) -> None:
        """One fused norm over the batch's gradients; unused parameters (None) are skipped."""
        grads = list(grads)
        present = [g for g in grads if g is not None]
        if not present:
            return
        norms = torch.stack(torch._foreach_norm(present)).to(torch.float64)
        if len(present) == len(grads):  # the usual case: no index tensor to build
            self.sums += norms
            self.counts += 1
            return
        idx = torch.tensor([i for i, g in enumerate(grads) if g is not None], device=norms.device)
        self.sums.index_add_(0, idx, norms)
        self.counts.index_add_(0, idx, torch.ones_like(idx))

    def all_reduce(self) -> None:
        import torch.distributed as dist

        dist.all_reduce(self.sums)
        dist.all_reduce(self.counts)

    def result(self) -> list[tuple[str, tuple[int, ...], float | None]]:
        sums, counts = self.sums.cpu().tolist(), self.counts.cpu().tolist()
        return [
            (name, tuple(p.shape), s / c if c else None)
            for (name, p), s, c in zip(self.params, sums, counts, strict=True)
        ]


def grad_inputs(batch: Batch) -> Batch:
    """A frozen model still gets site gradients: make float inputs require grad."""

    def lift(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v.detach().requires_grad_(True)
        return v

    return Batch(
        tuple(lift(a) for a in batch.args),
        {k: lift(v) for k, v in batch.kwargs.items()},
        batch.targets,
        batch.rows,
    )


def step(
    module: nn.Module, batch: Batch, grad: bool, params: list[nn.Parameter], warnings: list[str]
) -> tuple[torch.Tensor | None, ...] | None:
    """One forward, and with ``grad`` one backward through ``autograd.grad`` (which never
    touches ``.grad``)."""
    if not grad:
        with torch.inference_mode():  # as fast as a plain inference forward can be
            run(module, batch)
        return None
    out = run(module, batch)
    loss = loss_of(out, batch.targets)
    if loss is None or not loss.requires_grad:
        warnings.append("the model's output carries no gradient; grad_norm is empty")
        return None
    wrt: list[torch.Tensor] = list(params)
    wrt += [t for t in iter_tensors((batch.args, batch.kwargs)) if t.requires_grad]
    if not wrt:
        return None
    try:
        return torch.autograd.grad(loss, wrt, allow_unused=True)
    except RuntimeError as exc:
        raise CaptureError(
            f"backward pass failed: {short(exc)}. Scan forward only with --no-grad"
        ) from exc
