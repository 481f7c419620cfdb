"""The backward side of a scan: the loss and per-parameter gradient norms.

``torch.autograd.grad`` is used throughout, so ``.grad`` is never touched.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from relu_doctor.errors import CaptureError, InputError, one_line, param
from relu_doctor.scanner.batches import iter_tensors


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


#: The loss each kind of targets gets, as the report names it.
LOSSES = {
    "cross_entropy": "cross-entropy (integer targets)",
    "mse": "MSE (float targets shaped like the output)",
    "surrogate": "0.5 * mean_batch(sum(output**2)) (no targets)",
}


def loss_name(targets: torch.Tensor | None) -> str:
    """Which loss ``loss_of`` uses for these targets (a key of ``LOSSES``)."""
    if targets is None:
        return "surrogate"
    return "mse" if targets.is_floating_point() else "cross_entropy"


def backward(
    loss: torch.Tensor, params: list[nn.Parameter], inputs: list[torch.Tensor]
) -> tuple[torch.Tensor | None, ...] | None:
    """Gradients of ``loss`` w.r.t. ``params`` then ``inputs`` (the site gradients are caught
    by the capture on the way), through ``autograd.grad``, which never touches ``.grad``."""
    wrt = [*params, *inputs]
    if not wrt:
        return None
    try:
        return torch.autograd.grad(loss, wrt, allow_unused=True)
    except RuntimeError as exc:
        raise CaptureError(
            f"backward pass failed: {one_line(exc)}. Scan forward only with {param('grad', False)}",
            param="grad",
        ) from exc
