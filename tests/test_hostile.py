"""Hostile files: without trust nothing in them runs; with trust they do (that is what it means).

Each payload creates a marker file when it is unpickled or loaded. The tests assert that the
marker is absent after a refused load and present after a trusted one.
"""

from __future__ import annotations

import contextlib
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from relu_doctor.errors import LoadError, UnsafePickleError
from relu_doctor.load.model import load_model
from tests.fixtures.loading import pt2_bytes, replace_in_zip, tiny


class OpenPayload:
    """Unpickling calls open(path, 'w'): creates the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


class ExecPayload:
    """Unpickling calls exec(code): arbitrary Python."""

    def __init__(self, marker: Path) -> None:
        self.code = f"open({str(marker)!r}, 'w').close()"

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (self.code,))


class ScriptPayload(nn.Module):
    """TorchScript whose __setstate__ (run by torch.jit.load) creates a file via from_file."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.blob = torch.zeros(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.marker = state[0]
        self.training = state[1]
        self.blob = torch.from_file(self.marker, shared=True, size=1)


def sequential_with(payload: object) -> nn.Module:
    model = tiny()
    model.__dict__["payload"] = payload  # a plain attribute, pickled with the module
    return model


Writer = Callable[[Path, object], object]
WRITERS: dict[str, Writer] = {
    "bare": lambda p, obj: torch.save(obj, p),
    "bare-legacy": lambda p, obj: torch.save(obj, p, _use_new_zipfile_serialization=False),
    "in-checkpoint": lambda p, obj: torch.save(
        {"epoch": 1, "state_dict": tiny().state_dict(), "extra": obj}, p
    ),
    "sequential-attr": lambda p, obj: torch.save(sequential_with(obj), p),
    "plain-pickle": lambda p, obj: p.write_bytes(pickle.dumps(obj)),
    "plain-pickle-p2": lambda p, obj: p.write_bytes(pickle.dumps(obj, protocol=2)),
}
PAYLOADS = {
    "open": (OpenPayload, f"{open.__module__}.open"),
    "exec": (ExecPayload, "builtins.exec"),
}


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("how", WRITERS)
def test_pickle_payload_refused_without_trust(
    tmp_path: Path, marker: Path, how: str, payload: str
) -> None:
    cls, global_name = PAYLOADS[payload]
    path = tmp_path / "evil.pt"
    WRITERS[how](path, cls(marker))
    with pytest.raises(UnsafePickleError) as err:
        load_model(str(path))
    assert global_name in err.value.globals_needed
    assert global_name in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("how", WRITERS)
def test_pickle_payload_runs_with_trust(tmp_path: Path, marker: Path, how: str) -> None:
    """--trust means "run this file's code": the payload runs (documented behaviour)."""
    path = tmp_path / "evil.pt"
    WRITERS[how](path, OpenPayload(marker))
    if how == "sequential-attr":
        loaded = load_model(str(path), trust=True)  # the model itself loads fine
        assert isinstance(loaded.module, nn.Sequential)
    elif how == "in-checkpoint":
        with pytest.raises(LoadError, match="state dict"):  # loaded; needs arch next
            load_model(str(path), trust=True)
    else:
        with pytest.raises(LoadError, match=r"holds a _io\.TextIOWrapper object"):
            load_model(str(path), trust=True)
    assert marker.exists()


def test_payload_with_arch_still_refused(tmp_path: Path, marker: Path) -> None:
    """--arch does not relax the unpickler: a checkpoint's extra entries are checked too."""
    path = tmp_path / "ckpt.pt"
    WRITERS["in-checkpoint"](path, OpenPayload(marker))
    with pytest.raises(UnsafePickleError):
        load_model(str(path), arch="torch.nn:ReLU")
    assert not marker.exists()


def test_torchscript_payload_needs_trust(tmp_path: Path, marker: Path) -> None:
    """A TorchScript archive runs its own code on load (here: creates a file)."""
    path = tmp_path / "scripted.pt"
    torch.jit.script(ScriptPayload(str(marker))).save(str(path))
    marker.unlink(missing_ok=True)  # scripting does not run __setstate__; be sure anyway
    with pytest.raises(LoadError, match="TorchScript archive"):
        load_model(str(path))
    assert not marker.exists()
    load_model(str(path), trust=True)
    assert marker.exists()


def test_export_payload_needs_trust(tmp_path: Path, marker: Path) -> None:
    """torch.export.load falls back to an unrestricted unpickle for the sample inputs."""
    buf = io.BytesIO()
    torch.save(((OpenPayload(marker),), {}), buf)
    path = tmp_path / "evil.pt2"
    replace_in_zip(pt2_bytes(), path, "sample_inputs/model.pt", buf.getvalue())
    with pytest.raises(LoadError, match=r"torch.export program.*trust"):
        load_model(str(path))
    assert not marker.exists()
    # Trusted: the payload runs. (torch then trips over its own fallback log call, which
    # pytest's log handler turns into an error; outside pytest the load succeeds.)
    with contextlib.suppress(LoadError):
        load_model(str(path), trust=True)
    assert marker.exists()
