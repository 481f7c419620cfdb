"""Turn whatever the user has into a lazy stream of `Batch`es.

Synthetic inputs (shape given or inferred from the model), tensors, iterables such as a
`DataLoader`, data files and `MODULE:CALLABLE` factories all end up as the same `Batch`, so
the scanner has one loop. Iterables are consumed one batch at a time: a scan over a
generator never holds more than one batch. Files are read eagerly (errors surface before
the scan starts), then sliced without copies.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from relu_doctor.errors import InputError, UsageError

#: Alternative spatial sizes the scanner may try when the default does not fit the model.
SPATIAL_FALLBACKS: dict[int, list[int]] = {
    1: [64, 128, 32, 256, 16],
    2: [32, 28, 64, 224, 96, 128, 16],
    3: [16, 32, 8],
}
_SPATIAL_DEFAULT = {1: 64, 2: 32, 3: 16}
_SEQ_LEN = 16  # tokens per sample for Embedding / batch-first RNN / attention inputs
_ITEM_FORMS = "a tensor, an (inputs, targets) pair, a tuple of tensors or a dict of keyword inputs"
_ACCEPTED = (
    "a tensor of samples, an (inputs, targets) pair of tensors, or an iterable of batches "
    f"(a DataLoader, a generator, a list) where each batch is {_ITEM_FORMS}"
)


@dataclass(frozen=True)
class Batch:
    """One forward pass worth of inputs: `model(*args, **kwargs)`, plus optional targets."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    targets: torch.Tensor | None  # None -> the scanner uses its surrogate loss
    rows: int  # samples: dim 0 of the first tensor in args/kwargs

    def to(self, device: torch.device | str) -> Batch:
        """Move every tensor (also inside tuples, lists, dicts); tensors already there stay put."""
        dev = torch.device(device)
        targets = None if self.targets is None else self.targets.to(dev)
        return Batch(_move(self.args, dev), _move(self.kwargs, dev), targets, self.rows)


