"""Exact per-site numbers from ``relu_doctor.scan`` on models with planted dead units.

The fixtures in ``tests/models.py`` plant dead units (weight row 0, bias -1e4) and make every
other unit fire on every sample, so the expected dead counts, units and margins are known
before the scan runs. Gradient norms are compared with a plain-torch computation.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import relu_doctor
from relu_doctor.analyze.report import ModelReport
from relu_doctor.errors import CaptureError
from tests.fixtures.models import (
    DEAD_BIAS,
    ConvNet,
    FamilyModel,
    FunctionalMLP,
    GradNet,
    InplaceReLU,
    MixedReLU,
    NamingNet,
    NoReLU,
    PositionDead,
    ReLU6Model,
    ReusedReLU,
    ScalarHead,
    ScriptNet,
    SeqMLP,
    SpareActivation,
    SqueezeExciteNet,
    TokenFlatten,
    TwoInputs,
    XYInputs,
    plant,
    positive_inputs,
    reference_grad_norms,
)

CONTRACT_COLUMNS = [
    "model",
    "site",
    "kind",
    "calls",
    "units",
    "samples",
    "dead",
    "dead_fraction",
    "near_dead",
    "dormant",
    "sparsity",
    "max_activation",
    "dead_margin",
    "grad_norm",
]


def names(report: ModelReport) -> list[str]:
    return [s.site for s in report.sites]


def assert_sites(report: ModelReport, expected: dict[str, tuple[int, list[int]]]) -> None:
    """Executed sites are exactly ``expected`` (in that order) with those units / dead."""
    assert [s.site for s in report.sites if s.executed] == list(expected)
    for site, (units, dead) in expected.items():
        s = report.site(site)
        assert (s.units, s.dead) == (units, len(dead)), site
        assert s.dead_fraction == pytest.approx(len(dead) / units), site


def dead_units_of(report: ModelReport, site: str) -> list[int]:
    units = report.units_frame()
    rows = units[(units["site"] == site) & units["dead"]]
    return sorted(int(u) for u in rows["unit"])


# --- functional calls -------------------------------------------------------------------


@pytest.mark.parametrize("grad", [True, False])
def test_functional_only_model(grad: bool) -> None:
    x = positive_inputs(12, FunctionalMLP.IN)
    report = relu_doctor.scan(FunctionalMLP(), x, batch_size=4, grad=grad)
    assert_sites(report, FunctionalMLP.EXPECTED)
    for site, (_, dead) in FunctionalMLP.EXPECTED.items():
        s = report.site(site)
        assert s.kind == "functional"
        assert s.counted
        assert dead_units_of(report, site) == dead
        # in-place calls (relu#4, relu#5) are read before they overwrite their input
        assert s.dead_margin == (DEAD_BIAS if dead else None), site
    total = sum(u for u, _ in FunctionalMLP.EXPECTED.values())
    dead = sum(len(d) for _, d in FunctionalMLP.EXPECTED.values())
    assert report.dead_fraction == pytest.approx(dead / total)


def test_samples_and_calls_count_rows_and_batches() -> None:
    x = positive_inputs(10, FunctionalMLP.IN)
    report = relu_doctor.scan(FunctionalMLP(), x, batch_size=4, grad=False)
    assert report.samples == 10
    assert report.batches == 3  # 4 + 4 + 2
    frame = report.to_frame()
    assert frame["samples"].tolist() == [10] * 5
    assert frame["calls"].tolist() == [3] * 5


def test_one_dimensional_relu_output_is_one_unit_over_n_samples() -> None:
    x = positive_inputs(10, ScalarHead.IN)
    s = relu_doctor.scan(ScalarHead(), x, batch_size=4, grad=False).site("relu#1")
    assert (s.units, s.samples, s.dead) == (1, 10, 1)


def test_samples_are_batch_rows_when_the_model_flattens_tokens() -> None:
    x = positive_inputs(6, TokenFlatten.T, TokenFlatten.F_IN)
    report = relu_doctor.scan(TokenFlatten(), x, batch_size=3, grad=False)
    s = report.site("act")
    assert (s.units, s.dead) == (4, len(TokenFlatten.DEAD))
    assert s.samples == report.samples == 6


def test_eps_is_the_firing_threshold() -> None:
    x = positive_inputs(8, FunctionalMLP.IN)
    planted = sum(len(d) for _, d in FunctionalMLP.EXPECTED.values())
    units = sum(u for u, _ in FunctionalMLP.EXPECTED.values())
    low = relu_doctor.scan(FunctionalMLP(), x, grad=False, eps=0.05)
    assert low.dead_units == planted  # every live pre-activation is >= 0.1 > eps
    high = relu_doctor.scan(FunctionalMLP(), x, grad=False, eps=1e6)
    assert high.dead_units == high.total_units == units
    assert {s.sparsity for s in high.sites} == {1.0}


def test_batches_limits_the_rows_scanned() -> None:
    x = positive_inputs(10, FunctionalMLP.IN)
    report = relu_doctor.scan(FunctionalMLP(), x, batch_size=3, batches=2, grad=False)
    assert report.samples == 6
    assert {s.samples for s in report.sites} == {6}


# --- modules ----------------------------------------------------------------------------


def test_module_reused_twice_is_two_sites() -> None:
    x = positive_inputs(8, ReusedReLU.IN)
    report = relu_doctor.scan(ReusedReLU(), x, batch_size=4)
    assert names(report) == ["act#1", "act#2"]
    assert_sites(report, ReusedReLU.EXPECTED)
    for site, (_, dead) in ReusedReLU.EXPECTED.items():
        assert report.site(site).kind == "module"
        assert report.site(site).calls == 2
        assert dead_units_of(report, site) == dead


@pytest.mark.parametrize("grad", [True, False])
def test_inplace_module_reads_the_pre_activation_before_it_is_overwritten(grad: bool) -> None:
    x = positive_inputs(8, InplaceReLU.IN)
    report = relu_doctor.scan(InplaceReLU(), x, grad=grad)
    s = report.site("act")
    assert s.kind == "module-inplace"
    assert (s.units, s.dead) == (InplaceReLU.UNITS, 2)
    # median of the planted margins -123.5 and -7.25; a read after the overwrite gives 0
    assert s.dead_margin == (-123.5 + -7.25) / 2
    units = report.units_frame()
    margins = dict(zip(units["unit"], units["margin"], strict=True))
    assert margins[1] == -123.5
    assert margins[4] == -7.25
    if grad:
        assert s.grad_norm is not None and s.grad_norm > 0


def test_module_and_functional_relu_are_not_double_counted() -> None:
    x = positive_inputs(8, MixedReLU.IN)
    report = relu_doctor.scan(MixedReLU(), x)
    assert names(report) == ["act", "relu#1"]
    assert_sites(report, MixedReLU.EXPECTED)
    assert [s.kind for s in report.sites] == ["module", "functional"]
    units = sum(u for u, _ in MixedReLU.EXPECTED.values())
    dead = sum(len(d) for _, d in MixedReLU.EXPECTED.values())
    assert (report.total_units, report.dead_units) == (units, dead)
    assert report.dead_fraction == pytest.approx(dead / units)


# --- ReLU family ------------------------------------------------------------------------


@pytest.mark.parametrize("grad", [True, False])  # inference mode keeps aten.relu6 whole
def test_relu6_in_every_spelling_is_a_counted_site(grad: bool) -> None:
    x = positive_inputs(8, ReLU6Model.IN)
    report = relu_doctor.scan(ReLU6Model(), x, grad=grad)
    assert names(report) == list(ReLU6Model.EXPECTED)  # nn.Hardtanh() "ht" is no site
    frame = report.to_frame().set_index("site")
    for site, (kind, units, dead) in ReLU6Model.EXPECTED.items():
        assert frame.loc[site, "kind"] == kind
        assert frame.loc[site, "activation"] == "ReLU6"
        assert bool(frame.loc[site, "counted"])
        assert (frame.loc[site, "units"], frame.loc[site, "dead"]) == (units, len(dead))
        assert frame.loc[site, "max_activation"] == 6.0  # unit 0 sits at +100, capped
        assert dead_units_of(report, site) == dead
    units = sum(u for _, u, _ in ReLU6Model.EXPECTED.values())
    dead = sum(len(d) for _, _, d in ReLU6Model.EXPECTED.values())
    assert report.dead_fraction == pytest.approx(dead / units)


def test_plain_hardtanh_is_not_a_site() -> None:
    class OnlyHardtanh(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 4)
            self.ht = nn.Hardtanh()
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.ht(self.fc(x))) + torch.nn.functional.hardtanh(x).sum()

    report = relu_doctor.scan(OnlyHardtanh(), torch.randn(6, 3), grad=False)
    assert names(report) == ["act"]


@pytest.mark.parametrize("grad", [True, False])  # inference mode keeps aten.prelu whole
def test_leaky_prelu_elu_are_listed_but_not_counted(grad: bool) -> None:
    x = positive_inputs(8, FamilyModel.IN)
    report = relu_doctor.scan(FamilyModel(), x, grad=grad)
    assert names(report) == list(FamilyModel.EXPECTED)
    frame = report.to_frame().set_index("site")
    for site, (kind, units, dead, counted) in FamilyModel.EXPECTED.items():
        assert frame.loc[site, "kind"] == kind
        assert bool(frame.loc[site, "counted"]) is counted
        # "dead" for these means never positive
        assert (frame.loc[site, "units"], frame.loc[site, "dead"]) == (units, len(dead))
        assert dead_units_of(report, site) == dead
    # only the ReLU site counts
    _, units, dead, _ = FamilyModel.EXPECTED["relu"]
    assert report.total_units == units
    assert report.dead_fraction == pytest.approx(len(dead) / units)


# --- TorchScript and torch.export -------------------------------------------------------

STATIC_MODELS = [FunctionalMLP, ReusedReLU, ScriptNet]


@pytest.mark.parametrize("model_cls", STATIC_MODELS, ids=lambda c: c.__name__)
def test_torchscript_sites_match_eager(model_cls: Any) -> None:
    x = positive_inputs(8, model_cls.IN)
    scripted = torch.jit.script(model_cls())
    report = relu_doctor.scan(scripted, x)
    assert_sites(report, model_cls.EXPECTED)
    assert {s.kind for s in report.sites} == {"script"}
    assert names(report) == names(relu_doctor.scan(model_cls(), x, grad=False))
    assert {s.samples for s in report.sites} == {8}


@pytest.mark.parametrize("model_cls", STATIC_MODELS, ids=lambda c: c.__name__)
def test_export_program_sites_match_eager(model_cls: Any) -> None:
    x = positive_inputs(12, model_cls.IN)
    program = torch.export.export(model_cls(), (x[:4],))
    report = relu_doctor.scan(program, x)  # batch 4 is picked from the trace
    assert_sites(report, model_cls.EXPECTED)
    assert {s.kind for s in report.sites} == {"export"}
    assert names(report) == names(relu_doctor.scan(model_cls(), x, grad=False))
    assert report.samples == 12
    assert {s.samples for s in report.sites} == {12}
    assert {s.calls for s in report.sites} == {3}


def test_scripted_model_never_reports_zero_sites() -> None:
    """The peers' failure mode: a TorchScript model with only functional ReLUs."""
    x = positive_inputs(4, FunctionalMLP.IN)
    report = relu_doctor.scan(torch.jit.script(FunctionalMLP()), x, grad=False)
    assert len(report.sites) == len(FunctionalMLP.EXPECTED)
    assert report.dead_units == sum(len(d) for _, d in FunctionalMLP.EXPECTED.values())


