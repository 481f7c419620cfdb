"""Unpickling model files: weights-only with an allowlist, or fully when trusted.

Without trust, torch's weights-only unpickler runs with `safe_globals()` added to its
defaults: the `torch.nn` module classes and activation functions, and the harmless
non-torch values training scripts put in checkpoints (`argparse.Namespace` of
hyper-parameters, `pathlib` paths, numpy arrays and scalars of plain dtypes, the last
rebuilt by checked stand-ins: see `safe_numpy.py`). Unpickling any of them runs no code
named by the file; a global outside the list is refused with `UnsafePickleError`, which
lists what the file wants.

With trust the file is unpickled fully (its code runs); its classes are imported with the
current folder on `sys.path`, as under `python -m relu_doctor` and for MODULE:CALLABLE.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import pickletools
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Literal

import torch
from torch import nn

from relu_doctor.errors import LoadError, UnsafePickleError, param
from relu_doctor.load.specs import cwd_importable
from relu_doctor.load.state_dict import ARCH_HINT

__all__ = ["TRUST_HINT", "Format", "safe_globals", "unpickle", "unreadable"]

TRUST_HINT = f"pass {param('trust')} (or set RELU_DOCTOR_TRUST=1) only if you trust this file"
Format = Literal["script", "export", "safetensors", "torch-zip", "torch-legacy", "pickle"]
#: A global as torch's allowlist takes it: the object, or (object, the name a file uses).
SafeGlobal = Any


def _qualname(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _torch_nn() -> set[Any]:
    import pkgutil

    import torch.nn.functional as F
    import torch.nn.modules as mods

    found: set[Any] = set()
    names = [f"{mods.__name__}.{m.name}" for m in pkgutil.iter_modules(mods.__path__)]
    for module in [mods, *map(importlib.import_module, names)]:
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, nn.Module)
                and _qualname(obj).startswith("torch.nn.")
            ):
                found.add(obj)
    # Activations stored as attributes (TransformerEncoderLayer.activation): pure tensor ops.
    found.update([F.relu, F.gelu, F.relu6, F.leaky_relu, F.elu, F.silu, F.tanh, F.sigmoid])
    return found


def _harmless() -> list[SafeGlobal]:
    """Values training scripts save next to the weights: `argparse.Namespace` (its BUILD
    only fills `__dict__`; positional construction is a TypeError), `pathlib` paths (pure
    string handling, no file access), and numpy booleans, numbers and strings, which go
    through the checked stand-ins of `safe_numpy` (numpy's own globals are not safe to
    allowlist). What they hold is itself unpickled under the same allowlist."""
    import argparse
    import pathlib

    from relu_doctor.load import safe_numpy

    paths = [
        (cls, f"{module}.{cls.__name__}")
        for cls in (pathlib.PosixPath, pathlib.PurePosixPath)
        for module in ("pathlib", "pathlib._local")  # Python 3.13 moved them
    ]
    return [argparse.Namespace, *paths, *safe_numpy.allowlist()]


@lru_cache(maxsize=1)
def safe_globals() -> tuple[SafeGlobal, ...]:
    """Globals a weights-only unpickle may use on top of torch's defaults.

    Every `nn.Module` subclass defined under `torch.nn.modules` (also helpers such as
    `NonDynamicallyQuantizableLinear`), the activation functions Transformer layers store,
    and the harmless values of `_harmless()`. An entry is the object or an (object, the name
    a file uses) pair. Unpickling these calls no user code.
    """
    return (*sorted(_torch_nn(), key=_qualname), *_harmless())


@contextmanager
def allowlisted() -> Iterator[None]:
    """Allow our safe globals for the duration; ones the caller added stay allowed."""
    present = list(torch.serialization.get_safe_globals())
    with torch.serialization.safe_globals([g for g in safe_globals() if g not in present]):
        yield


def unpickle(path: Path, spec: str, fmt: Format, trust: bool, dev: torch.device) -> Any:
    """The object in a torch.save file or (trusted only) a plain pickle."""
    if fmt == "pickle" and not trust:
        unsafe = unsafe_globals(path, fmt)
        if unsafe:
            raise UnsafePickleError(spec, unsafe)
        raise LoadError(
            f"{spec} is a plain Python pickle, not a torch.save file; re-save it with "
            f"torch.save(model.state_dict(), ...) and {ARCH_HINT}, or {TRUST_HINT}"
        )
    # An open file, not the path: torch.load special-cases names ending in .safetensors.
    with allowlisted(), path.open("rb") as f:
        try:
            if trust:
                with cwd_importable():  # the user's classes: mymodels.Net
                    if fmt == "pickle":
                        return pickle.load(f)
                    return torch.load(f, map_location=dev, weights_only=False)
            return torch.load(f, map_location=dev, weights_only=True)
        except pickle.UnpicklingError as exc:
            if trust:
                raise unreadable(spec, exc) from exc
            unsafe = unsafe_globals(path, fmt)
            if unsafe:
                raise UnsafePickleError(spec, unsafe) from None
            if fmt == "torch-legacy" and "persistent_load" in str(exc):
                raise LoadError(
                    f"{spec} is a whole model in torch's legacy (pre-1.6) format, which cannot "
                    f"be unpickled safely; re-save it with a current torch.save, or save a "
                    f"state dict and {ARCH_HINT}, or {TRUST_HINT}"
                ) from None
            raise LoadError(f"refusing to unpickle {spec}: {_reason(exc)}; {TRUST_HINT}") from None
        except Exception as exc:
            raise unreadable(spec, exc) from exc


_OLD_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _pickle_globals(stream: IO[bytes]) -> set[str]:
    """Globals (`module.name`) the next pickle in `stream` imports, by reading opcodes."""
    found: set[str] = set()
    memo: dict[int, Any] = {}
    recent: list[Any] = []  # the last two values pushed (strings matter for STACK_GLOBAL)
    for op, arg, _pos in pickletools.genops(stream):
        if op.name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            found.add(f"{_OLD_MODULES.get(module, module)}.{attr}")
        elif op.name == "STACK_GLOBAL":
            ok = len(recent) == 2 and all(isinstance(x, str) for x in recent)
            found.add(".".join(recent) if ok else "<computed global>")
        elif op.name.startswith("EXT"):
            found.add(f"<copyreg extension {arg}>")
        elif op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
            memo[len(memo) if arg is None else int(arg)] = recent[-1] if recent else None
            continue
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            recent.append(memo.get(int(arg)) if isinstance(arg, int) else None)
            continue
        elif op.name in ("PROTO", "FRAME", "STOP"):
            continue
        recent = [*recent, arg if isinstance(arg, str) else None][-2:]
    return found


def unsafe_globals(path: Path, fmt: Format) -> list[str]:
    """Globals outside the allowlist that the file's pickle names, sorted ([] if unknown)."""
    with allowlisted():
        if fmt == "torch-zip":
            try:
                return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
            except Exception:
                pass  # e.g. a pickle protocol it cannot parse: scan it below
        try:
            if fmt == "torch-zip":
                with zipfile.ZipFile(path) as zf:
                    data = next(n for n in zf.namelist() if n.endswith("data.pkl"))
                    found = _pickle_globals(io.BytesIO(zf.read(data)))
            else:
                with path.open("rb") as f:
                    for _ in range(3 if fmt == "torch-legacy" else 0):  # magic, version, info
                        _pickle_globals(f)
                    found = _pickle_globals(f)
            from torch import _weights_only_unpickler as wou  # private: guarded by the try

            allowed = set(wou._get_allowed_globals()) | set(wou._get_user_allowed_globals())
        except Exception:
            return []
    return sorted(found - allowed)


def _reason(exc: BaseException) -> str:
    """The useful line of torch's long weights-only refusal."""
    text = str(exc).split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def unreadable(spec: str, exc: BaseException) -> LoadError:
    """The error for a file that failed to load for a reason other than trust."""
    detail = " ".join(str(exc).split())[:200] or type(exc).__name__
    if isinstance(exc, ModuleNotFoundError) and exc.name:  # a trusted pickle of user classes
        return LoadError(
            f"cannot load {spec}: it needs the module {exc.name!r}, which is not importable "
            f"here (modules are looked up in the current folder, {os.getcwd()}, and on "
            f"PYTHONPATH); run from the folder that holds {exc.name.split('.')[0]!r} or add "
            f"that folder to PYTHONPATH, or save a state dict and {ARCH_HINT}"
        )
    if isinstance(exc, ImportError | AttributeError):  # trusted pickle naming missing code
        return LoadError(
            f"cannot load {spec}: it needs code that is not importable here ({detail}); "
            f"run where that code is importable, or save a state dict and {ARCH_HINT}"
        )
    return LoadError(f"cannot read {spec}: it is truncated or corrupt ({detail}); save it again")
