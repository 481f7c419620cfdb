"""Turn a MODEL argument (a file or a `MODULE:CALLABLE` factory) into an `nn.Module`, safely.

Formats are detected from content, not the extension:

- torch.save zip (`data.pkl` inside) or legacy file (first pickle is torch's magic number):
  weights-only unpickling with an allowlist (`load/pickles.py`); other globals raise
  `UnsafePickleError`. A plain `pickle.dump` file is refused (it is never safe).
- TorchScript zip (`constants.pkl`, `code/`) and torch.export `.pt2` zip (`archive_format`,
  `models/*.json`) carry code: a scripted `__setstate__` runs on load and can create files
  (`torch.from_file`); `torch.export.load` unpickles parts of the archive unrestricted.
  Both need `trust`.
- `.safetensors` (8-byte little-endian header length, then `{`): tensors only; needs `arch`.

Every zip is checked against its CRC-32s before it is read (`load/verify.py`), since torch
does not check them; formats without checksums load with a warning saying so.

`trust=True` means "run this file's code": full unpickling, TorchScript and torch.export.
"""

from __future__ import annotations

import os
import pickletools
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from relu_doctor.device import resolve_device
from relu_doctor.errors import LoadError, UsageError, param
from relu_doctor.load import specs
from relu_doctor.load.pickles import TRUST_HINT as _TRUST
from relu_doctor.load.pickles import Format as _Format
from relu_doctor.load.pickles import unpickle, unreadable
from relu_doctor.load.state_dict import ARCH_HINT as _ARCH
from relu_doctor.load.state_dict import WEIGHT_KEYS, describe, find_weights, fit
from relu_doctor.load.verify import unverifiable, verify_zip

__all__ = ["WEIGHT_KEYS", "LoadedModel", "file_format", "load_model", "trust_from_env"]

TRUST_ENV = "RELU_DOCTOR_TRUST"
_FORMATS = "expected a torch.save file, TorchScript, .pt2 or .safetensors"
_CODE = {
    "script": "a TorchScript archive: its code runs on load and on forward (it can write files)",
    "export": "a torch.export program: torch.export.load unpickles parts of it unrestricted",
}


@dataclass
class LoadedModel:
    """A loaded model and where it came from."""

    module: nn.Module
    runtime: Literal["eager", "script", "export"]
    name: str
    exported: torch.export.ExportedProgram | None = None
    #: What the caller should pass on to the user: a file that cannot be checked for damage,
    #: checkpoint keys ignored or left at their initial values. Plain sentences.
    warnings: list[str] = field(default_factory=list)


def trust_from_env() -> bool:
    """True when RELU_DOCTOR_TRUST is 1/true/yes (any case)."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in {"1", "true", "yes"}


def load_model(
    spec: str,
    *,
    arch: str | None = None,
    trust: bool = False,
    device: str | torch.device = "cpu",
    verify: bool = True,
    strict: bool = True,
) -> LoadedModel:
    """Load MODEL (a file path or a `MODULE:CALLABLE` factory, which may carry literal
    arguments: `models.py:Net(num_classes=10)`) onto `device`.

    Raises LoadError (UnsafePickleError for a refused pickle) or UsageError, each with a
    one-line message saying what is wrong and what to do. Runs no code from the file unless
    `trust` (callers OR in `trust_from_env()`). `device="auto"` picks cuda when available.
    `verify` checks a zip-format file's CRC-32s first and refuses a damaged one (files with
    no checksums load with a warning). `strict` refuses a state dict that does not fill
    `arch` exactly, apart from training-wrapper leftovers (see `load/state_dict.py`);
    `strict=False` loads the keys that fit. Warnings come back in `LoadedModel.warnings`.
    """
    dev = resolve_device(device)
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
    if fmt in _CODE and not trust:
        raise LoadError(f"{spec} is {_CODE[fmt]}, so {_TRUST}; or save a state dict and {_ARCH}")
    if fmt in _CODE:
        _no_arch(arch, spec, _CODE[fmt].partition(":")[0])
    unchecked = unverifiable(fmt, path.name) if verify else None
    if verify and unchecked is None:
        verify_zip(path, spec)  # before anything reads the file's contents
    loaded = _load_file(path, spec, fmt, arch, trust, dev, strict)
    loaded.warnings[:0] = [unchecked] if unchecked else []
    return loaded


def _load_file(
    path: Path,
    spec: str,
    fmt: _Format,
    arch: str | None,
    trust: bool,
    dev: torch.device,
    strict: bool,
) -> LoadedModel:
    if fmt in _CODE:
        try:
            with specs.cwd_importable():  # trusted: classes it names come from here too
                if fmt == "script":
                    module = torch.jit.load(str(path), map_location=dev)
                    return LoadedModel(module, "script", path.name)
                return _load_export(path, dev)
        except Exception as exc:
            raise unreadable(spec, exc) from exc
    if fmt == "safetensors":
        return _from_object(_load_safetensors(path, spec, dev), spec, arch, dev, strict)
    return _from_object(unpickle(path, spec, fmt, trust, dev), spec, arch, dev, strict)


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
        raise unreadable(spec, exc) from exc


def file_format(spec: str) -> _Format:
    """How a model file is stored, from its content (see the module docstring)."""
    return _sniff(Path(spec), spec)


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
    except Exception as exc:  # BadZipFile, OSError, a name that is not UTF-8 any more...
        detail = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise LoadError(f"{spec} is a truncated or corrupt zip ({detail}); save it again") from exc
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


def _from_object(
    obj: Any, spec: str, arch: str | None, dev: torch.device, strict: bool
) -> LoadedModel:
    name = Path(spec).name
    found = find_weights(obj) if isinstance(obj, Mapping) else obj
    if isinstance(found, nn.Module):
        _no_arch(arch, spec, "a whole pickled model")
        return LoadedModel(found.to(dev), "eager", name)
    if isinstance(found, Mapping):
        if arch is None:
            raise LoadError(f"{spec} is a state dict ({len(found)} tensors), not a model; {_ARCH}")
        model, warnings = fit(found, arch, spec, strict=strict)
        return LoadedModel(model.to(dev), "eager", name, warnings=warnings)
    if isinstance(obj, Mapping):
        keys = ", ".join(map(repr, list(obj)[:8])) + (", …" if len(obj) > 8 else "")
        raise LoadError(
            f"{spec} holds a dict with keys {keys or '(none)'} but no model or state dict "
            f"(looked under {', '.join(WEIGHT_KEYS)}); save model.state_dict() and {_ARCH}"
        )
    raise LoadError(f"{spec} holds {describe(obj)}, not a model or state dict; {_ARCH}")


def _no_arch(arch: str | None, spec: str, what: str) -> None:
    if arch is not None:
        raise UsageError(
            f"{spec} is {what}; drop {param('arch')} (it is only for state dicts)", param="arch"
        )
