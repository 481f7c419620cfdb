"""Fitting data to the model: every batch of a scan passes ``InputFitter``, the one place
that gives inputs the types the model's first layer reads (README "Your own data")."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

from relu_doctor.errors import UsageError, param
from relu_doctor.scanner.batches import Batch
from relu_doctor.scanner.shapes import consumer_kind, float_dtype, graph_input

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
        kind = consumer_kind(module)
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
