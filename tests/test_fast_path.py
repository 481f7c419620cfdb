"""The hooks-only path (``scanner/hooks.py``) gives the numbers of the dispatch mode, bit for
bit, on every planted, test and sample model, with and without gradients; it is taken only
when the first batch allows it, and a batch that does not match is measured again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import relu_doctor
from relu_doctor.analyze.report import ModelReport
from relu_doctor.scanner import session
from tests.fixtures import models as M
from tests.fixtures.resnet import ResNet50

TOTALS = ("fires", "max_pre", "abs_sum", "active", "nonfinite", "grad_abs_max")


def both_ways(
    monkeypatch: pytest.MonkeyPatch, scan: Callable[[], ModelReport]
) -> tuple[ModelReport, ModelReport]:
    monkeypatch.setattr(session, "FAST_PATH", True)
    fast = scan()
    monkeypatch.setattr(session, "FAST_PATH", False)
    slow = scan()
    return fast, slow


def assert_identical(fast: ModelReport, slow: ModelReport) -> None:
    assert [s.site for s in fast.sites] == [s.site for s in slow.sites]
    for a, b in zip(fast.sites, slow.sites, strict=True):
        assert a.row() == b.row() or _same_rows(a.row(), b.row()), a.site
        if a.totals is None or b.totals is None:
            assert a.totals is b.totals is None
            continue
        for name in TOTALS:
            x, y = getattr(a.totals, name), getattr(b.totals, name)
            assert (x is None and y is None) or np.array_equal(x, y, equal_nan=True), name
        assert (a.totals.samples, a.totals.calls, a.totals.elements) == (
            b.totals.samples,
            b.totals.calls,
            b.totals.elements,
        )
        assert a.totals.grad_norm_sum == b.totals.grad_norm_sum, a.site
        assert a.totals.grad_norm_sq_sum == b.totals.grad_norm_sq_sum, a.site
        rows_a, rows_b = a.totals.sample_rows, b.totals.sample_rows
        assert (rows_a is None and rows_b is None) or np.array_equal(rows_a, rows_b)
    assert [p.grad_norm for p in fast.params] == [p.grad_norm for p in slow.params]


def _same_rows(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal, NaN equal to NaN."""
    return a.keys() == b.keys() and all(
        x == y or (isinstance(x, float) and isinstance(y, float) and x != x and y != y)
        for x, y in ((a[k], b[k]) for k in a)
    )


MODULE_MODELS: list[tuple[Callable[[], nn.Module], tuple[int, ...]]] = [
    (M.ReusedReLU, (M.ReusedReLU.IN,)),
    (M.InplaceReLU, (M.InplaceReLU.IN,)),
    (M.TokenFlatten, (M.TokenFlatten.T, M.TokenFlatten.F_IN)),
    (lambda: ResNet50().eval(), (3, 16, 16)),
]


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("index", range(len(MODULE_MODELS)))
def test_module_models_take_the_hook_path_with_identical_numbers(
    monkeypatch: pytest.MonkeyPatch, index: int, grad: bool
) -> None:
    build, shape = MODULE_MODELS[index]
    x = M.positive_inputs(24, *shape)
    fast, slow = both_ways(
        monkeypatch, lambda: relu_doctor.scan(build(), x, batch_size=8, grad=grad)
    )
    assert fast.capture == "hooks (2 of 3 batches)"
    assert slow.capture == "dispatch"
    assert_identical(fast, slow)


@pytest.mark.parametrize(
    ("build", "shape"),
    [
        (M.FunctionalMLP, (M.FunctionalMLP.IN,)),  # functional calls
        (M.MixedReLU, (M.MixedReLU.IN,)),  # a module and a functional call
        (M.FamilyModel, (M.FamilyModel.IN,)),  # LeakyReLU, PReLU, ELU modules
        (M.ConvNet, M.ConvNet.IN),
    ],
)
def test_models_the_hooks_cannot_see_stay_on_the_dispatch_mode(
    monkeypatch: pytest.MonkeyPatch, build: Callable[[], nn.Module], shape: tuple[int, ...]
) -> None:
    monkeypatch.setattr(session, "FAST_PATH", True)
    report = relu_doctor.scan(build(), M.positive_inputs(16, *shape), batch_size=8)
    assert report.capture == "dispatch"


def test_planted_and_sample_models_both_ways(
    monkeypatch: pytest.MonkeyPatch, planted_models: Any, samples: Path
) -> None:
    paths = [planted_models[n].path for n in ("mlp", "deep", "all_dead", "healthy")]
    paths += [samples / n for n in ("textbook_fresh.pt", "textbook_dying.pt", "cnn_dead.pt")]
    for path in paths:
        for grad in (True, False):
            model = torch.load(path, weights_only=False)
            fast, slow = both_ways(monkeypatch, lambda m=model, g=grad: relu_doctor.scan(m, grad=g))
            assert fast.capture.startswith("hooks"), path
            assert_identical(fast, slow)


class Sometimes(nn.Module):
    """Calls its ReLU twice when the batch's first value is large: data-dependent flow."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = M.plant(nn.Linear(3, 4), [1])
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc(x))
        return self.act(h) if float(x[0, 0]) > 1.0 else h


def test_a_batch_that_differs_is_measured_again_under_the_dispatch_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x = M.positive_inputs(32, 3)  # values in [0.1, 1.1]
    x[8, 0] = 5.0  # batch 2 of 4 calls the module twice: a new site 'act#2'
    batches = [x[i : i + 8] for i in range(0, 32, 8)]
    model = Sometimes()
    monkeypatch.setattr(session, "FAST_PATH", True)
    fast = relu_doctor.scan(model, [b.clone() for b in batches])
    assert fast.capture == "hooks (2 of 4 batches, 1 measured again under the dispatch mode)"
    monkeypatch.setattr(session, "FAST_PATH", False)
    slow = relu_doctor.scan(model, [b.clone() for b in batches])
    assert_identical(fast, slow)
    assert fast.site("act#2").samples == 8  # only the batch that called it twice
