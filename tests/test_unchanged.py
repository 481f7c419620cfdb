"""A scan leaves the model and torch's global state exactly as it found them (README,
"Loading and trust"): parameters, buffers, ``.training``, ``requires_grad``, existing
``.grad``, hooks, the dispatch-mode stack and the global RNG, also when the forward raises
half-way."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import relu_doctor
from relu_doctor.errors import ReluDoctorError
from tests.fixtures.models import GradNet, StatefulNet, reference_grad_norms

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)
GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def snapshot(model: nn.Module) -> dict[str, Any]:
    state = model.state_dict(keep_vars=True)
    grads = {n: p.grad for n, p in model.named_parameters()}
    return {
        "objects": {k: v for k, v in state.items()},  # the same tensor objects afterwards
        "values": {k: v.detach().clone() for k, v in state.items()},
        "training": {n: m.training for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": grads,  # keeps the objects alive so identity is meaningful
        "grad_values": {n: None if g is None else g.clone() for n, g in grads.items()},
        "hooks": {
            n: {d: list(getattr(m, d, {}).keys()) for d in HOOK_DICTS}
            for n, m in model.named_modules()
        },
        "global_hooks": {d: list(getattr(nn.modules.module, d).keys()) for d in GLOBAL_HOOK_DICTS},
        "rng": torch.random.get_rng_state().clone(),
    }


def assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["objects"].keys() == before["objects"].keys()
    for k, obj in before["objects"].items():
        assert after["objects"][k] is obj, k
        assert torch.equal(after["values"][k], before["values"][k]), k
        assert after["values"][k].dtype == before["values"][k].dtype, k
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    for n, g in before["grads"].items():
        assert after["grads"][n] is g, n
        if g is not None:
            assert torch.equal(after["grad_values"][n], before["grad_values"][n]), n
    assert after["hooks"] == before["hooks"]
    assert after["global_hooks"] == before["global_hooks"]
    assert torch.equal(after["rng"], before["rng"])
    assert torch._C._len_torch_dispatch_stack() == 0  # no dispatch mode left active
    assert torch._C._len_torch_function_stack() == 0


def prepared_model(mode: str) -> StatefulNet:
    """Mixed training flags (opposite to the scan mode), some existing grads, user hooks."""
    model = StatefulNet()
    model.train(mode != "train")
    model.drop.train(mode == "train")  # one submodule disagrees with its parent
    g = torch.Generator().manual_seed(9)
    model.conv.weight.grad = torch.randn(model.conv.weight.shape, generator=g)
    model.fc1.bias.grad = torch.randn(model.fc1.bias.shape, generator=g)
    model.fc2.weight.requires_grad_(False)
    model.fc1.register_forward_hook(lambda m, a, o: None)
    model.bn.register_forward_pre_hook(lambda m, a: None)
    model.fc2.register_forward_hook(lambda m, a, kw, o: None, with_kwargs=True)
    return model


def scan_data() -> torch.Tensor:
    return torch.randn(9, *StatefulNet.IN, generator=torch.Generator().manual_seed(8))


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no-grad"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_scan_leaves_model_and_globals_unchanged(grad: bool, mode: str) -> None:
    model = prepared_model(mode)
    before = snapshot(model)
    report = relu_doctor.scan(model, scan_data(), batch_size=3, grad=grad, mode=mode)
    assert report.site("act").kind == "module-inplace"
    assert report.samples == 9
    assert_unchanged(model, before)


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no-grad"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_forward_that_raises_leaves_model_and_globals_unchanged(grad: bool, mode: str) -> None:
    model = prepared_model(mode)
    model.explode_on_call = 2  # batch 2 raises after its BatchNorm has run
    model.calls = 0
    before = snapshot(model)
    with pytest.raises(ReluDoctorError, match="boom"):
        relu_doctor.scan(model, scan_data(), batch_size=3, grad=grad, mode=mode)
    assert model.calls == 2  # it really failed in the second forward
    assert_unchanged(model, before)


def test_train_mode_scan_does_move_batchnorm_stats_inside_but_restores_them() -> None:
    model = prepared_model("train")
    mean, var = model.bn.running_mean.clone(), model.bn.running_var.clone()
    seen: list[torch.Tensor] = []
    # a user hook on the BatchNorm sees the running mean change during the train-mode scan
    model.bn.register_forward_hook(lambda m, a, o: seen.append(m.running_mean.clone()))
    before = snapshot(model)
    relu_doctor.scan(model, scan_data(), batch_size=3, mode="train")
    assert seen and not torch.equal(seen[-1], mean)
    assert torch.equal(model.bn.running_mean, mean)
    assert torch.equal(model.bn.running_var, var)
    assert int(model.bn.num_batches_tracked) == 0
    assert_unchanged(model, before)


def test_synthetic_train_scan_keeps_the_global_rng() -> None:
    model = prepared_model("train")
    torch.manual_seed(1234)
    before = snapshot(model)
    relu_doctor.scan(model, None, batch_size=2, batches=2, mode="train", input_shape=(2, 6, 6))
    assert_unchanged(model, before)


def test_frozen_model_gets_site_grad_norms_and_stays_frozen() -> None:
    model = GradNet()
    model.requires_grad_(False)
    x = torch.randn(8, GradNet.IN, generator=torch.Generator().manual_seed(11))
    expected, _ = reference_grad_norms(model, [(x[:4], None), (x[4:], None)])
    before = snapshot(model)
    report = relu_doctor.scan(model, x, batch_size=4)
    for site, value in expected.items():
        assert value > 0
        assert report.site(site).grad_norm == pytest.approx(value, rel=1e-5), site
    assert report.params == ()
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    assert_unchanged(model, before)


class PairInput(nn.Module):
    """forward takes one argument that is a tuple: GradNet on its first element."""

    def __init__(self) -> None:
        super().__init__()
        self.net = GradNet()

    def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.net(pair[0]) + 0 * pair[1].sum()


def test_frozen_model_fed_nested_tuples_gets_site_grad_norms() -> None:
    # The inputs sit inside a tuple inside the batch: the lift to requires_grad must reach
    # them, or the frozen model's output carries no gradient at all.
    model = PairInput()
    model.requires_grad_(False)
    x = torch.randn(8, GradNet.IN, generator=torch.Generator().manual_seed(11))
    expected, _ = reference_grad_norms(model.net, [(x[:4], None), (x[4:], None)])
    batches = [((x[:4], torch.zeros(4)),), ((x[4:], torch.zeros(4)),)]
    report = relu_doctor.scan(model, batches)
    assert not any("no gradient" in w for w in report.warnings)
    for site, value in expected.items():
        assert report.site(f"net.{site}" if site == "act" else f"net:{site}").grad_norm == (
            pytest.approx(value, rel=1e-5)
        ), site


def test_scanning_does_not_modify_the_data_tensor() -> None:
    model = prepared_model("eval")
    x = scan_data()
    copy = x.clone()
    relu_doctor.scan(model, x, batch_size=3)
    assert torch.equal(x, copy)
    assert not x.requires_grad
