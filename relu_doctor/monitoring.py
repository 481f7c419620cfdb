"""``relu_doctor.monitor``: dead units measured inside a training loop, on the batches the
model already sees, without changing the training (README "Monitoring training").

Each recorded step is reduced by the scan's own capture and per-unit reductions, and its
rows come from the same column registry, so a step's numbers are what ``scan`` would report
for that batch in that mode. Memory stays O(units): a window's totals are turned into a few
numbers per site when it closes; only the last window's totals are kept for ``report()``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from relu_doctor.analyze.assemble import build_report
from relu_doctor.analyze.metrics import Thresholds
from relu_doctor.analyze.report import ModelReport, SiteReport
from relu_doctor.errors import ReluDoctorError, UsageError, param
from relu_doctor.scanner.batches import iter_tensors
from relu_doctor.scanner.monitor import Watcher
from relu_doctor.scanner.session import RawScan
from relu_doctor.scanner.sites import site_name

if TYPE_CHECKING:
    import pandas as pd

#: The columns of ``Monitor.history()`` (``grad_norm`` only with ``grad=True``).
HISTORY_COLUMNS = (
    "step",
    "site",
    "units",
    "samples",
    "dead",
    "dead_fraction",
    "near_dead",
    "dormant",
    "sparsity",
    "max_activation",
)

#: Called with (step, report of that step) each time a recorded step is complete.
Callback = Callable[[int, ModelReport], None]


class Monitor:
    """Context manager returned by ``monitor()``; see there."""

    def __init__(
        self,
        model: Any,
        *,
        every: int = 100,
        grad: bool = False,
        eps: float = 0.0,
        near_dead: float = 0.01,
        tau: float = 0.025,
        unit_dim: int | None = None,
        callback: Callback | None = None,
        name: str | None = None,
        distributed: bool | None = None,
        steps: str = "forward",
    ) -> None:
        if steps not in ("forward", "manual"):
            raise UsageError(
                f"{param('steps')} must be 'forward' or 'manual', got {steps!r}", param="steps"
            )
        self.auto = steps == "forward"
        self.thresholds = Thresholds(eps=eps, near_dead=near_dead, tau=tau)
        self.grad = grad
        self.callback = callback
        self._watcher = Watcher(
            model,
            every=every,
            grad=grad,
            eps=eps,
            unit_dim=unit_dim,
            on_window=self._on_window,
            distributed=distributed,
        )
        module = self._watcher.module
        self.name = name or str(getattr(module, "original_name", type(module).__name__))
        self._rows: list[tuple[Any, ...]] = []
        self._last: tuple[int, RawScan, str] | None = None
        self._error: ReluDoctorError | None = None

    # -- the context manager --

    def __enter__(self) -> Monitor:
        self._watcher.install(hooks=self.auto)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Leaving on an error: close without collectives (other ranks may be gone).
        self._watcher.remove(distributed=None if exc_type is None else False)

    # -- steps marked by hand (steps="manual") --

    def begin_step(self, batch: Any = None) -> None:
        """A training step starts (call it before the step's forward): with
        ``steps="manual"``, for loops whose forward is not one call of the model (a training
        framework's step, several submodules called one by one). ``batch``: the step's
        inputs, for the sample count."""
        self._check_manual()
        self._watcher.begin_step(next((t.shape[0] for t in iter_tensors(batch) if t.ndim), 0))

    def end_forward(self) -> None:
        """The step's forward is over (call it before its backward; harmless twice)."""
        self._check_manual()
        self._watcher.end_forward()

    def _check_manual(self) -> None:
        if self.auto:
            raise UsageError(
                "this monitor counts the model's forwards; pass steps='manual' to mark steps "
                "with begin_step() / end_forward()",
                param="steps",
            )
        if not self._watcher.watching:
            raise UsageError("begin_step() and end_forward() work inside the monitor's with block")

    # -- what it measured --

    @property
    def steps(self) -> int:
        """Forwards counted so far (under grad mode)."""
        return self._watcher.steps

    @property
    def warnings(self) -> list[str]:
        return list(dict.fromkeys(self._watcher.warnings))

    def history(self) -> pd.DataFrame:
        """One row per recorded step and site: ``HISTORY_COLUMNS`` (+ ``grad_norm``)."""
        import pandas as pd

        self._watcher.close_local()
        self._raise_if_nothing()
        columns = [*HISTORY_COLUMNS, *(("grad_norm",) if self.grad else ())]
        return pd.DataFrame(self._rows, columns=columns)

    def report(self) -> ModelReport:
        """The full ``ModelReport`` of the last recorded step (suggestions included)."""
        self._watcher.close_local()
        self._raise_if_nothing()
        if self._last is None:
            raise UsageError(
                f"no step recorded yet: the first forward under grad mode is step 0 "
                f"(steps counted so far: {self.steps})"
            )
        step, raw, mode = self._last
        return self._report(step, raw, mode)

    # -- windows --

    def _report(self, step: int, raw: RawScan, mode: str) -> ModelReport:
        return build_report(
            f"{self.name} (step {step})",
            raw,
            self.thresholds,
            grad=self.grad,
            mode=mode,
            device=str(self._watcher.session.device),
            runtime="eager",
        )

    def _on_window(self, step: int, raw: RawScan, mode: str) -> None:
        if not raw.sites:  # no activation ran: the error a scan gives, raised when read
            if self._error is None:
                self._error = self._no_relu(step, raw, mode)
            return
        self._last = (step, raw, mode)
        repeats = Counter(r.key.group for r in raw.sites)
        for r in raw.sites:
            site = SiteReport.from_totals(
                r.totals,
                r.info.activation,
                model=self.name,
                site=site_name(r.key, repeats[r.key.group] > 1),
                kind=r.info.kind,
                thresholds=self.thresholds,
                unit_dim=r.info.unit_dim,
            )
            self._rows.append(_row(step, site, self.grad))
        if self.callback is not None:
            self.callback(step, self._report(step, raw, mode))

    def _no_relu(self, step: int, raw: RawScan, mode: str) -> ReluDoctorError:
        try:
            self._report(step, raw, mode)
        except ReluDoctorError as exc:
            return exc
        return UsageError("no ReLU site ran in the recorded steps")

    def _raise_if_nothing(self) -> None:
        if self._error is not None and self._last is None:
            raise self._error


def _row(step: int, site: SiteReport, grad: bool) -> tuple[Any, ...]:
    values = site.values  # only the columns the history keeps are computed
    row = (step, site.site, *(values[c] for c in HISTORY_COLUMNS[2:]))
    return (*row, values["grad_norm"]) if grad else row


def monitor(
    model: Any,
    every: int = 100,
    grad: bool = False,
    *,
    eps: float = 0.0,
    near_dead: float = 0.01,
    tau: float = 0.025,
    unit_dim: int | None = None,
    callback: Callback | None = None,
    name: str | None = None,
    distributed: bool | None = None,
    steps: str = "forward",
) -> Monitor:
    """Watch ``model``'s ReLU units inside its training loop::

        with relu_doctor.monitor(model, every=100) as mon:
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                ...
        mon.history()   # one row per recorded step and site

    Every ``every``-th forward under grad mode (steps 0, every, 2*every, ...) is measured on
    the batch the model is given; with ``grad=True`` also the gradient w.r.t. each site's
    input, from the training's own backward. The training is not changed: no extra forward
    or backward, the same autograd graph, RNG, modes and optimizer state, bit-identical
    weights. ``callback(step, report)`` runs for each recorded step once its backward is
    done (at the next forward). A ``DistributedDataParallel`` model is watched inside its
    wrapper and, with ``torch.distributed`` initialised, statistics are summed over ranks.
    A ``torch.compile``d model is refused (its kernels hide the ReLUs). ``steps="manual"``:
    no forward is counted; mark each step with ``begin_step()`` / ``end_forward()`` instead
    (the Lightning callback does). A monitor can be entered again; it goes on counting.
    """
    return Monitor(
        model,
        steps=steps,
        every=every,
        grad=grad,
        eps=eps,
        near_dead=near_dead,
        tau=tau,
        unit_dim=unit_dim,
        callback=callback,
        name=name,
        distributed=distributed,
    )
