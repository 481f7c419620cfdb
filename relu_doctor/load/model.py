"""Turn a MODEL argument (a file or a `MODULE:CALLABLE` factory) into an `nn.Module`, safely.

Formats are detected from content, not the extension:

- torch.save zip (`data.pkl` inside) or legacy file (first pickle is torch's magic number):
  `weights_only=True` with the `torch.nn` classes allowlisted; other globals raise
  `UnsafePickleError`. A plain `pickle.dump` file is refused (it is never safe).
- TorchScript zip (`constants.pkl`, `code/`) and torch.export `.pt2` zip (`archive_format`,
  `models/*.json`) carry code: a scripted `__setstate__` runs on load and can create files
  (`torch.from_file`); `torch.export.load` unpickles parts of the archive unrestricted.
  Both need `trust`.
- `.safetensors` (8-byte little-endian header length, then `{`): tensors only; needs `arch`.

`trust=True` means "run this file's code": full unpickling, TorchScript and torch.export.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Literal

import torch
from torch import nn

from relu_doctor.errors import LoadError, UnsafePickleError, UsageError, param
from relu_doctor.load import specs
from relu_doctor.load.state_dict import ARCH_HINT as _ARCH
from relu_doctor.load.state_dict import WEIGHT_KEYS, describe, find_weights, fit

__all__ = ["WEIGHT_KEYS", "LoadedModel", "load_model", "safe_globals", "trust_from_env"]

TRUST_ENV = "RELU_DOCTOR_TRUST"
_TRUST = f"pass {param('trust')} (or set RELU_DOCTOR_TRUST=1) only if you trust this file"
_FORMATS = "expected a torch.save file, TorchScript, .pt2 or .safetensors"
_CODE = {
    "script": "a TorchScript archive: its code runs on load and on forward (it can write files)",
    "export": "a torch.export program: torch.export.load unpickles parts of it unrestricted",
}
_Format = Literal["script", "export", "safetensors", "torch-zip", "torch-legacy", "pickle"]


@dataclass
class LoadedModel:
    """A loaded model and where it came from."""

    module: nn.Module
    runtime: Literal["eager", "script", "export"]
    name: str
    exported: torch.export.ExportedProgram | None = None


def trust_from_env() -> bool:
    """True when RELU_DOCTOR_TRUST is 1/true/yes (any case)."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in {"1", "true", "yes"}


@lru_cache(maxsize=1)
def _safe_globals() -> tuple[Callable[..., Any], ...]:
    import importlib
    import pkgutil

    import torch.nn.functional as F
    import torch.nn.modules as mods

    found: set[Callable[..., Any]] = set()
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
    return tuple(sorted(found, key=_qualname))


def safe_globals() -> list[Callable[..., Any]]:
    """Globals a weights-only unpickle may use on top of torch's defaults.

    Every `nn.Module` subclass defined under `torch.nn.modules` (also helpers such as
    `NonDynamicallyQuantizableLinear`) and the activation functions Transformer layers
    store. Unpickling these calls no user code.
    """
    return list(_safe_globals())


