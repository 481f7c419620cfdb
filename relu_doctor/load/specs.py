"""Resolve `pkg.module:attr` and `path/to/file.py:attr` specs to Python objects.

Used by ``arch``, ``data`` MODULE:CALLABLE and MODEL factories. Importing a spec runs the
user's own code by design (they named it), so it needs no trust. A callable spec may carry
literal arguments, `models.py:Net(num_classes=10, widths=(64, 128))`: each value is read
with `ast.literal_eval` (numbers, strings, bytes, booleans, None, tuples, lists, dicts,
sets), never evaluated, so an argument cannot run code.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relu_doctor.errors import UsageError, a_kind, param

_FORM = "MODULE:NAME or path/to/file.py:NAME"
_CALL_FORM = "MODULE:NAME(10, num_classes=10, widths=(64, 128), name='x')"
# The left part ends at the first ':' followed by a (dotted) name and then either the end
# or '(': a Windows drive ('C:\\x') is skipped, a ':' inside the arguments is not a split.
_SPEC = re.compile(r"(?P<left>.+?):(?P<name>[A-Za-z_][\w.]*)(?P<args>\(.*)?", re.DOTALL)


@dataclass(frozen=True)
class Spec:
    """A parsed spec: where to import from, what to take, and the call's literal arguments."""

    left: str
    name: str
    args_text: str | None = None  # "(...)" as written, or None for a bare name
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def _match(text: str) -> re.Match[str] | None:
    m = _SPEC.fullmatch(text)
    return m if m is not None and _left_ok(m["left"]) else None


def _left_ok(left: str) -> bool:
    return left.endswith(".py") or all(part.isidentifier() for part in left.split("."))


def looks_like_spec(text: str) -> bool:
    """True for `pkg.mod:attr`, `file.py:attr`, either followed by `(...)` (well formed or
    not: `parse` explains what is wrong); false for plain paths (`C:\\x` too)."""
    return _match(text) is not None


def parse(text: str, option: str = "") -> Spec:
    """Split a spec into its parts and read its arguments as literals (UsageError if not)."""
    m = _match(text)
    if m is None:
        raise UsageError(f"{text!r} is not of the form {_FORM}", **_at(option))
    left, name, args_text = m["left"], m["name"], m["args"]
    if name.endswith(".") or ".." in name:
        raise UsageError(f"{text!r} is not of the form {_FORM}", **_at(option))
    if args_text is None:
        return Spec(left, name)
    args, kwargs = _literal_call(text, args_text, option)
    return Spec(left, name, args_text, args, kwargs)


def _literal_call(text: str, args_text: str, option: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    where = f"{param(option)} {text}" if option else repr(text)
    bad = f"{where}: cannot read the arguments {args_text!r}"
    form = f"write literal values, like {_CALL_FORM}"
    try:
        tree = ast.parse("f" + args_text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        detail = getattr(exc, "msg", None) or type(exc).__name__
        raise UsageError(f"{bad} ({detail}); {form}", **_at(option)) from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
        raise UsageError(f"{bad}; {form}", **_at(option))
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for node in call.args:
        if isinstance(node, ast.Starred):
            raise UsageError(f"{bad} (*args); {form}", **_at(option))
        args.append(_literal(node, bad, form, option))
    for kw in call.keywords:
        if kw.arg is None:
            raise UsageError(f"{bad} (**kwargs); {form}", **_at(option))
        kwargs[kw.arg] = _literal(kw.value, bad, form, option)
    return tuple(args), kwargs


def _literal(node: ast.expr, bad: str, form: str, option: str) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        shown = ast.unparse(node)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise UsageError(
            f"{bad} ({shown} is an expression: nothing is evaluated); {form}",
            **_at(option),
        ) from None


def _at(option: str) -> dict[str, Any]:
    return {"param": option} if option else {}


def _cwd_on_path() -> bool:
    here = os.getcwd()
    return any(os.path.abspath(entry or os.curdir) == here for entry in sys.path)


@contextmanager
def cwd_importable() -> Iterator[None]:
    """Let imports find modules in the current folder for the duration, as `python -m`
    does and a console script does not (its sys.path starts at its own bin folder)."""
    if _cwd_on_path():
        yield
        return
    entry = os.getcwd()
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)


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
    try:
        with cwd_importable():  # `mymodels:Net` finds mymodels.py in the current folder
            return importlib.import_module(left)
    except ModuleNotFoundError as exc:
        raise UsageError(
            f"cannot import module {left!r} ({exc}); modules are looked up in the current "
            "folder and on PYTHONPATH: check the spelling, or give a file path like "
            "path/to/models.py:Name"
        ) from exc
    except Exception as exc:
        raise UsageError(f"importing {left!r} failed: {type(exc).__name__}: {exc}") from exc


def resolve(spec: str, option: str = "") -> Any:
    """Return the object a `MODULE:ATTR` spec names (ATTR may be dotted; arguments are
    parsed but not used); errors name the parameter ``option`` the spec came from."""
    return _named(parse(spec, option), spec, option)


def _named(parsed: Spec, text: str, option: str) -> Any:
    try:
        return _resolve(parsed)
    except UsageError as exc:
        if option:
            raise UsageError(
                f"{param(option)} {text}: {exc.template}", param=option
            ) from exc.__cause__
        raise


def _resolve(spec: Spec) -> Any:
    obj = _import_module(spec.left)
    for part in spec.name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"{spec.left!r} has no attribute {spec.name!r}") from None
    return obj


def call_spec(spec: str, option: str = "") -> Any:
    """Resolve a spec and call it (a factory; classes are instantiated), with the literal
    arguments the spec carries, if any."""
    parsed = parse(spec, option)
    obj = _named(parsed, spec, option)
    where = f"{param(option)} {spec}" if option else repr(spec)
    if not callable(obj):
        raise UsageError(
            f"{where} names {a_kind(type(obj).__name__)}, not a callable", **_at(option)
        )
    try:
        return obj(*parsed.args, **parsed.kwargs)
    except Exception as exc:
        raise UsageError(
            f"{where}: calling it failed: {type(exc).__name__}: {exc}", **_at(option)
        ) from exc
