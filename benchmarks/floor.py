"""The floor of the method: the scanner's per-unit reductions, hand-written, no machinery.

``floor_forward`` / ``floor_grad`` run the same batches as the scan and reduce every ReLU
call with the same torch ops on the same dtypes as relu-doctor's per-site accumulator
(``SiteAccumulator.observe_pre`` / ``observe_out`` / ``observe_grad``, ReLU at eps 0):

- pre-activation: ``amax`` over the sample and position dims into a float32 running max
  (the dead margin);
- output: ``sign`` into a reused scratch buffer (0/1, outputs are >= 0); ``sum`` of the
  output over samples and positions (activation mass, float32, added into float64); ``sum``
  of the signs over the positions (active elements per sample and unit), then over the
  samples in float64 (active counts) and ``count_nonzero`` over the samples (firing
  counts); for ``(N, F)`` sites the two are one sum. On the CPU one ``float(mass.sum())``
  per call checks for NaN (NaN elements must not count as firing); on a GPU the signs
  are NaN-cleaned (``nan_to_num_``) before they are summed, with no host sync;
- the row sample of the effective rank (docs/metrics.md): every output is offered to a
  bottom-k sample of 1024 rows per site, relu-doctor's own ``Reservoir`` (the reduction is
  the sample; writing it by hand again would measure a different sample);
- gradients: the L2 norm (float32) of the loss gradient w.r.t. the site's input, added
  into a float64 sum with its square (the spread across batches), the largest
  ``|gradient|`` per unit (zero-grad units), and per batch one fused ``_foreach_norm`` over
  the parameter gradients (the scan's per-parameter norms).

What reaches the ReLUs, and nothing else:

- ``nn.ReLU`` modules: plain ``register_forward_pre_hook`` (pre-activation, before an
  in-place ReLU overwrites it) and ``register_forward_hook`` (output); a non-in-place
  ReLU needs only the forward hook (its input is still intact). A module called k times
  per forward is k sites, as in the scan.
- ``F.relu`` calls (the ``fmlp`` workload): ``torch.nn.functional.relu`` is replaced by a
  wrapper for the duration of the loop. The model's ``F.relu(...)`` looks the attribute up
  at call time, so this costs one Python call per ReLU and sees no other op. (A model that
  calls ``torch.relu`` or ``Tensor.relu`` would need those patched too.)
- the gradient w.r.t. the site input: ``Tensor.register_hook`` on the ReLU's input, placed
  before the ReLU runs (for an in-place ReLU a hook placed before the in-place op receives
  the gradient w.r.t. the value before it, i.e. the ReLU's input). This is the ReLU's
  ``threshold_backward`` output only because in these workloads the ReLU is the sole
  consumer of its input; relu-doctor reads ``threshold_backward`` itself, which holds for
  any model.
- units: dim 1 of the activation as the model made it (every workload here); an ``(N*T,
  F)`` activation of a batch of N samples is viewed as ``(N, T, F)`` (units at dim 2), as
  the scan folds tokens flattened into the batch.

No dispatch mode, no module-stack tracking, no site naming, no model guard, no report:
what is left is the price of the reductions themselves. ``compare`` checks the floor's
per-unit numbers against a ``relu_doctor.scan`` report of the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from relu_doctor.scanner.accumulate import Scratch  # one reused buffer per dtype, as the scan
from relu_doctor.scanner.reservoir import SAMPLE_ROWS, Reservoir, site_rng


@dataclass
class SiteTotals:
    """Host copy of one site's per-unit numbers (what ``compare`` checks)."""

    samples: int
    calls: int
    elements: int
    grad_calls: int
    fires: np.ndarray
    max_pre: np.ndarray
    abs_sum: np.ndarray
    active: np.ndarray
    grad_norm_sum: float
    grad_norm_sq_sum: float
    grad_abs_max: np.ndarray
    sample_rows: np.ndarray
    sample_keys: np.ndarray

    @property
    def units(self) -> int:
        return int(self.fires.shape[0])


