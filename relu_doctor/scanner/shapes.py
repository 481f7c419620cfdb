"""Input inference: one sample's shape and dtype from the model, and the seeded synthetic
batches a scan without data runs on. The orchestrator calls ``synthetic_inputs`` once.

The first layer that consumes the input decides (plain, TorchScript and traced modules
alike): Linear -> ``(in_features,)``; Conv1d/2d/3d -> ``(C, 64)``, ``(C, 32, 32)``,
``(C, 16, 16, 16)`` (other sizes of ``SPATIAL_FALLBACKS`` are tried when these don't fit);
Embedding -> 16 token ids; batch-first LSTM/GRU/RNN/MultiheadAttention -> ``(16, F)``. An
export program uses its recorded input shape and, when traced with a fixed batch size, that
batch size.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from relu_doctor.errors import InputError, UsageError, one_line, param
from relu_doctor.scanner.batches import Batch, Batches, check_batch_args

#: Spatial sizes tried, in order, when the model rejects the default one.
SPATIAL_FALLBACKS: dict[int, list[int]] = {
    1: [64, 128, 32, 256, 16],
    2: [32, 28, 64, 224, 96, 128, 16],
    3: [16, 32, 8],
}
_SEQ_LEN = 16  # tokens per sample for Embedding / batch-first RNN / attention inputs
_RNNS = {"LSTM", "GRU", "RNN", "MultiheadAttention"}  # sequence layers: batch_first decides
_CONSUMER_NAMES = {"Linear", "Embedding", "EmbeddingBag", *_RNNS}
_CONSUMER_NAMES |= {f"{p}{d}d" for p in ("Conv", "ConvTranspose") for d in (1, 2, 3)}
_CONSUMERS: tuple[type[nn.Module], ...] = tuple(
    getattr(nn, name) for name in sorted(_CONSUMER_NAMES)
)
Shape = tuple[int, ...]


def consumer_kind(module: nn.Module) -> str | None:
    """Class name of an input-consuming layer (TorchScript keeps it as ``original_name``)."""
    if isinstance(module, torch.jit.ScriptModule):
        name = str(getattr(module, "original_name", ""))
        return name if name in _CONSUMER_NAMES else None
    return next((cls.__name__ for cls in _CONSUMERS if isinstance(module, cls)), None)


def _weight_shape(module: nn.Module, name: str = "weight") -> Shape | None:
    w = getattr(module, name, None)
    if not isinstance(w, torch.Tensor) or isinstance(w, nn.parameter.UninitializedParameter):
        return None
    return tuple(w.shape)


def _int_attr(module: nn.Module, name: str) -> int | None:
    value = getattr(module, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _shape_for(kind: str, m: nn.Module) -> tuple[Shape, torch.dtype] | None:
    """One sample's shape for the first consumer, from attributes or, failing that, weights."""
    w = _weight_shape(m)
    if kind == "Linear":
        n = _int_attr(m, "in_features") or (w[1] if w and len(w) == 2 else None)
        return ((n,), torch.float32) if n else None
    if "Conv" in kind:
        rank = int(kind[-2])
        if kind.startswith("ConvTranspose"):
            c = _int_attr(m, "in_channels") or (w[0] if w else None)
        else:
            c = _int_attr(m, "in_channels") or (w[1] * (_int_attr(m, "groups") or 1) if w else None)
        return ((c, *[SPATIAL_FALLBACKS[rank][0]] * rank), torch.float32) if c else None
    if kind in ("Embedding", "EmbeddingBag"):
        return (_SEQ_LEN,), torch.int64
    if kind in _RNNS:
        if getattr(m, "batch_first", False) is not True:
            return None  # (T, N, F) input: dim 0 is not the sample dim
        wi = _weight_shape(m, "weight_ih_l0")
        n = _int_attr(m, "input_size") or _int_attr(m, "embed_dim") or (wi[1] if wi else None)
        return ((_SEQ_LEN, n), torch.float32) if n else None
    return None


