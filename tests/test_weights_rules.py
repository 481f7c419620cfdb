"""Data-free verdicts from weights (RD401 dead by construction, RD402 BatchNorm-predicted
dead): the pure functions on hand-made numbers, the producers read from the scan's topology
(eager, TorchScript, export), and the BatchNorm prediction against channels measured dead on
CNNs trained in the test."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relu_doctor
from relu_doctor.gate import check
from relu_doctor.gate.weights import (
    BN_K,
    BatchNormParams,
    Producer,
    bn_margin,
    bn_predicted_dead,
    dead_by_construction,
    dead_through_batchnorm,
    fold_batchnorm,
    producers,
    weight_findings,
    zero_rows,
)
from tests.fixtures import trained
from tests.fixtures.gate_reports import load_planted, scan_planted
from tests.fixtures.planted import PlantedModels

# --- pure functions --------------------------------------------------------------------------


def test_dead_by_construction_linear_and_conv() -> None:
    w = [[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, -0.0]]
    b = [-1.0, -5.0, 0.0, 0.5, -1e-30]
    assert dead_by_construction(w, b).tolist() == [True, False, True, False, True]
    assert dead_by_construction(w).tolist() == [True, False, True, True, True]  # bias None = 0
    conv = torch.randn(3, 2, 3, 3)
    conv[1] = 0
    got = dead_by_construction(conv, torch.tensor([0.0, -2.0, -1.0]))
    assert got.tolist() == [False, True, False]
    nan = [[float("nan"), 0.0]]
    assert dead_by_construction(nan, [-1.0]).tolist() == [False]  # NaN is not zero


def test_torch_inputs_of_any_dtype_and_with_grad() -> None:
    layer = nn.Linear(3, 2).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight[0] = 0
        layer.bias[0] = -1
    assert dead_by_construction(layer.weight, layer.bias).tolist() == [True, False]
    w = torch.tensor([[0.0, float("nan")], [0.0, -0.0], [1e-45, 0.0]])
    assert zero_rows(w).tolist() == [False, True, False]  # compared in torch
    assert zero_rows(w.tolist()).tolist() == [False, True, False]  # and in numpy


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="bias has 3 entries for 2 units"):
        dead_by_construction(np.zeros((2, 4)), [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="units along dim 0"):
        dead_by_construction(0.0)
    with pytest.raises(ValueError, match="gamma has 2 entries, beta 3"):
        bn_predicted_dead([1.0, 1.0], [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="k must be >= 0"):
        bn_predicted_dead([1.0], [0.0], k=-1)


def test_fold_batchnorm_matches_torch_in_eval_mode() -> None:
    torch.manual_seed(0)
    lin, bn = nn.Linear(5, 4), nn.BatchNorm1d(4)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(4))
        bn.running_var.copy_(torch.rand(4) + 0.5)
        bn.weight.copy_(torch.randn(4))
        bn.bias.copy_(torch.randn(4))
    bn.eval()
    w, b = fold_batchnorm(
        lin.weight, lin.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps
    )
    x = torch.randn(7, 5)
    expected = bn(lin(x)).detach().double().numpy()
    np.testing.assert_allclose(x.double().numpy() @ w.T + b, expected, rtol=1e-5, atol=1e-6)


def test_dead_through_batchnorm_needs_both_modes() -> None:
    w = np.zeros((4, 3))
    w[3] = 1.0  # unit 3 has weights: never dead by construction
    bias = [1.0, 1.0, 1.0, 1.0]

    def bn(beta: list[float], mean: Any = (0.0,) * 4) -> BatchNormParams:
        return BatchNormParams("bn", [1.0] * 4, beta, list(mean), [1.0] * 4, 0.0)

    # eval output = (1 - mean) + beta; train output = beta
    got = dead_through_batchnorm(w, bias, bn([-2.0, 0.5, -0.5, -5.0], mean=(0.0, 5.0, 0.0, 0.0)))
    assert got.tolist() == [True, False, False, False]
    # unit 1: eval says dead (1 - 5 + 0.5 < 0) but train mode outputs beta = 0.5 > 0
    # unit 2: train says dead (beta < 0) but eval outputs 1 - 0 - 0.5 = 0.5 > 0
    no_stats = BatchNormParams("bn", None, [-1.0, 0.0, 1.0, -1.0], None, None)
    assert dead_through_batchnorm(w, bias, no_stats).tolist() == [True, False, False, False]


def test_bn_prediction_on_hand_made_numbers() -> None:
    gamma = [1.0, 1.0, 0.0, 0.0, -1.0, 0.1, 1.0, 0.0]
    beta = [-10.5, -9.5, -0.1, 0.0, -11.0, -0.5, -10.0, 0.3]
    assert bn_predicted_dead(gamma, beta).tolist() == [
        True,  # 10.5 sigma
        False,  # 9.5 sigma
        True,  # gamma 0, beta < 0: a constant below zero
        True,  # gamma 0, beta 0: exactly 0, never > 0
        True,  # the sign of gamma does not matter
        False,  # 5 sigma
        False,  # exactly k sigma: not beyond it
        False,  # a positive constant always fires
    ]
    assert bn_predicted_dead(gamma, beta, k=4).tolist()[5] is True
    assert bn_margin(gamma, beta).tolist() == [10.5, 9.5, np.inf, 0.0, 11.0, 5.0, 10.0, -np.inf]
    assert BN_K == 10.0


# --- producers from the topology -------------------------------------------------------------


class _Mixed(nn.Module):
    """Functional ReLUs after a Linear, a Conv + BatchNorm, a transposed conv + BatchNorm, a
    sum, and a LeakyReLU (which the weight rules do not judge)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.block = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 8, 1), bn=nn.BatchNorm2d(8)))
        self.up = nn.ConvTranspose2d(8, 8, 1)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Linear(48, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc(x))
        c = torch.relu(self.block(h.view(-1, 1, 2, 3)))
        t = F.relu(self.bn2(self.up(c)))
        s = F.relu(t + c)
        return F.leaky_relu(self.head(s.flatten(1)))