class Site:
    """Running per-unit sums of one ReLU call site, on the activation's device."""

    def __init__(
        self, units: int, unit_dim: int, device: torch.device, folded: bool, index: int
    ) -> None:
        self.units, self.unit_dim, self.folded = units, unit_dim, folded
        self.nan_safe = device.type != "cpu"  # on a GPU: no host sync per call
        self.two_d = False  # (N, F): the active counts are the firing counts
        self.samples = self.calls = self.elements = self.grad_calls = 0
        with torch.inference_mode(False):  # normal tensors, updated in and out of the mode
            self.fires = torch.zeros(units, dtype=torch.float64, device=device)
            self.max_pre = torch.full((units,), -math.inf, dtype=torch.float32, device=device)
            self.abs_sum = torch.zeros(units, dtype=torch.float64, device=device)
            self.active = torch.zeros(units, dtype=torch.float64, device=device)
            self.grad_norm_sum = torch.zeros((), dtype=torch.float64, device=device)
            self.grad_norm_sq_sum = torch.zeros((), dtype=torch.float64, device=device)
            self.grad_abs_max = torch.zeros(units, dtype=torch.float32, device=device)
        self.sample = Reservoir(units, unit_dim, device, site_rng(0, index), SAMPLE_ROWS)

    def inner(self, ndim: int) -> tuple[int, ...]:
        return tuple(d for d in range(ndim) if d not in (0, self.unit_dim))

    def pre(self, x: torch.Tensor) -> None:
        torch.maximum(self.max_pre, x.amax(dim=(0, *self.inner(x.ndim))), out=self.max_pre)
        self.samples += x.shape[0]
        self.calls += 1

    def out(self, out: torch.Tensor, scratch: Scratch) -> None:
        self.elements += out.numel() // self.units
        pos = torch.sign(out, out=scratch.like(out))
        if self.nan_safe:
            pos.nan_to_num_(0.0)
        if out.ndim == 2:
            mass, active = out.sum(dim=0), pos.sum(dim=0)
            if not self.nan_safe and math.isnan(float(mass.sum())):
                active = pos.nan_to_num_(0.0).sum(dim=0)
            self.two_d = True
        else:
            inner = self.inner(out.ndim)
            mass, per_sample = out.sum(dim=(0, *inner)), pos.sum(dim=inner)
            if not self.nan_safe and math.isnan(float(mass.sum())):
                per_sample = pos.nan_to_num_(0.0).sum(dim=inner)
            active = per_sample.sum(dim=0, dtype=torch.float64)
            self.fires += torch.count_nonzero(per_sample, dim=0)
        self.abs_sum += mass
        self.active += active
        self.sample.observe(out)

    def grad(self, g: torch.Tensor) -> None:
        norm = torch.linalg.vector_norm(g, dtype=torch.float32)
        self.grad_norm_sum += norm
        self.grad_norm_sq_sum += norm.double().square()
        dims = (0,) if self.folded else (0, *self.inner(g.ndim))  # folded: (N*T, F) as made
        peak = torch.linalg.vector_norm(g, ord=math.inf, dim=dims, dtype=torch.float32)
        torch.maximum(self.grad_abs_max, peak, out=self.grad_abs_max)
        self.grad_calls += 1

    def totals(self) -> SiteTotals:
        def counts(t: torch.Tensor) -> np.ndarray:
            return np.nan_to_num(t.cpu().numpy(), nan=0.0, posinf=0.0).astype(np.int64)

        return SiteTotals(
            samples=self.samples,
            calls=self.calls,
            elements=self.elements,
            grad_calls=self.grad_calls,
            fires=counts(self.active if self.two_d else self.fires),
            max_pre=self.max_pre.double().cpu().numpy(),
            abs_sum=self.abs_sum.cpu().numpy(),
            active=counts(self.active),
            grad_norm_sum=float(self.grad_norm_sum),
            grad_norm_sq_sum=float(self.grad_norm_sq_sum),
            grad_abs_max=self.grad_abs_max.double().cpu().numpy(),
            sample_rows=self.sample.result()[0],
            sample_keys=self.sample.result()[1],
        )


@dataclass
class FloorResult:
    sites: list[SiteTotals]
    param_norms: list[float | None]  # mean gradient norm per parameter (grad runs)


