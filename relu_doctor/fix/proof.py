"""The evidence that a repair helped and broke nothing: the repaired model re-scanned on the
very same inputs, site by site against the scan before, and both models' outputs compared.

Per repaired site: dead and near-dead units, and units that pass gradient — the
activation's derivative is non-zero for the unit on at least one scanned input, so a
gradient arriving at its output reaches its incoming weights (the registry's
``passes_grad``; for ReLU that is "fires"). Per model: the dead fraction, the largest
change of any output element on the scanned data, and the loss before and after when the
data has targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from relu_doctor import __version__
from relu_doctor.analyze.report import ModelReport, SiteReport, clean
from relu_doctor.device import resolve_device
from relu_doctor.fix.changes import Change, Outcome
from relu_doctor.scanner.batches import Batch, iter_tensors
from relu_doctor.scanner.gradients import LOSSES, loss_name, loss_of
from relu_doctor.scanner.guard import preserved
from relu_doctor.scanner.runner import Target

#: Largest output change a re-initialisation may make, relative to the largest output.
TOLERANCE = 1e-5


@dataclass(frozen=True)
class SiteProof:
    """One repaired site before and after (``None`` after: the site is gone)."""

    site: str
    after: str
    action: str
    units: int
    dead: tuple[int, int | None]
    near_dead: tuple[int, int | None]
    passing: tuple[int, int | None]
    redrawn: int = 0  # units re-initialised (ReDo)
    firing: int = 0  # of those, units that fire on the scanned data
    draws: int = 0  # most draws any unit of the site needed


@dataclass(frozen=True)
class Comparison:
    """Both models on the same batches: the largest output change, the largest output
    (the scale it is relative to), and the mean loss of each where there are targets."""

    max_change: float
    scale: float
    loss: str | None = None
    loss_before: float | None = None
    loss_after: float | None = None

    @property
    def relative(self) -> float:
        return self.max_change / self.scale if self.scale > 0 else float(self.max_change > 0)


@dataclass(frozen=True)
class FixReport:
    """What ``repair`` did and the evidence; ``changed`` False: nothing was repaired and
    ``why`` says why (nothing to fix)."""

    model: str
    to: str
    options: dict[str, float]
    why: str
    before: ModelReport
    after: ModelReport | None = None
    sites: tuple[SiteProof, ...] = ()
    refused: tuple[tuple[str, str], ...] = ()
    renamed: dict[str, str] = field(default_factory=dict)
    comparison: Comparison | None = None
    notes: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.sites)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the repair, its sites, refusals, the comparison, and both scans."""
        cmp = self.comparison
        return clean(
            {
                "model": self.model,
                "to": self.to,
                "options": dict(self.options),
                "changed": self.changed,
                "why": self.why,
                "sites": [
                    {
                        "site": s.site,
                        "after": s.after,
                        "action": s.action,
                        "units": s.units,
                        "dead": list(s.dead),
                        "near_dead": list(s.near_dead),
                        "passing_grad": list(s.passing),
                        "redrawn": s.redrawn,
                        "firing": s.firing,
                        "draws": s.draws,
                    }
                    for s in self.sites
                ],
                "refused": [{"site": s, "reason": r} for s, r in self.refused],
                "renamed": dict(self.renamed),
                "dead_fraction": [
                    self.before.dead_fraction,
                    None if self.after is None else self.after.dead_fraction,
                ],
                "max_output_change": None if cmp is None else cmp.max_change,
                "max_output": None if cmp is None else cmp.scale,
                "loss": None if cmp is None else cmp.loss,
                "loss_before": None if cmp is None else cmp.loss_before,
                "loss_after": None if cmp is None else cmp.loss_after,
                "notes": list(self.notes),
            }
        )


def document(report: FixReport) -> dict[str, Any]:
    """The JSON document: tool, version, the repair, and the scans before and after."""
    models = [report.before] + ([report.after] if report.after is not None else [])
    return {
        "tool": "relu-doctor",
        "version": __version__,
        "fix": report.to_dict(),
        "models": [m.to_dict() for m in models],
    }


# --- per-site evidence ---------------------------------------------------------------------


def passing(site: SiteReport | None, options: dict[str, float]) -> int | None:
    """Units of ``site`` whose activation lets a gradient through on some input."""
    if site is None or site.totals is None or site.act.passes_grad is None:
        return None
    return int(site.act.passes_grad(site.totals.max_pre, options).sum())


