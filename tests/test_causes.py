"""Why each dead unit died (docs/metrics.md "Why they died"), on constructed models whose
causes are known by construction, and the weight part ``w·x`` checked against plain torch.

The expected causes are written next to each model from how it was built, never from
relu-doctor's output.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relu_doctor
from relu_doctor.analyze.causes import ROUNDING
from relu_doctor.analyze.layers import _row_norms, producing_layer
from relu_doctor.analyze.report import ModelReport, SiteReport
from relu_doctor.scanner.topology import SiteTopology
from tests.fixtures.models import ConvNet, GradNet, positive_inputs

F32 = 2.0**-24


def causes(report: ModelReport, site: str) -> dict[int, str]:
    """unit -> cause of the dead units of ``site``."""
    rows = report.site(site).unit_rows()
    assert rows is not None
    return {
        int(u): c for u, c, d in zip(rows["unit"], rows["cause"], rows["dead"], strict=True) if d
    }


def unit(report: ModelReport, site: str, column: str) -> np.ndarray:
    rows = report.site(site).unit_rows()
    assert rows is not None
    return np.asarray(rows[column])


def notes(report: ModelReport, site: str) -> dict[int, str]:
    rows = report.site(site).unit_rows()
    assert rows is not None
    return {
        int(u): n for u, n in zip(rows["unit"], rows["cause_note"], strict=True) if n is not None
    }


def bound(max_pre: np.ndarray, bias_terms: np.ndarray) -> np.ndarray:
    """The documented rounding bound of the derived w·x."""
    return ROUNDING * F32 * (np.abs(max_pre) + bias_terms)


# --- bias -------------------------------------------------------------------------------


def test_planted_negative_bias_is_bias_and_w_x_matches_plain_torch() -> None:
    model = GradNet()  # random weights; fc1.bias[3] = -1e4
    x = torch.randn(64, GradNet.IN, generator=torch.Generator().manual_seed(3))
    report = relu_doctor.scan(model, x, batch_size=16)
    assert causes(report, "act") == {3: "bias"}
    w, b = model.fc1.weight.detach().double(), model.fc1.bias.detach().double()
    truth = (x.double() @ w.T).amax(0).numpy()
    got, max_pre = unit(report, "act", "max_wx"), unit(report, "act", "margin")
    assert np.all(np.abs(got - truth) <= bound(max_pre, b.abs().numpy()))
    assert truth[3] > 0.1  # w·x of the dead unit is clearly positive: the bias killed it
    assert "held z at or below" in notes(report, "act")[3]


# --- collapsed and weights --------------------------------------------------------------


class Rows(nn.Module):
    """fc (4 -> 10) -> ReLU on positive inputs; rows of norm ~1 unless said otherwise, so
    the layer's median row norm is ~1. Unit 0: zero row, b = -0.1 (collapsed); 1: row
    scaled to 1e-9, b = -0.5 (collapsed); 2: positive row scaled to 1e-3, b = -1 (w·x > 0 on
    every sample, the bias holds it down: bias); 3: zero row, b = +0.2 (fires); 4: negative
    row, b = +0.05 (w·x <= -0.1 sum|w| on every input: weights); 5..9: positive, fire."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 10)
        self.act = nn.ReLU()
        self.out = nn.Linear(10, 2)
        with torch.no_grad():
            w = self.fc.weight.abs() + 0.5
            self.fc.weight.copy_(w)
            self.fc.weight[0] = 0.0
            self.fc.weight[1] = w[1] * 1e-9
            self.fc.weight[2] = w[2] * 1e-3
            self.fc.weight[3] = 0.0
            self.fc.weight[4] = -w[4]
            self.fc.bias.copy_(torch.tensor([-0.1, -0.5, -1.0, 0.2, 0.05] + [0.1] * 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.fc(x)))