def _move(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        items = [_move(o, device) for o in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, list):
        return [_move(o, device) for o in obj]
    if isinstance(obj, Mapping):
        return {k: _move(v, device) for k, v in obj.items()}
    return obj


def iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor in ``obj``, walking tuples, lists and mappings in order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from iter_tensors(v)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from iter_tensors(v)


def _make_batch(args: tuple[Any, ...], kwargs: dict[str, Any], targets: Any, what: str) -> Batch:
    """Build a Batch, checking it holds a tensor and that targets line up with its rows."""
    first = next(iter_tensors((args, kwargs)), None)
    if first is None:
        raise InputError(f"{what} holds no tensor; each batch must be {_ITEM_FORMS}")
    rows = int(first.shape[0]) if first.dim() > 0 else 1
    if targets is not None and not isinstance(targets, torch.Tensor):
        try:
            targets = torch.as_tensor(_numpy_to_tensor(targets))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(
                f"{what}: targets are a {type(targets).__name__}, not a tensor"
            ) from exc
    if targets is not None and targets.dim() > 0 and targets.shape[0] != rows:
        raise InputError(f"{what} has {rows} samples but {targets.shape[0]} targets")
    return Batch(args, kwargs, targets, rows)


def check_batch_args(batch_size: int, batches: int | None) -> None:
    """Reject non-positive --batch-size / --batches before anything is loaded."""
    checks = [("--batch-size", batch_size)] + (
        [("--batches", batches)] if batches is not None else []
    )
    for name, value in checks:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{name} must be a positive integer, got {value}")


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse `3,32,32`, `3x32x32`, `(3, 32, 32)` or `784` into one sample's shape."""
    core = text.strip().strip("()[]").strip()
    parts = re.split(r"\s*[,xX×]\s*", core)
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # "(784,)"
    if not core or not all(p.isdecimal() and int(p) > 0 for p in parts):
        raise UsageError(
            f"--input-shape {text!r}: expected comma-separated positive integers like 3,32,32"
        )
    return tuple(int(p) for p in parts)


_RNNS = {"LSTM", "GRU", "RNN", "MultiheadAttention"}  # sequence layers: batch_first decides
_CONSUMER_NAMES = {"Linear", "Embedding", "EmbeddingBag", *_RNNS}
_CONSUMER_NAMES |= {f"{p}{d}d" for p in ("Conv", "ConvTranspose") for d in (1, 2, 3)}
_CONSUMERS: tuple[type[torch.nn.Module], ...] = tuple(
    getattr(torch.nn, name) for name in sorted(_CONSUMER_NAMES)
)


def _consumer(module: torch.nn.Module) -> str | None:
    """Class name of an input-consuming layer (TorchScript keeps it as `original_name`)."""
    if isinstance(module, torch.jit.ScriptModule):
        name = str(getattr(module, "original_name", ""))
        return name if name in _CONSUMER_NAMES else None
    return next((cls.__name__ for cls in _CONSUMERS if isinstance(module, cls)), None)


def _weight_shape(module: torch.nn.Module, name: str = "weight") -> tuple[int, ...] | None:
    w = getattr(module, name, None)
    if not isinstance(w, torch.Tensor) or isinstance(w, torch.nn.parameter.UninitializedParameter):
        return None
    return tuple(w.shape)


def _int_attr(module: torch.nn.Module, name: str) -> int | None:
    value = getattr(module, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _shape_for(kind: str, m: torch.nn.Module) -> tuple[tuple[int, ...], torch.dtype] | None:
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
        return ((c, *[_SPATIAL_DEFAULT[rank]] * rank), torch.float32) if c else None
    if kind in ("Embedding", "EmbeddingBag"):
        return (_SEQ_LEN,), torch.int64
    if kind in _RNNS:
        if getattr(m, "batch_first", False) is not True:
            return None  # (T, N, F) input: dim 0 is not the sample dim
        wi = _weight_shape(m, "weight_ih_l0")
        n = _int_attr(m, "input_size") or _int_attr(m, "embed_dim") or (wi[1] if wi else None)
        return ((_SEQ_LEN, n), torch.float32) if n else None
    return None


def first_input_value(model: torch.nn.Module) -> torch.Tensor | None:
    """The recorded example value of an fx/export graph's first tensor input (or None)."""
    if not isinstance(model, torch.fx.GraphModule):
        return None
    for node in model.graph.nodes:
        val = node.meta.get("val") if node.op == "placeholder" else None
        if isinstance(val, torch.Tensor) and val.dim() >= 1:
            return val
    return None


def _placeholder_shape(model: torch.nn.Module) -> tuple[tuple[int, ...], torch.dtype] | None:
    """One sample's shape and dtype from the graph's first input."""
    val = first_input_value(model)
    if val is None:
        return None
    try:
        return tuple(int(d) for d in val.shape[1:]), val.dtype
    except (TypeError, RuntimeError, ValueError):
        return None  # symbolic sizes without a hint


def infer_input_shape(model: torch.nn.Module) -> tuple[tuple[int, ...], torch.dtype] | None:
    """Guess one sample's shape (no batch dim) and dtype so a scan needs no data.

    An fx/`torch.export` graph uses its first input's recorded shape. Otherwise the first
    layer in `model.modules()` order that consumes the input decides (plain, TorchScript or
    traced modules alike): Linear -> (in_features,); Conv1d -> (C, 64); Conv2d -> (C, 32, 32);
    Conv3d -> (C, 16, 16, 16) (same for ConvTranspose; the scanner may retry with
    SPATIAL_FALLBACKS); Embedding/EmbeddingBag -> 16 int64 ids; batch-first LSTM/GRU/RNN or
    MultiheadAttention -> (16, features). None when nothing fits, including a first RNN that
    is not batch-first and lazy layers that have not seen an input yet.
    """
    found = _placeholder_shape(model)
    if found is not None:
        return found
    for module in model.modules():
        kind = _consumer(module)
        if kind is not None:
            return _shape_for(kind, module)
    return None


def infer_int_high(model: torch.nn.Module) -> int | None:
    """Vocabulary size of the first embedding, so synthetic ids cover more than {0, 1}."""
    for module in model.modules():
        kind = _consumer(module)
        if kind in ("Embedding", "EmbeddingBag"):
            n = _int_attr(module, "num_embeddings")
            w = _weight_shape(module)
            return n or (w[0] if w else None)
        if kind is not None:
            return None
    graph = getattr(model, "graph", None)
    if isinstance(model, torch.fx.GraphModule) and graph is not None:
        for node in graph.nodes:
            if node.op == "call_function" and "embedding" in str(node.target) and node.args:
                val = getattr(node.args[0], "meta", {}).get("val")
                if isinstance(val, torch.Tensor) and val.dim() == 2:
                    return int(val.shape[0])
    return None


def synthetic_batches(
    shape: tuple[int, ...],
    *,
    batch_size: int,
    batches: int,
    seed: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    int_high: int = 2,
) -> Iterator[Batch]:
    """Seeded random inputs: N(0, 1) floats, or ints in [0, int_high) for integer dtypes.

    A private generator on the CPU makes the numbers the same on every device and leaves
    the global RNG (and so the user's training run) untouched.
    """
    check_batch_args(batch_size, batches)
    if any(d < 1 for d in shape):
        raise UsageError(f"input shape {shape} has a non-positive size")
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

    return gen()


def tensor_batches(
    x: torch.Tensor, targets: torch.Tensor | None, batch_size: int
) -> Iterator[Batch]:
    """Slice a tensor of samples (and its targets) into batches: views, no copies."""
    check_batch_args(batch_size, None)
    if x.dim() == 0:
        raise InputError("data is a 0-d tensor; a tensor of samples needs a batch dimension")
    n = x.shape[0]
    if targets is not None and (targets.dim() == 0 or targets.shape[0] != n):
        m = targets.shape[0] if targets.dim() else "a scalar"
        raise InputError(f"inputs have {n} samples but targets have {m}")

    def gen() -> Iterator[Batch]:
        for i in range(0, n, batch_size):
            y = None if targets is None else targets[i : i + batch_size]
            xs = x[i : i + batch_size]
            yield Batch((xs,), {}, y, xs.shape[0])

    return gen()


def _numpy_to_tensor(obj: Any) -> Any:
    """numpy arrays become tensors (float64 -> float32); everything else passes through."""
    if isinstance(obj, np.ndarray):
        return _array_to_tensor(obj, "array")
    return obj


def _item_to_batch(item: Any, what: str) -> Batch:
    if isinstance(item, Batch):
        return item
    item = _numpy_to_tensor(item)
    if isinstance(item, torch.Tensor):
        return _make_batch((item,), {}, None, what)
    if isinstance(item, Mapping):  # keyword inputs, all of them (targets go in a pair)
        kwargs = {str(k): _numpy_to_tensor(v) for k, v in item.items()}
        return _make_batch((), kwargs, None, what)
    if isinstance(item, (tuple, list)):
        if len(item) != 2:
            return _make_batch(tuple(_numpy_to_tensor(v) for v in item), {}, None, what)
        inputs, targets = _numpy_to_tensor(item[0]), item[1]
        if isinstance(inputs, Mapping):
            return _make_batch((), {str(k): v for k, v in inputs.items()}, targets, what)
        args = (
            tuple(map(_numpy_to_tensor, inputs)) if isinstance(inputs, (tuple, list)) else (inputs,)
        )
        return _make_batch(args, {}, targets, what)
    raise InputError(f"{what} is a {type(item).__name__}; each batch must be {_ITEM_FORMS}")


def _as_batches(data: Any, batch_size: int, source: str) -> Iterator[Batch]:
    check_batch_args(batch_size, None)
    data = _numpy_to_tensor(data)
    if isinstance(data, torch.Tensor):
        return tensor_batches(data, None, batch_size)
    if isinstance(data, tuple) and len(data) == 2:
        x, y = map(_numpy_to_tensor, data)
        both = isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)
        if both and x.dim() and y.dim() and x.shape[0] == y.shape[0]:
            return tensor_batches(x, y, batch_size)
    if isinstance(data, Mapping):
        raise InputError(
            f"{source} is a dict: for one batch of keyword inputs pass [the_dict]; "
            f"accepted: {_ACCEPTED}"
        )
    if isinstance(data, (str, bytes)):
        raise InputError(f"{source} is a {type(data).__name__}; accepted: {_ACCEPTED}")
    try:
        items = iter(data)
    except TypeError:
        raise InputError(f"{source} is a {type(data).__name__}; accepted: {_ACCEPTED}") from None

    def gen() -> Iterator[Batch]:
        for i, item in enumerate(items, 1):
            yield _item_to_batch(item, f"batch {i} of {source}")

    return gen()


def as_batches(data: Any, batch_size: int) -> Iterator[Batch]:
    """Normalise the Python API's `data` lazily; an empty iterable yields nothing (no error)."""
    return _as_batches(data, batch_size, "data")


def limit(batches: Iterable[Batch], n: int | None) -> Iterator[Batch]:
    """At most n batches (None: all), without reading past the n-th."""
    if n is not None and n < 0:
        raise UsageError(f"--batches must be a positive integer, got {n}")
    return iter(batches) if n is None else itertools.islice(batches, n)


def _array_to_tensor(arr: Any, name: str, target: bool = False) -> torch.Tensor:
    """numpy -> torch with model-friendly dtypes: float64 -> float32, ints -> int64."""
    kind = arr.dtype.kind
    if kind == "b":
        arr = arr.astype(np.int64 if target else np.float32)
    elif kind in "iu":
        arr = arr.astype(np.int64)
    elif kind == "f" and arr.dtype.itemsize > 4:
        arr = arr.astype(np.float32)
    elif kind not in "fc":
        raise InputError(f"{name} has dtype {arr.dtype}; data must be numeric")
    arr = np.ascontiguousarray(arr)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())
