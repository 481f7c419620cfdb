"""``repair()``: scan, choose the sites, swap or re-initialise on a copy, and prove it.

The input model is never changed: the repair works on a deep copy (of the module, or of
the ``ExportedProgram``). The inputs are read once and kept, so the scan before, the
re-draw checks, the scan after and the output comparison all see the very same batches.
"""

from __future__ import annotations

import copy
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from relu_doctor.analyze.report import ModelReport, SiteReport
from relu_doctor.api import scan
from relu_doctor.device import resolve_device
from relu_doctor.errors import RepairError, UsageError, param
from relu_doctor.fix import TARGETS
from relu_doctor.fix.changes import Change, Outcome
from relu_doctor.fix.proof import (
    TOLERANCE,
    Comparison,
    FixReport,
    SiteProof,
    compare,
    site_proofs,
)
from relu_doctor.fix.redo import Plan, plan
from relu_doctor.fix.select import select
from relu_doctor.fix.swap import swap
from relu_doctor.scanner.batches import Batch, as_batches, check_batch_args
from relu_doctor.scanner.guard import preserved
from relu_doctor.scanner.runner import DEFAULT_SYNTHETIC_BATCHES, Progress, Target, as_target
from relu_doctor.scanner.shapes import fixed_batch_size, synthetic_inputs

#: Most draws of one unit's incoming weights before it is reported as not firing.
MAX_DRAWS = 10


@dataclass(frozen=True)
class _Scan:
    """The scan options of one repair, applied alike before, during and after."""

    batches: list[Batch]
    mode: str
    device: Any
    eps: float
    unit_dim: int | None
    near_dead: float
    tau: float

    def run(self, model: Any, name: str, grad: bool, progress: Progress | None = None) -> Any:
        return scan(
            model,
            self.batches,
            batch_size=max(1, self.batches[0].rows) if self.batches else 1,
            grad=grad,
            mode=self.mode,
            device=self.device,
            eps=self.eps,
            unit_dim=self.unit_dim,
            near_dead=self.near_dead,
            tau=self.tau,
            name=name,
            progress=progress,
        )


def repair(
    model: Any,
    data: Any = None,
    *,
    to: str = "reinit",
    sites: str | Sequence[str] | None = None,
    slope: float = 0.01,
    alpha: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    batches: int | None = None,
    grad: bool = True,
    mode: str = "eval",
    device: str | torch.device | None = None,
    eps: float = 0.0,
    input_shape: tuple[int, ...] | None = None,
    unit_dim: int | None = None,
    near_dead: float = 0.01,
    tau: float = 0.025,
    name: str | None = None,
    repaired_name: str | None = None,
    progress: Progress | None = None,
) -> tuple[Any, FixReport]:
    """Repair the dying units of ``model`` on a copy; returns ``(repaired, report)``.

    ``to``: ``leaky_relu``, ``prelu`` or ``elu`` (swap the activation; ``slope`` is the
    leaky slope and PReLU's initial slope, ``alpha`` ELU's) or ``reinit`` (ReDo: re-draw
    the dead units' incoming weights, seeded by ``seed``, and zero their outgoing ones).
    ``sites``: names (a list or a comma string), ``"all"``, or None for the sites the
    health gate flags. The other arguments are ``scan()``'s; ``seed`` also seeds synthetic
    inputs. The repaired model has the input's type (an ``ExportedProgram`` stays one).
    Nothing to fix: the copy comes back unchanged with ``report.changed`` False. Nothing
    that could be repaired: ``RepairError`` with every site's reason.
    """
    options = _options(to, slope, alpha)
    original = as_target(model)
    result, target = _copy(model)
    label = name or target.name
    scans = _Scan(
        _read_batches(target, data, batch_size, batches, input_shape, seed, device),
        mode,
        device,
        eps,
        unit_dim,
        near_dead,
        tau,
    )
    before = scans.run(target.module, label, grad, progress)
    chosen = select(before, sites)
    picked = [s for s in chosen.sites if s.dead or to != "reinit"]
    if not picked and not chosen.skipped:
        why = chosen.why if not chosen.sites else "nothing to fix: no chosen site has dead units"
        return result, FixReport(label, to, options, why, before)
    draws: dict[str, int] = {}
    checked: Comparison | None = None
    if to == "reinit":
        outcome, checked = _reinit(original, target, picked, seed, scans, draws)
    else:
        outcome = swap(target.module, target.runtime, before, picked, to, options)
    outcome.refused[:0] = list(chosen.skipped)
    if not outcome.changes:
        reasons = "; ".join(
            f"{', '.join(s for s, r in outcome.refused if r == reason)}: {reason}"
            for reason in dict.fromkeys(r for _, r in outcome.refused)
        )
        raise RepairError(f"nothing could be repaired in {label}: {reasons}", param="sites")
    after = scans.run(outcome.model, repaired_name or f"{label} (repaired)", grad)
    repaired = Target(outcome.model, target.runtime, target.exported, target.name)
    comparison = checked or compare(original, repaired, scans.batches, mode=mode, device=device)
    proofs = site_proofs(before, after, outcome, options, draws)
    outcome.notes += _idle_notes(proofs, before)
    report = FixReport(
        label,
        to,
        options,
        chosen.why,
        before,
        after,
        proofs,
        tuple(outcome.refused),
        dict(outcome.renamed),
        comparison,
        tuple(outcome.notes),
    )
    # An ExportedProgram shares its parameters with the module that was repaired in place.
    return (result if target.runtime == "export" else outcome.model), report


