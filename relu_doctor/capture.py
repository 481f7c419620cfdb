"""Capture every ReLU-family call site during forward and backward passes.

A ``TorchDispatchMode`` sees each aten op once, whether it came from ``nn.ReLU``, ``F.relu``,
``Tensor.relu_``, a TorchScript interpreter or an export graph, so one mechanism covers
them all and an ``nn.ReLU`` and the functional call inside it are never counted twice. A
resolver (see ``sites.py``) names the enclosing module. Each output is reduced on the spot
into a ``SiteAccumulator``; gradients are caught at the activation's backward op
(``threshold_backward`` for ReLU), whose output *is* the gradient w.r.t. the site's input.

Everything installed is removed in ``__exit__``, also when the forward raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from relu_doctor.errors import UsageError
from relu_doctor.sites import OP_ACTIVATION, Resolver, SiteKey
from relu_doctor.stats import RELU_FAMILY, Scratch, SiteAccumulator, UnitStats, normalize_dim

aten = torch.ops.aten

#: Forward ops: op -> (site op name, in-place?).
_FORWARD: dict[Any, tuple[str, bool]] = {
    aten.relu.default: ("relu", False),
    aten.relu_.default: ("relu", True),
    aten.hardtanh.default: ("relu6", False),
    aten.hardtanh_.default: ("relu6", True),
    aten.leaky_relu.default: ("leaky_relu", False),
    aten.leaky_relu_.default: ("leaky_relu", True),
    aten.elu.default: ("elu", False),
    aten.elu_.default: ("elu", True),
    aten._prelu_kernel.default: ("prelu", False),
}
#: Backward ops: op -> (site op name, index of the saved tensor that identifies the call).
_BACKWARD: dict[Any, tuple[str, int]] = {
    aten.threshold_backward.default: ("relu", 1),
    aten.hardtanh_backward.default: ("relu6", 1),
    aten.leaky_relu_backward.default: ("leaky_relu", 1),
    aten.elu_backward.default: ("elu", 5),
    aten._prelu_kernel_backward.default: ("prelu", 1),
}
#: Ops that decide which dim holds the units of what follows (see ``default_unit_dim``).
_LAYOUT: dict[Any, str] = {
    aten.addmm.default: "last",
    aten.mm.default: "last",
    aten.bmm.default: "last",
    aten.baddbmm.default: "last",
    aten.linear.default: "last",
    aten.embedding.default: "last",
    aten.convolution.default: "channel",
    aten._convolution.default: "channel",
    aten.mkldnn_convolution.default: "channel",
}


def default_unit_dim(shape: tuple[int, ...], recent: list[tuple[str, int]]) -> int:
    """Which dim holds the units: the features of ``(N, F)``; for more dims, the channel dim 1
    of conv outputs ``(N, C, *spatial)`` (also through BatchNorm and pooling) or the last dim
    of Linear outputs ``(N, T, F)``. ``recent`` holds the latest conv (``channel``, C) and
    Linear/matmul/embedding (``last``, F) outputs, newest first: the newest whose size sits
    at dim 1 or at the last dim decides, so a Linear in a side branch (squeeze-excitation)
    does not turn a conv's channels into columns. Default: dim 1.
    """
    ndim = len(shape)
    if ndim <= 2:
        return 1
    for kind, size in recent:
        first, last = shape[1] == size, shape[-1] == size
        if first and last:
            return 1 if kind == "channel" else ndim - 1
        if first or last:
            return 1 if first else ndim - 1
    return 1


def _key(t: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    return (t.data_ptr(), tuple(t.shape))


def _is_relu6(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    lo = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
    hi = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
    return bool(lo == 0 and hi == 6)


@dataclass(frozen=True)
class SiteInfo:
    """How a site was called: kind for the table, activation class, unit dim."""

    kind: str
    activation: str
    unit_dim: int


@dataclass(frozen=True)
class CapturedSite:
    key: SiteKey
    info: SiteInfo
    stats: UnitStats


class _Mode(TorchDispatchMode):
    def __init__(self, capture: Capture) -> None:
        super().__init__()
        self.capture = capture

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # Otherwise torch wraps __torch_dispatch__ in a Dynamo-disabling shim: ~1.5 s of
        # imports on the first scan and tens of microseconds on every op after that.
        return False

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        fwd = _FORWARD.get(func)
        if fwd is not None:
            return self.capture._on_activation(func, fwd, args, kwargs)
        bwd = _BACKWARD.get(func)
        if bwd is not None:
            out = func(*args, **kwargs)
            self.capture._on_backward(bwd, args, out)
            return out
        layout = _LAYOUT.get(func)
        if layout is None:
            if self.capture._track_ops:
                self.capture.ops_seen.add(getattr(func, "_opname", ""))
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        self.capture._note_layout(layout, out)
        return out


class Capture:
    """Context manager around a scan: ``with Capture(...) as cap:`` then, per batch,
    ``with cap.forward(): model(...)`` (and the backward inside the same block).
    """

    def __init__(
        self,
        resolver: Resolver,
        *,
        eps: float = 0.0,
        unit_dim: int | None = None,
        grad: bool = True,
    ) -> None:
        self.resolver = resolver
        self.eps = eps
        self.unit_dim = unit_dim
        self.grad = grad
        self._accs: dict[SiteKey, SiteAccumulator] = {}
        self._info: dict[SiteKey, SiteInfo] = {}
        self._counts: dict[tuple[str, str, bool], int] = {}
        self._saved: dict[str, dict[tuple[int, tuple[int, ...]], SiteAccumulator]] = {}
        self._recent: dict[str, int] = {}  # latest unit-defining outputs, newest last
        self._rows = 0  # samples in the current batch
        self._scratch = Scratch()
        self._track_ops = True  # names of the ops of the first batch, for "no ReLU" errors
        self.ops_seen: set[str] = set()
        self.last_site = ""

    def __enter__(self) -> Capture:
        self.resolver.install()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.resolver.remove()
        self._saved.clear()
        self._scratch.clear()

    @contextmanager
    def forward(self, rows: int = 0) -> Iterator[None]:
        """One batch of ``rows`` samples: the forward (and backward) inside runs under the
        capture mode."""
        self.resolver.start_forward()
        self._counts.clear()
        self._saved.clear()
        self._recent.clear()
        self._rows = rows
        with _Mode(self):
            yield
        self._saved.clear()
        self._track_ops = False

    def where(self) -> str:
        """The module (or last site) where a failing forward stopped, for error messages."""
        return self.resolver.where() or self.last_site

    # -- inside the dispatch mode: keep these lean, they run on every activation call --

    def _on_activation(
        self, func: Any, fwd: tuple[str, bool], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        op, inplace = fwd
        x = args[0]
        if (op == "relu6" and not _is_relu6(args, kwargs)) or x.ndim == 0:
            return func(*args, **kwargs)  # a plain hardtanh, or a scalar: not a unit layer
        acc, pre = self._site(op, inplace, x)
        acc.observe_pre(pre, self.eps)
        out = func(*args, **kwargs)
        acc.observe_out(self._per_sample(out, acc.folded), self.eps, self._scratch)
        if self.grad and torch.is_grad_enabled():
            saved = self._saved.setdefault(op, {})
            saved[_key(out)] = acc
            if op != "relu":
                saved[_key(x)] = acc  # these backward ops keep the input, not the result
        return out

    def _folds(self, t: torch.Tensor) -> bool:
        """True when dim 0 holds several rows per sample (tokens flattened into the batch)."""
        n, rows = t.shape[0], self._rows
        return t.ndim > 1 and rows > 0 and n != rows and n % rows == 0

    def _per_sample(self, t: torch.Tensor, folded: bool) -> torch.Tensor:
        """Dim 0 = samples: ``(N,)`` is one unit over N samples; at a ``folded`` site
        ``(N*T, F)`` from a model that flattened its tokens becomes ``(N, T, F)``, so
        "samples" stays batch rows."""
        if t.ndim == 1:
            return t.unsqueeze(1)
        if folded and self._folds(t):
            return t.reshape(self._rows, t.shape[0] // self._rows, *t.shape[1:])
        return t

    def _note_layout(self, kind: str, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.ndim >= 2:
            self._recent.pop(kind, None)
            self._recent[kind] = out.shape[1] if kind == "channel" else out.shape[-1]

    def _on_backward(self, bwd: tuple[str, int], args: tuple[Any, ...], out: Any) -> None:
        op, index = bwd
        acc = self._saved.get(op, {}).get(_key(args[index]))
        if acc is not None:
            acc.observe_grad(out[0] if isinstance(out, tuple) else out)

    def _site(
        self, op: str, inplace: bool, x: torch.Tensor
    ) -> tuple[SiteAccumulator, torch.Tensor]:
        """The site of this call and ``x`` viewed with the samples in dim 0."""
        call = self.resolver.resolve(op)
        group = (call.path, op, call.module_site)
        index = self._counts.get(group, 0) + 1
        self._counts[group] = index
        key = SiteKey(call.path, op, call.module_site, index)
        acc = self._accs.get(key) or self._new_site(key, inplace, x)
        view = self._per_sample(x, acc.folded)
        if view.ndim <= acc.unit_dim or view.shape[acc.unit_dim] != acc.units:
            raise UsageError(
                f"site {key.path or '<root>'}:{op} changed shape from {acc.units} units to "
                f"{tuple(x.shape)} between batches; pass --unit-dim to pick the unit axis"
            )
        self.last_site = call.path
        return acc, view

    def _new_site(self, key: SiteKey, inplace: bool, x: torch.Tensor) -> SiteAccumulator:
        """Pick the unit dim on the tensor as the model made it, then shift it past the sample
        dim when tokens were flattened into the batch."""
        shape = tuple(x.shape) if x.ndim > 1 else (x.shape[0], 1)
        if self.unit_dim is None:
            unit_dim = default_unit_dim(shape, list(reversed(self._recent.items())))
        else:
            try:
                unit_dim = normalize_dim(self.unit_dim, len(shape))
            except ValueError as exc:
                where = f"site {key.path!r}" if key.path else "the top level"
                raise UsageError(f"--unit-dim {self.unit_dim}: {exc} at {where}") from None
            if unit_dim == 0:
                raise UsageError("--unit-dim 0 is the sample (batch) dim; pick another")
        units = shape[unit_dim]
        folded = self._folds(x)
        activation = OP_ACTIVATION[key.op]
        with torch.inference_mode(False):  # normal tensors, updatable after the scan too
            acc = SiteAccumulator(
                units, unit_dim + folded, x.device, relu_like=activation in RELU_FAMILY
            )
        acc.folded = folded
        self._accs[key] = acc
        self._info[key] = SiteInfo(self._kind(key, inplace, activation), activation, unit_dim)
        return acc

    def _kind(self, key: SiteKey, inplace: bool, activation: str) -> str:
        if activation not in RELU_FAMILY:
            return activation
        if self.resolver.source != "eager":
            return self.resolver.source
        if key.module_site:
            return "module-inplace" if inplace else "module"
        return "functional"

    # -- after the scan --

    def all_reduce(self, group: Any = None) -> None:
        """Sum statistics over ``torch.distributed`` ranks (all ranks must see the same sites)."""
        import torch.distributed as dist

        mine = [(k, a.units) for k, a in self._accs.items()]
        everyone: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(everyone, mine, group=group)
        if any(other != mine for other in everyone):
            raise UsageError(
                "ranks saw different ReLU sites (a rank with no data, or data-dependent "
                "control flow); a distributed scan needs the same sites on every rank"
            )
        for acc in self._accs.values():
            acc.all_reduce(group)

    def results(self) -> list[CapturedSite]:
        """Sites in first-execution order with their host-side statistics."""
        return [CapturedSite(k, self._info[k], a.finalize()) for k, a in self._accs.items()]