class Floor:
    """The sites of one run, keyed by (owner, call index within the forward)."""

    def __init__(self) -> None:
        self.sites: dict[tuple[int, int], Site] = {}
        self._calls: dict[int, int] = {}
        self._rows = 0
        self._open: Site | None = None  # site between an in-place ReLU's pre and post hook
        self.scratch = Scratch()

    def batch(self, rows: int) -> None:
        self._rows = rows
        self._calls.clear()

    def site(self, owner: int, x: torch.Tensor) -> tuple[Site, torch.Tensor]:
        """This call's site and ``x`` with the samples in dim 0."""
        index = self._calls.get(owner, 0) + 1
        self._calls[owner] = index
        site = self.sites.get((owner, index))
        if site is None:
            n, rows = x.shape[0], self._rows
            folded = x.ndim == 2 and n != rows and n % rows == 0
            site = Site(x.shape[1], 1 + folded, x.device, folded, len(self.sites))
            self.sites[(owner, index)] = site
        return site, self.view(site, x)

    def view(self, site: Site, x: torch.Tensor) -> torch.Tensor:
        x = x.detach()  # no autograd for the reductions (the scan runs below autograd)
        if site.folded:
            return x.view(self._rows, x.shape[0] // self._rows, x.shape[1])
        return x

    def enter(self, site: Site, x: torch.Tensor, view: torch.Tensor) -> None:
        site.pre(view)
        if x.requires_grad and torch.is_grad_enabled():
            x.register_hook(site.grad)

    # -- the two mechanisms --

    def pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        site, view = self.site(id(module), x)
        self.enter(site, x, view)
        self._open = site

    def post_hook_inplace(self, module: nn.Module, args: Any, out: torch.Tensor) -> None:
        site = self._open
        assert site is not None
        site.out(self.view(site, out), self.scratch)

    def hook(self, module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        x = args[0]
        site, view = self.site(id(module), x)
        self.enter(site, x, view)
        site.out(self.view(site, out), self.scratch)

    def relu(self, original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def relu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
            site, view = self.site(0, input)
            self.enter(site, input, view)
            out = original(input, inplace=inplace)
            site.out(self.view(site, out), self.scratch)
            return out

        return relu

    @contextmanager
    def installed(self, model: nn.Module, functional: bool) -> Iterator[None]:
        handles = []
        original = F.relu
        try:
            if functional:
                F.relu = self.relu(original)
            for m in model.modules():
                if type(m) is nn.ReLU:
                    if m.inplace:
                        handles.append(m.register_forward_pre_hook(self.pre_hook))
                        handles.append(m.register_forward_hook(self.post_hook_inplace))
                    else:
                        handles.append(m.register_forward_hook(self.hook))
            yield
        finally:
            F.relu = original
            for h in handles:
                h.remove()
            self._open = None

    def result(self, param_norms: list[float | None]) -> FloorResult:
        return FloorResult([s.totals() for s in self.sites.values()], param_norms)


def floor_forward(model: nn.Module, batches: list[torch.Tensor], functional: bool) -> FloorResult:
    """The forward-only floor: hooks + reductions under ``inference_mode``."""
    floor = Floor()
    with floor.installed(model, functional), torch.inference_mode():
        for x in batches:
            floor.batch(x.shape[0])
            model(x)
    return floor.result([])


def floor_grad(model: nn.Module, batches: list[torch.Tensor], functional: bool) -> FloorResult:
    """The gradient floor: the plain forward + ``autograd.grad`` of the surrogate loss, plus
    the hooks, the site-gradient norms and the fused per-parameter norms."""
    floor = Floor()
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    sums = torch.zeros(len(params), dtype=torch.float64, device=device)
    with floor.installed(model, functional):
        for x in batches:
            floor.batch(x.shape[0])
            out = model(x)
            loss = 0.5 * out.float().pow(2).sum() / out.shape[0]
            grads = torch.autograd.grad(loss, params)
            sums += torch.stack(torch._foreach_norm(grads)).to(torch.float64)
            del grads
    norms: list[float | None] = [s / len(batches) for s in sums.cpu().tolist()]
    return floor.result(norms)


# --- the check -----------------------------------------------------------------------------


def compare(floor: FloorResult, report: Any) -> tuple[bool, str]:
    """(same?, note): the floor's per-unit numbers against a ``relu_doctor.scan`` report of
    the same batches. Counts and maxima must be equal; sums and norms equal to 1e-5."""
    sites = [s for s in report.sites if s.executed]
    if len(sites) != len(floor.sites):
        return False, f"CHECK FAILED: scan has {len(sites)} sites, floor {len(floor.sites)}"
    dead = 0
    for i, (s, f) in enumerate(zip(sites, floor.sites, strict=True)):
        u = s.totals
        problems = []
        if u is None or u.units != f.units:
            problems.append("units")
        else:
            for name in ("samples", "calls", "elements", "grad_calls"):
                if getattr(u, name) != getattr(f, name):
                    problems.append(name)
            for name in ("fires", "active", "max_pre"):
                if not np.array_equal(getattr(u, name), getattr(f, name), equal_nan=True):
                    problems.append(name)
            if not np.allclose(u.abs_sum, f.abs_sum, rtol=1e-5, atol=0, equal_nan=True):
                problems.append("abs_sum")
            if not math.isclose(u.grad_norm_sum, f.grad_norm_sum, rel_tol=1e-5, abs_tol=1e-12):
                problems.append("grad_norm")
            if f.grad_calls and not math.isclose(
                u.grad_norm_sq_sum, f.grad_norm_sq_sum, rel_tol=1e-5, abs_tol=1e-12
            ):
                problems.append("grad_norm_sq")
            if f.grad_calls and not np.allclose(u.grad_abs_max, f.grad_abs_max, rtol=1e-6):
                problems.append("grad_abs_max")
            if not (
                np.array_equal(u.sample_keys, f.sample_keys)
                and np.array_equal(u.sample_rows, f.sample_rows)
            ):
                problems.append("row sample")
            if s.dead != int((f.fires == 0).sum()):
                problems.append("dead")
        if problems:
            return False, f"CHECK FAILED at site {i} ({s.site}): {', '.join(problems)} differ"
        dead += s.dead
    for p, norm in zip(getattr(report, "params", ()), floor.param_norms, strict=False):
        if p.grad_norm is None or norm is None or not math.isclose(p.grad_norm, norm, rel_tol=1e-5):
            return False, f"CHECK FAILED: parameter {p.name} grad norm differs"
    return True, f"check ok: {len(sites)} sites, {dead} dead units"
