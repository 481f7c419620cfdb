"""``[tool.relu-doctor]`` in the nearest pyproject.toml: option defaults for every command.

Keys are the commands' own long option names (``batch-size`` or ``batch_size``), derived
from the click parameters, never a hand-kept list. Shared keys sit in ``[tool.relu-doctor]``
and apply to every command that has the option; ``[tool.relu-doctor.scan]``,
``[tool.relu-doctor.check]``... override them for one command. ``trust`` cannot be set: a
project file found by walking up from the working folder must not be able to switch off
safe loading for the model files next to it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from relu_doctor.errors import UsageError

NEVER = {"trust"}  # options a project file may not set


@dataclass
class Config:
    """The parsed table: shared keys, per-command sections, where it came from."""

    path: Path | None = None
    shared: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml in ``start`` (default: the working folder) or above."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def read_config(start: Path | None = None, commands: Mapping[str, click.Command] = {}) -> Config:
    """The ``[tool.relu-doctor]`` table; an empty ``Config`` when there is none."""
    path = find_pyproject(start)
    if path is None:
        return Config()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc
    table = data.get("tool", {}).get("relu-doctor", {})
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [tool.relu-doctor] must be a table")
    config = Config(path)
    for key, value in table.items():
        if key in commands and isinstance(value, dict):
            config.sections[key] = dict(value)
        else:
            config.shared[key] = value
    return config


def _name(key: str) -> str:
    return key.replace("-", "_")


def option_keys(command: click.Command) -> dict[str, str]:
    """Config key (underscored long option name) -> click parameter name, for ``command``
    (none for a command marked ``configurable = False``, such as ``rules``)."""
    if not getattr(command, "configurable", True):
        return {}
    keys = {}
    for p in command.params:
        if isinstance(p, click.Option) and p.name is not None and p.name not in NEVER:
            longs = [o for o in p.opts if o.startswith("--")]
            if longs:
                keys[_name(longs[0][2:])] = p.name
    return keys


def defaults_for(config: Config, name: str, command: click.Command) -> dict[str, Any]:
    """The ``default_map`` of one command: shared keys it has, then its own section."""
    keys = option_keys(command)
    section = config.sections.get(name, {})
    merged = {keys[_name(k)]: v for k, v in config.shared.items() if _name(k) in keys}
    merged.update({keys[_name(k)]: v for k, v in section.items() if _name(k) in keys})
    multiple = {p.name for p in command.params if getattr(p, "multiple", False)}
    return {k: [v] if k in multiple and isinstance(v, str) else v for k, v in merged.items()}


def check_keys(config: Config, commands: Mapping[str, click.Command]) -> None:
    """Refuse unknown keys (shared: known to no command; per section: to that command)."""
    where = config.path
    for key in (*config.shared, *(k for s in config.sections.values() for k in s)):
        if _name(key) in NEVER:
            raise UsageError(
                f"{where}: '{key}' cannot be set in [tool.relu-doctor]: a project file must not "
                "switch off safe loading; pass --trust on the command line for files you trust"
            )
    known = {k for c in commands.values() for k in option_keys(c)}
    for key in config.shared:
        if _name(key) not in known:
            raise UsageError(
                f"{where}: unknown key {key!r} in [tool.relu-doctor]; "
                f"known: {', '.join(sorted(k.replace('_', '-') for k in known))}"
            )
    for name, section in config.sections.items():
        own = option_keys(commands[name])
        for key in section:
            if _name(key) not in own:
                raise UsageError(
                    f"{where}: unknown key {key!r} in [tool.relu-doctor.{name}]; "
                    f"known: {', '.join(sorted(k.replace('_', '-') for k in own))}"
                )
