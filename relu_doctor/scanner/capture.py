"""Capture every ReLU-family call site during forward and backward passes.

A ``TorchDispatchMode`` sees each aten op once, whether it came from ``nn.ReLU``, ``F.relu``,
``Tensor.relu_``, a TorchScript interpreter or an export graph, so one mechanism covers them
all and an ``nn.ReLU`` and the functional call inside it are never counted twice. The
``Recorder`` behind it keys each call to its site (a resolver names the enclosing module),
picks the unit dim on the first call and reduces the tensors on the spot into the site's
``SiteAccumulator``; gradients are caught at the activation's backward op
(``threshold_backward`` for ReLU), whose output *is* the gradient w.r.t. the site's input.
On the first batch a ``TopologyTracker`` also follows every op to find each site's
producing and consuming layers.

Everything installed is removed on exit, also when the forward raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from relu_doctor.activations import (
    BACKWARD_OPS,
    FORWARD_OPS,
    Activation,
    hardtanh_bounds,
    is_relu6_bounds,
)
from relu_doctor.errors import UsageError, param
from relu_doctor.scanner.accumulate import Scratch, SiteAccumulator, UnitTotals, normalize_dim
from relu_doctor.scanner.reservoir import SAMPLE_ROWS, site_rng
from relu_doctor.scanner.sites import Resolver, SiteKey
from relu_doctor.scanner.topology import SiteTopology, TopologyTracker

aten = torch.ops.aten

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


@dataclass(frozen=True)
class SiteInfo:
    """How a site was called: kind for the table, activation, unit dim."""

    kind: str
    activation: Activation
    unit_dim: int


@dataclass(frozen=True)
class SiteRecord:
    """One site's identity, how it was called, its totals and its place in the graph."""

    key: SiteKey
    info: SiteInfo
    totals: UnitTotals
    topology: SiteTopology


