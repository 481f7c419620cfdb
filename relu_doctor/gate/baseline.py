"""Reading a baseline: the JSON report of an earlier ``scan`` or ``check``.

Version policy: a baseline is accepted when it was written by the same major.minor
version of relu-doctor (patch releases never change what a number means); another minor
or major version is refused, naming both, because the definitions behind the numbers
(what counts as a unit, as dead, as a sample) may differ between them and a comparison
would report changes that are not in the model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from relu_doctor import __version__
from relu_doctor.errors import InputError, param

TOOL = "relu-doctor"
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.\d+)?\S*")


def read_baseline(path: str | Path) -> dict[str, Any]:
    """The parsed and validated baseline document at ``path``; an ``InputError`` that says
    what is wrong (missing, not JSON, not a relu-doctor report, another version)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"baseline {p} does not exist", param="baseline")
    if not p.is_file():
        raise InputError(f"baseline {p} is not a file", param="baseline")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(
            f"baseline {p} is not a JSON text file; pass the JSON report of a scan (format json)",
            param="baseline",
        ) from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"baseline {p} is not valid JSON (line {exc.lineno}: {exc.msg}); pass the JSON "
            "report of a scan (format json)",
            param="baseline",
        ) from None
    return validate_baseline(doc, str(p))


def validate_baseline(doc: Any, source: str = "baseline") -> dict[str, Any]:
    """``doc`` if it is a relu-doctor report of a compatible version, else ``InputError``."""
    if not isinstance(doc, Mapping) or doc.get("tool") != TOOL:
        raise InputError(
            f'{source} is not a relu-doctor report (no "tool": "{TOOL}" at its top); '
            "pass the JSON report of a scan (format json)",
            param="baseline",
        )
    theirs = doc.get("version")
    if not isinstance(theirs, str) or not compatible_version(theirs, __version__):
        raise InputError(
            f"{source} was written by relu-doctor {theirs}, this is {__version__}: "
            "reports of another minor version may define their numbers differently, so "
            "make a new baseline with this version",
            param="baseline",
        )
    models = doc.get("models")
    if not isinstance(models, list) or not all(_is_model(m) for m in models) or not models:
        raise InputError(
            f"{source} has no models with sites; pass the JSON report of a scan",
            param="baseline",
        )
    return dict(doc)


def compatible_version(theirs: str, ours: str = __version__) -> bool:
    """Same major and minor version (``0.1.3`` reads ``0.1.0``; ``0.2.0`` does not)."""
    a, b = _VERSION.fullmatch(theirs.strip()), _VERSION.fullmatch(ours.strip())
    return a is not None and b is not None and a.groups() == b.groups()


def baseline_model(doc: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The entry of ``doc["models"]`` for ``model``: the only one when there is one (a
    checkpoint compared with the last good one rarely keeps its name), else the one of that
    name; ``InputError`` listing the names otherwise."""
    models = doc["models"]
    if len(models) == 1:
        return dict(models[0])
    for m in models:
        if m["model"] == model:
            return dict(m)
    names = ", ".join(str(m["model"]) for m in models)
    raise InputError(
        f"the {param('baseline')} has no model named {model!r} (it has {names}); pass a "
        "baseline with one model or with this model's name",
        param="baseline",
    )


def _is_model(m: Any) -> bool:
    return (
        isinstance(m, Mapping)
        and isinstance(m.get("model"), str)
        and isinstance(m.get("sites"), list)
        and all(isinstance(s, Mapping) and isinstance(s.get("site"), str) for s in m["sites"])
    )
