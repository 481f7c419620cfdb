"""Training checkpoints as training code writes them (Lightning, DDP, torch.compile): wrapper
prefixes are stripped key by key, wrapper leftovers are ignored with a warning, and `strict`
decides about everything else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from relu_doctor.errors import LoadError
from relu_doctor.load.model import load_model
from relu_doctor.load.state_dict import match_keys
from tests.fixtures.loading import tiny, write_arch


@pytest.fixture
def arch(tmp_path: Path) -> str:
    return str(write_arch(tmp_path))


def prefixed(prefix: str, model: nn.Module) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in model.state_dict().items()}


def optimizer_state(model: nn.Module) -> dict[str, Any]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    return opt.state_dict()


def lightning(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, Any]:
    """The layout of a Lightning 2.x `.ckpt` (trainer.save_checkpoint)."""
    return {
        "epoch": 4,
        "global_step": 1250,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": state_dict,
        "loops": {
            "fit_loop": {
                "state_dict": {},
                "epoch_progress": {"total": {"ready": 5, "completed": 4}, "current": {}},
            }
        },
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}": {
                "monitor": "val_loss",
                "best_model_score": torch.tensor(0.3125),
                "best_model_path": "/runs/epoch=4-step=1250.ckpt",
                "dirpath": "/runs",
            }
        },
        "optimizer_states": [optimizer_state(model)],
        "lr_schedulers": [{"last_epoch": 4, "_step_count": 5, "_last_lr": [1e-3]}],
        "hparams_name": "kwargs",
        "hyper_parameters": {"lr": 1e-3, "num_classes": 2, "widths": [8]},
    }


def ddp(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, Any]:
    """The layout of the PyTorch ImageNet example's checkpoint (a DDP model)."""
    return {
        "epoch": 10,
        "arch": "resnet18",
        "state_dict": state_dict,
        "best_acc1": torch.tensor(71.2),
        "optimizer": optimizer_state(model),
        "scheduler": {"step_size": 30, "gamma": 0.1, "last_epoch": 10, "_last_lr": [0.01]},
    }


def save(obj: Any, path: Path) -> str:
    torch.save(obj, path)
    return str(path)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_lightning_checkpoint_with_a_loss_buffer(tmp_path: Path, arch: str) -> None:
    model = tiny()
    sd = {**prefixed("model.", model), "criterion.weight": torch.tensor([1.0, 3.0])}
    path = save(lightning(sd, model), tmp_path / "epoch=4.ckpt")
    loaded = load_model(path, arch=f"{arch}:build")
    assert same_weights(loaded.module, model)
    assert loaded.warnings == ["ignored 1 key not in the model: criterion.weight"]


def test_lightning_checkpoint_with_ema_and_losses(tmp_path: Path, arch: str) -> None:
    model, ema = tiny(), tiny()
    sd = {
        **prefixed("model.", model),
        **prefixed("model_ema.module.", ema),
        "loss_fn.pos_weight": torch.ones(2),
        "criterion.weight": torch.ones(2),
    }
    loaded = load_model(save(lightning(sd, model), tmp_path / "l.ckpt"), arch=f"{arch}:build")
    assert same_weights(loaded.module, model)
    assert loaded.warnings == [
        "ignored 6 keys not in the model: model_ema.module.0.weight, model_ema.module.0.bias, "
        "model_ema.module.2.weight, model_ema.module.2.bias, loss_fn.pos_weight, … 1 more"
    ]


@pytest.mark.parametrize(
    "prefix", ["module.", "model.", "model.module.", "_orig_mod.", "module._orig_mod."]
)
def test_ddp_and_compiled_checkpoints(tmp_path: Path, arch: str, prefix: str) -> None:
    model = tiny()
    loaded = load_model(
        save(ddp(prefixed(prefix, model), model), tmp_path / "checkpoint.pth.tar"),
        arch=f"{arch}:build",
    )
    assert same_weights(loaded.module, model)
    assert loaded.warnings == []


def test_wrapper_around_a_model_that_has_a_model_attribute(tmp_path: Path, arch: str) -> None:
    model = tiny()
    sd = {**prefixed("model.model.", model), "criterion.weight": torch.ones(2)}
    loaded = load_model(save(lightning(sd, model), tmp_path / "w.ckpt"), arch=f"{arch}:Wrapper")
    assert same_weights(loaded.module.model, model)  # type: ignore[arg-type]
    assert loaded.warnings == ["ignored 1 key not in the model: criterion.weight"]