def graph_input(model: nn.Module) -> torch.Tensor | None:
    """The recorded example value of an fx/export graph's first tensor input (or None)."""
    if not isinstance(model, torch.fx.GraphModule):
        return None
    for node in model.graph.nodes:
        val = node.meta.get("val") if node.op == "placeholder" else None
        if isinstance(val, torch.Tensor) and val.dim() >= 1:
            return val
    return None


def _graph_shape(model: nn.Module) -> tuple[Shape, torch.dtype] | None:
    val = graph_input(model)
    if val is None:
        return None
    try:
        return tuple(int(d) for d in val.shape[1:]), val.dtype
    except (TypeError, RuntimeError, ValueError):
        return None  # symbolic sizes without a hint


def infer_input_shape(model: nn.Module) -> tuple[Shape, torch.dtype] | None:
    """One sample's shape (no batch dim) and dtype, or None when nothing tells (a first RNN
    that is not batch-first, lazy layers that have not seen an input yet, ...)."""
    found = _graph_shape(model)
    if found is not None:
        return found
    for module in model.modules():
        kind = consumer_kind(module)
        if kind is not None:
            return _shape_for(kind, module)
    return None


def infer_int_high(model: nn.Module) -> int | None:
    """Vocabulary size of the first embedding, so synthetic ids cover more than {0, 1}."""
    for module in model.modules():
        kind = consumer_kind(module)
        if kind in ("Embedding", "EmbeddingBag"):
            n = _int_attr(module, "num_embeddings")
            w = _weight_shape(module)
            return n or (w[0] if w else None)
        if kind is not None:
            return None
    if isinstance(model, torch.fx.GraphModule):
        for node in model.graph.nodes:
            if node.op == "call_function" and "embedding" in str(node.target) and node.args:
                val = getattr(node.args[0], "meta", {}).get("val")
                if isinstance(val, torch.Tensor) and val.dim() == 2:
                    return int(val.shape[0])
    return None


def first_layer(model: nn.Module) -> str:
    """'fc1 (Linear, in_features=784)' for error messages ('' when there is none)."""
    for path, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            return f"{path} (Linear, in_features={mod.in_features})"
        if isinstance(mod, nn.modules.conv._ConvNd):
            return f"{path} ({type(mod).__name__}, in_channels={mod.in_channels})"
    return ""


def required_inputs(model: nn.Module) -> list[str]:
    """Names of the forward's arguments without a default ([] when it cannot be read)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a traced TorchScript method: its schema tells
        schema = getattr(model.forward, "schema", None)
        args = list(schema.arguments)[1:] if schema is not None else []
        return [a.name for a in args if not a.has_default_value()]
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in params if p.kind not in variadic and p.default is p.empty]


def several_inputs_error(names: list[str]) -> InputError:
    """Synthetic inputs are one tensor: a forward that needs more has to be given data."""
    shown = ", ".join(names)
    takes = f"{len(names)} inputs ({shown})" if names else "other arguments than one tensor"
    example = " (" + ", ".join(f"'{n}': {n}" for n in names).join("{}") + ")" if names else ""
    return InputError(
        f"the model's forward takes {takes} and synthetic inputs are one tensor; pass "
        f"{param('data')} file.py:make_batches, a function returning batches as dicts of "
        f'keyword inputs{example} (README "Your own data")',
        param="data",
    )


def is_arguments_error(exc: BaseException) -> bool:
    """A TypeError of a call with the wrong arguments (``missing 1 required ...``)."""
    return isinstance(exc, TypeError) and "argument" in str(exc)


def fixed_batch_size(model: nn.Module, runtime: str) -> int | None:
    """The batch size an export program was traced with, when it only accepts that one."""
    val = graph_input(model) if runtime == "export" else None
    return int(val.shape[0]) if val is not None and isinstance(val.shape[0], int) else None


def float_dtype(model: nn.Module, dtype: torch.dtype) -> torch.dtype:
    """Float inputs take the model's float dtype (a bf16 model gets bf16 inputs)."""
    if not dtype.is_floating_point:
        return dtype
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return dtype


