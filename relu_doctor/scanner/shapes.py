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

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

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


def _consumer(module: nn.Module) -> str | None:
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
        kind = _consumer(module)
        if kind is not None:
            return _shape_for(kind, module)
    return None


def infer_int_high(model: nn.Module) -> int | None:
    """Vocabulary size of the first embedding, so synthetic ids cover more than {0, 1}."""
    for module in model.modules():
        kind = _consumer(module)
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


# -- fitting data to the model ------------------------------------------------------------

#: ``scale`` of ``scan()``: a factor for the first input, or "auto" (1/255 for uint8 data
#: that becomes float, as torchvision's ``ToTensor`` does; 1 otherwise).
Scale = float | str
_INDEX_DTYPES = (torch.int32, torch.int64)


@dataclass(frozen=True)
class InputSpec:
    """What the model's first layer reads: the float dtype it computes in, and whether it
    takes indices (an Embedding; None: nothing tells, so integer data is left alone)."""

    dtype: torch.dtype
    indices: bool | None


def input_spec(model: nn.Module) -> InputSpec:
    """The recorded input of an fx/export graph, else the first input-consuming layer."""
    dtype = float_dtype(model, torch.float32)
    val = graph_input(model)
    if val is not None:
        floating = val.is_floating_point()
        return InputSpec(val.dtype if floating else dtype, not floating)
    for module in model.modules():
        kind = _consumer(module)
        if kind is not None:
            return InputSpec(dtype, kind in ("Embedding", "EmbeddingBag"))
    return InputSpec(dtype, None)


def check_scale(scale: Scale) -> None:
    """``scale`` is "auto" or a positive finite number."""
    ok = scale == "auto" or (
        isinstance(scale, int | float) and not isinstance(scale, bool) and 0 < scale < math.inf
    )
    if not ok:
        raise UsageError(
            f"{param('scale')} must be 'auto' or a positive number such as 1/255, got {scale!r}",
            param="scale",
        )


class InputFitter:
    """Adapts every batch to the model, in one place: float inputs, at any depth, take the
    model's float dtype; the first input, when it holds integers, stays integer only where
    the first layer reads indices, else it becomes float times ``scale``. ``notes`` say,
    once each, what was converted (README "Your own data")."""

    def __init__(self, spec: InputSpec, scale: Scale = "auto") -> None:
        check_scale(scale)
        self.spec = spec
        self.scale = scale
        self.notes: list[str] = []

    def __call__(self, batch: Batch) -> Batch:
        position = itertools.count()
        args, kwargs = tree_map_only(
            torch.Tensor, lambda t: self._fit(t, next(position) == 0), (batch.args, batch.kwargs)
        )
        return Batch(args, kwargs, batch.targets, batch.rows)

    def _fit(self, t: torch.Tensor, first: bool) -> torch.Tensor:
        if t.dtype == torch.bool or t.is_complex():
            return t
        if t.is_floating_point():
            out = t if t.dtype == self.spec.dtype else t.to(self.spec.dtype)
            scaled = first and self.scale != "auto" and self.scale != 1
            return out * float(self.scale) if scaled else out
        if not first or self.spec.indices is None:
            return t
        if self.spec.indices:  # notes are plain text: the report shows them as they are
            if self.scale != "auto":
                self._note("the scale does not apply to token ids (the model embeds them)")
            return t if t.dtype in _INDEX_DTYPES else t.long()
        src, dst = (str(d).removeprefix("torch.") for d in (t.dtype, self.spec.dtype))
        if self.scale != "auto":
            factor, reason = float(self.scale), ""
        elif t.dtype == torch.uint8:
            factor = 1 / 255
            reason = " to [0, 1], as torchvision's ToTensor does (scale 1 keeps 0..255)"
        else:
            factor, reason = 1.0, " (a scale such as 1/255 rescales them)"
        how = f"scaled by {_fraction(factor)}" if factor != 1 else "as they are"
        self._note(f"{src} inputs became {dst} {how}{reason}")
        return (t.to(torch.float32) * factor).to(self.spec.dtype)

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def _fraction(factor: float) -> str:
    """1/255 rather than 0.00392 where the factor is the inverse of an integer."""
    inverse = 1 / factor
    return f"1/{round(inverse)}" if abs(inverse - round(inverse)) < 1e-6 else f"{factor:g}"