def _idle_notes(proofs: Sequence[SiteProof], before: ModelReport) -> list[str]:
    """Say so when re-drawn units still do not fire (and, where the scan knows causes,
    how many were starved by dead units upstream)."""
    idle = [p for p in proofs if p.redrawn > p.firing]
    if not idle:
        return []
    count = sum(p.redrawn - p.firing for p in idle)
    starved = sum(_starved(before.site(p.site)) for p in idle)
    why = (
        f"{starved} of them are starved by dead units upstream: repair those sites first"
        if starved
        else "their inputs may be zero on the data (dead units upstream starve them)"
    )
    return [
        f"{count} re-drawn units of {len(idle)} site{'s' * (len(idle) > 1)} "
        f"({', '.join(p.site for p in idle)}) do not fire on the scanned data after "
        f"{MAX_DRAWS} draws: {why}; they are re-initialised all the same"
    ]


def _starved(site: SiteReport) -> int:
    """Dead units whose cause is ``starved``, where the scan reports causes."""
    rows = site.unit_rows() or {}
    causes, dead = rows.get("cause"), rows.get("dead")
    if causes is None or dead is None:
        return 0
    return sum(1 for c, d in zip(list(causes), list(dead), strict=False) if d and c == "starved")


def _options(to: str, slope: float, alpha: float) -> dict[str, float]:
    if to not in TARGETS:
        raise UsageError(
            f"{param('to')} must be one of {', '.join(TARGETS)}, got {to!r}", param="to"
        )
    if not (isinstance(slope, int | float) and math.isfinite(slope) and 0 < slope < 1):
        raise UsageError(f"{param('slope')} must be in (0, 1), got {slope!r}", param="slope")
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha > 0):
        raise UsageError(f"{param('alpha')} must be > 0, got {alpha!r}", param="alpha")
    return (
        {"slope": float(slope)}
        if to in ("leaky_relu", "prelu")
        else ({"alpha": float(alpha)} if to == "elu" else {})
    )


def _copy(model: Any) -> tuple[Any, Target]:
    """A deep copy to work on, as the caller will get it back, and its scan target."""
    exported = model if isinstance(model, torch.export.ExportedProgram) else None
    if exported is None and hasattr(model, "runtime") and hasattr(model, "module"):
        exported = getattr(model, "exported", None)  # a load.LoadedModel
    if exported is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's pytree, on deepcopy
            ep = copy.deepcopy(exported)
        return ep, as_target(ep)
    target = as_target(model)
    module = _script_copy(target.module) if target.runtime == "script" else None
    module = module or copy.deepcopy(target.module)
    return module, Target(module, target.runtime, None, target.name, target.warnings)


def _script_copy(module: Any) -> Any:
    """A TorchScript module copied through save and load: ``deepcopy`` would give it
    parameters that are not leaves (they come out of a clone)."""
    if not isinstance(module, torch.jit.ScriptModule):
        return None
    where = next((p.device for p in module.parameters()), torch.device("cpu"))
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer, map_location=where)


