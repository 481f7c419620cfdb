"""``relu_doctor.repair``: ReDo re-initialisation and activation swaps on planted models
(README "Repairing"). Every expectation comes from the planting (dead units have a zero
weight row and bias -1e4) or from a plain-torch computation here, never from relu-doctor's
own numbers."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relu_doctor
from relu_doctor import activations
from relu_doctor.errors import RepairError, UsageError
from relu_doctor.fix import SWAPS, TARGETS
from tests.fixtures.models import (
    DEAD_BIAS,
    ConvNet,
    FlatHead,
    FunctionalMLP,
    MixedReLU,
    NamingNet,
    ReusedReLU,
    ScriptNet,
    SeqMLP,
    plant,
    positive_inputs,
)


def mlp(dead: list[int] | None = None, margin: float = DEAD_BIAS) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            fc1=plant(nn.Linear(6, 8), dead if dead is not None else [1, 4], margin=margin),
            act=nn.ReLU(),
            fc2=nn.Linear(8, 3),
        )
    )


def fires(h: torch.Tensor) -> torch.Tensor:
    """Per unit (dim 1): did it output > 0 on any sample and position? (plain torch)"""
    return (h > 0).flatten(2).any(dim=2).any(dim=0) if h.dim() > 2 else (h > 0).any(dim=0)


def max_rel_change(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        ya, yb = a(x), b(x)
    return float((ya - yb).abs().max() / ya.abs().max())


# --- the registry ---------------------------------------------------------------------------


def test_the_targets_are_the_registry_kinds_fix_can_build() -> None:
    swappable = [a.op for a in activations.kinds() if a.swap is not None and not a.relu_family]
    assert sorted(SWAPS) == sorted(swappable)  # the order is the one users read
    assert (*SWAPS, "reinit") == TARGETS


# --- ReDo: Linear -> ReLU -> Linear -----------------------------------------------------------


def test_reinit_keeps_the_function_and_revives_the_planted_units() -> None:
    model, x = mlp([1, 4]), positive_inputs(64, 6)
    fixed, proof = relu_doctor.repair(model, x, to="reinit", sites="all")
    fresh = torch.randn(256, 6) * 3
    assert max_rel_change(model, fixed, x) < 1e-5
    assert max_rel_change(model, fixed, fresh) < 1e-5
    with torch.no_grad():
        revived = fires(torch.relu(fixed.fc1(x)))
    assert revived.all()  # every unit fires now, the two re-drawn ones included
    # Outgoing weights of the re-drawn units are zero; all other weights are untouched.
    assert torch.equal(fixed.fc2.weight[:, [1, 4]], torch.zeros(3, 2))
    keep = [0, 2, 3, 5, 6, 7]
    assert torch.equal(fixed.fc2.weight[:, keep], model.fc2.weight[:, keep])
    assert torch.equal(fixed.fc1.weight[keep], model.fc1.weight[keep])
    # Fresh rows from nn.Linear's initialiser: |w| <= 1/sqrt(fan_in), bias likewise.
    bound = 1 / 6**0.5
    assert 0 < fixed.fc1.weight[[1, 4]].abs().max() <= bound
    assert fixed.fc1.bias[[1, 4]].abs().max() <= bound
    (site,) = proof.sites
    assert (site.site, site.dead, site.redrawn, site.firing) == ("act", (2, 0), 2, 2)
    assert site.passing == (6, 8)
    assert proof.comparison is not None and proof.comparison.max_change <= 1e-5


def test_redrawn_units_learn_outgoing_first_then_incoming() -> None:
    """ReDo's zero outgoing weights get a gradient at once (the unit fires); its incoming
    weights get one after the first step has made the outgoing weights non-zero."""
    model, x = mlp([1, 4]), positive_inputs(64, 6)
    y = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(1))
    fixed, _ = relu_doctor.repair(model, (x, y), to="reinit")
    F.cross_entropy(fixed(x), y).backward()
    assert (fixed.fc2.weight.grad[:, [1, 4]].abs().sum(dim=0) > 0).all()
    assert torch.equal(fixed.fc1.weight.grad[[1, 4]], torch.zeros(2, 6))
    torch.optim.SGD(fixed.parameters(), lr=0.5).step()
    fixed.zero_grad()
    F.cross_entropy(fixed(x), y).backward()
    assert (fixed.fc1.weight.grad[[1, 4]].abs().sum(dim=1) > 0).all()


def test_repair_works_on_a_copy_and_returns_the_input_type() -> None:
    model, x = mlp(), positive_inputs(32, 6)
    saved = copy.deepcopy(model.state_dict())
    fixed, proof = relu_doctor.repair(model, x, to="reinit")
    assert fixed is not model and isinstance(fixed, nn.Sequential)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved.items())
    assert proof.changed and proof.before.dead_units == 2 and proof.after.dead_units == 0


def test_the_seed_decides_the_draw() -> None:
    model, x = mlp(), positive_inputs(32, 6)
    a, _ = relu_doctor.repair(model, x, to="reinit", seed=3)
    b, _ = relu_doctor.repair(model, x, to="reinit", seed=3)
    c, _ = relu_doctor.repair(model, x, to="reinit", seed=4)
    assert torch.equal(a.fc1.weight, b.fc1.weight)
    assert not torch.equal(a.fc1.weight[[1, 4]], c.fc1.weight[[1, 4]])


class ConstantInit(nn.Linear):
    """A layer with its own initialiser: ReDo must use it."""

    def reset_parameters(self) -> None:
        nn.init.constant_(self.weight, 0.5)
        if self.bias is not None:
            nn.init.constant_(self.bias, 0.25)


def test_the_layers_own_initialiser_draws_the_rows() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(plant(ConstantInit(6, 4), [2]), nn.ReLU(), nn.Linear(4, 2))
    fixed, _ = relu_doctor.repair(model, positive_inputs(32, 6), to="reinit")
    assert torch.equal(fixed[0].weight[2], torch.full((6,), 0.5))
    assert fixed[0].bias[2].item() == 0.25


def test_a_unit_that_would_stay_dead_is_redrawn_then_reported() -> None:
    """All-zero inputs leave a bias-free unit at exactly 0 whatever its weights: every draw
    is spent, and the proof and a note say the re-drawn units do not fire."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4, bias=False), nn.ReLU(), nn.Linear(4, 2))
    fixed, proof = relu_doctor.repair(model, torch.zeros(32, 6), to="reinit")
    (site,) = proof.sites
    assert (site.redrawn, site.firing, site.draws) == (4, 0, 10)
    assert any("4 re-drawn units of 1 site (1) do not fire" in n for n in proof.notes)
    assert not torch.equal(fixed[0].weight, model[0].weight)  # re-drawn all the same


