"""A trusted pickle of the user's own classes (`mymodels.Net`) loads the same way under the
console script as under `python -m relu_doctor`: its modules are found in the current folder.

A console script's sys.path starts at its own bin folder, not the current one; the
subprocess below runs a launcher script kept in another folder to reproduce that.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from relu_doctor.errors import LoadError
from relu_doctor.load.model import load_model

TREE = Path(__file__).resolve().parents[1]
MODELS = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return torch.relu(self.fc(x))
"""


def save_user_model(folder: Path, module: str) -> Path:
    """folder/<module>.py defining Net, and folder/net.pt holding a pickled Net; the module
    is imported only while saving (so the load has to find it again)."""
    source = folder / f"{module}.py"
    source.write_text(MODELS)
    spec = importlib.util.spec_from_file_location(module, source)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    try:
        spec.loader.exec_module(mod)
        torch.save(mod.Net(), folder / "net.pt")
    finally:
        del sys.modules[module]
    return folder / "net.pt"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RELU_DOCTOR_TRUST"}
    env["PYTHONPATH"] = str(TREE)  # the tree under test, and not the current folder
    return env


def run_cli(work: Path, launcher: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *launcher, "scan", *args],
        cwd=work,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def console_script(tmp_path: Path) -> list[str]:
    """A launcher like the `relu-doctor` entry point, in a folder of its own."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "relu-doctor").write_text("from relu_doctor.cli import main\nmain()\n")
    return [str(bin_dir / "relu-doctor")]


@pytest.mark.parametrize("how", ["console-script", "python-m"])
def test_trusted_user_class_loads_from_the_current_folder(
    tmp_path: Path, console_script: list[str], how: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    save_user_model(work, "mymodels")
    launcher = console_script if how == "console-script" else ["-m", "relu_doctor"]
    done = run_cli(work, launcher, "net.pt", "--trust", "--format", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["models"][0]["units"] == 3


def test_library_imports_user_classes_from_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_user_model(tmp_path, "relu_doctor_test_usernets")
    monkeypatch.chdir(tmp_path)
    here = [entry for entry in sys.path if os.path.abspath(entry or ".") != str(tmp_path)]
    monkeypatch.setattr(sys, "path", here)  # as under a console script
    monkeypatch.delitem(sys.modules, "relu_doctor_test_usernets", raising=False)
    loaded = load_model(str(path), trust=True)
    assert type(loaded.module).__module__ == "relu_doctor_test_usernets"
    assert loaded.module(torch.ones(1, 4)).shape == (1, 3)
    assert sys.path == here  # the current folder was on the path only while unpickling


def test_missing_user_module_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    path = save_user_model(work, "relu_doctor_test_gone")
    monkeypatch.chdir(elsewhere)
    with pytest.raises(LoadError) as err:
        load_model(str(path), trust=True)
    assert str(err.value) == (
        f"cannot load {path}: it needs the module 'relu_doctor_test_gone', which is not "
        f"importable here (modules are looked up in the current folder, {elsewhere}, and on "
        "PYTHONPATH); run from the folder that holds 'relu_doctor_test_gone' or add that "
        "folder to PYTHONPATH, or save a state dict and pass arch MODULE:CALLABLE that "
        "builds the model"
    )
