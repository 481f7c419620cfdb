"""`relu-doctor --help`, `--version`, `rules` and `explain` stay instant: they must not import
torch or pandas.

Each check runs in a fresh interpreter (this test process has torch loaded already): it
imports the CLI, runs a command in-process and reports which heavy modules got imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "pandas")

PROBE = """
import contextlib, io, json, sys
from relu_doctor.cli import main

heavy = {heavy!r}
seen = {{"import": [m for m in heavy if m in sys.modules]}}
for args in {commands!r}:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(args)
            code = None
        except SystemExit as exc:
            code = exc.code
    seen[" ".join(args)] = {{"code": code, "out": out.getvalue(),
                             "heavy": [m for m in heavy if m in sys.modules]}}
print(json.dumps(seen))
"""

COMMANDS = [
    ["--help"],
    ["--version"],
    ["scan", "--help"],
    ["fix", "--help"],
    ["-h"],
    ["check", "--help"],
    ["explain", "RD101"],
    ["rules"],
    ["rules", "--format", "json"],
]


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    cwd = tmp_path_factory.mktemp("startup")  # no pyproject.toml here
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    p = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY, commands=COMMANDS)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    result: dict[str, dict[str, object]] = json.loads(p.stdout)
    return result


def test_importing_the_cli_loads_neither_torch_nor_pandas(probe: dict) -> None:
    assert probe["import"] == []


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_help_and_version_load_neither_torch_nor_pandas(probe: dict, args: list[str]) -> None:
    run = probe[" ".join(args)]
    assert run["code"] in (0, None), run
    assert run["heavy"] == [], f"`relu-doctor {' '.join(args)}` imported {run['heavy']}"
    assert run["out"], "printed nothing"


def test_probe_output_is_the_real_help_and_version(probe: dict) -> None:
    from relu_doctor import __version__

    assert "Usage:" in probe["--help"]["out"] and "scan" in probe["--help"]["out"]
    assert __version__ in probe["--version"]["out"]
    assert "--input-shape" in probe["scan --help"]["out"]
