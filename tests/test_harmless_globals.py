"""Harmless values in checkpoints load without trust: `argparse.Namespace` of hyper-parameters,
`pathlib` paths, numpy booleans, numbers and strings (arrays and scalars). And the allowlist
that lets them in runs no code: payloads hidden in them are refused, and crafted numpy
states (object arrays from raw bytes, dtypes with hidden object fields) are refused too,
where numpy's own globals would crash the process or worse."""

from __future__ import annotations

import argparse
import io
import pickle
import struct
from pathlib import Path, PosixPath
from typing import Any

import numpy as np
import pytest
import torch

from relu_doctor.errors import LoadError, UnsafePickleError
from relu_doctor.load.model import load_model
from relu_doctor.load.pickles import unpickle
from tests.fixtures.loading import replace_in_zip, tiny, write_arch
from tests.test_hostile import OpenPayload

CPU = torch.device("cpu")


@pytest.fixture
def arch(tmp_path: Path) -> str:
    return f"{write_arch(tmp_path)}:build"


def extras() -> dict[str, Any]:
    """What training scripts keep next to the weights (the ImageNet example and friends)."""
    return {
        "args": argparse.Namespace(
            arch="tiny", lr=0.1, data=PosixPath("/data/imagenet"), gpu=None, widths=[8, 16]
        ),
        "best_acc1": np.float64(71.25),
        "best_epoch": np.int64(9),
        "converged": np.bool_(True),
        "val_history": np.array([0.5, 0.25, 0.125], dtype=np.float32),
        "confusion": np.arange(6, dtype=np.int64).reshape(2, 3).T,  # Fortran order
        "classes": np.array(["cat", "dog"]),
        "tag": np.str_("run-7"),
        "raw": np.frombuffer(b"\x00\x01", dtype=np.uint8),
        "big_endian": np.arange(3, dtype=">f4"),
        "empty": np.zeros((0, 4), dtype=np.float16),
        "half": np.float16(0.5),
        "complex": np.complex128(1 + 2j),
    }


def assert_same(got: Any, want: Any) -> None:
    """`got` is what numpy's own unpickling of `want` gives (it makes byte order native)."""
    want = pickle.loads(pickle.dumps(want))
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want)
    elif isinstance(want, np.generic):
        assert type(got) is type(want) and got == want
    elif isinstance(want, argparse.Namespace):
        assert vars(got) == vars(want)
    else:
        assert got == want


def test_training_checkpoint_with_hyper_parameters_and_numpy(tmp_path: Path, arch: str) -> None:
    model = tiny()
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 10, "state_dict": model.state_dict(), **extras()}, path)
    loaded = load_model(str(path), arch=arch)
    assert torch.equal(loaded.module.state_dict()["0.weight"], model.state_dict()["0.weight"])
    assert loaded.warnings == []


def test_values_come_back_exactly(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    torch.save(extras(), path)
    got = unpickle(path, str(path), "torch-zip", False, CPU)
    for key, want in extras().items():
        assert_same(got[key], want)


def test_lightning_hyper_parameters_namespace(tmp_path: Path, arch: str) -> None:
    model = tiny()
    ckpt = {
        "epoch": 3,
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"args": argparse.Namespace(lr=1e-3, root=PosixPath("runs"))},
        "callbacks": {"ModelCheckpoint": {"best_model_score": np.float64(0.31)}},
    }
    torch.save(ckpt, tmp_path / "l.ckpt")
    assert load_model(str(tmp_path / "l.ckpt"), arch=arch).warnings == []


def test_numpy_1_names(tmp_path: Path) -> None:
    """Files written under numpy 1 name numpy.core.multiarray, not numpy._core."""
    buf = io.BytesIO()
    torch.save(extras(), buf)
    with __import__("zipfile").ZipFile(io.BytesIO(buf.getvalue())) as zf:
        data = zf.read("archive/data.pkl")
    assert b"numpy._core.multiarray" in data
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path = tmp_path / "old_numpy.pt"
    replace_in_zip(buf.getvalue(), path, "data.pkl", old)
    got = unpickle(path, str(path), "torch-zip", False, CPU)
    assert_same(got["val_history"], extras()["val_history"])
    assert_same(got["best_acc1"], extras()["best_acc1"])


# --- the allowlist runs no code -------------------------------------------------------------

CONTAINERS = {
    "namespace": lambda p: argparse.Namespace(lr=0.1, hook=p),
    "object-array": lambda p: np.array([p, 1], dtype=object),
    "next-to-numpy": lambda p: {"best": np.float64(0.5), "arr": np.ones(2), "hook": p},
    "namespace-in-list": lambda p: [argparse.Namespace(inner=[p])],
}


@pytest.mark.parametrize("container", CONTAINERS)
def test_payloads_in_harmless_values_do_not_run(tmp_path: Path, arch: str, container: str) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "ckpt.pt"
    extra = CONTAINERS[container](OpenPayload(marker))
    torch.save({"state_dict": tiny().state_dict(), "extra": extra}, path)
    with pytest.raises(UnsafePickleError) as err:
        load_model(str(path), arch=arch)
    assert f"{open.__module__}.open" in err.value.globals_needed
    assert not marker.exists()
    load_model(str(path), arch=arch, trust=True)  # the payload is real: trusted, it runs
    assert marker.exists()


