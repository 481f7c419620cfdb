"""Batches: whatever the user has, as a lazy stream of ``Batch``es that knows its length.

Tensors, ``(inputs, targets)`` pairs, iterables such as a ``DataLoader`` and data files all
end up as the same ``Batch``, so the scanner has one loop. Iterables are consumed one batch
at a time: a scan over a generator never holds more than one batch. The number of batches
is known where the batches are made (``Batches.total``), never guessed from the data's
``len``. One tensor walker (torch's pytree) serves the whole package.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils._pytree import tree_flatten, tree_leaves, tree_map_only, tree_unflatten

from relu_doctor.errors import InputError, UsageError, a_kind, param

_ITEM_FORMS = "a tensor, an (inputs, targets) pair, a tuple of tensors or a dict of keyword inputs"
_ACCEPTED = (
    "a tensor of samples, an (inputs, targets) pair of tensors, or an iterable of batches "
    f"(a DataLoader, a generator, a list) where each batch is {_ITEM_FORMS}"
)


def iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor in ``obj`` (tuples, lists, dicts, namedtuples), in order."""
    return (t for t in tree_leaves(obj) if isinstance(t, torch.Tensor))


@dataclass(frozen=True)
class Batch:
    """One forward pass worth of inputs: ``model(*args, **kwargs)``, plus optional targets."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    targets: torch.Tensor | None  # None: the scanner uses its surrogate loss
    rows: int  # samples: dim 0 of the first tensor in args/kwargs

    def forward(self, module: torch.nn.Module) -> Any:
        """``module(*args, **kwargs)``: one forward pass on this batch."""
        return module(*self.args, **self.kwargs)

    def to(self, device: torch.device | str) -> Batch:
        """Move every tensor, at any depth; tensors already there stay put."""
        dev = torch.device(device)
        args, kwargs = tree_map_only(torch.Tensor, lambda t: t.to(dev), (self.args, self.kwargs))
        targets = None if self.targets is None else self.targets.to(dev)
        return Batch(args, kwargs, targets, self.rows)

    def requiring_grad(self) -> Batch:
        """Float inputs, at any depth, as leaves that require grad: a frozen model still
        gets a gradient at every site."""

        def lift(t: torch.Tensor) -> torch.Tensor:
            return t.detach().requires_grad_(True) if t.is_floating_point() else t

        args, kwargs = tree_map_only(torch.Tensor, lift, (self.args, self.kwargs))
        return Batch(args, kwargs, self.targets, self.rows)


class Batches:
    """An iterator of batches with the number it will yield, when that is known."""

    def __init__(self, items: Iterator[Batch], total: int | None) -> None:
        self._items = items
        self.total = total

    def __iter__(self) -> Iterator[Batch]:
        return self._items

    def __next__(self) -> Batch:
        return next(self._items)

    def limit(self, n: int | None) -> Batches:
        """At most ``n`` batches (None: all), without reading past the n-th."""
        if n is None:
            return self
        total = n if self.total is None else min(n, self.total)
        return Batches(itertools.islice(self._items, n), total)


class Rebatched(Batches):
    """Exactly ``size`` samples per batch, for a model that takes no other batch size (an
    export program traced with a fixed one): batches are split and joined along dim 0,
    tensors at any depth (a tensor whose dim 0 is not the batch's samples is kept from the
    first batch of each piece). A last batch with fewer samples is left out: ``dropped``
    counts its samples once the stream is consumed."""

    def __init__(self, stream: Batches, size: int) -> None:
        super().__init__(self._cut(stream, size), None)
        self.size = size
        self.dropped = 0

    def _cut(self, stream: Batches, size: int) -> Iterator[Batch]:
        carry: Batch | None = None
        for batch in stream:
            whole = batch if carry is None else _join(carry, batch)
            start = 0
            while whole.rows - start >= size:
                yield _rows(whole, start, start + size)
                start += size
            carry = _rows(whole, start, whole.rows) if start < whole.rows else None
        self.dropped = carry.rows if carry is not None else 0


class TailJoined(Batches):
    """A last batch of one sample joined to the batch before it, so that train-mode
    BatchNorm, which cannot normalise a single sample, never meets it alone (README "Your
    own data"). Reads one batch ahead; ``total`` drops by one when a tail is joined."""

    def __init__(self, stream: Batches) -> None:
        super().__init__(self._join(stream), stream.total)

    def _join(self, stream: Batches) -> Iterator[Batch]:
        items = iter(stream)
        current = next(items, None)
        while current is not None:
            following = next(items, None)
            if following is not None and following.rows == 1 and current.rows > 1:
                after = next(items, None)
                if after is None:  # the lone sample is the last one
                    self.total = None if self.total is None else self.total - 1
                    yield _join(current, following)
                    return
                yield current
                yield following
                current = after
                continue
            yield current
            current = following


def _batched(batch: Batch) -> tuple[list[Any], Any, list[bool]]:
    leaves, spec = tree_flatten((batch.args, batch.kwargs, batch.targets))
    rows = [
        isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == batch.rows for t in leaves
    ]
    return leaves, spec, rows


def _rows(batch: Batch, start: int, stop: int) -> Batch:
    """Samples ``start:stop`` of ``batch`` (views)."""
    leaves, spec, rows = _batched(batch)
    cut = [t[start:stop] if r else t for t, r in zip(leaves, rows, strict=True)]
    args, kwargs, targets = tree_unflatten(cut, spec)
    return Batch(args, kwargs, targets, stop - start)


def _join(a: Batch, b: Batch) -> Batch:
    """The samples of ``a`` then ``b`` (batches of the same form)."""
    (la, spec, ra), (lb, spec_b, rb) = _batched(a), _batched(b)
    if spec != spec_b or ra != rb:
        raise InputError(
            "the batches change form (other inputs or targets), so they cannot be re-cut "
            "to the batch size the model takes"
        )
    joined = [torch.cat([x, y]) if r else x for x, y, r in zip(la, lb, ra, strict=True)]
    args, kwargs, targets = tree_unflatten(joined, spec)
    return Batch(args, kwargs, targets, a.rows + b.rows)


def check_batch_args(batch_size: int, batches: int | None) -> None:
    """Reject a non-positive batch size or batch count before anything is loaded."""
    checks = [("batch_size", batch_size)] + ([("batches", batches)] if batches is not None else [])
    for name, value in checks:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{param(name)} must be a positive integer, got {value}", param=name)


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
            kind = type(targets).__name__
            raise InputError(f"{what}: targets are {a_kind(kind)}, not a tensor") from exc
    if targets is not None and targets.dim() > 0 and targets.shape[0] != rows:
        raise InputError(f"{what} has {rows} samples but {targets.shape[0]} targets")
    return Batch(args, kwargs, targets, rows)


def tensor_batches(x: torch.Tensor, targets: torch.Tensor | None, batch_size: int) -> Batches:
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

    return Batches(gen(), -(-n // batch_size))


def _numpy_to_tensor(obj: Any) -> Any:
    """numpy arrays become tensors (float64 -> float32); everything else passes through."""
    if isinstance(obj, np.ndarray):
        return array_to_tensor(obj, "array")
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
    kind = type(item).__name__
    raise InputError(f"{what} is {a_kind(kind)}; each batch must be {_ITEM_FORMS}")


def as_batches(data: Any, batch_size: int, what: str = "data") -> Batches:
    """Normalise ``data`` lazily; an empty iterable yields nothing (no error here).

    ``what`` names the data in error messages.
    """
    check_batch_args(batch_size, None)
    if isinstance(data, Batches):
        return data
    data = _numpy_to_tensor(data)
    if isinstance(data, torch.Tensor):
        return tensor_batches(data, None, batch_size)
    if isinstance(data, tuple) and len(data) == 2:
        x, y = map(_numpy_to_tensor, data)
        both = isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)
        if both and x.dim() and y.dim() and x.shape[0] == y.shape[0]:
            return tensor_batches(x, y, batch_size)
    kind = type(data).__name__
    if isinstance(data, Mapping):
        raise InputError(
            f"{what} is a dict: for one batch of keyword inputs pass [the_dict]; "
            f"accepted: {_ACCEPTED}"
        )
    if isinstance(data, (str, bytes)):
        raise InputError(f"{what} is {a_kind(kind)}; accepted: {_ACCEPTED}")
    try:
        items = iter(data)
    except TypeError:
        raise InputError(f"{what} is {a_kind(kind)}; accepted: {_ACCEPTED}") from None
    total = len(data) if isinstance(data, Sized) else None

    def gen() -> Iterator[Batch]:
        for i, item in enumerate(items, 1):
            yield _item_to_batch(item, f"batch {i} of {what}")

    return Batches(gen(), total)


_TORCH_INTS = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.int16, np.int32, np.int64))


def array_to_tensor(arr: Any, name: str, target: bool = False) -> torch.Tensor:
    """numpy -> torch: float64 -> float32; integer inputs keep a type torch has (uint8 images
    stay uint8: the scan decides how they reach the model), targets and other integers
    become int64."""
    kind = arr.dtype.kind
    if kind == "b":
        arr = arr.astype(np.int64 if target else np.float32)
    elif kind in "iu":
        if target or arr.dtype not in _TORCH_INTS:
            arr = arr.astype(np.int64)
    elif kind == "f" and arr.dtype.itemsize > 4:
        arr = arr.astype(np.float32)
    elif kind not in "fc":
        raise InputError(f"{name} has dtype {arr.dtype}; data must be numeric")
    arr = np.ascontiguousarray(arr)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())
