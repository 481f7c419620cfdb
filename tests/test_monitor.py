"""``relu_doctor.monitor`` inside a training loop (README "Monitoring training"): the numbers of
each recorded step against plain torch on that step's batch, and a training run that ends
bit-identical with and without the monitor."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_hooks

import relu_doctor
from relu_doctor.analyze.report import ModelReport
from relu_doctor.errors import CaptureError, UsageError


class Net(nn.Module):
    """fc1 -> nn.ReLU (a module site ``act1``) -> fc2 -> F.relu (a functional site
    ``relu#1``) -> out. Negative biases make units skip whole small batches, so the per-step
    dead counts move."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 24)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(24, 16)
        self.out = nn.Linear(16, 3)
        with torch.no_grad():
            self.fc1.bias.sub_(0.4)
            self.fc2.bias.sub_(0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.fc2(self.act1(self.fc1(x)))))


def reference(net: Net, x: torch.Tensor, y: torch.Tensor) -> dict[str, dict[str, float]]:
    """Each site's numbers on one batch with plain torch (functional ops on detached copies
    of the weights: the model itself is not called, its graph not touched)."""
    w = {k: v.detach().clone() for k, v in net.named_parameters()}
    pre1 = F.linear(x, w["fc1.weight"], w["fc1.bias"]).requires_grad_()
    pre2 = F.linear(torch.relu(pre1), w["fc2.weight"], w["fc2.bias"])
    pre2.retain_grad()
    loss = F.cross_entropy(F.linear(torch.relu(pre2), w["out.weight"], w["out.bias"]), y)
    loss.backward()
    out = {}
    for site, pre in (("act1", pre1), ("relu#1", pre2)):
        h = torch.relu(pre.detach())
        fires = (h > 0).sum(dim=0)
        mean_abs = h.abs().mean(dim=0)
        layer = mean_abs.mean()
        score = mean_abs / layer if layer > 0 else torch.zeros_like(mean_abs)
        assert pre.grad is not None
        out[site] = {
            "units": h.shape[1],
            "samples": h.shape[0],
            "dead": int((fires == 0).sum()),
            "near_dead": int(((fires > 0) & (fires / h.shape[0] < 0.01)).sum()),
            "dormant": int((score <= 0.025).sum()),
            "sparsity": float((h <= 0).float().mean()),
            "max_activation": float(h.max()),
            "grad_norm": float(pre.grad.norm()),
        }
    return out


def batches(steps: int, rows: int = 6, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(rows, 12, generator=g), torch.randint(0, 3, (rows,), generator=g))
        for _ in range(steps)
    ]


def test_each_recorded_step_matches_plain_torch_on_its_batch() -> None:
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    every, expected = 3, {}
    with relu_doctor.monitor(net, every=every, grad=True) as mon:
        for step, (x, y) in enumerate(batches(10)):
            if step % every == 0:
                expected[step] = reference(net, x, y)
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    hist = mon.history()
    assert sorted(set(hist["step"])) == [0, 3, 6, 9] == sorted(expected)
    assert list(hist.columns) == [
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
        "grad_norm",
    ]
    deads = []
    for row in hist.to_dict("records"):
        want = expected[row["step"]][row["site"]]
        where = f"step {row['step']} site {row['site']}"
        for col in ("units", "samples", "dead", "near_dead", "dormant"):
            assert row[col] == want[col], f"{where}: {col}"
        for col in ("sparsity", "max_activation", "grad_norm"):
            assert row[col] == pytest.approx(want[col], rel=1e-5), f"{where}: {col}"
        assert row["dead_fraction"] == pytest.approx(want["dead"] / want["units"])
        deads.append(row["dead"])
    assert len(set(deads)) > 1 and max(deads) > 0  # the check is not vacuous
    last = mon.report()
    assert isinstance(last, ModelReport) and last.model == "Net (step 9)"
    assert last.site("act1").dead == expected[9]["act1"]["dead"]
    assert last.mode == "train" and last.samples == 6


def test_history_without_grad_has_no_grad_column_and_counts_only_training_forwards() -> None:
    net = Net()
    with relu_doctor.monitor(net, every=2) as mon:
        for x, _ in batches(5):
            net(x)  # a training step's forward (grad mode on)
            with torch.no_grad():
                net(x)  # validation: not a step
        assert mon.steps == 5
    hist = mon.history()
    assert "grad_norm" not in hist.columns
    assert sorted(set(hist["step"])) == [0, 2, 4]
    assert set(hist["site"]) == {"act1", "relu#1"}


def make_trainer(
    optim: str, model_fn: Callable[[], nn.Module]
) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = model_fn()
    if optim == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return model, opt


