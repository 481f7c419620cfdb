"""Data files for ``data``: .pt, .npy, .npz, .csv, .parquet, or a MODULE:CALLABLE factory.

Files are read eagerly (errors surface before the scan starts), then sliced into batches
without copies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from relu_doctor.errors import InputError, UsageError, a_kind, param
from relu_doctor.load.specs import call_spec, looks_like_spec
from relu_doctor.scanner.batches import (
    Batches,
    array_to_tensor,
    as_batches,
    check_batch_args,
    tensor_batches,
)

_FILE_X_KEYS = ("x", "inputs", "input", "data", "features")
_FILE_Y_KEYS = ("y", "targets", "target", "labels", "label")
_CSV_TARGETS = ("target", "label", "labels", "y")
_FORMATS = ".pt, .pth, .npy, .npz, .csv, .parquet"


def _pick(keys: Iterable[Any], wanted: tuple[str, ...]) -> Any:
    lower = {str(k).lower(): k for k in keys}
    return next((lower[w] for w in wanted if w in lower), None)


def _read_torch(path: Path) -> tuple[Any, Any]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, torch.Tensor):
        return obj, None
    if isinstance(obj, (tuple, list)) and len(obj) in (1, 2):
        return obj[0], obj[1] if len(obj) == 2 else None
    if isinstance(obj, Mapping):
        xk, yk = _pick(obj, _FILE_X_KEYS), _pick(obj, _FILE_Y_KEYS)
        if xk is not None:
            return obj[xk], obj[yk] if yk is not None else None
        keys = ", ".join(map(str, list(obj)[:8]))
        raise InputError(
            f"{path} holds a dict with keys {keys}; expected x (or inputs/data) "
            "and optional y (or targets/labels)"
        )
    raise InputError(
        f"{path} holds {a_kind(type(obj).__name__)}; save a tensor, (x, y) or {{'x': x, 'y': y}}"
    )


def _read_numpy(path: Path) -> tuple[Any, Any]:
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        return array_to_tensor(loaded, str(path)), None
    with loaded as z:
        files = list(z.files)
        xk, yk = _pick(files, _FILE_X_KEYS), _pick(files, _FILE_Y_KEYS)
        if len(files) == 1:
            xk, yk = files[0], None
        elif xk is None and sorted(files) == ["arr_0", "arr_1"]:
            xk, yk = "arr_0", "arr_1"  # np.savez(path, x, y)
        if xk is None:
            raise InputError(
                f"{path} has arrays {', '.join(files) or '(none)'}; name the inputs x "
                "(or inputs/data) and the optional targets y (or targets/labels): "
                "np.savez(path, x=x, y=y)"
            )
        x = array_to_tensor(z[xk], f"{path}[{xk}]")
        y = None if yk is None else array_to_tensor(z[yk], f"{path}[{yk}]", target=True)
    return x, y


def _frame_to_tensors(df: Any, path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Table -> float32 features and optional targets from a target/label/labels/y column."""
    import pandas as pd

    if len(df) == 0:
        raise InputError(f"{path} has no rows")
    tcols = [c for c in df.columns if str(c).strip().lower() in _CSV_TARGETS]
    if len(tcols) > 1:
        raise InputError(
            f"{path} has several target columns ({', '.join(map(str, tcols))}); keep one"
        )
    y = None
    if tcols:
        s = df.pop(tcols[0])
        if pd.api.types.is_bool_dtype(s) or (
            pd.api.types.is_integer_dtype(s) and not s.isna().any()
        ):
            y = torch.tensor(s.to_numpy(dtype="int64"))
        elif pd.api.types.is_numeric_dtype(s):
            y = torch.tensor(s.to_numpy(dtype="float32", na_value=float("nan")))
        else:  # string class names -> sorted integer codes
            codes, _ = pd.factorize(s, sort=True)
            if (codes < 0).any():
                raise InputError(f"{path}: column {tcols[0]!r} has empty labels")
            y = torch.tensor(codes.astype("int64"))
    if df.shape[1] == 0:
        raise InputError(f"{path} has no feature columns, only the target {tcols[0]!r}")
    bad = [str(c) for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise InputError(
            f"{path} has non-numeric columns ({shown}); encode or drop them "
            f"(a label column must be named {', '.join(_CSV_TARGETS)})"
        )
    x = torch.tensor(df.to_numpy(dtype="float32", na_value=float("nan")))
    return x, y


def _read_csv(path: Path) -> tuple[Any, Any]:
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path} has no rows") from None
    return _frame_to_tensors(df, path)


def _read_parquet(path: Path) -> tuple[Any, Any]:
    import pandas as pd

    try:
        df = pd.read_parquet(path)
    except ImportError:
        raise InputError(
            "reading parquet needs pyarrow: pip install relu-doctor[parquet]"
        ) from None
    return _frame_to_tensors(df, path)


_READERS = {".pt": _read_torch, ".pth": _read_torch, ".npy": _read_numpy, ".npz": _read_numpy}
_READERS |= {".csv": _read_csv, ".parquet": _read_parquet, ".pq": _read_parquet}


def batch_factory(spec: str, *, batch_size: int) -> Callable[[], Batches]:
    """A fresh stream of the same batches on every call (one per scanned model): a file is
    read once, a MODULE:CALLABLE factory is called again each time."""
    check_batch_args(batch_size, None)
    path = Path(spec)
    if path.is_dir():
        raise InputError(
            f"{param('data')} {spec} is a directory; give one file ({_FORMATS}) or MODULE:CALLABLE"
        )
    if not path.is_file():
        if looks_like_spec(spec):
            first = call_spec(spec, "data")  # errors surface before any scan
            made = [first]

            def fresh() -> Batches:
                data = made.pop() if made else call_spec(spec, "data")
                return as_batches(data, batch_size, f"what {spec} returned")

            return fresh
        raise InputError(
            f"data file {spec} not found; give an existing file ({_FORMATS}) "
            "or MODULE:CALLABLE that returns batches"
        )
    x, y = _read_file(spec, path)
    return lambda: tensor_batches(x, y, batch_size)


def _read_file(spec: str, path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise InputError(
            f"{param('data')} {spec}: unknown file type {path.suffix or '(none)'!r}; "
            f"use {_FORMATS}, or MODULE:CALLABLE that returns batches"
        )
    try:
        x, y = reader(path)
    except (InputError, UsageError):
        raise
    except Exception as exc:
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise InputError(
            f"cannot read {spec} as {path.suffix.lower()[1:]} data "
            f"({type(exc).__name__}: {detail}); check the file or save it again"
        ) from exc
    if not isinstance(x, torch.Tensor) or (y is not None and not isinstance(y, torch.Tensor)):
        raise InputError(f"{spec}: inputs and targets must be tensors")
    if x.dim() == 0 or x.shape[0] == 0:
        raise InputError(f"{spec} has no samples")
    if y is not None and (y.dim() == 0 or y.shape[0] != x.shape[0]):
        raise InputError(
            f"{spec}: {x.shape[0]} samples but {y.shape[0] if y.dim() else 'a scalar'} targets"
        )
    return x, y