def _mixed_producers(model: Any, x: torch.Tensor) -> dict[str, Producer]:
    return producers(model, relu_doctor.scan(model, x, grad=False))


def test_producers_come_from_the_topology_of_the_scan() -> None:
    torch.manual_seed(0)
    model = _Mixed().eval()
    prods = _mixed_producers(model, torch.randn(8, 4))
    assert sorted(prods) == ["relu#1", "relu#2", "relu#3"]  # not the sum (#4), not leaky
    assert (prods["relu#1"].layer, prods["relu#1"].batchnorm) == ("fc", None)
    assert prods["relu#1"].weight is model.fc.weight and prods["relu#1"].bias is model.fc.bias
    conv = prods["relu#2"]
    assert conv.layer == "block.conv" and conv.weight is model.block.conv.weight
    assert conv.batchnorm is not None and conv.batchnorm.name == "block.bn"
    assert conv.batchnorm.beta is model.block.bn.bias
    assert conv.batchnorm.running_var is model.block.bn.running_var
    up = prods["relu#3"]  # a transposed conv's rows are not its units: the BatchNorm only
    assert up.layer is None and up.weight is None
    assert up.batchnorm is not None and up.batchnorm.name == "bn2"


def _values(prods: dict[str, Producer]) -> dict[str, tuple[Any, ...]]:
    def arr(x: Any) -> Any:
        return None if x is None else x.detach().tolist()

    out = {}
    for site, p in prods.items():
        bn = p.batchnorm
        bn_values = None if bn is None else (bn.name, arr(bn.gamma), arr(bn.beta), bn.eps)
        out[site] = (p.layer, arr(p.weight), arr(p.bias), bn_values)
    return out


def test_producers_of_torchscript_and_export_programs() -> None:
    """The same producers, with the same numbers, whichever way the model runs."""
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(3, 8, 3),
            bn=nn.BatchNorm2d(8),
            act=nn.ReLU(),
            flat=nn.Flatten(),
            fc=nn.Linear(8 * 6 * 6, 5),
            act2=nn.ReLU(),
        )
    ).eval()
    with torch.no_grad():
        model.bn.bias[[2, 5]] = -1e4
    x = torch.randn(4, 3, 8, 8)
    eager = _values(_mixed_producers(model, x))
    assert sorted(eager) == ["act", "act2"]
    assert _values(_mixed_producers(torch.jit.script(model), x)) == eager
    exported = torch.export.export(model, (x,))
    assert _values(_mixed_producers(exported, x)) == eager  # its BatchNorm keeps no eps: 1e-5
    report = relu_doctor.scan(exported, x, grad=False)
    found = check(report, producers=producers(exported, report), max_dead=1, max_layer_dead=1)
    assert [(f.rule, f.site, f.value) for f in found] == [("RD402", "act", 2.0)]