def dropout_bn_net() -> nn.Module:
    return nn.Sequential(
        nn.Linear(12, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(32, 16),
        nn.ReLU(inplace=True),
        nn.Linear(16, 3),
    )


def train(
    optim: str, watch: dict[str, Any] | None, steps: int = 12
) -> tuple[nn.Module, torch.optim.Optimizer, list[float], torch.Tensor, list[Any]]:
    """A training run with Dropout and BatchNorm and an eval pass every 4 steps; with
    ``watch``, inside ``monitor(**watch)``."""
    model, opt = make_trainer(optim, dropout_bn_net)
    data = batches(steps, rows=16, seed=2)
    losses: list[float] = []
    grads: list[Any] = []

    def loop() -> None:
        for step, (x, y) in enumerate(data):
            model.train()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
            opt.step()
            losses.append(loss.item())
            if step % 4 == 3:
                model.eval()
                with torch.no_grad():
                    losses.append(F.cross_entropy(model(x), y).item())

    if watch is None:
        loop()
    else:
        with relu_doctor.monitor(model, **watch) as mon:
            loop()
        assert len(mon.history()) > 0
    return model, opt, losses, torch.get_rng_state(), grads


def leftovers(model: nn.Module) -> list[str]:
    """Hooks (on the model or global) and dispatch modes still installed."""
    found = [
        name or "<root>"
        for name, m in model.named_modules()
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
    ]
    if module_hooks._global_forward_pre_hooks or module_hooks._global_forward_hooks:
        found.append("global module hooks")
    if torch._C._len_torch_dispatch_stack():
        found.append("dispatch mode")
    return found


@pytest.mark.parametrize("optim", ["sgd", "adam"])
@pytest.mark.parametrize(
    "watch", [{"every": 1}, {"every": 1, "grad": True}, {"every": 3, "grad": True}]
)
def test_training_ends_bit_identical(optim: str, watch: dict[str, Any]) -> None:
    plain = train(optim, None)
    watched = train(optim, watch)
    m0, o0, l0, rng0, g0 = plain
    m1, o1, l1, rng1, g1 = watched
    assert l0 == l1  # every loss, bit for bit
    for (name, a), b in zip(m0.state_dict().items(), m1.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # weights and BatchNorm statistics
    for a_step, b_step in zip(g0, g1, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(a_step, b_step, strict=True))
    s0, s1 = o0.state_dict()["state"], o1.state_dict()["state"]
    for k in s0:
        for key, v in s0[k].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(s1[k][key])), (k, key)
    assert torch.equal(rng0, rng1)  # Dropout drew the same masks, nothing else drew
    assert [m.training for m in m0.modules()] == [m.training for m in m1.modules()]
    assert leftovers(m1) == []


def test_a_forward_that_raises_leaves_nothing_behind() -> None:
    net = Net()
    with relu_doctor.monitor(net, every=1, grad=True) as mon:
        x, y = batches(1)[0]
        F.cross_entropy(net(x), y).backward()
        with pytest.raises(RuntimeError):
            net(torch.randn(4, 5))  # wrong width: fc1 raises inside a recorded step
        assert torch._C._len_torch_dispatch_stack() == 0
        assert all(not m._forward_hooks for name, m in net.named_modules() if name)
        F.cross_entropy(net(x), y).backward()  # training goes on
    assert sorted(set(mon.history()["step"])) == [0, 2]  # the failed step 1 is no row
    assert leftovers(net) == []


def test_an_error_in_the_loop_still_removes_the_hooks() -> None:
    net = Net()
    with pytest.raises(KeyError), relu_doctor.monitor(net, every=1):
        net(torch.randn(4, 12))
        raise KeyError("the user's loop fails")
    assert leftovers(net) == []


def test_callback_gets_each_recorded_step_with_its_gradient() -> None:
    net = Net()
    seen: list[tuple[int, float | None]] = []

    def callback(step: int, report: ModelReport) -> None:
        seen.append((step, report.site("act1").grad_norm))

    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with relu_doctor.monitor(net, every=2, grad=True, callback=callback):
        for x, y in batches(5):
            F.cross_entropy(net(x), y).backward()
            opt.step()
            opt.zero_grad()
    assert [s for s, _ in seen] == [0, 2, 4]
    assert all(g is not None and g > 0 for _, g in seen)


def test_refused_models_and_arguments() -> None:
    net = Net()
    with pytest.raises(UsageError, match=r"torch\.compile'd") as exc:
        relu_doctor.monitor(torch.compile(net))
    assert exc.value.param == "model"
    inplace = Net()
    inplace.compile()
    with pytest.raises(UsageError, match=r"torch\.compile'd"):
        relu_doctor.monitor(inplace)
    with pytest.raises(UsageError, match="DataParallel"):
        relu_doctor.monitor(nn.DataParallel(net))
    with pytest.raises(UsageError, match=r"torch\.nn\.Module"):
        relu_doctor.monitor(lambda x: x)  # type: ignore[arg-type]
    for bad in (0, -3, 2.5, True):
        with pytest.raises(UsageError, match="every must be a positive integer") as exc:
            relu_doctor.monitor(net, every=bad)  # type: ignore[arg-type]
        assert exc.value.param == "every"
    assert leftovers(net) == []


@pytest.mark.filterwarnings("ignore:Using .torch.compile.module.. when there are global hooks")
def test_compiling_the_watched_model_later_is_refused_at_its_first_forward() -> None:
    net = Net()
    compiled = torch.compile(net, backend="eager")  # Dynamo would trace into the capture
    with (
        pytest.raises(UsageError, match=r"torch\.compile'd") as exc,
        relu_doctor.monitor(net, every=1),
    ):
        compiled(torch.randn(4, 12))
    assert exc.value.param == "model"
    assert leftovers(net) == []


def test_no_relu_is_said_when_the_numbers_are_read() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    with relu_doctor.monitor(model, every=1) as mon:
        model(torch.randn(3, 4))
    with pytest.raises(CaptureError, match="no ReLU found"):
        mon.history()
    empty = relu_doctor.monitor(Net())
    with empty, pytest.raises(UsageError, match="no step recorded yet"):
        empty.report()


def test_the_model_can_be_saved_and_copied_while_watched(tmp_path: Any) -> None:
    """Nothing of the monitor lives in the model: a whole-model checkpoint inside the loop
    pickles and loads without relu-doctor, and a copy (an EMA model) is not watched."""
    net = Net()
    with relu_doctor.monitor(net, every=1) as mon:
        net(torch.randn(4, 12))
        torch.save(net, tmp_path / "ckpt.pt")
        twin = copy.deepcopy(net)
        twin(torch.randn(4, 12))  # not a step of the watched model
        assert mon.steps == 1
    back = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert leftovers(back) == [] and leftovers(twin) == []
    assert torch.equal(back(torch.ones(2, 12)), net(torch.ones(2, 12)))


def test_a_monitor_entered_again_goes_on_counting() -> None:
    net = Net()
    mon = relu_doctor.monitor(net, every=2)
    for _ in range(2):
        with mon:
            for x, _ in batches(3):
                net(x)
        assert leftovers(net) == []
        net(torch.randn(4, 12))  # outside: not counted
    assert mon.steps == 6 and sorted(set(mon.history()["step"])) == [0, 2, 4]
    with mon, pytest.raises(UsageError, match="already watching"):
        mon.__enter__()


def test_steps_marked_by_hand_cover_whatever_the_step_calls() -> None:
    """steps="manual": the step's forward calls submodules one by one, never the model."""
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    expected = {}
    with relu_doctor.monitor(net, every=2, grad=True, steps="manual") as mon:
        for step, (x, y) in enumerate(batches(5)):
            if step % 2 == 0:
                expected[step] = reference(net, x, y)
            mon.begin_step((x, y))
            h = net.act1(net.fc1(x))  # the model itself is never called
            loss = F.cross_entropy(net.out(F.relu(net.fc2(h))), y)
            mon.end_forward()
            opt.zero_grad()
            loss.backward()
            opt.step()
            net(x)  # not a step here
    hist = mon.history()
    assert mon.steps == 5 and sorted(set(hist["step"])) == [0, 2, 4]
    for row in hist.to_dict("records"):
        want = expected[row["step"]][row["site"]]
        assert (row["dead"], row["samples"]) == (want["dead"], want["samples"])
        assert row["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5)
    assert leftovers(net) == []
    with pytest.raises(UsageError, match="steps='manual'"):
        relu_doctor.monitor(net).begin_step()
    with pytest.raises(UsageError, match="inside the monitor"):
        relu_doctor.monitor(net, steps="manual").begin_step()
    with pytest.raises(UsageError, match="steps must be") as exc:
        relu_doctor.monitor(net, steps="epoch")
    assert exc.value.param == "steps"


def test_history_mid_training_includes_the_step_just_done() -> None:
    net = Net()
    with relu_doctor.monitor(net, every=1, grad=True) as mon:
        x, y = batches(1)[0]
        F.cross_entropy(net(x), y).backward()
        hist = mon.history()
        assert list(hist["step"]) == [0, 0] and hist["grad_norm"].notna().all()