# --- units: channels, sequences, --unit-dim ---------------------------------------------


@pytest.mark.parametrize("grad", [True, False])
def test_conv_net_units_are_channels(grad: bool) -> None:
    x = positive_inputs(6, *ConvNet.IN)
    report = relu_doctor.scan(ConvNet(), x, batch_size=3, grad=grad)
    assert_sites(report, ConvNet.EXPECTED)
    for site, (_, dead) in ConvNet.EXPECTED.items():
        assert dead_units_of(report, site) == dead
        assert report.site(site).unit_dim == 1
        assert report.site(site).samples == 6
    units = sum(u for u, _ in ConvNet.EXPECTED.values())
    dead = sum(len(d) for _, d in ConvNet.EXPECTED.values())
    assert report.dead_fraction == pytest.approx(dead / units)


def test_conv_units_stay_channels_when_a_linear_runs_in_a_side_branch() -> None:
    x = positive_inputs(4, *SqueezeExciteNet.IN)
    s = relu_doctor.scan(SqueezeExciteNet(), x, grad=False).site("relu#1")
    assert (s.units, s.dead) == (SqueezeExciteNet.CHANNELS, len(SqueezeExciteNet.DEAD))


def test_sequence_mlp_units_are_the_last_dim() -> None:
    x = positive_inputs(4, SeqMLP.T, SeqMLP.F_IN)
    report = relu_doctor.scan(SeqMLP(), x)
    assert_sites(report, SeqMLP.EXPECTED)
    for site, (_, dead) in SeqMLP.EXPECTED.items():
        assert report.site(site).unit_dim == 2
        assert report.site(site).samples == 4  # batch rows, not N * T
        assert dead_units_of(report, site) == dead