class Recorder:
    """Per-site accumulators of one scan, fed by an interception mechanism (the dispatch
    mode here) through ``on_activation`` / ``on_backward``, one batch at a time."""

    def __init__(
        self,
        resolver: Resolver,
        *,
        eps: float = 0.0,
        unit_dim: int | None = None,
        grad: bool = True,
        topology: TopologyTracker | None = None,
        seed: int = 0,
    ) -> None:
        self.resolver = resolver
        self.seed = seed  # of each site's row sample (effective rank)
        self.eps = eps
        self.unit_dim = unit_dim
        self.grad = grad
        self.topology = topology  # follows every op of the first forward, then None
        self._topology: dict[SiteKey, SiteTopology] = {}
        self._accs: dict[SiteKey, SiteAccumulator] = {}
        self._info: dict[SiteKey, SiteInfo] = {}
        self._counts: dict[tuple[str, str, bool], int] = {}
        self._saved: dict[str, dict[tuple[int, tuple[int, ...]], SiteAccumulator]] = {}
        self._recent: dict[str, int] = {}  # latest unit-defining outputs, newest last
        self._rows = 0  # samples in the current batch
        self._scratch = Scratch()
        self.track_ops = True  # names of the ops of the first batch, for "no ReLU" errors
        self.ops_seen: set[str] = set()
        self.last_site = ""
        #: Called with each measured output (``monitor()`` hooks the training's own backward).
        self.on_output: Callable[[SiteAccumulator, torch.Tensor, bool], None] | None = None

    def __enter__(self) -> Recorder:
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

    def reset(self) -> None:
        """Forget the statistics, keep the topology: ``monitor()`` starts a new window."""
        self._accs.clear()
        self._info.clear()

    def begin_batch(self, rows: int) -> None:
        self.resolver.start_forward()
        self._counts.clear()
        self._saved.clear()
        self._recent.clear()
        self._rows = rows

    def forward_done(self) -> None:
        """The forward of this batch is over (a backward may follow): topology is known."""
        if self.topology is not None:
            self._topology = self.topology.result()
            self.topology = None

    def end_batch(self) -> None:
        self.forward_done()
        self._saved.clear()
        self.track_ops = False

    @contextmanager
    def forward(self, rows: int = 0) -> Iterator[None]:
        """One batch of ``rows`` samples: the forward (and backward) inside runs under the
        dispatch mode."""
        self.begin_batch(rows)
        with _Mode(self):
            yield
        self.end_batch()

    def where(self) -> str:
        """The module (or last site) where a failing forward stopped, for error messages."""
        return self.resolver.where() or self.last_site

    # -- called for every activation op: keep these lean --

    def on_activation(
        self,
        func: Any,
        act: Activation,
        inplace: bool,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        bounded: bool = False,
    ) -> Any:
        """Measure one activation call and return its result (``bounded``: a hardtanh, which
        only counts with the ReLU6 bounds)."""
        x = args[0]
        if (bounded and not is_relu6_bounds(*hardtanh_bounds(args, kwargs))) or x.ndim == 0:
            return func(*args, **kwargs)  # a plain hardtanh, or a scalar: not a unit layer
        acc, pre, key = self._site(act, inplace, x)
        acc.observe_pre(pre, self.eps)
        if self.topology is not None:
            self.topology.before_activation(key, x)
        out = func(*args, **kwargs)
        self.observe_out(acc, out)
        if self.topology is not None:
            self.topology.after_activation(key, out)
        if self.on_output is not None:
            self.on_output(acc, out, inplace)
        if self.grad and torch.is_grad_enabled():
            saved = self._saved.setdefault(act.op, {})
            saved[_key(out)] = acc
            if not act.saves_output:
                saved[_key(x)] = acc  # these backward ops keep the input, not the result
        return out

    def observe_out(self, acc: SiteAccumulator, out: torch.Tensor) -> None:
        """The output side of one call (also for the hooks-only path)."""
        rows = self._per_sample(out, acc.folded)
        acc.observe_out(rows, self.eps, self._scratch)
        acc.observe_rows(rows)

    def observe_grad(self, acc: SiteAccumulator, grad: torch.Tensor) -> None:
        """The gradient w.r.t. one call's input (also for the hooks-only path)."""
        acc.observe_grad(grad)
        acc.observe_grad_units(self._per_sample(grad, acc.folded))

    def known_site(
        self, path: str, act: Activation, index: int, x: torch.Tensor
    ) -> tuple[SiteAccumulator, torch.Tensor] | None:
        """The module site ``path`` (its ``index``-th call this batch) and ``x`` with the
        samples in dim 0, when the site is known and ``x`` still fits it; else None."""
        acc = self._accs.get(SiteKey(path, act.op, True, index))
        if acc is None:
            return None
        view = self._per_sample(x, acc.folded)
        if view.ndim <= acc.unit_dim or view.shape[acc.unit_dim] != acc.units:
            return None
        return acc, view

    def on_backward(self, act: Activation, args: tuple[Any, ...], out: Any) -> None:
        acc = self._saved.get(act.op, {}).get(_key(args[act.backward_saved]))
        if acc is not None:
            self.observe_grad(acc, out[0] if isinstance(out, tuple) else out)

    def on_layout(self, kind: str, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.ndim >= 2:
            self._recent.pop(kind, None)
            self._recent[kind] = out.shape[1] if kind == "channel" else out.shape[-1]

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

    def _site(
        self, act: Activation, inplace: bool, x: torch.Tensor
    ) -> tuple[SiteAccumulator, torch.Tensor, SiteKey]:
        """The site of this call and ``x`` viewed with the samples in dim 0."""
        call = self.resolver.resolve(act.op)
        group = (call.path, act.op, call.module_site)
        index = self._counts.get(group, 0) + 1
        self._counts[group] = index
        key = SiteKey(call.path, act.op, call.module_site, index)
        acc = self._accs.get(key) or self._new_site(key, act, inplace, x)
        view = self._per_sample(x, acc.folded)
        if view.ndim <= acc.unit_dim or view.shape[acc.unit_dim] != acc.units:
            raise UsageError(
                f"site {key.path or '<root>'}:{act.op} changed shape from {acc.units} units to "
                f"{tuple(x.shape)} between batches; pass {param('unit_dim')} to pick the unit "
                "axis",
                param="unit_dim",
            )
        self.last_site = call.path
        return acc, view, key

    def _new_site(
        self, key: SiteKey, act: Activation, inplace: bool, x: torch.Tensor
    ) -> SiteAccumulator:
        """Pick the unit dim on the tensor as the model made it, then shift it past the sample
        dim when tokens were flattened into the batch."""
        shape = tuple(x.shape) if x.ndim > 1 else (x.shape[0], 1)
        if self.unit_dim is None:
            unit_dim = default_unit_dim(shape, list(reversed(self._recent.items())))
        else:
            unit_dim = self._forced_unit_dim(key, len(shape))
        units = shape[unit_dim]
        folded = self._folds(x)
        with torch.inference_mode(False):  # normal tensors, updatable after the scan too
            acc = SiteAccumulator(units, unit_dim + folded, x.device, relu_like=act.relu_family)
            acc.sample_rows(site_rng(self.seed, len(self._accs), _rank()), SAMPLE_ROWS)
        acc.folded = folded
        self._accs[key] = acc
        self._info[key] = SiteInfo(self._kind(key, inplace, act), act, unit_dim)
        return acc

    def _forced_unit_dim(self, key: SiteKey, ndim: int) -> int:
        assert self.unit_dim is not None
        try:
            unit_dim = normalize_dim(self.unit_dim, ndim)
        except ValueError as exc:
            where = f"site {key.path!r}" if key.path else "the top level"
            raise UsageError(
                f"{param('unit_dim')} {self.unit_dim}: {exc} at {where}", param="unit_dim"
            ) from None
        if unit_dim == 0:
            raise UsageError(
                f"{param('unit_dim')} 0 is the sample (batch) dim; pick another", param="unit_dim"
            )
        return unit_dim

    def _kind(self, key: SiteKey, inplace: bool, act: Activation) -> str:
        if not act.relu_family:
            return act.name
        if self.resolver.runtime != "eager":
            return self.resolver.runtime
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

    def sites(self) -> dict[SiteKey, SiteInfo]:
        """The sites seen so far and how they were called."""
        return dict(self._info)

    def checkpoint(self) -> tuple[Callable[[], None], Callable[[], None]]:
        """(restore, keep) of every site's statistics (see ``SiteAccumulator.checkpoint``)."""
        pairs = [a.checkpoint() for a in self._accs.values()]

        def restore() -> None:
            for undo, _ in pairs:
                undo()

        def keep() -> None:
            for _, done in pairs:
                done()

        return restore, keep

    def results(self) -> list[SiteRecord]:
        """Sites in first-execution order with their host-side totals."""
        unknown = SiteTopology.unknown("the topology pass did not see this site")
        return [
            SiteRecord(k, self._info[k], a.finalize(), self._topology.get(k, unknown))
            for k, a in self._accs.items()
        ]


def _rank() -> int:
    """This process's rank in an initialised ``torch.distributed`` group (else 0), so ranks
    sample their rows independently."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _Mode(TorchDispatchMode):
    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder

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
        rec = self.recorder
        fwd = FORWARD_OPS.get(func)
        if fwd is not None:
            return rec.on_activation(func, fwd[0], fwd[1], args, kwargs, fwd[2])
        act = BACKWARD_OPS.get(func)
        if act is not None:
            out = func(*args, **kwargs)
            rec.on_backward(act, args, out)
            return out
        layout = _LAYOUT.get(func)
        if layout is None and rec.topology is None:
            if rec.track_ops:
                rec.ops_seen.add(getattr(func, "_opname", ""))
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        if layout is not None:
            rec.on_layout(layout, out)
        if rec.topology is not None:
            rec.ops_seen.add(getattr(func, "_opname", ""))
            rec.topology.on_op(func, args, out)
        return out