def _find(report: ModelReport, name: str) -> SiteReport | None:
    return next((s for s in report.sites if s.site == name and s.executed), None)


def site_proofs(
    before: ModelReport,
    after: ModelReport,
    outcome: Outcome,
    options: dict[str, float],
    draws: dict[str, int],
) -> tuple[SiteProof, ...]:
    """One ``SiteProof`` per change, in scan order."""
    order = {s.site: i for i, s in enumerate(before.sites)}
    proofs = []
    for change in sorted(outcome.changes, key=lambda c: order.get(c.site, 0)):
        b, a = before.site(change.site), _find(after, change.after)
        fired = _fired(a, change)
        proofs.append(
            SiteProof(
                site=change.site,
                after=change.after,
                action=change.action,
                units=b.units,
                dead=(b.dead, None if a is None else a.dead),
                near_dead=(b.near_dead, None if a is None else a.near_dead),
                passing=(passing(b, {}) or 0, passing(a, options)),
                redrawn=len(change.units),
                firing=fired,
                draws=draws.get(change.site, 0),
            )
        )
    return tuple(proofs)


def _fired(site: SiteReport | None, change: Change) -> int:
    if site is None or site.totals is None or not change.units:
        return 0
    return int(sum(site.totals.fires[j] > 0 for j in change.units))


# --- both models on the same inputs ----------------------------------------------------------


def compare(
    original: Target, repaired: Target, batches: Sequence[Batch], *, mode: str, device: Any
) -> Comparison:
    """Run both models on every batch (same mode, same random stream for dropout) and
    measure the largest output change and, with targets, the mean loss of each."""
    change = scale = 0.0
    losses: list[float] = [0.0, 0.0]
    rows = 0
    targets = all(b.targets is not None for b in batches)
    runs = (_running(original, mode, device), _running(repaired, mode, device))
    with runs[0], runs[1]:
        for i, batch in enumerate(batches):
            outs = []
            for k, run in enumerate(runs):
                out, loss = _forward(run.target, batch.to(run.dev), i, targets)
                outs.append(out)
                if loss is not None:
                    losses[k] += loss * batch.rows
            rows += batch.rows
            for a, b in zip(outs[0], outs[1], strict=True):
                change = max(change, _max_diff(a, b.to(a.device)))
                finite = a[torch.isfinite(a)]
                scale = max(scale, float(finite.abs().max()) if finite.numel() else 0.0)
    if not targets or not rows:
        return Comparison(change, scale)
    name = loss_name(batches[0].targets)
    return Comparison(change, scale, LOSSES[name], losses[0] / rows, losses[1] / rows)


class _running:
    """A target in the scan's mode on the scan's device, left as it was afterwards."""

    def __init__(self, target: Target, mode: str, device: Any) -> None:
        self.target = target
        self.dev = resolve_device(device, target.module)
        self.mode = mode
        self._ctx: Any = None

    def __enter__(self) -> None:
        self._ctx = preserved(self.target.module, self.dev)
        self._ctx.__enter__()
        if self.target.runtime != "export":
            self.target.module.train(self.mode == "train")

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def _forward(
    target: Target, moved: Batch, index: int, with_loss: bool
) -> tuple[list[torch.Tensor], float | None]:
    """One forward with the random stream seeded per batch: both models draw the same
    dropout masks. The loss is the scan's own (``loss_of``), computed with gradients on."""
    module = target.module
    torch.default_generator.manual_seed(index)  # restored by ``preserved``, as is the GPU's
    dev = next(iter_tensors((moved.args, moved.kwargs))).device
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            torch.cuda.manual_seed(index)
    if not with_loss:
        with torch.no_grad():
            out = moved.forward(module)
        return [t.detach().float() for t in iter_tensors(out) if t.is_floating_point()], None
    lifted = moved.requiring_grad()
    with torch.enable_grad():
        out = lifted.forward(module)
        loss = loss_of(out, lifted.targets)
    tensors = [t.detach().float() for t in iter_tensors(out) if t.is_floating_point()]
    return tensors, None if loss is None else float(loss.detach())


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b|; positions that are NaN/Inf in both count as equal when they are."""
    if a.shape != b.shape:
        return float("inf")
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    diff = torch.where(same, torch.zeros_like(a), (a - b).abs())
    return float(diff.max()) if diff.numel() else 0.0
