"""Resolve `pkg.module:attr` and `path/to/file.py:attr` specs to Python objects.

Used by ``arch``, ``data`` MODULE:CALLABLE and MODEL factories. Importing a spec runs the
user's own code by design (they named it), so it needs no trust.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from relu_doctor.errors import UsageError, param


def looks_like_spec(text: str) -> bool:
    """True for `pkg.mod:attr` or `file.py:attr`; false for plain paths (`C:\\x` too)."""
    if ":" not in text:
        return False
    left, _, right = text.rpartition(":")
    if not left or not right or not right.replace(".", "_").isidentifier():
        return False
    if left.endswith(".py"):
        return True
    return all(part.isidentifier() for part in left.split("."))


def _import_module(left: str) -> Any:
    if left.endswith(".py"):
        path = Path(left)
        if not path.is_file():
            raise UsageError(f"cannot import {left!r}: no such file")
        name = f"_relu_doctor_user_{abs(hash(path.resolve()))}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise UsageError(f"cannot import {left!r}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise UsageError(f"importing {left!r} failed: {type(exc).__name__}: {exc}") from exc
        return module
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # let `mymodels:Net` find mymodels.py in the current folder
    try:
        return importlib.import_module(left)
    except ModuleNotFoundError as exc:
        raise UsageError(
            f"cannot import module {left!r} ({exc}); check the spelling, or give a file path "
            "like path/to/models.py:Name"
        ) from exc
    except Exception as exc:
        raise UsageError(f"importing {left!r} failed: {type(exc).__name__}: {exc}") from exc


def resolve(spec: str, option: str = "") -> Any:
    """Return the object a `MODULE:ATTR` spec names (ATTR may be dotted); errors name the
    parameter ``option`` the spec came from (``arch``)."""
    try:
        return _resolve(spec)
    except UsageError as exc:
        if option:
            raise UsageError(
                f"{param(option)} {spec}: {exc.template}", param=option
            ) from exc.__cause__
        raise


def _resolve(spec: str) -> Any:
    if not looks_like_spec(spec):
        raise UsageError(f"{spec!r} is not of the form MODULE:NAME or path/to/file.py:NAME")
    left, _, right = spec.rpartition(":")
    obj = _import_module(left)
    for part in right.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"{left!r} has no attribute {right!r}") from None
    return obj


def call_spec(spec: str, option: str = "") -> Any:
    """Resolve a spec and call it with no arguments (a factory); classes are instantiated."""
    obj = resolve(spec, option)
    where = f"{param(option)} {spec}" if option else repr(spec)
    if not callable(obj):
        raise UsageError(f"{where} names a {type(obj).__name__}, not a callable")
    try:
        return obj()
    except Exception as exc:
        raise UsageError(f"{where}: calling it failed: {type(exc).__name__}: {exc}") from exc
