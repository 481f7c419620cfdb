"""The orchestration users and the CLI call: batches in, capture around forward and
backward, a ``ModelReport`` out. Prints nothing; progress goes to an optional callback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from relu_doctor import inputs
from relu_doctor.capture import Capture
from relu_doctor.errors import CaptureError, InputError, ReluDoctorError, UsageError
from relu_doctor.gradients import ParamGrads, grad_inputs, run, short, step
from relu_doctor.guard import model_device, preserved
from relu_doctor.inputs import Batch
from relu_doctor.report import ModelReport
from relu_doctor.sites import Resolver, detect_source, make_resolver
from relu_doctor.stats import Thresholds

Progress = Callable[[int, int | None], None]

DEFAULT_SYNTHETIC_BATCHES = 8


def resolve_device(
    device: str | torch.device | None, model: nn.Module | None = None
) -> torch.device:
    """``None``: where the model is; ``auto``: CUDA when available; else as given."""
    if device is None:
        return model_device(model) if model is not None else torch.device("cpu")
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available here; use --device cpu or auto")
    return dev


def _unwrap(model: Any) -> tuple[nn.Module, str, Any]:
    """(module to run, source, ExportedProgram or None) for what the caller passed."""
    if hasattr(model, "module") and hasattr(model, "source"):  # a loading.LoadedModel
        return model.module, model.source, getattr(model, "exported", None)
    if isinstance(model, torch.export.ExportedProgram):
        return model.module(), "export", model
    if not isinstance(model, nn.Module):
        raise UsageError(f"scan() needs a torch.nn.Module, got {type(model).__name__}")
    # torch.compile wraps the model; compiled kernels fuse the ReLU out of sight, so scan the
    # original module (the same weights) instead.
    original = getattr(model, "_orig_mod", None)
    if isinstance(original, nn.Module) and type(model).__name__ == "OptimizedModule":
        model = original
    return model, detect_source(model), None


def _first_layer(model: nn.Module) -> str:
    """'fc1 (Linear, in_features=784)' for error messages."""
    for path, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            return f"{path} (Linear, in_features={mod.in_features})"
        if isinstance(mod, nn.modules.conv._ConvNd):
            return f"{path} ({type(mod).__name__}, in_channels={mod.in_channels})"
    return ""


def _float_dtype(module: nn.Module, dtype: torch.dtype) -> torch.dtype:
    """Synthetic float inputs take the model's float dtype (a bf16 model gets bf16 inputs)."""
    if not dtype.is_floating_point:
        return dtype
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return dtype


def _static_batch(module: nn.Module, source: str) -> int | None:
    """An export program traced with a fixed batch size only accepts that size."""
    val = inputs.first_input_value(module) if source == "export" else None
    return int(val.shape[0]) if val is not None and isinstance(val.shape[0], int) else None


def _probe(
    module: nn.Module,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    high: int,
    rows: int,
) -> tuple[int, ...]:
    """Find a spatial size the model accepts when the default one does not fit."""
    candidates = [shape]
    if len(shape) > 1:
        rank = len(shape) - 1
        candidates += [(shape[0], *([s] * rank)) for s in inputs.SPATIAL_FALLBACKS.get(rank, [])]
    first: Exception | None = None
    for cand in dict.fromkeys(candidates):
        batch = next(
            inputs.synthetic_batches(
                cand, batch_size=rows, batches=1, seed=0, device=device, dtype=dtype, int_high=high
            )
        )
        try:
            with torch.no_grad():
                run(module, batch)
            return cand
        except Exception as exc:  # the model's own error: try the next size
            first = first or exc
    layer = " ".join(("layer", _first_layer(module))).strip()
    raise InputError(
        f"the model rejects synthetic inputs of shape {shape} inferred from its first {layer}: "
        f"{type(first).__name__}: {short(first)}. Pass --input-shape with one sample's "
        "shape, e.g. --input-shape 3,32,32"
    )


