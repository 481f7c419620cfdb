"""Topology: the layer that produces each site's pre-activation and the layer that consumes its
output (or why there is none), read the same way from eager models, TorchScript and export
programs. The expected layers are read off the models' own ``forward`` code."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relu_doctor
from relu_doctor.analyze.report import ModelReport
from relu_doctor.scanner.topology import SiteTopology
from tests.fixtures.models import (
    ConvNet,
    FunctionalMLP,
    ReusedReLU,
    ScriptNet,
    SqueezeExciteNet,
    positive_inputs,
)


def topo(report: ModelReport) -> dict[str, SiteTopology]:
    out = {}
    for s in report.sites:
        assert s.topology is not None, s.site
        out[s.site] = s.topology
    return out


def links(report: ModelReport) -> dict[str, tuple[str | None, str | None, str | None]]:
    """site -> (producer, folded norm, consumer)."""
    return {k: (t.producer, t.norm, t.consumer) for k, t in topo(report).items()}


@pytest.mark.parametrize("grad", [True, False])
def test_linear_chain_of_functional_calls(grad: bool) -> None:
    report = relu_doctor.scan(FunctionalMLP(), positive_inputs(8, FunctionalMLP.IN), grad=grad)
    assert links(report) == {
        "relu#1": ("fc1", None, "fc2"),
        "relu#2": ("fc2", None, "fc3"),
        "relu#3": ("fc3", None, "fc4"),
        "relu#4": ("fc4", None, "fc5"),
        "relu#5": ("fc5", None, "out"),
    }
    assert {t.producer_kind for t in topo(report).values()} == {"Linear"}


def test_a_module_called_twice_has_one_topology_per_call() -> None:
    report = relu_doctor.scan(ReusedReLU(), positive_inputs(8, ReusedReLU.IN))
    assert links(report) == {"act#1": ("fc1", None, "fc2"), "act#2": ("fc2", None, "out")}


@pytest.mark.parametrize("grad", [True, False])
def test_conv_batchnorm_pool_and_what_has_no_layer(grad: bool) -> None:
    report = relu_doctor.scan(ConvNet(), positive_inputs(4, *ConvNet.IN), grad=grad)
    t = topo(report)
    # act1 = relu(bn1(conv1(x))), then max-pooled into conv2.
    assert (t["act1"].producer, t["act1"].producer_kind, t["act1"].norm) == (
        "conv1",
        "Conv2d",
        "bn1",
    )
    assert t["act1"].consumer == "conv2"
    assert len(t["act1"].via) == 1 and t["act1"].via[0].startswith("max_pool2d")
    # relu#1 = F.relu(pool2(conv2(h))): pooling sits between the conv and the ReLU.
    assert t["relu#1"].producer is None
    assert t["relu#1"].producer_note.startswith("the pre-activation comes from aten.max_pool2d")
    assert t["relu#1"].consumer == "conv3"  # through a flatten (a view)
    # act3 feeds head(h.mean(dim=2)): averaging over positions keeps each channel apart.
    assert (t["act3"].producer, t["act3"].consumer) == ("conv3", "head")
    assert t["act3"].via == ("mean",)


def test_a_gated_pre_activation_has_no_producing_layer() -> None:
    report = relu_doctor.scan(SqueezeExciteNet(), positive_inputs(4, *SqueezeExciteNet.IN))
    t = topo(report)["relu#1"]
    assert t.producer is None and t.producer_note == "the pre-activation comes from aten.mul"
    assert t.consumer is None and t.consumer_note == "the output leaves the model"


class Residual(nn.Module):
    """relu(bn1(conv1(x))) -> conv2; relu(conv2(..) + x) is a sum, not a layer output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn1(self.conv1(x)))
        h = self.act(self.conv2(h) + x)
        return self.head(h.flatten(1))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_residual_block(mode: str) -> None:
    report = relu_doctor.scan(Residual(), torch.randn(4, 4, 5, 5), mode=mode)
    t = topo(report)
    assert (t["act#1"].producer, t["act#1"].norm, t["act#1"].consumer) == ("conv1", "bn1", "conv2")
    assert t["act#2"].producer is None
    assert t["act#2"].producer_note == "the pre-activation comes from aten.add"
    assert t["act#2"].consumer == "head"  # the flattened conv output feeds a Linear head


class TwoReaders(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.a = nn.Linear(4, 2)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc(x))
        return self.a(h) + self.b(h)


def test_an_output_read_by_two_layers_has_no_single_consumer() -> None:
    t = topo(relu_doctor.scan(TwoReaders(), torch.randn(8, 3)))["relu#1"]
    assert t.producer == "fc" and t.consumer is None
    assert t.consumer_note == "the output is read by 2 ops (a, b)"


def test_dropout_between_relu_and_linear_is_transparent_in_eval() -> None:
    model = nn.Sequential(
        OrderedDict(fc1=nn.Linear(3, 5), act=nn.ReLU(), drop=nn.Dropout(0.5), fc2=nn.Linear(5, 2))
    )
    assert links(relu_doctor.scan(model, torch.randn(8, 3))) == {"act": ("fc1", None, "fc2")}


def test_torchscript_and_export_read_the_same_topology() -> None:
    x = positive_inputs(8, ScriptNet.IN)
    expected = {
        "act0": ("fc0", None, "block.fc1"),
        "block.act": ("block.fc1", None, "block.fc2"),
        "block:relu#1": ("block.fc2", None, "out"),
    }
    assert links(relu_doctor.scan(ScriptNet(), x)) == expected
    assert links(relu_doctor.scan(torch.jit.script(ScriptNet()), x)) == expected
    exported = torch.export.export(ScriptNet(), (x,))
    report = relu_doctor.scan(exported, x, grad=False)
    assert links(report) == expected
    assert {t.producer_kind for t in topo(report).values()} == {"Linear"}


class Reductions(nn.Module):
    """Global average pool of a conv ReLU into a Linear (keeps channels); a mean over the
    positions of a Linear ReLU on (N, T, F) (keeps features); a mean over the features
    of another (mixes the units: no consumer)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)
        self.seq = nn.Linear(5, 6)
        self.tok = nn.Linear(6, 2)
        self.mix = nn.Linear(5, 3)
        self.last = nn.Linear(7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(self.gap(F.relu(self.conv(x))).flatten(1))  # (N, 5)
        t = h[:, None, :].repeat(1, 7, 1)  # (N, 7, 5)
        pooled = self.tok(F.relu(self.seq(t)).mean(dim=1))  # features survive: (N, 2)
        mixed = self.last(F.relu(self.mix(t)).mean(dim=-1))  # features averaged away
        return pooled.sum(1) + mixed.sum(1)


def test_reductions_over_other_dims_keep_the_consumer() -> None:
    t = topo(relu_doctor.scan(Reductions(), torch.randn(4, 3, 6, 6)))
    assert (t["relu#1"].producer, t["relu#1"].consumer) == ("conv", "fc")
    assert t["relu#2"].consumer == "tok" and t["relu#2"].via == ("mean",)
    assert t["relu#3"].consumer is None
    assert t["relu#3"].consumer_note == "the output is read by aten.mean, not by a layer"