# --- ReDo: convolutions, BatchNorm, flattened heads --------------------------------------------


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_conv_batchnorm_channels(mode: str) -> None:
    """act1 = relu(bn1(conv1(x))): channel 1 dies in the conv, channel 4 in the BatchNorm;
    both are re-drawn and their BatchNorm channel reset to its initial values."""
    model, x = ConvNet(), positive_inputs(16, *ConvNet.IN)
    fixed, proof = relu_doctor.repair(model, x, to="reinit", sites="act1", mode=mode)
    bn = fixed.bn1
    assert bn.weight[[1, 4]].tolist() == [1.0, 1.0] and bn.bias[[1, 4]].tolist() == [0.0, 0.0]
    assert bn.running_mean[[1, 4]].tolist() == [0.0, 0.0]
    assert bn.running_var[[1, 4]].tolist() == [1.0, 1.0]
    live = [0, 2, 3, 5]
    assert torch.equal(bn.running_mean[live], model.bn1.running_mean[live])
    assert torch.equal(fixed.conv2.weight[:, [1, 4]], torch.zeros(5, 2, 3, 3))
    fixed.train(mode == "train")
    model.train(mode == "train")
    with torch.no_grad():
        h = fixed.act1(fixed.bn1(fixed.conv1(x)))
    assert fires(h).all()
    for data in (x, torch.randn(16, *ConvNet.IN)):
        torch.manual_seed(0)
        assert max_rel_change(model, fixed, data) < 1e-5
    (site,) = proof.sites
    assert site.dead == (2, 0) and site.firing == 2
    assert proof.refused == ()