def _synthetic(
    module: nn.Module,
    source: str,
    input_shape: tuple[int, ...] | None,
    batch_size: int,
    batches: int,
    seed: int,
    device: torch.device,
    exported: Any,
) -> Iterator[Batch]:
    dtype, high = torch.float32, inputs.infer_int_high(module) or 2
    if input_shape is None:
        inferred = inputs.infer_input_shape(module)
        if inferred is None and exported is not None and exported.example_inputs:
            args = exported.example_inputs[0]
            if args and isinstance(args[0], torch.Tensor):
                inferred = (tuple(args[0].shape[1:]), args[0].dtype)
        if inferred is None:
            raise InputError(
                "cannot infer the input shape from the model's first layer; "
                "pass --input-shape with one sample's shape (e.g. 784 or 3,32,32) or --data"
            )
        shape, dtype = inferred
        dtype = _float_dtype(module, dtype)
        if len(shape) > 1 and source != "export":  # spatial size is a guess: check it fits
            shape = _probe(module, shape, dtype, device, high, min(batch_size, 2))
    else:
        shape, dtype = input_shape, _float_dtype(module, dtype)
    return inputs.synthetic_batches(
        shape,
        batch_size=batch_size,
        batches=batches,
        seed=seed,
        device=device,
        dtype=dtype,
        int_high=high,
    )


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
) -> ModelReport:
    """Scan ``model`` on ``data`` and return a ``ModelReport``.

    ``data``: a tensor of samples, an iterable of batches (tensors, ``(inputs, targets)``
    pairs or dicts of keyword inputs; a ``DataLoader`` works as it is), or None for seeded
    synthetic batches shaped like ``input_shape`` or inferred from the first layer.
    ``batches``: at most this many batches (None: all of ``data``, or 8 synthetic ones).
    The model is left exactly as it was (see ``guard.preserved``). When ``torch.distributed``
    is initialised (or ``distributed=True``) statistics are summed over all ranks.
    """
    _check_args(batch_size, batches, mode, eps, near_dead, tau)
    module, source, exported = _unwrap(model)
    dev = resolve_device(device, module)
    th = Thresholds(eps=eps, near_dead=near_dead, tau=tau)
    if distributed is None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    with preserved(module, dev):
        if source == "export":
            if mode == "train":
                raise UsageError("an export program runs as it was exported; drop --mode train")
        else:
            module.train(mode == "train")
        batch_size = _static_batch(module, source) or batch_size
        if data is None:
            count = DEFAULT_SYNTHETIC_BATCHES if batches is None else batches
            stream: Iterable[Batch] = _synthetic(
                module, source, input_shape, batch_size, count, seed, dev, exported
            )
            total: int | None = count
        else:
            stream = inputs.limit(inputs.as_batches(data, batch_size), batches)
            total = batches if batches is not None else _length(data, batch_size)
        resolver = make_resolver(module, source)
        from relu_doctor.assemble import build_report

        captured = _scan_batches(
            module, resolver, stream, th, grad, unit_dim, dev, total, progress, distributed
        )
        return build_report(
            name or str(getattr(module, "original_name", type(module).__name__)),
            captured,
            resolver,
            th,
            grad=grad,
            mode=mode,
            device=str(dev),
            source=source,
        )


def _length(data: Any, batch_size: int) -> int | None:
    if isinstance(data, torch.Tensor):
        return -(-data.shape[0] // batch_size)
    try:
        return len(data)
    except TypeError:
        return None


def _check_args(
    batch_size: int, batches: int | None, mode: str, eps: float, near_dead: float, tau: float
) -> None:
    inputs.check_batch_args(batch_size, batches)
    if mode not in ("eval", "train"):
        raise UsageError(f"mode must be 'eval' or 'train', got {mode!r}")
    if eps < 0:
        raise UsageError(f"--eps must be >= 0, got {eps}")
    if not 0 < near_dead <= 1:
        raise UsageError(f"--near-dead must be in (0, 1], got {near_dead}")
    if tau < 0:
        raise UsageError(f"--tau must be >= 0, got {tau}")


def _scan_batches(
    module: nn.Module,
    resolver: Resolver,
    stream: Iterable[Batch],
    th: Thresholds,
    grad: bool,
    unit_dim: int | None,
    dev: torch.device,
    total: int | None,
    progress: Progress | None,
    distributed: bool,
) -> Any:
    from relu_doctor.assemble import Captured

    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    # Frozen layers stop the backward before the sites under them: then differentiate
    # w.r.t. the inputs too, so every site's gradient is computed.
    lift_inputs = not params or len(params) < sum(1 for _ in module.parameters())
    pgrads = ParamGrads(params, dev)
    warnings: list[str] = []
    rows = done = 0
    # Unoptimised TorchScript runs op by op, so no fused kernel hides a ReLU from the capture.
    with (
        torch.jit.optimized_execution(False),
        Capture(resolver, eps=th.eps, unit_dim=unit_dim, grad=grad) as cap,
    ):
        for batch in stream:
            batch = batch.to(dev)
            if grad and lift_inputs:
                batch = grad_inputs(batch)
            try:
                with cap.forward(batch.rows):
                    grads = step(module, batch, grad, [p for _, p in params], warnings)
            except ReluDoctorError:
                raise
            except Exception as exc:
                raise _forward_error(exc, cap.where(), module, done) from exc
            if grads is not None:
                pgrads.add(grads[: len(params)])
                del grads  # free them before the next backward allocates its own
            rows += batch.rows
            done += 1
            if progress is not None:
                progress(done, total)
        if distributed:  # every rank joins the collectives, also one with no data
            rows, done = _sum_counts(rows, done, dev)
            if done:
                cap.all_reduce()
                pgrads.all_reduce()
        if done == 0:
            raise InputError("no data: the input gave no batches to scan")
        return Captured(
            cap.results(),
            pgrads.result() if grad else [],
            rows,
            done,
            tuple(dict.fromkeys(warnings)),
            cap.ops_seen,
        )


def _forward_error(exc: Exception, where: str, module: nn.Module, done: int) -> ReluDoctorError:
    msg = f"forward pass failed in {where or '<root>'}: {type(exc).__name__}: {short(exc)}"
    text = str(exc)
    if done == 0 and any(w in text for w in ("shape", "size", "mat1", "channels", "dimension")):
        layer = _first_layer(module)
        hint = f" The first layer is {layer}." if layer else ""
        return InputError(f"{msg}.{hint} Check --input-shape / --data against the model's input")
    return CaptureError(msg)


def _sum_counts(rows: int, done: int, dev: torch.device) -> tuple[int, int]:
    import torch.distributed as dist

    t = torch.tensor([rows, done], dtype=torch.int64, device=dev)
    dist.all_reduce(t)
    return int(t[0]), int(t[1])
