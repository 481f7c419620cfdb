"""Leave the model exactly as it was: modes, buffers, requires_grad, .grad, device, RNG."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from relu_doctor.device import model_device


@contextmanager
def preserved(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Run a scan on ``model`` moved to ``device``; undo every change in ``finally``.

    BatchNorm running statistics (all buffers) are copied back, so a train-mode scan does not
    shift them; ``.grad`` and ``requires_grad`` are restored; the global RNG is forked so
    dropout in a train-mode scan does not change the caller's random stream.
    """
    home = model_device(model)
    training = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        try:
            if device != home:
                model.to(device)
            yield model
        finally:
            if device != home:
                model.to(home)
            for module, flag in training:
                if module.training != flag:
                    module.training = flag
            with torch.no_grad():
                for buf, saved in buffers:
                    buf.copy_(saved)
            for p, requires_grad, grad in params:
                if p.requires_grad != requires_grad:
                    p.requires_grad_(requires_grad)
                if p.grad is not grad:
                    p.grad = grad