def test_unit_dim_override() -> None:
    x = positive_inputs(6, PositionDead.T, PositionDead.F_IN)
    default = relu_doctor.scan(PositionDead(), x, grad=False).site("relu#1")
    assert (default.units, default.dead) == (PositionDead.F_OUT, 0)
    for dim in (2, -1):
        s = relu_doctor.scan(PositionDead(), x, grad=False, unit_dim=dim).site("relu#1")
        assert (s.units, s.dead) == (PositionDead.F_OUT, 0)
    by_pos = relu_doctor.scan(PositionDead(), x, grad=False, unit_dim=1).site("relu#1")
    assert (by_pos.units, by_pos.dead, by_pos.unit_dim) == (PositionDead.T, 1, 1)
    assert by_pos.dead_margin == pytest.approx(DEAD_BIAS, rel=1e-3)


# --- naming and listing -----------------------------------------------------------------


def test_site_names_and_first_execution_order() -> None:
    report = relu_doctor.scan(NamingNet(), positive_inputs(4, NamingNet.IN), grad=False)
    assert names(report) == [*NamingNet.ORDER, "never"]
    kinds = {s.site: s.kind for s in report.sites if s.executed}
    assert kinds == {
        "block1:relu#1": "functional",
        "block1.act": "module",
        "block1:relu#2": "functional",
        "relu#1": "functional",
        "late": "module",
    }