# Crafted pickles (opcodes written by hand, as an attacker would) naming allowlisted globals.
def _g(name: str) -> bytes:
    module, _, attr = name.rpartition(".")
    return b"c" + module.encode() + b"\n" + attr.encode() + b"\n"


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _call(name: str, *args: bytes) -> bytes:
    return _g(name) + _tuple(*args) + b"R"


def _s(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _i(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def _b(data: bytes) -> bytes:  # protocol 2 has no bytes opcode: _codecs.encode(str, latin1)
    return _call("_codecs.encode", _s(data.decode("latin1")), _s("latin1"))


NONE, TRUE, FALSE = b"N", b"\x88", b"\x89"


def _dtype(spec: str, state: bytes | None = None) -> bytes:
    default = _tuple(_i(3), _s("<"), NONE * 3, _i(-1), _i(-1), _i(0))
    return _call("numpy.dtype", _s(spec), FALSE, TRUE) + (state or default) + b"b"


_ARRAY = _call("numpy._core.multiarray._reconstruct", _g("numpy.ndarray"), _tuple(_i(0)), _b(b"b"))
_FORGED = (_tuple(_i(1)), _s("O"), _b(b"A" * 8))  # shape, dtype, raw object "pointers"
_HIDDEN_FIELD = b"}" + _s("a") + _tuple(_dtype("f8"), _i(0)) + b"s"  # {"a": (dtype, 0)}
CRAFTED = {
    # numpy.ndarray((1,), "O", b"AAAAAAAA"): an object array of forged pointers (a crash).
    "ndarray-from-raw-bytes": _call("numpy.ndarray", *_FORGED),
    "ndarray-newobj": _g("numpy.ndarray") + _tuple(*_FORGED) + b"\x81",
    "object-dtype": _dtype("O8"),
    "void-dtype": _dtype("V8"),
    # A plain dtype given an object field by its state: numpy would keep hasobject False.
    "dtype-with-hidden-object-field": _dtype(
        "f8", _tuple(_i(3), _s("|"), NONE, _tuple(_s("a")), _HIDDEN_FIELD, _i(8), _i(1), _i(0))
    ),
    "array-of-a-namespace-subtype": _call(
        "numpy._core.multiarray._reconstruct", _g("argparse.Namespace"), _tuple(_i(0)), _b(b"b")
    ),
    "array-with-too-few-bytes": _ARRAY
    + _tuple(_i(1), _tuple(_i(4)), _dtype("f8"), FALSE, _b(b"A" * 8))
    + b"b",
    "scalar-of-wrong-size": _call("numpy.core.multiarray.scalar", _dtype("f8"), _b(b"AAA")),
    "bytes-of-a-size": _call("builtins.bytes", _i(1 << 30)),
    "namespace-positional": _call("argparse.Namespace", _s("x")),
    "loaded-array-by-name": _call("relu_doctor.load.safe_numpy.LoadedArray", _i(1)),
}


REASON = {
    "ndarray-from-raw-bytes": "calling numpy.ndarray",
    "ndarray-newobj": "is not a type object",
    "object-dtype": "numpy dtype 'O8' is not a plain one",
    "void-dtype": "numpy dtype 'V8' is not a plain one",
    "dtype-with-hidden-object-field": "numpy dtype state with fields",
    "array-of-a-namespace-subtype": "numpy array of a subclass",
    "array-with-too-few-bytes": "numpy array of shape (4,) with 8 bytes",
    "scalar-of-wrong-size": "numpy scalar of an unknown form",
    "bytes-of-a-size": "bytes() with arguments",
    "namespace-positional": "takes 1 positional argument",
    "loaded-array-by-name": "needs code outside torch.nn",
}


def write_crafted(folder: Path, opcodes: bytes) -> Path:
    """A torch.save zip whose data.pkl is the protocol-2 pickle `opcodes` + STOP."""
    buf = io.BytesIO()
    torch.save({}, buf)
    path = folder / "crafted.pt"
    replace_in_zip(buf.getvalue(), path, "data.pkl", b"\x80\x02" + opcodes + b".")
    return path


@pytest.mark.parametrize("name", CRAFTED)
def test_crafted_numpy_and_namespace_states_are_refused(tmp_path: Path, name: str) -> None:
    path = write_crafted(tmp_path, CRAFTED[name])
    with pytest.raises(LoadError) as err:  # refused: no crash, no raw exception
        load_model(str(path))
    assert REASON[name] in str(err.value)


def test_a_sane_crafted_array_loads(tmp_path: Path) -> None:
    """The hand-written opcodes above are right: the same form with sound values loads."""
    raw = struct.pack("<2d", 1.5, -2.0)
    data = _ARRAY + _tuple(_i(1), _tuple(_i(2)), _dtype("f8"), FALSE, _b(raw)) + b"b"
    path = write_crafted(tmp_path, data)
    assert np.array_equal(unpickle(path, str(path), "torch-zip", False, CPU), [1.5, -2.0])
