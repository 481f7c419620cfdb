"""Where a scan runs: one answer for loading and scanning alike."""

from __future__ import annotations

import torch
from torch import nn

from relu_doctor.errors import UsageError, param


def model_device(model: nn.Module) -> torch.device:
    """The device of the first parameter or buffer (CPU for a stateless model)."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def resolve_device(
    device: str | torch.device | None, model: nn.Module | None = None
) -> torch.device:
    """``None``: where the model is; ``auto``: CUDA when available; else as given
    (``cpu``, ``cuda``, ``cuda:1``...), refused when that device is not there."""
    if device is None:
        return model_device(model) if model is not None else torch.device("cpu")
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(
            f"unknown {param('device')} {device!r}; use auto, cpu, cuda or cuda:N", param="device"
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"{param('device')} {device}: no CUDA GPU is available here; use "
                f"{param('device', 'cpu')} or auto",
                param="device",
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(
                f"{param('device')} {device}: this machine has {torch.cuda.device_count()} "
                "CUDA device(s)",
                param="device",
            )
    return dev
