"""Numpy arrays and scalars in checkpoints, rebuilt without trust by checked stand-ins.

numpy's own pickle globals cannot go on the weights-only allowlist: the unpickler lets a
file call every allowlisted global with arguments of its choosing, and

- `numpy.ndarray((1,), dtype("O"), b"AAAAAAAA")` makes an object array out of raw bytes
  (object pointers the file chose: a crash, or worse, on first use);
- `dtype.__setstate__` accepts a crafted state that gives a dtype an object field while
  `hasobject` stays False, so `ndarray.__setstate__` then reads raw bytes as pointers too.

So the names a numpy pickle uses resolve to the stand-ins below, which accept exactly
what numpy writes for booleans, numbers, strings and bytes (kinds b i u f c U S; plain,
C- or Fortran-ordered arrays) and refuse everything else with an UnpicklingError (object
and structured dtypes, datetimes, subclasses): those need trust. An array comes back as a
`LoadedArray` (an ndarray subclass), a scalar as the numpy scalar, a standalone dtype as a
`SafeDType` (its `.dtype` is the numpy dtype).
"""

from __future__ import annotations

import math
import re
from pickle import UnpicklingError
from typing import Any, NoReturn, cast

import numpy as np

__all__ = ["LoadedArray", "SafeDType", "allowlist"]

_KINDS = "biufcUS"
_SPEC = re.compile(r"[biufcUS]\d{1,5}")
_TRUST = "; numpy values other than booleans, numbers and strings need trust"


def _refuse(what: str) -> NoReturn:
    raise UnpicklingError(f"{what}{_TRUST}")


class SafeDType:
    """What `numpy.dtype(spec, align, copy)` unpickles to: a checked plain dtype. The check
    is in `__new__`, which both ways of creating it from a pickle go through."""

    dtype: np.dtype[Any]

    def __new__(cls, spec: object = None, align: object = False, copy: object = True) -> SafeDType:
        if not (isinstance(spec, str) and _SPEC.fullmatch(spec)):
            _refuse(f"numpy dtype {str(spec)[:40]!r} is not a plain one")
        dtype = np.dtype(spec)
        if dtype.kind not in _KINDS or dtype.fields is not None or dtype.hasobject:
            _refuse(f"numpy dtype {spec!r} is not a plain one")
        self = super().__new__(cls)
        self.dtype = dtype
        return self

    def __setstate__(self, state: object) -> None:
        # numpy writes (3, byteorder, None, None, None, elsize, alignment, flags); only the
        # byte order is taken, the rest must be absent (no subarray, names or fields).
        ok = isinstance(state, tuple) and len(state) == 8 and state[2:5] == (None, None, None)
        if not ok or state[1] not in ("<", ">", "|", "="):  # type: ignore[index]
            _refuse("numpy dtype state with fields, a subarray or metadata")
        order = state[1]  # type: ignore[index]
        if order in "<>" and self.dtype.itemsize > 1 and self.dtype.kind != "S":
            self.dtype = self.dtype.newbyteorder(order)


def _plain(dtype: object) -> np.dtype[Any]:
    if not isinstance(dtype, SafeDType):
        _refuse(f"a numpy value of dtype {type(dtype).__name__}")
    return dtype.dtype


class LoadedArray(np.ndarray):
    """An array rebuilt from a checkpoint; `__setstate__` checks the state first. It cannot
    be called from a pickle (`ndarray(shape, "O", raw_bytes)` is the danger above):
    `_reconstruct` makes an empty one as a view, which does not go through `__new__`."""

    def __new__(cls, *args: object, **kwargs: object) -> NoReturn:
        _refuse("calling a numpy array type")

    def __setstate__(self, state: object) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            _refuse("numpy array state of an unknown form")
        version, shape, dtype, fortran, raw = state
        real = _plain(dtype)
        if not (
            version == 1
            and isinstance(shape, tuple)
            and all(type(n) is int and 0 <= n < 1 << 48 for n in shape)
            and type(fortran) is bool
            and isinstance(raw, bytes)
        ):
            _refuse("numpy array state of an unknown form")
        if len(raw) != math.prod(shape) * real.itemsize:
            _refuse(f"numpy array of shape {shape} with {len(raw)} bytes")
        checked: Any = (1, shape, real, fortran, raw)  # numpy's stubs want np.bool_: it is not
        super().__setstate__(checked)


class _NdarrayName:
    """What `numpy.ndarray` unpickles to: a marker `_reconstruct` accepts, never called."""

    def __call__(self, *args: object, **kwargs: object) -> NoReturn:
        _refuse("calling numpy.ndarray")


_NDARRAY = _NdarrayName()


def _reconstruct(subtype: object, shape: object, code: object) -> LoadedArray:
    """numpy writes `_reconstruct(ndarray, (0,), b"b")`, then the array's state."""
    if subtype is not _NDARRAY or shape != (0,) or code != b"b":
        _refuse("numpy array of a subclass or an unknown form")
    empty: Any = np.empty(0, dtype=np.int8)
    return cast(LoadedArray, empty.view(LoadedArray))


def _scalar(dtype: object, data: object) -> Any:
    """numpy writes `scalar(dtype, raw bytes)` for a scalar such as np.float64(0.93)."""
    real = _plain(dtype)
    if not isinstance(data, bytes) or len(data) != real.itemsize:
        _refuse("numpy scalar of an unknown form")
    return np.frombuffer(data, dtype=real)[0].copy()


def _empty_bytes(*args: object) -> bytes:
    """Protocol 2 writes `bytes()` for the raw data of an empty array (other bytes go
    through `_codecs.encode`, which torch allows); `bytes(n)` would allocate n bytes."""
    if args:
        _refuse("bytes() with arguments")
    return b""


def allowlist() -> list[tuple[Any, str]]:
    """(stand-in, the name numpy pickles use) for torch.serialization.safe_globals; numpy 1
    wrote `numpy.core.multiarray`, numpy 2 writes `numpy._core.multiarray`."""
    names: list[tuple[Any, str]] = [
        (SafeDType, "numpy.dtype"),
        (_NDARRAY, "numpy.ndarray"),
        (LoadedArray, f"{__name__}\nLoadedArray: for BUILD only, no GLOBAL can name it"),
        (_empty_bytes, "builtins.bytes"),
    ]
    for core in ("numpy.core", "numpy._core"):
        names += [(_reconstruct, f"{core}.multiarray._reconstruct")]
        names += [(_scalar, f"{core}.multiarray.scalar")]
    return names
