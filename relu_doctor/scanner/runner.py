"""The scan loop: a model (eager, TorchScript, export, compiled) and its data in, the raw
totals of every site out. The model is left exactly as it was (``guard.preserved``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from relu_doctor.device import resolve_device
from relu_doctor.errors import UsageError, param
from relu_doctor.scanner.batches import (
    Batches,
    Rebatched,
    TailJoined,
    as_batches,
    check_batch_args,
)
from relu_doctor.scanner.fit import InputFitter, Scale, check_scale, input_spec
from relu_doctor.scanner.guard import preserved
from relu_doctor.scanner.session import RawScan, ScanSession
from relu_doctor.scanner.shapes import fixed_batch_size, synthetic_inputs
from relu_doctor.scanner.sites import detect_runtime

Progress = Callable[[int, int | None], None]

DEFAULT_SYNTHETIC_BATCHES = 8


@dataclass(frozen=True)
class Target:
    """What runs: the module, how it runs (``eager``, ``script``, ``export``) and, for an
    export program, the program itself (its example inputs tell the input shape)."""

    module: nn.Module
    runtime: str
    exported: Any = None
    name: str = ""
    warnings: tuple[str, ...] = ()  # from loading (a file without checksums, ...)


def as_target(model: Any) -> Target:
    """Accept an ``nn.Module``, a TorchScript module, an ``ExportedProgram``, a ``torch.compile``
    wrapper or a loaded model (``load.LoadedModel``)."""
    if hasattr(model, "module") and hasattr(model, "runtime"):  # a load.LoadedModel
        return Target(
            model.module,
            model.runtime,
            getattr(model, "exported", None),
            model.name,
            tuple(getattr(model, "warnings", ())),
        )
    if isinstance(model, torch.export.ExportedProgram):
        module = model.module()
        return Target(
            module,
            "export",
            model,
            str(getattr(module, "original_name", "")) or type(module).__name__,
        )
    if not isinstance(model, nn.Module):
        raise UsageError(
            f"scan() needs a torch.nn.Module, got {type(model).__name__}", param="model"
        )
    # torch.compile wraps the model; compiled kernels fuse the ReLU out of sight, so scan the
    # original module (the same weights) instead.
    original = getattr(model, "_orig_mod", None)
    if isinstance(original, nn.Module) and type(model).__name__ == "OptimizedModule":
        model = original
    name = str(getattr(model, "original_name", type(model).__name__))
    return Target(model, detect_runtime(model), None, name)


def run_scan(
    target: Target,
    data: Any,
    *,
    batch_size: int,
    batches: int | None,
    grad: bool,
    mode: str,
    device: str | torch.device | None,
    eps: float,
    input_shape: tuple[int, ...] | None,
    seed: int,
    unit_dim: int | None,
    progress: Progress | None,
    distributed: bool | None,
    scale: Scale = "auto",
) -> tuple[RawScan, torch.device]:
    """Scan ``target`` on ``data`` (None: seeded synthetic batches) and return the raw totals
    and the device the scan ran on."""
    check_batch_args(batch_size, batches)
    check_scale(scale)
    if mode not in ("eval", "train"):
        raise UsageError(f"{param('mode')} must be 'eval' or 'train', got {mode!r}", param="mode")
    module = target.module
    dev = resolve_device(device, module)
    if distributed is None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    with preserved(module, dev):
        if target.runtime == "export":
            if mode == "train":
                raise UsageError(
                    f"an export program runs as it was exported; drop {param('mode', 'train')}",
                    param="mode",
                )
        else:
            module.train(mode == "train")
        fixed = fixed_batch_size(module, target.runtime)
        cut: Rebatched | None = None
        stream: Batches
        if data is None:
            count = DEFAULT_SYNTHETIC_BATCHES if batches is None else batches
            stream = synthetic_inputs(
                module,
                target.runtime,
                target.exported,
                input_shape,
                batch_size=fixed or batch_size,
                batches=count,
                seed=seed,
                device=dev,
            )
        else:
            stream, cut = _data_stream(data, fixed or batch_size, batches, fixed, mode)
        fit = InputFitter(input_spec(module), scale)
        with ScanSession(
            module, target.runtime, eps=eps, grad=grad, unit_dim=unit_dim, device=dev, seed=seed
        ) as session:
            for batch in stream:
                session.run_batch(fit(batch))
                if progress is not None:
                    progress(session.batches, stream.total)
            raw = session.finish(distributed)
    notes = _notes(data, input_shape, batch_size, fixed, cut)
    return replace(raw, warnings=(*notes, *fit.notes, *raw.warnings)), dev


def _data_stream(
    data: Any, batch_size: int, batches: int | None, fixed: int | None, mode: str
) -> tuple[Batches, Rebatched | None]:
    """The user's data as batches: re-cut to the size an export program was traced with, or
    in train mode with a lone last sample joined to the batch before it."""
    stream = as_batches(data, batch_size)
    cut = Rebatched(stream, fixed) if fixed is not None else None
    stream = (cut or stream).limit(batches)
    if mode == "train" and fixed is None:
        stream = TailJoined(stream)
    return stream, cut


def _notes(
    data: Any,
    input_shape: tuple[int, ...] | None,
    batch_size: int,
    fixed: int | None,
    cut: Rebatched | None,
) -> list[str]:
    """What the scan did other than asked, in plain words (report warnings)."""
    notes = []
    dropped = cut.dropped if cut is not None else 0
    if fixed is not None and (fixed != batch_size or dropped):
        notes.append(_fixed_batch_note(fixed, batch_size, dropped))
    if data is not None and input_shape is not None:
        shape = ",".join(map(str, input_shape))
        notes.append(
            f"the input shape {shape} is for synthetic inputs and was not used: the data has "
            "its own"
        )
    return notes


def _fixed_batch_note(fixed: int, asked: int, dropped: int) -> str:
    """One warning for an export program traced with a fixed batch size."""
    what = [f"batch size {asked} does not apply"] * (asked != fixed)
    if dropped:
        last = (
            f"last {dropped} samples, too few for a batch, were"
            if dropped > 1
            else "last sample was"
        )
        what.append(f"the {last} left out")
    return (
        f"this export program was traced with a batch of {fixed} samples and takes no other, "
        f"so the scan ran batches of {fixed} ({'; '.join(what)})"
    )
