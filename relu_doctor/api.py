"""The Python API: ``scan`` (more entry points join as they land). Prints nothing; progress
goes to an optional callback."""

from __future__ import annotations

from typing import Any

import torch

from relu_doctor.analyze.assemble import build_report
from relu_doctor.analyze.metrics import Thresholds
from relu_doctor.analyze.report import ModelReport
from relu_doctor.scanner.runner import Progress, as_target, run_scan


def scan(
    model: Any,
    data: Any = None,
    *,
    batch_size: int = 32,
    batches: int | None = None,
    grad: bool = True,
    mode: str = "eval",
    device: str | torch.device | None = None,
    eps: float = 0.0,
    input_shape: tuple[int, ...] | None = None,
    seed: int = 0,
    unit_dim: int | None = None,
    near_dead: float = 0.01,
    tau: float = 0.025,
    name: str | None = None,
    progress: Progress | None = None,
    distributed: bool | None = None,
    scale: float | str = "auto",
) -> ModelReport:
    """Scan ``model`` on ``data`` and return a ``ModelReport``.

    ``model``: an ``nn.Module``, TorchScript module, ``ExportedProgram`` or ``torch.compile``
    wrapper. ``data``: a tensor of samples, an ``(inputs, targets)`` pair, or an iterable of
    batches (tensors, pairs or dicts of keyword inputs; a ``DataLoader`` works as it is), or
    None for seeded synthetic batches shaped like ``input_shape`` or inferred from the first
    layer. ``batches``: at most this many batches (None: all of ``data``, or 8 synthetic
    ones). ``device``: None = where the model is. Inputs take the model's float dtype;
    ``scale`` multiplies the first input where it is float (``"auto"``: 1/255 for uint8 data
    that becomes float, else 1; token ids are never scaled). The model is left exactly as it
    was. When ``torch.distributed`` is initialised (or ``distributed=True``) statistics are
    summed over all ranks.
    """
    th = Thresholds(eps=eps, near_dead=near_dead, tau=tau)
    target = as_target(model)
    raw, dev = run_scan(
        target,
        data,
        batch_size=batch_size,
        batches=batches,
        grad=grad,
        mode=mode,
        device=device,
        eps=eps,
        input_shape=input_shape,
        seed=seed,
        unit_dim=unit_dim,
        progress=progress,
        distributed=distributed,
        scale=scale,
    )
    return build_report(
        name or target.name,
        raw,
        th,
        grad=grad,
        mode=mode,
        device=str(dev),
        runtime=target.runtime,
        warnings=target.warnings,
        module=target.module,
    )