def test_flattened_conv_into_a_linear_head() -> None:
    model, x = FlatHead(), positive_inputs(32, *FlatHead.IN)
    fixed, proof = relu_doctor.repair(model, x, to="reinit")
    w = fixed.head.weight.view(4, FlatHead.CHANNELS, 9)
    assert torch.equal(w[:, [1, 3]], torch.zeros(4, 2, 9))
    live = [0, 2, 4]
    assert torch.equal(w[:, live], model.head.weight.view(4, FlatHead.CHANNELS, 9)[:, live])
    assert max_rel_change(model, fixed, x) < 1e-5
    assert max_rel_change(model, fixed, torch.randn(32, *FlatHead.IN)) < 1e-5
    assert proof.sites[0].dead == (2, 0)


class GroupedConsumer(nn.Module):
    """conv (8 channels) -> ReLU -> grouped conv (4 groups of 2 input channels)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = plant(nn.Conv2d(3, 8, 3, padding=1), [2, 7])
        self.act = nn.ReLU()
        self.mix = nn.Conv2d(8, 12, 1, groups=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.act(self.conv(x)))


def test_a_grouped_consumer_zeroes_only_the_group_that_reads_the_channel() -> None:
    model, x = GroupedConsumer(), positive_inputs(8, 3, 5, 5)
    fixed, _ = relu_doctor.repair(model, x, to="reinit")
    w, old = fixed.mix.weight, model.mix.weight  # (12, 2, 1, 1): group g = rows 3g..3g+2
    assert torch.equal(w[3:6, 0], torch.zeros(3, 1, 1))  # channel 2 = group 1, column 0
    assert torch.equal(w[9:12, 1], torch.zeros(3, 1, 1))  # channel 7 = group 3, column 1
    mask = torch.ones_like(w, dtype=torch.bool)
    mask[3:6, 0] = False
    mask[9:12, 1] = False
    assert torch.equal(w[mask], old[mask])
    assert max_rel_change(model, fixed, torch.randn(8, 3, 5, 5)) < 1e-5


def test_sequences_of_features() -> None:
    model, x = SeqMLP(), positive_inputs(8, SeqMLP.T, SeqMLP.F_IN)
    fixed, proof = relu_doctor.repair(model, x, to="reinit", sites="mlp.act")
    assert max_rel_change(model, fixed, x) < 1e-5
    assert proof.sites[0].dead == (2, 0)


def test_what_redo_cannot_do_is_refused_with_the_reason() -> None:
    model, x = MixedReLU(), positive_inputs(16, MixedReLU.IN)
    _, proof = relu_doctor.repair(model, x, to="reinit", sites="all")
    assert [s.site for s in proof.sites] == ["act"]
    assert proof.refused == (
        ("relu#1", "no single layer consumes its output (the output leaves the model)"),
    )
    with pytest.raises(RepairError, match=r"relu#1: no single layer consumes its output"):
        relu_doctor.repair(model, x, to="reinit", sites="relu#1")


class ResidualRead(nn.Module):
    """The pre-activation is also added to the output: re-drawing its rows would change
    the function, which the output check catches."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = plant(nn.Linear(4, 4), [1])
        self.fc2 = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(F.relu(h)) + 1e-3 * h


def test_a_change_that_would_alter_the_outputs_is_undone_and_refused() -> None:
    model, x = ResidualRead(), positive_inputs(16, 4)
    with pytest.raises(RepairError, match=r"changed the model's output by .* left as it was"):
        relu_doctor.repair(model, x, to="reinit", sites="relu#1")


# --- swaps ----------------------------------------------------------------------------------