def test_activation_module_that_never_runs_is_listed() -> None:
    x = positive_inputs(6, 4)
    report = relu_doctor.scan(SpareActivation(), x, grad=False)
    spare = report.site("spare")
    assert spare.executed is False
    assert spare.counted is False
    assert spare.calls == 0
    assert any("spare" in w for w in report.warnings)
    ran = report.site("relu#1")
    assert (ran.units, ran.dead) == (3, 1)
    assert report.dead_fraction == pytest.approx(1 / 3)  # the idle module adds no units
    frame = report.to_frame().set_index("site")
    assert not bool(frame.loc["spare", "executed"])


def test_model_without_relu_raises_and_names_its_activations() -> None:
    with pytest.raises(CaptureError) as info:
        relu_doctor.scan(NoReLU(), torch.randn(4, 4), grad=False)
    message = str(info.value)
    assert "GELU" in message
    assert "Tanh" in message


# --- inputs -----------------------------------------------------------------------------


def test_keyword_inputs_from_an_iterable_of_dicts() -> None:
    data = [
        {"x": positive_inputs(4, 3, seed=i), "mask": positive_inputs(4, 2, seed=10 + i)}
        for i in range(3)
    ]
    report = relu_doctor.scan(TwoInputs(), data)
    s = report.site("relu#1")
    assert (s.units, s.dead, s.samples, s.calls) == (4, 1, 12, 3)
    assert dead_units_of(report, "relu#1") == TwoInputs.DEAD
    assert report.samples == 12


