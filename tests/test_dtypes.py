"""Data is fitted to the model's dtype (README "Your own data"): float inputs take the
model's float type, integer inputs stay integer only where the first layer reads indices
(else they become float, uint8 scaled by 1/255 unless ``--scale`` says otherwise), and a
forward that still fails on types says which types met.

Expected numbers come from plain torch on the same inputs, never from relu-doctor's output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import Result
from torch import nn

import relu_doctor
from relu_doctor.errors import InputError, UsageError
from relu_doctor.scanner.batches import array_to_tensor
from tests.fixtures.cli import error_line, invoke, ok
from tests.fixtures.models import plant

DEAD = [1, 4]  # planted dead units of the first layer


pytestmark = pytest.mark.usefixtures("isolated")


def run(*args: Any) -> Result:
    return invoke("scan", *args)


def mlp(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(plant(nn.Linear(4, 6), DEAD), nn.ReLU(), nn.Linear(6, 2)).to(dtype)


def conv() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())


def largest(model: nn.Sequential, x: torch.Tensor) -> float:
    """Plain torch: the largest output of the first ReLU."""
    with torch.no_grad():
        return float(model[1](model[0](x)).max())


def fires(model: nn.Sequential, x: torch.Tensor) -> list[int]:
    """Plain torch: per unit of the first ReLU, on how many samples any output is > 0."""
    with torch.no_grad():
        h = model[1](model[0](x)).float()
    return (h.flatten(2) if h.dim() > 2 else h[:, :, None]).gt(0).any(dim=2).sum(dim=0).tolist()


def unit_fires(report: Any) -> list[int]:
    units = report.units_frame()
    return units[units["site"] == report.sites[0].site]["fires"].tolist()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_model_scans_float32_data(dtype: torch.dtype) -> None:
    model = mlp(dtype)
    x = torch.rand(32, 4)
    np.save("x.npy", x.numpy())
    torch.save(model, "m.pt")
    out = ok(run("m.pt", "--data", "x.npy", "--per-unit", "u.csv"))
    assert "2 of 6 ReLU units dead" in out.stdout
    report = relu_doctor.scan(model, x)
    assert unit_fires(report) == fires(model, x.to(dtype))
    assert report.dead_units == len(DEAD)
    assert not report.warnings  # a float cast is not worth a word


def test_float64_data_meets_float32_and_half_models() -> None:
    x = torch.rand(32, 4, dtype=torch.float64)
    torch.save(x, "x64.pt")
    for dtype in (torch.float32, torch.float16):
        torch.save(mlp(dtype), "m.pt")
        ok(run("m.pt", "--data", "x64.pt"))
        report = relu_doctor.scan(mlp(dtype), (x, torch.rand(32, 2, dtype=torch.float64)))
        assert unit_fires(report) == fires(mlp(dtype), x.to(dtype))
        assert report.losses == ("mse",)
        assert report.sites[0].grad_norm is not None


def test_every_float_input_of_a_multi_input_batch_takes_the_model_dtype() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)

        def forward(self, x: torch.Tensor, extra: dict[str, torch.Tensor]) -> torch.Tensor:
            return torch.relu(self.a(x) + self.b(extra["z"]))

    model = Two().half()
    g = torch.Generator().manual_seed(0)
    x, z = torch.rand(8, 4, dtype=torch.float64, generator=g), torch.rand(8, 2, generator=g)
    report = relu_doctor.scan(model, [{"x": x, "extra": {"z": z}}], grad=False)
    with torch.no_grad():
        h = model(x.half(), {"z": z.half()})
    assert unit_fires(report) == h.gt(0).sum(dim=0).tolist()


def test_uint8_images_become_float_scaled_by_default_and_as_told() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (16, 3, 8, 8), generator=g, dtype=torch.uint8)
    np.save("img.npy", img.numpy())
    torch.save(conv(), "conv.pt")
    # auto: / 255, as torchvision's ToTensor does, and the report says so
    report = relu_doctor.scan(conv(), img, grad=False)
    assert unit_fires(report) == fires(conv(), img.float() / 255)
    assert report.sites[0].max_activation == pytest.approx(
        largest(conv(), img.float() / 255), rel=1e-5
    )
    (note,) = report.warnings
    assert "uint8 inputs became float32 scaled by 1/255" in note and "scale 1 keeps" in note
    # --scale 1: as they are
    kept = relu_doctor.scan(conv(), img, grad=False, scale=1)
    assert kept.sites[0].max_activation == pytest.approx(largest(conv(), img.float()), rel=1e-5)
    assert kept.warnings == ("uint8 inputs became float32 as they are",)
    # the command line says the same
    out = ok(run("conv.pt", "--data", "img.npy", "--no-grad", "-o", "r.json"))
    assert "scaled by 1/255" in " ".join(out.stdout.split())
    out = ok(run("conv.pt", "--data", "img.npy", "--no-grad", "--scale", "1/255"))
    assert "uint8 inputs became float32 scaled by 1/255" in out.stdout
    assert "ToTensor" not in out.stdout  # asked for: no reason to give


def test_int64_features_become_float_unscaled() -> None:
    x = torch.randint(-3, 4, (16, 4))
    report = relu_doctor.scan(mlp(), x, grad=False)
    assert unit_fires(report) == fires(mlp(), x.float())
    assert report.warnings[0].startswith("int64 inputs became float32 as they are")


def test_float_data_is_scaled_when_asked() -> None:
    x = torch.rand(16, 3, 8, 8) * 255
    report = relu_doctor.scan(conv(), x, grad=False, scale=1 / 255)
    assert report.sites[0].max_activation == pytest.approx(largest(conv(), x / 255), rel=1e-5)


def test_token_ids_stay_integers_and_are_never_scaled() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(300, 8), nn.ReLU()).half()
    ids = torch.randint(0, 256, (16, 5), dtype=torch.uint8)
    np.save("tok.npy", ids.numpy())
    torch.save(model, "emb.pt")
    ok(run("emb.pt", "--data", "tok.npy", "--no-grad"))
    report = relu_doctor.scan(model, ids, grad=False)
    with torch.no_grad():
        h = model(ids.long()).float()
    assert unit_fires(report) == h.gt(0).any(dim=1).sum(dim=0).tolist()
    assert not report.warnings
    scaled = relu_doctor.scan(model, ids, grad=False, scale=0.5)
    assert unit_fires(scaled) == unit_fires(report)
    assert scaled.warnings == ("the scale does not apply to token ids (the model embeds them)",)


def test_numpy_integers_keep_their_type_until_the_model_decides() -> None:
    assert array_to_tensor(np.zeros(3, np.uint8), "x").dtype == torch.uint8
    assert array_to_tensor(np.zeros(3, np.int32), "x").dtype == torch.int32
    assert array_to_tensor(np.zeros(3, np.uint32), "x").dtype == torch.int64
    assert array_to_tensor(np.zeros(3, np.uint8), "y", target=True).dtype == torch.int64
    assert array_to_tensor(np.zeros(3, np.float64), "x").dtype == torch.float32


SOURCE = """
import torch
from torch import nn