def zero_grad_units(model: nn.Module, pre: str, x: torch.Tensor) -> int:
    """Plain torch: units of the output of ``pre`` whose loss gradient is 0 on every sample."""
    captured: dict[str, torch.Tensor] = {}

    def keep(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        out.retain_grad()
        captured["h"] = out

    handle = model.get_submodule(pre).register_forward_hook(keep)
    try:
        model(x).pow(2).sum().backward()
    finally:
        handle.remove()
    g = captured["h"].grad
    assert g is not None
    return int((g == 0).all(dim=0).sum())


@pytest.mark.parametrize(("to", "cls"), [("leaky_relu", nn.LeakyReLU), ("prelu", nn.PReLU)])
def test_a_swap_lets_gradient_through_the_dead_units(to: str, cls: type) -> None:
    model, x = mlp([1, 4], margin=-3.0), positive_inputs(64, 6)
    fixed, proof = relu_doctor.repair(model, x, to=to, slope=0.05)
    assert isinstance(fixed.act, cls)
    assert zero_grad_units(copy.deepcopy(model), "fc1", x) == 2
    assert zero_grad_units(copy.deepcopy(fixed), "fc1", x) == 0
    (site,) = proof.sites
    assert site.passing == (6, 8)  # as plain torch found: 2 of 8 blocked before, none after
    assert site.dead == (2, 2)  # dead = never positive: a leaky unit below zero still is
    if to == "prelu":
        assert fixed.act.weight.shape == (8,) and torch.all(fixed.act.weight == 0.05)
    with torch.no_grad():
        expected = model.fc2(F.leaky_relu(model.fc1(x), 0.05))
        assert torch.allclose(fixed(x), expected)


def test_elu_far_below_zero_passes_no_gradient_and_says_so() -> None:
    """ELU's slope below zero is exp(x): 0 in float32 at -1e4, as plain torch shows."""
    model, x = mlp([1, 4]), positive_inputs(64, 6)
    fixed, proof = relu_doctor.repair(model, x, to="elu")
    assert zero_grad_units(copy.deepcopy(fixed), "fc1", x) == 2
    assert proof.sites[0].passing == (6, 6)
    shallow, _ = relu_doctor.repair(mlp([1, 4], margin=-3.0), x, to="elu")
    assert zero_grad_units(shallow, "fc1", x) == 0


def test_the_loss_before_and_after_is_the_plain_cross_entropy() -> None:
    model, x = mlp([1, 4], margin=-3.0), positive_inputs(64, 6)
    y = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(2))
    fixed, proof = relu_doctor.repair(model, (x, y), to="leaky_relu", batch_size=16)
    cmp = proof.comparison
    assert cmp is not None and cmp.loss is not None and cmp.loss.startswith("cross-entropy")
    with torch.no_grad():
        assert cmp.loss_before == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-5)
        assert cmp.loss_after == pytest.approx(float(F.cross_entropy(fixed(x), y)), rel=1e-5)
        change = float((model(x) - fixed(x)).abs().max())
    assert cmp.max_change == pytest.approx(change, rel=1e-5)


def test_a_module_called_at_several_sites_is_swapped_only_with_all_of_them() -> None:
    model, x = ReusedReLU(), positive_inputs(16, ReusedReLU.IN)
    with pytest.raises(RepairError, match=r"act is one module called at 2 sites .*select act#2"):
        relu_doctor.repair(model, x, to="leaky_relu", sites="act#1")
    fixed, proof = relu_doctor.repair(model, x, to="leaky_relu", sites="act#1,act#2")
    assert isinstance(fixed.act, nn.LeakyReLU)
    assert [(s.site, s.after) for s in proof.sites] == [("act#1", "act#1"), ("act#2", "act#2")]


def test_prelu_needs_the_units_on_dim_1() -> None:
    model, x = SeqMLP(), positive_inputs(8, SeqMLP.T, SeqMLP.F_IN)
    with pytest.raises(RepairError, match=r"units are on dim 2, but nn\.PReLU"):
        relu_doctor.repair(model, x, to="prelu", sites="mlp.act")
    fixed, _ = relu_doctor.repair(model, x, to="leaky_relu", sites="mlp.act")
    assert isinstance(fixed.mlp.act, nn.LeakyReLU)


def test_functional_calls_are_rewritten_with_fx_keeping_every_parameter_name() -> None:
    model, x = FunctionalMLP(), positive_inputs(16, FunctionalMLP.IN)
    fixed, proof = relu_doctor.repair(model, x, to="leaky_relu", sites="relu#2,relu#4")
    assert isinstance(fixed, torch.fx.GraphModule)
    assert [(s.site, s.after) for s in proof.sites] == [
        ("relu#2", "relu_2"),
        ("relu#4", "relu_4"),
    ]
    assert proof.renamed == {"relu#3": "relu#2", "relu#5": "relu#3"}
    assert set(fixed.state_dict()) == set(model.state_dict())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fixed.state_dict().items())
    assert fixed.relu_4.inplace  # Tensor.relu_ worked in place: so does its replacement
    with torch.no_grad():
        h = F.relu(model.fc1(x))
        h = F.leaky_relu(model.fc2(h), 0.01)
        h = F.relu(model.fc3(h))
        h = F.leaky_relu(model.fc4(h), 0.01)
        expected = model.out(F.relu(model.fc5(h)))
        assert torch.allclose(fixed(x), expected)
    names = [s.site for s in proof.after.sites]
    assert names == ["relu#1", "relu_2", "relu#2", "relu_4", "relu#3"]


