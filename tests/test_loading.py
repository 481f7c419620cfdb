"""relu_doctor.load.model: every format, every bad input, one clear error each."""

from __future__ import annotations

import pickle
import random
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from relu_doctor.errors import LoadError, UnsafePickleError, UsageError
from relu_doctor.load.model import (
    WEIGHT_KEYS,
    LoadedModel,
    load_model,
    trust_from_env,
)
from relu_doctor.load.pickles import safe_globals
from tests.fixtures.loading import Exportable, pt2_bytes, tiny, write_arch


class CustomNet(nn.Module):
    """A user class: pickling it needs a global outside torch.nn."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


@pytest.fixture
def arch(tmp_path: Path) -> str:
    """Path of a module file defining build(), wide(), Wrapper, not_a_module()."""
    return str(write_arch(tmp_path))


def save(obj: Any, path: Path, legacy: bool = False) -> str:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return str(path)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- trust and allowlist -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("true", True), ("YES", True), ("True", True), ("0", False), ("", False)],
)
def test_trust_from_env(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("RELU_DOCTOR_TRUST", value)
    assert trust_from_env() is expected


def test_trust_from_env_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RELU_DOCTOR_TRUST", raising=False)
    assert trust_from_env() is False


def test_safe_globals_are_torch_nn_and_harmless_values() -> None:
    allowed = safe_globals()
    for cls in (nn.Linear, nn.ReLU, nn.Sequential, nn.TransformerEncoderLayer, nn.LSTM):
        assert cls in allowed
    assert nn.modules.linear.NonDynamicallyQuantizableLinear in allowed
    assert F.relu in allowed
    assert CustomNet not in allowed
    objects = [g[0] if isinstance(g, tuple) else g for g in allowed]
    torch_nn = ("torch.nn", "torch._C")
    others = {g.__module__ for g in objects if not g.__module__.startswith(torch_nn)}
    assert others <= {"argparse", "pathlib", "pathlib._local", "relu_doctor.load.safe_numpy"}


# --- whole pickled models ----------------------------------------------------------------


def test_whole_torch_nn_model_loads_without_trust(tmp_path: Path) -> None:
    model = tiny()
    loaded = load_model(save(model, tmp_path / "whole.pt"))
    assert isinstance(loaded, LoadedModel)
    assert (loaded.runtime, loaded.name, loaded.exported) == ("eager", "whole.pt", None)
    assert same_weights(loaded.module, model)


def test_whole_model_in_legacy_format_needs_trust(tmp_path: Path) -> None:
    # The legacy format stores each module class as a persistent id (with its source code),
    # which torch's weights-only unpickler never accepts; state dicts in it load fine.
    model = tiny()
    path = save(model, tmp_path / "old.pt", legacy=True)
    with pytest.raises(LoadError, match=r"legacy \(pre-1.6\) format.*trust") as err:
        load_model(path)
    assert not isinstance(err.value, UnsafePickleError)
    assert same_weights(load_model(path, trust=True).module, model)


def test_transformer_and_attention_models_load_without_trust(tmp_path: Path) -> None:
    model = nn.ModuleList(
        [
            nn.TransformerEncoderLayer(8, 2, 16),  # stores F.relu as an attribute
            nn.TransformerEncoderLayer(8, 2, 16, activation="gelu"),
            nn.MultiheadAttention(8, 2),  # NonDynamicallyQuantizableLinear
            nn.Conv2d(3, 4, 3),
            nn.BatchNorm2d(4),
            nn.LSTM(4, 4),
        ]
    )
    loaded = load_model(save(model, tmp_path / "t.pt"))
    assert same_weights(loaded.module, model)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_custom_class_refused_with_globals_and_ways_forward(tmp_path: Path, legacy: bool) -> None:
    path = save(CustomNet(), tmp_path / "custom.pt", legacy)
    with pytest.raises(UnsafePickleError) as err:
        load_model(path)
    assert err.value.globals_needed == [f"{__name__}.CustomNet"]
    msg = str(err.value)
    assert "pass arch MODULE:CALLABLE" in msg  # the CLI renders it as --arch
    assert "pass trust" in msg
    assert "RELU_DOCTOR_TRUST=1" in msg
    assert "\n" not in msg


def test_custom_class_loads_with_trust(tmp_path: Path) -> None:
    model = CustomNet()
    loaded = load_model(save(model, tmp_path / "custom.pt"), trust=True)
    assert isinstance(loaded.module, CustomNet)
    assert same_weights(loaded.module, model)


def test_whole_model_with_arch_is_usage_error(tmp_path: Path, arch: str) -> None:
    with pytest.raises(UsageError, match="whole pickled model; drop arch"):
        load_model(save(tiny(), tmp_path / "whole.pt"), arch=f"{arch}:build")


# --- state dicts and checkpoints -----------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_state_dict_with_arch(tmp_path: Path, arch: str, legacy: bool) -> None:
    model = tiny()
    path = save(model.state_dict(), tmp_path / "sd.pth", legacy)
    loaded = load_model(path, arch=f"{arch}:build")
    assert loaded.runtime == "eager"
    assert same_weights(loaded.module, model)


def test_state_dict_without_arch(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match=r"is a state dict \(4 tensors\).*arch MODULE:CALLABLE"):
        load_model(save(tiny().state_dict(), tmp_path / "sd.pt"))


@pytest.mark.parametrize("key", WEIGHT_KEYS)
def test_checkpoint_keys(tmp_path: Path, arch: str, key: str) -> None:
    model = tiny()
    optimizer = {
        "state": {0: {"momentum_buffer": torch.zeros(8, 4)}},
        "param_groups": [{"lr": 0.1}],
    }
    ckpt = {"epoch": 3, key: model.state_dict(), "optimizer": optimizer, "loss": 0.5}
    loaded = load_model(save(ckpt, tmp_path / "ckpt.pt"), arch=f"{arch}:build")
    assert same_weights(loaded.module, model)


def test_checkpoint_holding_whole_model(tmp_path: Path, arch: str) -> None:
    model = tiny()
    path = save({"epoch": 1, "model": model}, tmp_path / "ckpt.pt")
    assert same_weights(load_model(path).module, model)
    with pytest.raises(UsageError, match="drop arch"):
        load_model(path, arch=f"{arch}:build")


@pytest.mark.parametrize("prefix", ["module.", "model.", "model.module."])
def test_wrapper_prefixes_are_stripped(tmp_path: Path, arch: str, prefix: str) -> None:
    model = tiny()
    sd = {prefix + k: v for k, v in model.state_dict().items()}
    loaded = load_model(save({"state_dict": sd}, tmp_path / "p.ckpt"), arch=f"{arch}:build")
    assert same_weights(loaded.module, model)


def test_prefix_kept_when_the_arch_has_it(tmp_path: Path, arch: str) -> None:
    model = tiny()
    sd = {"model." + k: v for k, v in model.state_dict().items()}
    loaded = load_model(save(sd, tmp_path / "w.pt"), arch=f"{arch}:Wrapper")
    assert same_weights(loaded.module.model, model)  # type: ignore[arg-type]


def test_prefix_stripped_key_by_key(tmp_path: Path, arch: str) -> None:
    model = tiny()
    sd = dict(model.state_dict())
    sd["module.0.weight"] = sd.pop("0.weight")
    loaded = load_model(save(sd, tmp_path / "w.pt"), arch=f"{arch}:build")
    assert same_weights(loaded.module, model)
    assert loaded.warnings == []


def test_key_mismatch_lists_keys_and_shapes(tmp_path: Path, arch: str) -> None:
    sd = dict(tiny().state_dict())
    sd["extra.bias"] = torch.zeros(1)
    del sd["2.bias"]
    sd["0.weight"] = torch.zeros(3, 4)
    with pytest.raises(LoadError) as err:
        load_model(save(sd, tmp_path / "w.pt"), arch=f"{arch}:build")
    msg = str(err.value)
    assert "w.pt does not fit arch" in msg
    assert "missing (1): 2.bias" in msg
    assert "unexpected (1): extra.bias" in msg
    assert "0.weight (3, 4) vs model (8, 4)" in msg
    assert "\n" not in msg


def test_key_mismatch_list_is_truncated(tmp_path: Path, arch: str) -> None:
    sd = {f"layer{i}.weight": torch.zeros(1) for i in range(20)}
    with pytest.raises(LoadError) as err:
        load_model(save(sd, tmp_path / "w.pt"), arch=f"{arch}:build")
    msg = str(err.value)
    assert "unexpected (20): layer0.weight" in msg
    assert "… 15 more" in msg
    assert len(msg) < 500


def test_wrong_architecture_shapes(tmp_path: Path, arch: str) -> None:
    with pytest.raises(
        LoadError, match=r"wrong shape \(3\): 0\.weight \(8, 4\) vs model \(16, 4\)"
    ):
        load_model(save(tiny().state_dict(), tmp_path / "w.pt"), arch=f"{arch}:wide")


def test_arch_as_importable_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_arch(tmp_path, "relu_doctor_test_archmod.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = tiny()
    path = save(model.state_dict(), tmp_path / "sd.pt")
    loaded = load_model(path, arch="relu_doctor_test_archmod:build")
    assert same_weights(loaded.module, model)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("no_such_module_xyz:build", "cannot import module 'no_such_module_xyz'"),
        ("missing/dir/models.py:build", "no such file"),
    ],
)
def test_arch_not_importable(tmp_path: Path, spec: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        load_model(save(tiny().state_dict(), tmp_path / "sd.pt"), arch=spec)


def test_arch_returning_non_module(tmp_path: Path, arch: str) -> None:
    with pytest.raises(LoadError, match=r"returned a list of 3 items, not a torch\.nn\.Module"):
        load_model(save(tiny().state_dict(), tmp_path / "sd.pt"), arch=f"{arch}:not_a_module")


# --- factories -----------------------------------------------------------------------------


def test_factory_from_file(arch: str) -> None:
    loaded = load_model(f"{arch}:build")
    assert (loaded.runtime, loaded.name) == ("eager", f"{arch}:build")
    assert isinstance(loaded.module, nn.Sequential)


def test_factory_from_package_class() -> None:
    loaded = load_model("torch.nn:ReLU")
    assert isinstance(loaded.module, nn.ReLU)


def test_factory_errors(arch: str) -> None:
    with pytest.raises(LoadError, match="returned a list of 3 items"):
        load_model(f"{arch}:not_a_module")
    with pytest.raises(UsageError, match="factory that builds the model; drop arch"):
        load_model(f"{arch}:build", arch=f"{arch}:build")
    with pytest.raises(UsageError, match="cannot import"):
        load_model("not_a_module_xyz:Net")


# --- TorchScript, torch.export, safetensors --------------------------------------------------


def test_torchscript_needs_trust(tmp_path: Path, arch: str) -> None:
    path = tmp_path / "scripted.pt"  # extension says torch.save; content says TorchScript
    torch.jit.script(tiny()).save(str(path))
    with pytest.raises(LoadError, match=r"TorchScript archive.*trust"):
        load_model(str(path))
    loaded = load_model(str(path), trust=True)
    assert loaded.runtime == "script"
    assert isinstance(loaded.module, torch.jit.ScriptModule)
    assert loaded.module(torch.ones(1, 4)).shape == (1, 2)
    with pytest.raises(UsageError, match="drop arch"):
        load_model(str(path), arch=f"{arch}:build", trust=True)


def test_export_program_needs_trust(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    path.write_bytes(pt2_bytes())
    with pytest.raises(LoadError, match=r"torch.export program.*trust"):
        load_model(str(path))
    loaded = load_model(str(path), trust=True)
    assert (loaded.runtime, loaded.name) == ("export", "model.pt2")
    assert isinstance(loaded.exported, torch.export.ExportedProgram)
    assert loaded.exported.example_inputs is not None
    args, kwargs = loaded.exported.example_inputs
    assert args[0].shape == (4, 3)
    assert kwargs == {}
    assert loaded.module(*args).shape == (4, 2)
    ref = Exportable()
    ref.load_state_dict(loaded.exported.state_dict)
    assert torch.allclose(loaded.module(*args), ref(*args))


def safetensors_file(path: Path, sd: dict[str, torch.Tensor]) -> str:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return str(path)


def test_safetensors_with_arch(tmp_path: Path, arch: str) -> None:
    model = tiny()
    path = safetensors_file(tmp_path / "weights.bin", model.state_dict())  # no telling suffix
    loaded = load_model(path, arch=f"{arch}:build")
    assert same_weights(loaded.module, model)
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    prefixed = safetensors_file(tmp_path / "ddp.safetensors", sd)
    assert same_weights(load_model(prefixed, arch=f"{arch}:build").module, model)


def test_safetensors_without_arch(tmp_path: Path) -> None:
    path = safetensors_file(tmp_path / "w.safetensors", tiny().state_dict())
    with pytest.raises(LoadError, match=r"is a state dict .*arch"):
        load_model(path)


def test_safetensors_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = safetensors_file(tmp_path / "w.safetensors", tiny().state_dict())
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(LoadError, match=r"pip install relu-doctor\[safetensors\]"):
        load_model(path, arch="torch.nn:ReLU")


def test_torch_save_file_named_safetensors(tmp_path: Path) -> None:
    model = tiny()  # torch.load alone would hand a *.safetensors path to safetensors
    assert same_weights(load_model(save(model, tmp_path / "m.safetensors")).module, model)


# --- devices -------------------------------------------------------------------------------


def forge_cuda_location(src: Path, dest: Path) -> None:
    """Rewrite the storage location tag 'cpu' to 'cuda:0', as if saved on a GPU."""
    old, new = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"
    if zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
            for name in zin.namelist():
                data = zin.read(name)
                zout.writestr(name, data.replace(old, new) if name.endswith("data.pkl") else data)
    else:
        dest.write_bytes(src.read_bytes().replace(old, new))


@pytest.mark.parametrize(
    ("whole", "legacy"), [(True, False), (False, False), (False, True)], ids=["model", "sd", "old"]
)
def test_cuda_saved_tensors_load_on_cpu(
    tmp_path: Path, arch: str, whole: bool, legacy: bool
) -> None:
    model = tiny()
    src = tmp_path / "cpu.pt"
    save(model if whole else model.state_dict(), src, legacy)
    forged = tmp_path / "cuda.pt"
    forge_cuda_location(src, forged)
    if not torch.cuda.is_available():  # proves the forged file really asks for CUDA
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(forged, weights_only=False)
    loaded = load_model(str(forged), arch=None if whole else f"{arch}:build", device="cpu")
    assert all(p.device.type == "cpu" for p in loaded.module.parameters())
    assert same_weights(loaded.module, model)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_cuda_checkpoint_loads_on_cpu_and_gpu(tmp_path: Path, arch: str) -> None:
    path = save(tiny().cuda().state_dict(), tmp_path / "gpu.pt")
    cpu = load_model(path, arch=f"{arch}:build", device="cpu")
    assert next(cpu.module.parameters()).device.type == "cpu"
    gpu = load_model(path, arch=f"{arch}:build", device="cuda")
    assert next(gpu.module.parameters()).device.type == "cuda"


def test_unknown_device() -> None:
    with pytest.raises(UsageError, match="unknown device 'gpu0'"):
        load_model("torch.nn:ReLU", device="gpu0")


# --- bad input -----------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="no such file"):
        load_model(str(tmp_path / "nope.pt"))


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="is a directory; pass the model file inside it"):
        load_model(str(tmp_path))


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.pt").write_bytes(b"")
    with pytest.raises(LoadError, match=r"is empty \(0 bytes\)"):
        load_model(str(tmp_path / "e.pt"))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_torch_file(tmp_path: Path, legacy: bool) -> None:
    full = tmp_path / "full.pt"
    save(tiny(), full, legacy)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(LoadError, match="truncated or corrupt") as err:
        load_model(str(cut))
    assert not isinstance(err.value, UnsafePickleError)


def test_truncated_safetensors(tmp_path: Path, arch: str) -> None:
    full = Path(safetensors_file(tmp_path / "w.safetensors", tiny().state_dict()))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(full.read_bytes()[:-40])
    with pytest.raises(LoadError, match="truncated or corrupt"):
        load_model(str(cut), arch=f"{arch}:build")


def test_random_bytes(tmp_path: Path) -> None:
    data = random.Random(0).randbytes(4096)
    assert data[:1] != b"\x80"
    (tmp_path / "r.pt").write_bytes(data)
    with pytest.raises(LoadError, match="is not a format PyTorch saves"):
        load_model(str(tmp_path / "r.pt"))


@pytest.mark.parametrize(
    ("name", "text", "hint"),
    [
        ("notes.pt", "this is not a model\n", "text file, not a saved model"),
        ("cfg.pt", '{"lr": 0.1}\n', "text file, not a saved model"),
        ("net.py", "import torch\nnet = 1\n", "pass FILE.py:FACTORY"),
    ],
)
def test_text_file(tmp_path: Path, name: str, text: str, hint: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(LoadError, match=hint):
        load_model(str(tmp_path / name))


def test_zip_that_is_not_torch(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "a.pt", "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(LoadError, match="zip archive but not a PyTorch file"):
        load_model(str(tmp_path / "a.pt"))


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        (torch.zeros(3, 4), r"holds a single tensor of shape \(3, 4\)"),
        ([torch.zeros(1)], "holds a list of 1 items"),
        ({"epoch": 3, "lr": 0.1}, r"holds a dict with keys 'epoch', 'lr' but no model"),
        ({}, r"holds a dict with keys \(none\)"),
    ],
)
def test_not_a_model(tmp_path: Path, obj: Any, match: str) -> None:
    with pytest.raises(LoadError, match=match):
        load_model(save(obj, tmp_path / "x.pt"))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_plain_pickle_of_plain_data_is_refused(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": [1, 2.0, "x"]}, protocol=protocol))
    with pytest.raises(LoadError, match=r"plain Python pickle, not a torch\.save file") as err:
        load_model(str(path))
    assert not isinstance(err.value, UnsafePickleError)


def test_plain_pickle_of_torch_nn_model_needs_trust(tmp_path: Path) -> None:
    path = tmp_path / "plain.pkl"
    model = tiny()
    path.write_bytes(pickle.dumps(model))
    with pytest.raises(UnsafePickleError) as err:
        load_model(str(path))
    assert "torch._utils._rebuild_tensor_v2" not in err.value.globals_needed
    assert same_weights(load_model(str(path), trust=True).module, model)


def test_trusted_pickle_naming_missing_code(tmp_path: Path) -> None:
    path = tmp_path / "ghost.pkl"
    path.write_bytes(b"\x80\x02cghost_module_xyz\nNet\nq\x00)\x81q\x01.")  # a ghost class
    with pytest.raises(UnsafePickleError) as err:
        load_model(str(path))
    assert err.value.globals_needed == ["ghost_module_xyz.Net"]
    with pytest.raises(LoadError, match="needs the module 'ghost_module_xyz', which is not"):
        load_model(str(path), trust=True)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")
def test_protocol_4_torch_save_lists_globals(tmp_path: Path) -> None:
    # torch's own global scanner only reads protocol 2; ours reads every protocol.
    path = tmp_path / "p4.pt"
    torch.save(CustomNet(), path, pickle_protocol=4)
    with pytest.raises(UnsafePickleError) as err:
        load_model(str(path))
    assert f"{__name__}.CustomNet" in err.value.globals_needed


def test_callers_safe_globals_are_kept(tmp_path: Path) -> None:
    path = save(tiny(), tmp_path / "m.pt")
    with torch.serialization.safe_globals([nn.Linear]):
        load_model(path)  # our allowlist comes and goes without taking the caller's away
        assert nn.Linear in torch.serialization.get_safe_globals()


def test_auto_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_model("torch.nn:PReLU", device="auto")  # PReLU has a parameter
    assert next(loaded.module.parameters()).device.type == expected