class Raw(nn.Module):
    # no Linear/Conv/Embedding: nothing tells whether it reads indices
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(4, 3))

    def forward(self, x):
        return torch.relu(x @ self.w)


def make():
    return Raw()
"""


def test_a_type_error_names_the_types_that_met() -> None:
    Path("rawnet.py").write_text(SOURCE)
    np.save("ints.npy", np.ones((8, 4), dtype=np.int64))
    line = error_line(run("rawnet.py:make", "--data", "ints.npy"))
    assert "The inputs are int64, the model's weights float32" in line
    assert "--data" in line and "--input-shape" not in line


@pytest.mark.parametrize("text", ["0", "-1", "abc", "1/0", "inf", "nan"])
def test_bad_scale_is_a_usage_error(text: str) -> None:
    torch.save(mlp(), "m.pt")
    line = error_line(run("m.pt", "--scale", text))
    assert "--scale" in line and "1/255" in line


@pytest.mark.parametrize("bad", [0, -2.0, "half", True, float("nan")])
def test_bad_scale_in_the_api(bad: Any) -> None:
    with pytest.raises(UsageError, match="scale"):
        relu_doctor.scan(mlp(), torch.rand(4, 4), scale=bad)


def test_scale_from_the_config(tmp_path: Path) -> None:
    img = np.full((4, 3, 8, 8), 255, dtype=np.uint8)
    np.save("img.npy", img)
    torch.save(conv(), "conv.pt")
    Path("pyproject.toml").write_text('[tool.relu-doctor]\nscale = "1/255"\n')
    out = ok(run("conv.pt", "--data", "img.npy", "--no-grad"))
    assert "uint8 inputs became float32 scaled by 1/255" in out.stdout
    assert "ToTensor" not in out.stdout


def test_an_embedding_given_floats_is_an_input_error() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.ReLU())
    with pytest.raises(InputError, match="The inputs are float32"):
        relu_doctor.scan(model, torch.rand(4, 3), grad=False)