def test_a_rewrite_keeps_modules_the_forward_never_calls() -> None:
    model, x = NamingNet(), positive_inputs(8, NamingNet.IN)
    fixed, _ = relu_doctor.repair(model, x, to="leaky_relu", sites="relu#1")
    assert isinstance(fixed.never, nn.ReLU) and isinstance(fixed.block1, type(model.block1))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = plant(nn.Linear(4, 4), [0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if h.max() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return F.relu(h)
        return h


def test_an_untraceable_forward_is_refused_with_the_reason() -> None:
    with pytest.raises(RepairError, match=r"relu#1: the model does not trace with torch.fx"):
        relu_doctor.repair(Branchy(), positive_inputs(8, 4), to="leaky_relu", sites="all")


def test_compiled_forwards_cannot_be_swapped_but_can_be_reinitialised() -> None:
    x = positive_inputs(16, ScriptNet.IN)
    scripted = torch.jit.script(ScriptNet())
    with pytest.raises(RepairError, match="TorchScript forward is compiled code"):
        relu_doctor.repair(scripted, x, to="leaky_relu")
    fixed, proof = relu_doctor.repair(scripted, x, to="reinit", sites="all")
    assert isinstance(fixed, torch.jit.ScriptModule)
    assert all(p.is_leaf for p in fixed.parameters())
    assert [s.dead[1] for s in proof.sites] == [0, 0, 0]
    assert max_rel_change(scripted, fixed, torch.rand(16, ScriptNet.IN)) < 1e-5
    exported = torch.export.export(ScriptNet(), (x,))
    fixed_ep, proof = relu_doctor.repair(exported, x, to="reinit", sites="all", grad=False)
    assert isinstance(fixed_ep, torch.export.ExportedProgram)
    assert [s.dead for s in proof.sites] == [(1, 0), (2, 0), (1, 0)]
    with torch.no_grad():
        change = (exported.module()(x) - fixed_ep.module()(x)).abs().max()
    assert float(change) == 0.0


# --- choosing sites -------------------------------------------------------------------------


def test_by_default_the_flagged_sites_and_nothing_when_healthy() -> None:
    x = positive_inputs(32, 6)
    _, proof = relu_doctor.repair(mlp([]), x, to="reinit")
    assert not proof.changed and proof.why.startswith("nothing to fix")
    _, proof = relu_doctor.repair(mlp([3]), x, to="reinit")  # 1 of 8 dead: 12.5% > 10%
    assert [s.site for s in proof.sites] == ["act"]


def test_unknown_sites_and_bad_options_are_usage_errors() -> None:
    x = positive_inputs(8, 6)
    with pytest.raises(UsageError, match=r"no site 'fc9' in Sequential; its sites: act"):
        relu_doctor.repair(mlp(), x, to="reinit", sites="fc9")
    with pytest.raises(UsageError, match=r"to must be one of leaky_relu, prelu, elu, reinit"):
        relu_doctor.repair(mlp(), x, to="gelu")
    with pytest.raises(UsageError, match=r"slope must be in \(0, 1\)"):
        relu_doctor.repair(mlp(), x, to="leaky_relu", slope=0.0)


class Dropping(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = plant(nn.Linear(6, 8), [2])
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(self.drop(x))))


def test_the_random_stream_is_left_alone_and_dropout_compared_fairly() -> None:
    """Train mode: both models draw the same dropout masks, so ReDo's output change is 0;
    the caller's random stream is where it was."""
    model, x = Dropping(), positive_inputs(32, 6)
    state = torch.get_rng_state()
    _, proof = relu_doctor.repair(model, x, to="reinit", mode="train")
    assert torch.equal(torch.get_rng_state(), state)
    assert proof.comparison is not None and proof.comparison.max_change == 0.0
    assert model.training  # modes as they were