def test_two_positional_inputs_with_targets() -> None:
    data = [
        ((positive_inputs(4, 3, seed=i), positive_inputs(4, 2, seed=10 + i)), torch.arange(4))
        for i in range(2)
    ]
    report = relu_doctor.scan(TwoInputs(), data)
    s = report.site("relu#1")
    assert (s.units, s.dead, s.samples) == (4, 1, 8)
    assert s.grad_norm is not None


def test_keyword_input_named_y() -> None:
    data = [{"x": positive_inputs(4, 3), "y": positive_inputs(4, 2)}]
    s = relu_doctor.scan(XYInputs(), data, grad=False).site("relu#1")
    assert (s.units, s.dead) == (4, 1)


# --- the frame --------------------------------------------------------------------------


def test_frame_has_contract_columns_in_order_and_matches_sites() -> None:
    x = positive_inputs(8, ConvNet.IN[0], *ConvNet.IN[1:])
    report = relu_doctor.scan(ConvNet(), x)
    frame = report.to_frame()
    assert list(frame.columns[: len(CONTRACT_COLUMNS)]) == CONTRACT_COLUMNS
    assert "activation" in frame.columns
    assert frame["site"].tolist() == list(ConvNet.EXPECTED)
    assert frame["dead"].tolist() == [len(d) for _, d in ConvNet.EXPECTED.values()]
    assert frame["units"].tolist() == [u for u, _ in ConvNet.EXPECTED.values()]
    assert (frame["model"] == report.model).all()


# --- gradients --------------------------------------------------------------------------


def _split(x: torch.Tensor, y: torch.Tensor | None, size: int) -> list[Any]:
    return [
        (x[i : i + size], None if y is None else y[i : i + size]) for i in range(0, len(x), size)
    ]


def _check_grads(report: ModelReport, sites: dict[str, float], params: dict[str, float]) -> None:
    for site, expected in sites.items():
        assert report.site(site).grad_norm == pytest.approx(expected, rel=1e-5), site
    got = {p.name: p.grad_norm for p in report.params}
    assert set(got) == set(params)
    for name, expected in params.items():
        assert got[name] == pytest.approx(expected, rel=1e-5), name


def test_grad_norms_with_surrogate_loss() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, GradNet.IN, generator=g)
    model = GradNet()
    sites, params = reference_grad_norms(model, _split(x, None, 4))
    assert sites["act"] > 0 and sites["relu#1"] > 0
    report = relu_doctor.scan(model, x, batch_size=4)
    assert report.batches == 3
    _check_grads(report, sites, params)


def test_grad_norms_with_cross_entropy_targets() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(12, GradNet.IN, generator=g)
    y = torch.randint(0, GradNet.OUT, (12,), generator=g)
    model = GradNet()
    batches = _split(x, y, 4)
    sites, params = reference_grad_norms(model, batches)
    report = relu_doctor.scan(model, batches)
    _check_grads(report, sites, params)
    # the surrogate loss gives different numbers: the targets were really used
    surrogate, _ = reference_grad_norms(model, _split(x, None, 4))
    assert surrogate["act"] != pytest.approx(sites["act"], rel=1e-3)


def test_grad_norms_with_mse_targets() -> None:
    g = torch.Generator().manual_seed(12)
    x = torch.randn(8, GradNet.IN, generator=g)
    y = torch.randn(8, GradNet.OUT, generator=g)
    model = GradNet()
    batches = _split(x, y, 4)
    sites, params = reference_grad_norms(model, batches)
    _check_grads(relu_doctor.scan(model, batches), sites, params)


