"""The CUDA path: statistics stay on the GPU and match a CPU scan. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import relu_doctor

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _planted_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    ).eval()
    with torch.no_grad():
        model[1].bias[[1, 5]] = -1e4
        model[4].bias[[0, 3, 7]] = -1e4
    return model


def test_cuda_scan_matches_cpu_scan() -> None:
    model = _planted_cnn()
    data = torch.randn(64, 3, 8, 8)
    cpu = relu_doctor.scan(model, data, batch_size=16, device="cpu")
    gpu = relu_doctor.scan(model, data, batch_size=16, device="cuda")
    assert all(p.device.type == "cpu" for p in model.parameters())  # moved back
    assert [s.dead for s in gpu.sites] == [s.dead for s in cpu.sites] == [2, 3]
    for a, b in zip(cpu.sites, gpu.sites, strict=True):
        assert (a.units, a.samples, a.near_dead, a.dormant) == (
            b.units,
            b.samples,
            b.near_dead,
            b.dormant,
        )
        assert a.sparsity == pytest.approx(b.sparsity, rel=1e-6)
        assert a.max_activation == pytest.approx(b.max_activation, rel=1e-4)
        assert a.grad_norm == pytest.approx(b.grad_norm, rel=1e-3)
        assert (a.causes, a.zero_grad) == (b.causes, b.zero_grad)
        assert a.grad_noise == pytest.approx(b.grad_noise, rel=1e-2)
        # 64 samples fit the row sample, drawn with the same seed: same rows, same positions.
        assert a.eff_rank == pytest.approx(b.eff_rank, rel=1e-2)  # TF32 convolutions


def test_cuda_model_is_scanned_where_it_is() -> None:
    model = _planted_cnn().cuda()
    report = relu_doctor.scan(model, torch.randn(32, 3, 8, 8), batch_size=16)
    assert report.device.startswith("cuda")
    assert next(model.parameters()).is_cuda
    assert report.dead_units == 5
    # Causes read the weights where they are (on the GPU); the planted biases killed them.
    assert [s.causes for s in report.sites] == [{"bias": 2}, {"bias": 3}]
    assert [s.zero_grad for s in report.sites] == [2, 3]


def test_cuda_repair_keeps_the_function_and_the_device() -> None:
    model = _planted_cnn().cuda()
    data = torch.randn(64, 3, 8, 8)
    fixed, proof = relu_doctor.repair(model, data, to="reinit", sites="all", batch_size=16)
    assert next(fixed.parameters()).is_cuda and next(model.parameters()).is_cuda
    assert [s.dead for s in proof.sites] == [(2, 0), (3, 0)]
    with torch.no_grad():
        x = torch.randn(64, 3, 8, 8, device="cuda")
        before, after = model(x), fixed(x)
    assert float((before - after).abs().max()) <= 1e-5 * float(before.abs().max())
