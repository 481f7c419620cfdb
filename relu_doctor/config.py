"""`[tool.relu-doctor]` in the nearest pyproject.toml: defaults for every CLI option.

All options but `--trust`: a project file found by walking up from the working folder must
not be able to switch off safe loading for the model files next to it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from relu_doctor.errors import UsageError

#: Config keys (dashes or underscores) -> click parameter names.
_RENAMES = {"format": "fmt"}
KNOWN = {
    "arch",
    "input_shape",
    "data",
    "batch_size",
    "batches",
    "seed",
    "device",
    "mode",
    "grad",
    "eps",
    "near_dead",
    "tau",
    "unit_dim",
    "fmt",
    "output",
    "per_unit",
    "debug",
}


def _display(name: str) -> str:
    return "format" if name == "fmt" else name.replace("_", "-")


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml in ``start`` (default: the working folder) or above."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_config(start: Path | None = None) -> dict[str, Any]:
    """Option defaults from ``[tool.relu-doctor]``; {} when there is none."""
    path = find_pyproject(start)
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc
    table = data.get("tool", {}).get("relu-doctor", {})
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [tool.relu-doctor] must be a table")
    config = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        name = _RENAMES.get(name, name)
        if name == "trust":
            raise UsageError(
                f"{path}: 'trust' cannot be set in [tool.relu-doctor]: a project file must not "
                "switch off safe loading; pass --trust on the command line for files you trust"
            )
        if name not in KNOWN:
            raise UsageError(
                f"{path}: unknown key {key!r} in [tool.relu-doctor]; "
                f"known: {', '.join(sorted(_display(k) for k in KNOWN))}"
            )
        if name == "input_shape" and isinstance(value, list):
            value = ",".join(str(v) for v in value)
        config[name] = value
    return config