def synthetic_batches(
    shape: Shape,
    *,
    batch_size: int,
    batches: int,
    seed: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    int_high: int = 2,
) -> Batches:
    """Seeded random inputs: N(0, 1) floats, or ints in [0, int_high) for integer dtypes.

    A private generator on the CPU makes the numbers the same on every device and leaves
    the global RNG (and so the user's training run) untouched.
    """
    check_batch_args(batch_size, batches)
    if any(d < 1 for d in shape):
        raise UsageError(f"input shape {shape} has a non-positive size", param="input_shape")
    if int_high < 1:
        raise UsageError(f"int_high must be at least 1, got {int_high}")

    def gen() -> Iterator[Batch]:
        g = torch.Generator(device="cpu").manual_seed(seed)
        size = (batch_size, *shape)
        for _ in range(batches):
            if dtype.is_floating_point:
                x = torch.randn(size, generator=g).to(dtype)
            elif dtype.is_complex:
                x = torch.randn(size, generator=g, dtype=dtype)
            else:
                x = torch.randint(0, int_high, size, generator=g).to(dtype)
            yield Batch((x.to(device),), {}, None, batch_size)

    return Batches(gen(), batches)


def _probe(
    model: nn.Module, shape: Shape, dtype: torch.dtype, device: torch.device, high: int, rows: int
) -> Shape:
    """The first spatial size the model accepts, trying the fallbacks after ``shape``."""
    candidates = [shape]
    if len(shape) > 1:
        rank = len(shape) - 1
        candidates += [(shape[0], *([s] * rank)) for s in SPATIAL_FALLBACKS.get(rank, [])]
    first: Exception | None = None
    for cand in dict.fromkeys(candidates):
        batch = next(
            synthetic_batches(
                cand, batch_size=rows, batches=1, seed=0, device=device, dtype=dtype, int_high=high
            )
        )
        try:
            with torch.no_grad():
                batch.forward(model)
            return cand
        except Exception as exc:  # the model's own error: try the next size
            if is_arguments_error(exc):  # no size will do: it wants other arguments
                raise several_inputs_error(required_inputs(model)) from exc
            first = first or exc
    layer = " ".join(("layer", first_layer(model))).strip()
    raise InputError(
        f"the model rejects synthetic inputs of shape {shape} inferred from its first {layer}: "
        f"{type(first).__name__}: {one_line(first)}. Pass {param('input_shape')} with one "
        "sample's shape, e.g. 3,32,32",
        param="input_shape",
    )


def synthetic_inputs(
    model: nn.Module,
    runtime: str,
    exported: Any,
    input_shape: Shape | None,
    *,
    batch_size: int,
    batches: int,
    seed: int,
    device: torch.device,
) -> Batches:
    """Seeded batches shaped for ``model``: ``input_shape`` when given, else inferred (and,
    for a spatial guess, probed against the model)."""
    dtype, high = torch.float32, infer_int_high(model) or 2
    if len(needed := required_inputs(model)) > 1:
        raise several_inputs_error(needed)
    if input_shape is None:
        inferred = infer_input_shape(model)
        if inferred is None and exported is not None and exported.example_inputs:
            args = exported.example_inputs[0]
            if args and isinstance(args[0], torch.Tensor):
                inferred = (tuple(args[0].shape[1:]), args[0].dtype)
        if inferred is None:
            raise InputError(
                "cannot infer the input shape from the model's first layer; pass "
                f"{param('input_shape')} with one sample's shape (e.g. 784 or 3,32,32) or "
                f"{param('data')}",
                param="input_shape",
            )
        shape, dtype = inferred
        dtype = float_dtype(model, dtype)
        if len(shape) > 1 and runtime != "export":  # spatial size is a guess: check it fits
            shape = _probe(model, shape, dtype, device, high, min(batch_size, 2))
    else:
        shape, dtype = input_shape, float_dtype(model, dtype)
    return synthetic_batches(
        shape,
        batch_size=batch_size,
        batches=batches,
        seed=seed,
        device=device,
        dtype=dtype,
        int_high=high,
    )