def load_model(
    spec: str,
    *,
    arch: str | None = None,
    trust: bool = False,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Load MODEL (a file path or a `MODULE:CALLABLE` factory) onto `device`.

    Raises LoadError (UnsafePickleError for a refused pickle) or UsageError, each with a
    one-line message saying what is wrong and what to do. Runs no code from the file unless
    `trust` (callers OR in `trust_from_env()`). `device="auto"` picks cuda when available.
    """
    dev = _device(device)
    path = Path(spec)
    if specs.looks_like_spec(spec) and not path.exists():
        if arch is not None:
            raise UsageError(
                f"{spec} is a factory that builds the model; drop {param('arch')}", param="arch"
            )
        model = specs.call_spec(spec)
        if not isinstance(model, nn.Module):
            raise LoadError(f"{spec} returned {describe(model)}, not a torch.nn.Module")
        return LoadedModel(model.to(dev), "eager", spec)
    fmt = _sniff(path, spec)
    if fmt in _CODE:
        if not trust:
            raise LoadError(
                f"{spec} is {_CODE[fmt]}, so {_TRUST}; or save a state dict and {_ARCH}"
            )
        _no_arch(arch, spec, _CODE[fmt].partition(":")[0])
        try:
            if fmt == "script":
                return LoadedModel(torch.jit.load(str(path), map_location=dev), "script", path.name)
            return _load_export(path, dev)
        except Exception as exc:
            raise _unreadable(spec, exc) from exc
    if fmt == "safetensors":
        return _from_object(_load_safetensors(path, spec, dev), spec, arch, dev)
    return _from_object(_unpickle(path, spec, fmt, trust, dev), spec, arch, dev)


def _device(device: str | torch.device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from exc


def _load_export(path: Path, dev: torch.device) -> LoadedModel:
    ep = torch.export.load(str(path))
    if dev.type != "cpu":
        from torch.export.passes import move_to_device_pass

        ep = move_to_device_pass(ep, dev)
    return LoadedModel(ep.module(), "export", path.name, ep)


def _load_safetensors(path: Path, spec: str, dev: torch.device) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        msg = "is a .safetensors file but safetensors is not installed"
        raise LoadError(f"{spec} {msg}; pip install relu-doctor[safetensors]") from None
    try:
        return dict(load_file(str(path), device=str(dev)))
    except Exception as exc:
        raise _unreadable(spec, exc) from exc


@contextmanager
def _allowlisted() -> Iterator[None]:
    """Allow our safe globals for the duration; ones the caller added stay allowed."""
    present = set(torch.serialization.get_safe_globals())
    with torch.serialization.safe_globals([g for g in _safe_globals() if g not in present]):
        yield


def _unpickle(path: Path, spec: str, fmt: _Format, trust: bool, dev: torch.device) -> Any:
    if fmt == "pickle" and not trust:
        unsafe = _unsafe_globals(path, fmt)
        if unsafe:
            raise UnsafePickleError(spec, unsafe)
        raise LoadError(
            f"{spec} is a plain Python pickle, not a torch.save file; re-save it with "
            f"torch.save(model.state_dict(), ...) and {_ARCH}, or {_TRUST}"
        )
    # An open file, not the path: torch.load special-cases names ending in .safetensors.
    with _allowlisted(), path.open("rb") as f:
        try:
            if fmt == "pickle":
                return pickle.load(f)  # trusted
            return torch.load(f, map_location=dev, weights_only=not trust)
        except pickle.UnpicklingError as exc:
            if trust:
                raise _unreadable(spec, exc) from exc
            unsafe = _unsafe_globals(path, fmt)
            if unsafe:
                raise UnsafePickleError(spec, unsafe) from None
            if fmt == "torch-legacy" and "persistent_load" in str(exc):
                raise LoadError(
                    f"{spec} is a whole model in torch's legacy (pre-1.6) format, which cannot "
                    f"be unpickled safely; re-save it with a current torch.save, or save a "
                    f"state dict and {_ARCH}, or {_TRUST}"
                ) from None
            raise LoadError(f"refusing to unpickle {spec}: {_reason(exc)}; {_TRUST}") from None
        except Exception as exc:
            raise _unreadable(spec, exc) from exc


def _sniff(path: Path, spec: str) -> _Format:
    """Classify a file by its content; LoadError for anything that is not a model file."""
    if not path.exists():
        raise LoadError(f"{spec}: no such file; check the path (a factory is MODULE:CALLABLE)")
    if path.is_dir():
        raise LoadError(f"{spec} is a directory; pass the model file inside it ({_FORMATS})")
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError as exc:
        raise LoadError(f"cannot read {spec}: {exc.strerror or exc}") from exc
    if not head:
        raise LoadError(f"{spec} is empty (0 bytes); the save was interrupted: save it again")
    if head.startswith(b"PK\x03\x04"):
        return _sniff_zip(path, spec)
    if head[8:9] == b"{" and 1 < int.from_bytes(head[:8], "little") < 1 << 28:
        return "safetensors"
    fmt = _sniff_pickle(path, spec, strict=head[:1] == b"\x80")
    if fmt is not None:
        return fmt
    if b"\x00" not in head and head.decode("utf-8", "replace").count("\ufffd") <= 1:
        hint = "; to build a model from code pass FILE.py:FACTORY" * spec.endswith(".py")
        raise LoadError(f"{spec} is a text file, not a saved model ({_FORMATS}){hint}")
    raise LoadError(f"{spec} is not a format PyTorch saves (starts {head[:8]!r}); {_FORMATS}")


def _sniff_zip(path: Path, spec: str) -> _Format:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise LoadError(f"{spec} is a truncated or corrupt zip ({exc}); save it again") from exc
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        return "script"
    pt2 = ("archive_format", "serialized_exported_program.json")
    if any(n.endswith(pt2) or ("/models/" in n and n.endswith(".json")) for n in names):
        return "export"
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "torch-zip"
    raise LoadError(f"{spec} is a zip archive but not a PyTorch file; {_FORMATS}")


def _sniff_pickle(path: Path, spec: str, strict: bool) -> _Format | None:
    """Legacy torch file or plain pickle, read opcode by opcode (runs nothing); None when
    a file that does not start like a modern pickle (not `strict`) fails to parse."""
    try:
        with path.open("rb") as f:
            ops = [(op.name, arg) for op, arg, _ in pickletools.genops(f)]  # first pickle
    except Exception as exc:
        if not strict:
            return None
        raise LoadError(f"{spec} is a truncated or corrupt pickle ({exc}); save it again") from exc
    values = [arg for name, arg in ops if name not in ("PROTO", "FRAME", "STOP")]
    return "torch-legacy" if values == [torch.serialization.MAGIC_NUMBER] else "pickle"


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


def _unsafe_globals(path: Path, fmt: _Format) -> list[str]:
    """Globals outside the allowlist that the file's pickle names, sorted ([] if unknown)."""
    with _allowlisted():
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


def _from_object(obj: Any, spec: str, arch: str | None, dev: torch.device) -> LoadedModel:
    name = Path(spec).name
    found = find_weights(obj) if isinstance(obj, Mapping) else obj
    if isinstance(found, nn.Module):
        _no_arch(arch, spec, "a whole pickled model")
        return LoadedModel(found.to(dev), "eager", name)
    if isinstance(found, Mapping):
        if arch is None:
            raise LoadError(f"{spec} is a state dict ({len(found)} tensors), not a model; {_ARCH}")
        return LoadedModel(fit(found, arch, spec).to(dev), "eager", name)
    if isinstance(obj, Mapping):
        keys = ", ".join(map(repr, list(obj)[:8])) + (", …" if len(obj) > 8 else "")
        raise LoadError(
            f"{spec} holds a dict with keys {keys or '(none)'} but no model or state dict "
            f"(looked under {', '.join(WEIGHT_KEYS)}); save model.state_dict() and {_ARCH}"
        )
    raise LoadError(f"{spec} holds {describe(obj)}, not a model or state dict; {_ARCH}")


def _qualname(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _no_arch(arch: str | None, spec: str, what: str) -> None:
    if arch is not None:
        raise UsageError(
            f"{spec} is {what}; drop {param('arch')} (it is only for state dicts)", param="arch"
        )


def _reason(exc: BaseException) -> str:
    """The useful line of torch's long weights-only refusal."""
    text = str(exc).split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def _unreadable(spec: str, exc: BaseException) -> LoadError:
    detail = " ".join(str(exc).split())[:200] or type(exc).__name__
    if isinstance(exc, ImportError | AttributeError):  # trusted pickle naming missing code
        return LoadError(
            f"cannot load {spec}: it needs code that is not importable here ({detail}); "
            f"run where that code is importable, or save a state dict and {_ARCH}"
        )
    return LoadError(f"cannot read {spec}: it is truncated or corrupt ({detail}); save it again")
