"""Per-unit reductions done inside the capture, and their mergeable host-side totals.

A site's activations are reduced inside the capture hook to a handful of per-unit vectors
(O(units) memory, never O(samples x units)) that stay on the activation's device until the
scan ends. Partial scans merge exactly: counts add, maxima take the max, so a scan can be
split over batches, processes or machines and combined.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from relu_doctor.scanner.reservoir import Reservoir, merge_samples


def other_dims(ndim: int, keep: tuple[int, ...]) -> tuple[int, ...]:
    """The dims of an ``ndim`` tensor that are not in ``keep`` (keep must be non-negative)."""
    return tuple(d for d in range(ndim) if d not in keep)


def normalize_dim(dim: int, ndim: int) -> int:
    """Map a possibly negative dim into ``range(ndim)``; ValueError when out of range."""
    if not -ndim <= dim < ndim:
        raise ValueError(f"unit dim {dim} is out of range for a {ndim}-d activation")
    return dim % ndim


class Scratch:
    """Reusable buffers, one per (device, dtype), grown to the largest activation seen: the
    elementwise temporaries of the reductions never allocate after the first batch."""

    def __init__(self) -> None:
        self._bufs: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._views: dict[tuple[torch.device, torch.dtype, torch.Size], torch.Tensor] = {}

    def like(self, t: torch.Tensor) -> torch.Tensor:
        view = self._views.get((t.device, t.dtype, t.shape))
        if view is not None:
            return view
        key = (t.device, t.dtype)
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < t.numel():
            with torch.inference_mode(False):  # usable in and out of inference mode
                buf = torch.empty(t.numel(), dtype=t.dtype, device=t.device)
            self._bufs[key] = buf
            self._views.clear()  # views of the old buffer would keep it alive
        view = self._views[(*key, t.shape)] = buf[: t.numel()].view(t.shape)
        return view

    def clear(self) -> None:
        self._bufs.clear()
        self._views.clear()


class SiteAccumulator:
    """Running per-unit statistics of one site, kept on the activation's device.

    ``observe_pre`` must see the pre-activation before an in-place op overwrites it;
    ``observe_out`` sees the output. Neither keeps a reference to either tensor.

    Speed matters here (it runs inside every ReLU call): reductions go over the inner,
    contiguous dims first and then over the batch, and counts are float sums of 0/1
    tensors, which CPU kernels vectorise, instead of boolean reductions, which they do not.
    Counts are exact: float32 within one sample (< 2**24 positions), float64 over samples.
    """

    def __init__(self, units: int, unit_dim: int, device: torch.device, relu_like: bool) -> None:
        self.units = units
        self.unit_dim = unit_dim  # may be negative (from the end), as for torch dims
        self.relu_like = relu_like
        self.folded = False  # the capture reshaped (N*T, ...) activations to (N, T, ...)
        self._nan_safe = device.type != "cpu"
        self._fires_are_active = False  # 2-d ReLU sites: firing counts = active counts
        self.samples = 0
        self.calls = 0
        self.elements = 0  # elements per unit seen so far (samples x positions)
        self.grad_calls = 0
        self.fires = torch.zeros(units, dtype=torch.float64, device=device)
        self.max_pre = torch.full((units,), -torch.inf, dtype=torch.float32, device=device)
        self.abs_sum = torch.zeros(units, dtype=torch.float64, device=device)
        self.active = torch.zeros(units, dtype=torch.float64, device=device)
        self.max_out = torch.full((units,), -torch.inf, dtype=torch.float32, device=device)
        self.nonfinite = torch.zeros(units, dtype=torch.float64, device=device)  # NaN/Inf outputs
        self.grad_norm_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.grad_norm_sq_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.grad_abs_max = torch.zeros(units, dtype=torch.float32, device=device)
        self.reservoir: Reservoir | None = None  # set by ``sample_rows``

    def _inner(self, ndim: int) -> tuple[int, ...]:
        return other_dims(ndim, (0, self.unit_dim % ndim))

    def observe_pre(self, pre: torch.Tensor, eps: float) -> None:
        """Largest pre-activation per unit (the dead margin) and, unless the output can tell,
        per-sample firing."""
        if self.relu_like and eps == 0:  # firing comes from the output: one fused amax here
            dims = (0, *self._inner(pre.ndim))
            top = None if self._nan_safe else pre.amax(dim=dims)
            if top is None or not _finite(top):  # NaN or Inf: the largest finite value
                top = _finite_or_low(pre).amax(dim=dims)
            torch.maximum(self.max_pre, top, out=self.max_pre)
        else:
            if self._nan_safe:
                pre = _finite_or_low(pre)
            # (N, U): the largest value each sample gives each unit.
            m = pre if pre.ndim == 2 else pre.amax(dim=self._inner(pre.ndim))
            top = m.amax(dim=0)
            if not self._nan_safe and not _finite(top):
                pre = _finite_or_low(pre)
                m = pre if pre.ndim == 2 else pre.amax(dim=self._inner(pre.ndim))
                top = m.amax(dim=0)
            torch.maximum(self.max_pre, top, out=self.max_pre)
            # For every activation here, output > eps  <=>  pre-activation > eps (eps >= 0).
            self.fires += (m > eps).sum(dim=0)
        self.samples += pre.shape[0]
        self.calls += 1

    def observe_out(self, out: torch.Tensor, eps: float, scratch: Scratch | None = None) -> None:
        """Activation mass (dormant score) and active elements (sparsity); for ReLU at eps 0
        also per-sample firing, since a ReLU output is > 0 exactly where its input is."""
        scratch = scratch or Scratch()
        self.elements += out.numel() // self.units
        if not (self.relu_like and eps == 0):
            self._observe_out_general(out, eps, scratch)
            return
        f32 = torch.float32  # also for half outputs, whose sums and counts stop early
        if out.ndim == 2:  # each element is one (sample, unit): counts are the firing counts
            out, mass = self._finite_sum(out, (0,))
            pos = torch.sign(out, out=scratch.like(out))  # 0/1 per element (outputs are >= 0)
            active = pos.sum(dim=0, dtype=f32)
            self._fires_are_active = True
        else:
            inner = self._inner(out.ndim)
            out, mass = self._finite_sum(out, (0, *inner))
            pos = torch.sign(out, out=scratch.like(out))
            per_sample = pos.sum(dim=inner, dtype=f32)
            active = per_sample.sum(dim=0, dtype=torch.float64)  # totals can pass 2**24
            self.fires += torch.count_nonzero(per_sample, dim=0)
        self.abs_sum += mass
        self.active += active

    def _observe_out_general(self, out: torch.Tensor, eps: float, scratch: Scratch) -> None:
        """eps > 0 or a non-ReLU activation: |h| and (h > eps) need their own passes."""
        sums = None if self._nan_safe else self._general_sums(out, eps, scratch)
        if sums is None or not _finite(sums[0]):  # NaN or Inf: again on the finite elements
            low = _finite_or_low(out)  # for the largest finite output
            top = (low if low.ndim == 2 else low.amax(dim=self._inner(low.ndim))).amax(dim=0)
            mass, active, _ = self._general_sums(self._finite_only(out), eps, scratch)
            sums = mass, active, top
        mass, active, top = sums
        torch.maximum(self.max_out, top, out=self.max_out)
        self.abs_sum += mass
        self.active += active

    def _general_sums(
        self, out: torch.Tensor, eps: float, scratch: Scratch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-unit mass, active elements and largest output of one batch."""
        f32 = torch.float32
        mx = out if out.ndim == 2 else out.amax(dim=self._inner(out.ndim))
        mass = torch.abs(out, out=scratch.like(out)) if not self.relu_like else out
        pos = (out > eps).to(f32)
        if out.ndim > 2:
            inner = self._inner(out.ndim)
            mass, pos = mass.sum(dim=inner, dtype=f32), pos.sum(dim=inner, dtype=f32)
        f64 = torch.float64
        return mass.sum(dim=0, dtype=f64), pos.sum(dim=0, dtype=f64), mx.amax(dim=0)

    # -- NaN and Inf (docs/metrics.md), apart from the reductions above ---------------------
    # On the CPU a per-unit reduction tells cheaply whether a batch holds NaN or Inf; on an
    # accelerator that check would be a host sync per site, so there the exact path is
    # always taken.

    def _finite_sum(
        self, out: torch.Tensor, dims: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``out`` and its per-unit sum over ``dims``; for a batch holding NaN or Inf, both
        on the finite elements only (``_finite_only``)."""
        mass = None if self._nan_safe else out.sum(dim=dims, dtype=torch.float32)
        if mass is None or not _finite(mass):
            out = self._finite_only(out)
            mass = out.sum(dim=dims, dtype=torch.float32)
        return out, mass

    def _finite_only(self, out: torch.Tensor) -> torch.Tensor:
        """``out`` with NaN and Inf as 0, which never fires and adds no mass, after counting
        them per unit in ``nonfinite`` (so the element counts can leave them out)."""
        dims = (0, *self._inner(out.ndim))
        self.nonfinite += (~torch.isfinite(out)).sum(dim=dims, dtype=torch.float64)
        return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)

    def observe_grad(self, grad_input: torch.Tensor) -> None:
        """One batch's L2 norm of the loss gradient w.r.t. the site's input (and its square,
        for the spread of the norm across batches)."""
        norm = torch.linalg.vector_norm(grad_input, dtype=torch.float32)
        self.grad_norm_sum += norm
        self.grad_norm_sq_sum += norm.double().square()
        self.grad_calls += 1

    def observe_grad_units(self, grad_input: torch.Tensor) -> None:
        """Largest |gradient| per unit (samples in dim 0): 0 after every batch means the unit
        passed no gradient at all (a zero-grad unit)."""
        dims = (0, *self._inner(grad_input.ndim))
        peak = torch.linalg.vector_norm(grad_input, ord=math.inf, dim=dims, dtype=torch.float32)
        torch.maximum(self.grad_abs_max, peak, out=self.grad_abs_max)

    def sample_rows(self, rng: np.random.Generator, capacity: int) -> None:
        """Keep a bounded uniform sample of this site's rows (for the effective rank)."""
        device = self.fires.device
        self.reservoir = Reservoir(self.units, self.unit_dim, device, rng, capacity)

    def observe_rows(self, out: torch.Tensor) -> None:
        """Offer this batch's output rows (samples in dim 0) to the sample."""
        if self.reservoir is not None:
            self.reservoir.observe(out)

    #: The running state: counters and per-unit tensors (``checkpoint`` copies these).
    _COUNTS = ("samples", "calls", "elements", "grad_calls", "_fires_are_active")
    _TENSORS = (
        "fires",
        "max_pre",
        "abs_sum",
        "active",
        "max_out",
        "nonfinite",
        "grad_norm_sum",
        "grad_norm_sq_sum",
        "grad_abs_max",
    )

    def checkpoint(self) -> tuple[Callable[[], None], Callable[[], None]]:
        """Remember the state (O(units) copies; the row sample keeps a journal of what it
        replaces) and return (restore, keep): a batch measured by the hooks-only path that
        turns out not to match is undone and measured again; one that matches is kept."""
        counts = {name: getattr(self, name) for name in self._COUNTS}
        with torch.inference_mode(False):
            tensors = {name: getattr(self, name).clone() for name in self._TENSORS}
        if self.reservoir is not None:
            self.reservoir.begin_journal()

        def restore() -> None:
            for name, value in counts.items():
                setattr(self, name, value)
            for name, value in tensors.items():
                getattr(self, name).copy_(value)
            if self.reservoir is not None:
                self.reservoir.rollback()

        def keep() -> None:
            if self.reservoir is not None:
                self.reservoir.end_journal()

        return restore, keep

    def all_reduce(self, group: Any = None) -> None:
        """Combine this accumulator across ``torch.distributed`` ranks in place."""
        import torch.distributed as dist

        device = self.fires.device
        counts = torch.tensor(
            [self.samples, self.calls, self.elements, self.grad_calls], device=device
        )
        sums = (
            self.fires,
            self.abs_sum,
            self.active,
            self.nonfinite,
            self.grad_norm_sum,
            self.grad_norm_sq_sum,
        )
        for t in (counts, *sums):
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        for t in (self.max_pre, self.max_out, self.grad_abs_max):
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
        if self.reservoir is not None:
            self.reservoir.all_reduce(group)
        self.samples, self.calls, self.elements, self.grad_calls = (int(v) for v in counts.tolist())

    def finalize(self) -> UnitTotals:
        """Copy to host once, at the end of the scan."""
        rows, keys = self.reservoir.result() if self.reservoir is not None else (None, None)
        return UnitTotals(
            samples=self.samples,
            calls=self.calls,
            elements=self.elements,
            grad_calls=self.grad_calls,
            fires=_counts(self.active if self._fires_are_active else self.fires),
            max_pre=self.max_pre.double().cpu().numpy().copy(),
            abs_sum=self.abs_sum.cpu().numpy().copy(),
            active=_counts(self.active),
            max_out=None if self.relu_like else self.max_out.double().cpu().numpy().copy(),
            grad_norm_sum=float(self.grad_norm_sum),
            nonfinite=_counts(self.nonfinite),
            grad_norm_sq_sum=float(self.grad_norm_sq_sum),
            grad_abs_max=self.grad_abs_max.double().cpu().numpy().copy(),
            sample_rows=rows,
            sample_keys=keys,
        )


def _counts(t: torch.Tensor) -> np.ndarray:
    """Float-summed counts (exact: NaN and Inf never reach them) to int64."""
    return t.cpu().numpy().astype(np.int64)


def _finite(t: torch.Tensor) -> bool:
    """No NaN or Inf in ``t`` (a sum is the cheapest test: any of them spoils it; in float64,
    so that large half-precision values do not overflow it)."""
    return math.isfinite(float(t.sum(dtype=torch.float64)))


def _finite_or_low(t: torch.Tensor) -> torch.Tensor:
    """``t`` with NaN and +Inf as -Inf: its maximum is the largest finite value."""
    return torch.nan_to_num(t, nan=-torch.inf, posinf=-torch.inf)


@dataclass(frozen=True, eq=False)
class UnitTotals:
    """Host copy of a site's raw per-unit sums and maxima; ``merge`` combines partial scans
    (batches, processes, machines) exactly."""

    samples: int
    calls: int
    elements: int
    grad_calls: int
    fires: np.ndarray
    max_pre: np.ndarray
    abs_sum: np.ndarray
    active: np.ndarray
    max_out: np.ndarray | None
    grad_norm_sum: float
    nonfinite: np.ndarray  # per unit: NaN/Inf output elements, left out of all the others
    grad_norm_sq_sum: float = 0.0
    grad_abs_max: np.ndarray | None = None  # largest |input gradient| per unit
    sample_rows: np.ndarray | None = field(default=None, repr=False)  # (rows, units) sample
    sample_keys: np.ndarray | None = field(default=None, repr=False)  # their sampling keys

    @property
    def units(self) -> int:
        return int(self.fires.shape[0])

    def merge(self, other: UnitTotals) -> UnitTotals:
        """Statistics of both scans together (the scan of A then B)."""
        if other.units != self.units:
            raise ValueError(f"cannot merge sites with {self.units} and {other.units} units")
        max_out = None
        if self.max_out is not None and other.max_out is not None:
            max_out = np.maximum(self.max_out, other.max_out)
        grad_abs_max = None
        if self.grad_abs_max is not None and other.grad_abs_max is not None:
            grad_abs_max = np.maximum(self.grad_abs_max, other.grad_abs_max)
        sample = merge_samples(self._sample(), other._sample())
        return UnitTotals(
            samples=self.samples + other.samples,
            calls=self.calls + other.calls,
            elements=self.elements + other.elements,
            grad_calls=self.grad_calls + other.grad_calls,
            fires=self.fires + other.fires,
            max_pre=np.maximum(self.max_pre, other.max_pre),
            abs_sum=self.abs_sum + other.abs_sum,
            active=self.active + other.active,
            max_out=max_out,
            grad_norm_sum=self.grad_norm_sum + other.grad_norm_sum,
            nonfinite=self.nonfinite + other.nonfinite,
            grad_norm_sq_sum=self.grad_norm_sq_sum + other.grad_norm_sq_sum,
            grad_abs_max=grad_abs_max,
            sample_rows=None if sample is None else sample[0],
            sample_keys=None if sample is None else sample[1],
        )

    def _sample(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.sample_rows is None or self.sample_keys is None:
            return None
        return self.sample_rows, self.sample_keys