def test_collapsed_rows_bias_and_weights() -> None:
    model = Rows()
    x = positive_inputs(48, 4)
    report = relu_doctor.scan(model, x, batch_size=16)
    assert causes(report, "act") == {0: "collapsed", 1: "collapsed", 2: "bias", 4: "weights"}
    assert report.site("act").causes == {"collapsed": 2, "bias": 1, "weights": 1}
    truth = (x.double() @ model.fc.weight.detach().double().T).amax(0).numpy()
    got = unit(report, "act", "max_wx")
    b = model.fc.bias.detach().double().abs().numpy()
    assert np.all(np.abs(got - truth) <= bound(unit(report, "act", "margin"), b))
    assert "never positive" in notes(report, "act")[4]


# --- starved: dead units upstream, through modules, functional calls, script, export ----


class Starving(nn.Module):
    """fc1 (4 -> 6) -> F.relu -> fc2 (6 -> 4) -> F.relu -> out, positive inputs.

    fc1: units 0, 1, 2 are zero rows with b = -1 (collapsed), 3..5 fire.
    fc2: unit 0 reads only units 0 and 1 of fc1 (weight 1), b = -0.5: starved;
         unit 1 reads dead unit 0 (weight 2) and live units 3..5 (weight -1), b = 0:
         w·x < 0 on every sample: weights (it reads live inputs, so not starved);
         unit 2 is a zero row with b = -0.3: collapsed (reads nothing, so not starved);
         unit 3 reads the live units with positive weights: fires.
    """

    IN = 4

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 4)
        self.out = nn.Linear(4, 2)
        with torch.no_grad():
            self.fc1.weight.abs_()
            self.fc1.weight[:3] = 0.0
            self.fc1.bias.copy_(torch.tensor([-1.0, -1.0, -1.0, 0.1, 0.1, 0.1]))
            self.fc2.weight.zero_()
            self.fc2.weight[0, :2] = 1.0
            self.fc2.weight[1, 0] = 2.0
            self.fc2.weight[1, 3:] = -1.0
            self.fc2.weight[3, 3:] = 0.5
            self.fc2.bias.copy_(torch.tensor([-0.5, 0.0, -0.3, 0.1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(x))
        return self.out(F.relu(self.fc2(h)))


STARVING = {
    "relu#1": {0: "collapsed", 1: "collapsed", 2: "collapsed"},
    "relu#2": {0: "starved", 1: "weights", 2: "collapsed"},
}


@pytest.mark.parametrize("runtime", ["eager", "script", "export"])
def test_units_that_read_only_dead_units_are_starved(runtime: str) -> None:
    x = positive_inputs(32, Starving.IN)
    model: object = Starving().eval()
    if runtime == "script":
        model = torch.jit.script(model)
    elif runtime == "export":
        model = torch.export.export(Starving().eval(), (x[:8],))
    report = relu_doctor.scan(model, x, batch_size=8, grad=runtime != "export")
    assert {s: causes(report, s) for s in STARVING} == STARVING
    note = notes(report, "relu#2")[0]
    assert note.startswith("reads only units 0, 1 of relu#1") and "fix relu#1 first" in note
    assert report.site("relu#2").extras["causes"].upstream == "relu#1"
    again = relu_doctor.diagnose(report, model)  # takes what scan takes, export included
    assert {s: causes(again, s) for s in STARVING} == STARVING


class ConvStarving(nn.Module):
    """conv1 (2 -> 4) -> act1 -> max-pool -> conv2 (1x1, 4 -> 3) -> act2 -> flatten ->
    fc (12 -> 3) -> act3 -> head, positive inputs of 4x4.

    conv1: channels 0, 1 zero kernels, b = -1 (collapsed); 2, 3 fire.
    conv2: out 0 reads only channels 0, 1 (weight 1), b = -0.5: starved by act1;
           out 1 reads channels 2, 3 with weight -1, b = 0: weights; out 2 fires.
    fc reads act2's (3, 2, 2) output flattened: features 0..3 are channel 0 (dead),
    4..7 channel 1 (dead), 8..11 channel 2 (alive).
           unit 0 reads only features 0..7, b = -0.1: starved by act2;
           unit 1 reads features 8..11 with weight +1: fires;
           unit 2 reads features 0..3 (+1) and 8..11 (-1), b = -0.01: weights.
    """

    IN = (2, 4, 4)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.act1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 3, 1)
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(12, 3)
        self.act3 = nn.ReLU()
        self.head = nn.Linear(3, 2)
        with torch.no_grad():
            self.conv1.weight.abs_()
            self.conv1.weight[:2] = 0.0
            self.conv1.bias.copy_(torch.tensor([-1.0, -1.0, 0.1, 0.1]))
            self.conv2.weight.zero_()
            self.conv2.weight[0, :2] = 1.0
            self.conv2.weight[1, 2:] = -1.0
            self.conv2.weight[2, 2:] = 1.0
            self.conv2.bias.copy_(torch.tensor([-0.5, 0.0, 0.1]))
            self.fc.weight.zero_()
            self.fc.weight[0, :8] = 1.0
            self.fc.weight[1, 8:] = 1.0
            self.fc.weight[2, :4] = 1.0
            self.fc.weight[2, 8:] = -1.0
            self.fc.bias.copy_(torch.tensor([-0.1, 0.1, -0.01]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.act1(self.conv1(x)))
        h = self.act2(self.conv2(h))
        return self.head(self.act3(self.fc(h.flatten(1))))


def test_conv_channels_and_flattened_features_read_from_dead_channels_are_starved() -> None:
    report = relu_doctor.scan(ConvStarving(), positive_inputs(16, *ConvStarving.IN), batch_size=8)
    assert causes(report, "act1") == {0: "collapsed", 1: "collapsed"}
    assert causes(report, "act2") == {0: "starved", 1: "weights"}
    assert causes(report, "act3") == {0: "starved", 2: "weights"}
    assert notes(report, "act2")[0].startswith("reads only units 0, 1 of act1")
    assert notes(report, "act3")[0].startswith("reads only units 0, 1 of act2")


@pytest.mark.parametrize("transposed", [False, True])
def test_grouped_and_transposed_kernels_read_the_channels_of_their_group(transposed: bool) -> None:
    """``Producer.reads`` against a loop over the kernel: in-channel c is read by out-channel j
    when any weight linking them is non-zero."""
    torch.manual_seed(0)
    cls = nn.ConvTranspose2d if transposed else nn.Conv2d
    layer = cls(6, 4, 3, groups=2)
    with torch.no_grad():
        layer.weight.mul_((torch.rand_like(layer.weight) > 0.85).float())
    model = nn.Sequential(layer)
    kind = "ConvTranspose2d" if transposed else "Conv2d"
    producer = producing_layer(
        model, SiteTopology(producer="0", producer_kind=kind), 4, train=False
    )
    assert not isinstance(producer, str)
    w = layer.weight.detach()
    expected = np.zeros((4, 6), dtype=bool)
    for j in range(4):
        g = j // 2
        for c in range(3):
            kernel = w[g * 3 + c, j % 2] if transposed else w[j, c]
            expected[j, g * 3 + c] = bool((kernel != 0).any())
    got = producer.reads(np.arange(4), 6)
    assert got is not None
    np.testing.assert_array_equal(got, expected)
    rows = [w[(j // 2) * 3 : (j // 2) * 3 + 3, j % 2] if transposed else w[j] for j in range(4)]
    np.testing.assert_allclose(producer.row_norm, [float(r.norm()) for r in rows], rtol=1e-6)


# --- a BatchNorm folded in --------------------------------------------------------------


class ConvBN(nn.Module):
    """conv (3 -> 6, no bias) -> BatchNorm -> ReLU. The BatchNorm's shift kills channels
    1 (beta = -1e4) and 4 (beta = -30); channel 5 has a negative scale and beta = -50.
    Their w·x (the BatchNorm's scale times the convolution) is positive on some pixels, so
    the cause is ``bias``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.act = nn.ReLU()
        self.head = nn.Linear(6, 2)
        with torch.no_grad():
            self.bn.running_mean.copy_(torch.rand(6) - 0.5)
            self.bn.running_var.copy_(torch.rand(6) + 0.5)
            self.bn.weight.copy_(torch.rand(6) + 0.5)
            self.bn.weight[5] = -1.0
            self.bn.bias.copy_(torch.tensor([0.1, -1e4, 0.1, 0.1, -30.0, -50.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.bn(self.conv(x))).mean(dim=(2, 3)))


def test_batchnorm_shift_that_kills_channels_is_bias_and_w_x_matches_plain_torch() -> None:
    model = ConvBN().eval()
    x = torch.randn(32, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    report = relu_doctor.scan(model, x, batch_size=8)
    assert causes(report, "act") == {1: "bias", 4: "bias", 5: "bias"}
    bn = model.bn
    s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double()
    wx = F.conv2d(x.double(), model.conv.weight.detach().double(), padding=1) * s[:, None, None]
    truth = wx.amax(dim=(0, 2, 3)).numpy()
    terms = (bn.bias.abs() + s.abs() * bn.running_mean.abs()).detach().double().numpy()
    got = unit(report, "act", "max_wx")
    assert np.all(np.abs(got - truth) <= bound(unit(report, "act", "margin"), terms))
    assert truth[[1, 4, 5]].min() > 0.1


def test_train_mode_batchnorm_changes_b_per_batch_so_the_cause_is_unknown() -> None:
    model = ConvBN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(32, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    report = relu_doctor.scan(model, x, batch_size=8, mode="train")
    assert report.mode == "train"
    # Normalised per batch, the shifts of -1e4, -30 and -50 still kill channels 1, 4, 5.
    assert causes(report, "act") == {1: "unknown", 4: "unknown", 5: "unknown"}
    assert "train mode" in notes(report, "act")[1]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.training  # a fresh module trains; the scan leaves it that way


def test_dropout_runs_in_train_mode() -> None:
    """Dropout before the ReLU zeroes about half the pre-activations in train mode only."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.Dropout(0.5), nn.ReLU(), nn.Linear(32, 2))
    with torch.no_grad():
        model[0].weight.abs_()
        model[0].bias.fill_(0.1)  # every unit fires on positive inputs
    x = positive_inputs(64, 4)
    rng = torch.random.get_rng_state()
    eval_run = relu_doctor.scan(model, x, batch_size=16, mode="eval").site("2")
    train_run = relu_doctor.scan(model, x, batch_size=16, mode="train").site("2")
    assert eval_run.sparsity == 0.0
    assert 0.4 < train_run.sparsity < 0.6
    assert torch.equal(torch.random.get_rng_state(), rng)


# --- rounding: why the band exists -----------------------------------------------------


class Swamped(nn.Module):
    """fc (1 -> 4) on inputs in [0.5, 1], every bias -1e4, weights 1e-4, 0.05, -0.05 and 1:
    max(w·x) = 1e-4, 0.05, -0.025 and 1. In float32 ``z = w·x - 1e4`` moves in steps of
    ~1e-3, so a weight part of 1e-4 vanishes in z."""

    WEIGHTS = (1e-4, 0.05, -0.05, 1.0)

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 4)
        self.act = nn.ReLU()
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(self.WEIGHTS).unsqueeze(1))
            self.fc.bias.fill_(-1e4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x)).sum(dim=1, keepdim=True)


def test_a_weight_part_below_the_rounding_of_z_is_unknown_not_guessed() -> None:
    x = torch.linspace(0.5, 1.0, 33).unsqueeze(1)
    model = Swamped()
    report = relu_doctor.scan(model, x, batch_size=11)
    z = model.fc(x).detach()
    truth = (x.double() @ model.fc.weight.detach().double().T).amax(0).numpy()
    swamped = float(z[:, 0].max()) - float(model.fc.bias[0].detach())  # what z keeps of 1e-4
    assert swamped == 0.0 and truth[0] == pytest.approx(1e-4)
    assert causes(report, "act") == {0: "unknown", 1: "bias", 2: "weights", 3: "bias"}
    assert "within the rounding of z" in notes(report, "act")[0]
    got = unit(report, "act", "max_wx")
    assert np.all(np.abs(got - truth) <= bound(unit(report, "act", "margin"), np.full(4, 1e4)))


# --- no producing layer -----------------------------------------------------------------


def test_no_producing_layer_is_unknown_with_the_topology_reason() -> None:
    report = relu_doctor.scan(ConvNet(), positive_inputs(8, *ConvNet.IN))
    assert causes(report, "relu#1") == {0: "unknown"}  # pooled between conv and ReLU
    assert notes(report, "relu#1")[0].startswith(
        "no producing layer: the pre-activation comes from aten.max_pool2d"
    )
    assert causes(report, "act1") == {1: "collapsed", 4: "bias"}  # conv row / BN shift
    assert causes(report, "act3") == {2: "collapsed", 3: "collapsed", 6: "collapsed"}


# --- the site column and the public re-explanation of merged totals ---------------------


def test_causes_column_in_json_csv_and_table() -> None:
    report = relu_doctor.scan(Rows(), positive_inputs(32, 4), batch_size=16)
    counts = report.site("act").causes
    assert dict(counts) == {"collapsed": 2, "bias": 1, "weights": 1}
    assert str(counts) == "collapsed=2 bias=1 weights=1" and counts.letters() == "c2 b1 w1"
    assert report.to_dict()["sites"][0]["causes"] == {"collapsed": 2, "bias": 1, "weights": 1}
    assert "collapsed=2 bias=1 weights=1" in report.to_frame().to_csv(index=False)


def test_diagnose_decides_causes_for_rows_rebuilt_from_merged_totals() -> None:
    model = Starving()
    x = positive_inputs(48, Starving.IN)
    a = relu_doctor.scan(model, x[:32], batch_size=16, seed=1)
    b = relu_doctor.scan(model, x[32:], batch_size=16, seed=2)
    joint = relu_doctor.scan(model, x, batch_size=16)
    sites = []
    for sa, sb in zip(a.sites, b.sites, strict=True):
        assert sa.totals is not None and sb.totals is not None
        merged = sa.totals.merge(sb.totals)
        sites.append(
            SiteReport.from_totals(
                merged, sa.act, model="m", site=sa.site, kind=sa.kind,
                topology=sa.topology, unit_dim=sa.unit_dim,
            )
        )  # fmt: skip
    bare = replace(joint, sites=tuple(sites))
    assert bare.site("relu#2").causes is None  # rows from totals alone: no layer, no causes
    again = relu_doctor.diagnose(bare, model)
    assert {s: causes(again, s) for s in STARVING} == STARVING
    assert [x.action for x in again.suggestions] == [x.action for x in joint.suggestions]


def test_a_layer_that_cannot_be_read_leaves_its_units_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A layer whose weights fail to read (an exotic tensor type) does not fail the scan."""
    from relu_doctor.analyze import causes as causes_module

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("sparse tensors do not have strides\nsecond line")

    monkeypatch.setattr(causes_module, "producing_layer", fail)
    report = relu_doctor.scan(Rows(), positive_inputs(16, 4), batch_size=8)
    assert set(causes(report, "act").values()) == {"unknown"}
    assert notes(report, "act")[0] == (
        "could not read layer fc: RuntimeError: sparse tensors do not have strides"
    )


@pytest.mark.parametrize(
    ("shape", "transposed", "groups"),
    [((6, 5), False, 1), ((6, 4, 3, 3), False, 2), ((6, 3, 3, 3), True, 1), ((6, 2, 3), True, 3)],
)
def test_row_norms_match_float64_per_output_unit(
    shape: tuple[int, ...], transposed: bool, groups: int
) -> None:
    """Row norms are summed in float32 for speed; rows whose squares overflow (1e25) or
    underflow (1e-30) in float32 are summed again in float64, so every norm is the float64
    one to float32 rounding, and exact zeros stay 0 (collapsed units)."""
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    w[0] *= 1e25
    w[1] *= 1e-30
    w[2] = 0
    if transposed:  # (in, out/groups, *k): output unit j of group g reads w[g*in_g:(g+1)*in_g, j]
        in_g = shape[0] // groups
        ref = [
            w[g * in_g : (g + 1) * in_g, j].double().norm().item()
            for g in range(groups)
            for j in range(shape[1])
        ]
    else:
        ref = [w[j].double().norm().item() for j in range(shape[0])]
    got = _row_norms(w, transposed, groups)
    assert got.shape == (len(ref),)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=0)