def test_strict_refuses_extra_layers_inside_the_model(tmp_path: Path, arch: str) -> None:
    """A key under the model's own prefix is part of the saved model: another architecture."""
    model = tiny()
    sd = {**prefixed("model.", model), "model.3.weight": torch.ones(2, 2)}
    path = save(lightning(sd, model), tmp_path / "l.ckpt")
    with pytest.raises(LoadError) as err:
        load_model(path, arch=f"{arch}:build")
    assert str(err.value) == (
        f"{path} does not fit arch {arch}:build: unexpected (1): model.3.weight; check that "
        "arch builds the architecture the weights were saved from, or pass strict=False to "
        "load the keys that fit"
    )
    loaded = load_model(path, arch=f"{arch}:build", strict=False)
    assert same_weights(loaded.module, model)
    assert loaded.warnings == ["ignored 1 key not in the model: model.3.weight"]


def test_strict_refuses_extra_keys_of_a_plain_state_dict(tmp_path: Path, arch: str) -> None:
    """Model keys at the top level: any other key may be the model's too."""
    model = tiny()
    path = save({**model.state_dict(), "criterion.weight": torch.ones(2)}, tmp_path / "sd.pt")
    with pytest.raises(LoadError, match=r"unexpected \(1\): criterion\.weight; check that arch"):
        load_model(path, arch=f"{arch}:build")
    loaded = load_model(path, arch=f"{arch}:build", strict=False)
    assert loaded.warnings == ["ignored 1 key not in the model: criterion.weight"]


def test_missing_keys(tmp_path: Path, arch: str) -> None:
    model = tiny()
    sd = prefixed("model.", model)
    del sd["model.2.weight"], sd["model.2.bias"]
    path = save(lightning({**sd, "criterion.weight": torch.ones(2)}, model), tmp_path / "m.ckpt")
    with pytest.raises(LoadError, match=r"missing \(2\): 2\.weight, 2\.bias; .*pass strict=False"):
        load_model(path, arch=f"{arch}:build")
    loaded = load_model(path, arch=f"{arch}:build", strict=False)
    got = loaded.module.state_dict()
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items() if k[0] == "0")
    assert not torch.equal(got["2.weight"], model.state_dict()["2.weight"])  # initial values
    assert loaded.warnings == [
        "ignored 1 key not in the model: criterion.weight",
        f"2 model keys not in the file kept the initial values {arch}:build gave them: "
        "2.weight, 2.bias",
    ]


def test_wrong_shapes_without_strict(tmp_path: Path, arch: str) -> None:
    model = tiny()
    sd = dict(model.state_dict())
    sd["2.weight"] = torch.zeros(3, 8)
    path = save(sd, tmp_path / "w.pt")
    with pytest.raises(LoadError, match=r"wrong shape \(1\): 2\.weight \(3, 8\) vs model \(2, 8\)"):
        load_model(path, arch=f"{arch}:build")
    loaded = load_model(path, arch=f"{arch}:build", strict=False)
    assert torch.equal(loaded.module.state_dict()["0.weight"], model.state_dict()["0.weight"])
    assert loaded.warnings == [
        f"1 model key of another shape in the file kept the initial values {arch}:build gave "
        "them: 2.weight (3, 8) vs model (2, 8)"
    ]


@pytest.mark.parametrize("strict", [True, False])
def test_nothing_fits_is_refused_either_way(tmp_path: Path, arch: str, strict: bool) -> None:
    sd = {k: torch.zeros(*(n + 1 for n in v.shape)) for k, v in tiny().state_dict().items()}
    path = save(sd, tmp_path / "w.pt")
    with pytest.raises(LoadError, match=r"wrong shape \(4\)") as err:
        load_model(path, arch=f"{arch}:build", strict=strict)
    assert "strict" not in str(err.value)  # turning it off would not help
    other = save({"encoder.weight": torch.ones(1)}, tmp_path / "o.pt")
    with pytest.raises(LoadError, match=r"missing \(4\).*unexpected \(1\): encoder\.weight"):
        load_model(other, arch=f"{arch}:build", strict=strict)


def test_a_key_with_and_without_prefix_is_ambiguous(tmp_path: Path, arch: str) -> None:
    model = tiny()
    sd = {**model.state_dict(), "model.0.weight": torch.zeros(8, 4)}
    path = save(sd, tmp_path / "w.pt")
    with pytest.raises(LoadError, match=r"unexpected \(1\): model\.0\.weight"):
        load_model(path, arch=f"{arch}:build")
    loaded = load_model(path, arch=f"{arch}:build", strict=False)
    assert same_weights(loaded.module, model)  # the key that fits as it is wins


def test_match_keys() -> None:
    want = dict.fromkeys(["fc.weight", "fc.bias", "model.head.weight"])
    fit = match_keys(
        [
            "model.fc.weight",
            "model.module.fc.bias",
            "model.head.weight",
            "criterion.weight",
            "model.extra",
        ],
        want,
    )
    assert fit.renamed == {
        "model.fc.weight": "fc.weight",
        "model.module.fc.bias": "fc.bias",
        "model.head.weight": "model.head.weight",
    }
    assert fit.missing == []
    assert fit.unexpected == ["criterion.weight", "model.extra"]  # "" is a model prefix here
    assert fit.leftovers == []