def _read_batches(
    target: Target,
    data: Any,
    batch_size: int,
    batches: int | None,
    input_shape: tuple[int, ...] | None,
    seed: int,
    device: Any,
) -> list[Batch]:
    """Every batch the repair will feed, read once (generators can be read only once)."""
    check_batch_args(batch_size, batches)
    module = target.module
    size = fixed_batch_size(module, target.runtime) or batch_size
    if data is not None:
        return list(as_batches(data, size).limit(batches))
    dev = resolve_device(device, module)
    count = DEFAULT_SYNTHETIC_BATCHES if batches is None else batches
    with preserved(module, dev):
        stream = synthetic_inputs(
            module,
            target.runtime,
            target.exported,
            input_shape,
            batch_size=size,
            batches=count,
            seed=seed,
            device=dev,
        )
        return list(stream)


# --- ReDo -----------------------------------------------------------------------------------


def _reinit(
    original: Target,
    target: Target,
    sites: Sequence[SiteReport],
    seed: int,
    scans: _Scan,
    draws: dict[str, int],
) -> tuple[Outcome, Comparison | None]:
    """Plan every site, draw, re-draw what does not fire, and keep only the changes that
    leave the outputs as they were (each refused change is undone). Also returns the
    comparison of the final model with the original, when the last check was of it."""
    model = target.module
    out = Outcome(model)
    plans: list[Plan] = []
    for s in sites:
        found = plan(model, s, eager=target.runtime == "eager")
        if isinstance(found, str):
            out.refuse(s.site, found)
        else:
            plans.append(found)
    for p in plans:
        p.save()
        p.draw(p.units, seed, 0)
        p.silence()
        draws[p.site] = 1
    _redraw(target, plans, seed, scans, draws)
    check = _Checker(original, target, scans)
    kept = _keep_unchanged(check, plans, out)
    for p in kept:
        action = f"re-initialised {len(p.units)} of {p.producer.weight.shape[0]} units"
        out.changes.append(Change(p.site, p.site, action, p.units))
    if kept and target.runtime != "eager":
        out.notes.append(
            "compiled layers keep no Python initialiser: their units were re-drawn with torch's "
            "default Linear/Conv initialiser"
        )
    return out, check.last


def _redraw(
    target: Target, plans: list[Plan], seed: int, scans: _Scan, draws: dict[str, int]
) -> None:
    """Re-draw the units that would still not fire, at most ``MAX_DRAWS`` times in all."""
    for attempt in range(1, MAX_DRAWS):
        report = scans.run(target.module, "redraw", grad=False)
        idle = {p.site: _idle(report, p) for p in plans}
        if not any(idle.values()):
            return
        for p in plans:
            if idle[p.site]:
                p.draw(idle[p.site], seed, attempt)
                draws[p.site] = attempt + 1


def _idle(report: ModelReport, p: Plan) -> tuple[int, ...]:
    site = report.site(p.site)
    if site.totals is None:
        return ()
    return tuple(j for j in p.units if site.totals.fires[j] == 0)


def _keep_unchanged(check: _Checker, plans: list[Plan], out: Outcome) -> list[Plan]:
    """Keep the plans that leave every output as it was; undo and refuse the others (a
    layer read elsewhere too, a flatten that is not channel-major...)."""
    if not plans or check() is None:
        return plans
    finals = [[(t, t.detach().clone()) for t in p.tensors()] for p in plans]
    for p in reversed(plans):
        p.restore()
    kept = []
    for p, final in zip(plans, finals, strict=True):
        with torch.no_grad():
            for t, value in final:
                t.copy_(value)
        change = check()
        if change is None:
            kept.append(p)
            continue
        p.restore()
        check.last = None  # the model changed since
        out.refuse(
            p.site,
            f"re-initialising it changed the model's output by {change:.3g} on the scanned data "
            "(its layers are shared or read elsewhere too); left as it was",
        )
    return kept


class _Checker:
    """Does the working copy still compute what the original does? ``check()`` is None when
    the largest output change is within ``TOLERANCE`` of the largest output, else the
    change; ``last`` keeps the latest comparison."""

    def __init__(self, original: Target, target: Target, scans: _Scan) -> None:
        self.original, self.target, self.scans = original, target, scans
        self.last: Comparison | None = None

    def __call__(self) -> float | None:
        s = self.scans
        self.last = compare(self.original, self.target, s.batches, mode=s.mode, device=s.device)
        ok = self.last.max_change <= TOLERANCE * self.last.scale
        return None if ok else self.last.max_change