def test_grad_norms_of_a_module_reused_twice() -> None:
    model = ReusedReLU()
    x = positive_inputs(8, ReusedReLU.IN)
    expected = {"act#1": 0.0, "act#2": 0.0}
    for xb in x.split(4):
        pre1 = model.fc1(xb)
        pre2 = model.fc2(torch.relu(pre1))
        out = model.out(torch.relu(pre2))
        loss = 0.5 * out.pow(2).sum(dim=1).mean()
        g1, g2 = torch.autograd.grad(loss, [pre1, pre2])
        expected["act#1"] += float(g1.norm()) / 2
        expected["act#2"] += float(g2.norm()) / 2
    report = relu_doctor.scan(model, x, batch_size=4)
    for site, value in expected.items():
        assert report.site(site).grad_norm == pytest.approx(value, rel=1e-5), site


def test_no_grad_scan_has_no_grad_norms() -> None:
    x = torch.randn(8, GradNet.IN)
    report = relu_doctor.scan(GradNet(), x, grad=False)
    assert all(s.grad_norm is None for s in report.sites)
    assert report.params == ()


def test_grad_norms_of_a_partly_frozen_model() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, GradNet.IN, generator=g)
    model = GradNet()
    model.fc1.requires_grad_(False)
    model.fc2.requires_grad_(False)
    sites, params = reference_grad_norms(model, _split(x, None, 4))
    report = relu_doctor.scan(model, x, batch_size=4)
    _check_grads(report, sites, {n: v for n, v in params.items() if n.startswith("fc3")})


def test_grad_norms_of_relu6_and_the_rest_of_the_family() -> None:
    torch.manual_seed(6)
    model = nn.Sequential(
        nn.Linear(5, 8),
        nn.ReLU6(),
        nn.Linear(8, 7),
        nn.LeakyReLU(0.1),
        nn.Linear(7, 6),
        nn.ELU(),
        nn.Linear(6, 5),
        nn.PReLU(),
        nn.Linear(5, 3),
    )
    with torch.no_grad():
        model[0].weight.mul_(8.0)  # push some ReLU6 inputs above the cap of 6
    acts = {"1": model[1], "3": model[3], "5": model[5], "7": model[7]}
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(7))

    expected = dict.fromkeys(acts, 0.0)
    for xb in x.split(4):
        seen: dict[str, torch.Tensor] = {}
        handles = [
            m.register_forward_pre_hook(lambda mod, args, n=n, s=seen: s.__setitem__(n, args[0]))
            for n, m in acts.items()
        ]
        try:
            out = model(xb)
        finally:
            for h in handles:
                h.remove()
        loss = 0.5 * out.pow(2).sum(dim=1).mean()
        grads = torch.autograd.grad(loss, [seen[n] for n in acts])
        for n, gr in zip(acts, grads, strict=True):
            expected[n] += float(gr.norm()) / 3
    assert (seen["1"] > 6).any()

    report = relu_doctor.scan(model, x, batch_size=4)
    assert names(report) == list(acts)
    assert [s.kind for s in report.sites] == ["module", "LeakyReLU", "ELU", "PReLU"]
    for n, value in expected.items():
        assert report.site(n).grad_norm == pytest.approx(value, rel=1e-5), n


def test_a_compiled_model_is_scanned_through_its_original_module() -> None:
    # Compiled kernels would fuse the ReLU out of sight: the scan runs the original module
    # and never triggers a compilation (the backend records every graph it is given).
    compiled: list[object] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: object) -> object:
        compiled.append(gm)
        return gm.forward

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    plant(model[0], [1, 2])
    wrapped = torch.compile(model, backend=backend)
    report = relu_doctor.scan(wrapped, positive_inputs(8, 3), grad=False)
    assert report.site("1").dead == 2
    assert compiled == []
    wrapped(positive_inputs(2, 3))  # the backend does see a real compilation
    assert len(compiled) == 1


def test_a_bfloat16_model_gets_bfloat16_synthetic_inputs() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    plant(model[0], [0, 3])
    report = relu_doctor.scan(model.to(torch.bfloat16), input_shape=(3,), batches=2)
    site = report.site("1")
    # Seeded Gaussian inputs: each live unit (bias 0.1, weights >= 0) fires on some of them.
    assert (site.units, site.samples, site.dead) == (4, 64, 2)
    assert site.dead_margin == torch.tensor(DEAD_BIAS, dtype=torch.bfloat16).item()