def test_planted_units_are_found_from_the_weights(planted_models: PlantedModels) -> None:
    model = load_planted(planted_models, "deep")
    report = relu_doctor.scan(model, batches=2, grad=False, name="deep")
    found = check(report, producers=producers(model, report))
    rd401 = [f for f in found if f.rule == "RD401"]
    assert [(f.site, f.value, f.severity) for f in rd401] == [
        ("act1", 3.0, "warning"),
        ("act2", 2.0, "warning"),
    ]
    assert rd401[0].message == (
        "act1: 3 of 16 units can never fire: their rows of fc1 are all zero and their bias "
        "is <= 0 (units 0, 3, 7; the scan measured 3 dead)"
    )
    assert check(report) == [f for f in found if f.rule != "RD401"]  # no producers: skipped
    healthy_model = load_planted(planted_models, "healthy")
    healthy = scan_planted(planted_models, "healthy")
    assert weight_findings(healthy, producers(healthy_model, healthy)) == []


def test_producers_that_do_not_fit_the_site_are_ignored(planted_models: PlantedModels) -> None:
    report = scan_planted(planted_models, "all_dead")
    wrong = {"act1": Producer("fc1", np.zeros((4, 20)))}  # 4 rows for 16 units
    assert weight_findings(report, wrong) == []
    assert weight_findings(report, {"nope": Producer("x", np.zeros((16, 20)))}) == []


def _planted_bn_cnn() -> nn.Sequential:
    """conv(3->8) bn relu, BN bias -1e4 on channels 1 and 6; conv rows of channel 4 zero
    with conv bias -1 and a BatchNorm that keeps the constant below zero."""
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(conv=nn.Conv2d(3, 8, 3), bn=nn.BatchNorm2d(8), act=nn.ReLU(), pool=nn.Flatten())
    )
    with torch.no_grad():
        model.bn.bias[[1, 6]] = -1e4
        model.conv.weight[4] = 0
        model.conv.bias[4] = -1.0
        model.bn.bias[4] = -0.5
    return model.eval()


def test_planted_batchnorm_channels() -> None:
    model = _planted_bn_cnn()
    report = relu_doctor.scan(model, grad=False, name="cnn", batches=2)
    found = check(report, producers=producers(model, report), max_dead=1, max_layer_dead=1)
    assert [(f.rule, f.value) for f in found] == [("RD401", 1.0), ("RD402", 2.0)]
    assert found[0].message == (
        "act: 1 of 8 units can never fire: their rows of conv are all zero and bn maps the "
        "constant below zero (units 4; the scan measured 3 dead)"
    )
    assert found[1].message == (
        "act: bn predicts 2 of 8 channels dead from its parameters alone (beta < -10|gamma|: "
        "channels 1, 6); the scan measured 3 dead"
    )


# --- the prediction against channels measured dead on trained nets ---------------------------

#: (seed, config) of the nets trained here (200 steps each, a few seconds on CPU).
TRAINED = [(1, "sgd-2"), (2, "adam-0.1")]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Training is tiny: one thread is fastest and never oversubscribes a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_bn_prediction_has_no_false_positives_on_trained_nets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    held_out, _ = trained.make_data(1024, 999)
    lines, predicted_total, dead_total = [], 0, 0
    for seed, config in TRAINED:
        model = trained.train(seed, config)
        measured = trained.measure_dead(model, held_out)
        report = relu_doctor.scan(model, held_out, grad=False, name=f"{config}-{seed}")
        prods = producers(model, report)
        assert sorted(prods) == ["act1", "act2"]
        findings = {f.site: f for f in weight_findings(report, prods) if f.rule == "RD402"}
        for site, prod in prods.items():
            assert prod.batchnorm is not None
            pred = torch.from_numpy(bn_predicted_dead(prod.batchnorm.gamma, prod.batchnorm.beta))
            dead = measured[site]
            assert report.site(site).dead == int(dead.sum())  # the scan agrees with torch
            assert not (pred & ~dead).any(), f"{config}-{seed} {site}: predicted but fired"
            n_pred = int(pred.sum())
            predicted_total += n_pred
            dead_total += int(dead.sum())
            if n_pred:
                assert findings[site].message.endswith(f"the scan measured {int(dead.sum())} dead")
                assert findings[site].value == n_pred
            lines.append(f"{config}-{seed} {site}: predicted {n_pred}, measured {int(dead.sum())}")
    with capsys.disabled():
        print("\nBatchNorm prediction (k=10) vs measured dead channels:\n  " + "\n  ".join(lines))
    assert dead_total > 0 and predicted_total > 0  # the nets did die, and some were seen


def test_no_producers_for_what_is_not_a_module(planted_models: PlantedModels) -> None:
    assert producers(object(), scan_planted(planted_models, "mlp")) == {}
