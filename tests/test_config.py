"""``[tool.relu-doctor]`` in pyproject.toml: defaults for every option, one section per command,
flags win, and a broken file never hides ``--help`` (docs/cli.md, "Configuration")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import CSV_HEADER, FAST, N, csv_rows, error_line, ok, run

pytestmark = pytest.mark.usefixtures("isolated")


@pytest.fixture
def m(planted_models: Any) -> Any:
    return planted_models


def write_config(body: str) -> None:
    Path("pyproject.toml").write_text(f'[project]\nname = "x"\n\n[tool.relu-doctor]\n{body}\n')


def test_config_sets_defaults(m: Any) -> None:
    write_config('batches = 1\nbatch-size = 16\nformat = "json"\ngrad = false\ninput-shape = [20]')
    r = ok(run("scan", m["mlp"].path))
    model = json.loads(r.stdout)["models"][0]
    assert model["samples"] == 16
    assert model["grad"] is False
    assert model["sites"][0]["dead"] == 3


def test_cli_flags_override_config(m: Any) -> None:
    write_config('batches = 1\nformat = "json"\ngrad = false')
    r = ok(run("scan", m["mlp"].path, "--batches", "2", "--format", "csv"))
    assert [(row["site"], row["samples"]) for row in csv_rows(r.stdout)] == [("act1", str(N))]


def test_config_in_a_parent_folder_applies(m: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config('format = "csv"\nbatches = 2\ngrad = false')
    Path("sub").mkdir()
    monkeypatch.chdir("sub")
    r = ok(run("scan", m["mlp"].path))
    assert r.stdout.startswith(CSV_HEADER)


def test_config_with_unknown_key(m: Any) -> None:
    write_config("batches = 1\nbogus-key = 3")
    error_line(run("scan", m["mlp"].path), "bogus-key", "pyproject.toml")


def test_config_with_bad_toml(m: Any) -> None:
    Path("pyproject.toml").write_text("[tool.relu-doctor\nbatches = 1\n")
    error_line(run("scan", m["mlp"].path), "pyproject.toml")


def test_config_with_a_bad_value(m: Any) -> None:
    write_config('batches = "two"')
    error_line(run("scan", m["mlp"].path), "batches", "two")


def test_config_cannot_grant_trust(tmp_path: Path) -> None:
    import torch

    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    torch.save({"state_dict": Payload()}, "evil.pt")
    write_config("trust = true")
    r = run("scan", "evil.pt", *FAST)
    assert not marker.exists(), "the pickle ran code because pyproject.toml said trust = true"
    error_line(r, "--trust")


def test_config_format_does_not_beat_the_output_extension(m: Any) -> None:
    write_config('format = "json"')
    ok(run("scan", m["mlp"].path, *FAST, "-o", "report.csv"))
    text = Path("report.csv").read_text()
    assert text.startswith(CSV_HEADER)


def test_a_command_section_overrides_the_shared_keys(m: Any) -> None:
    write_config(
        'format = "csv"\nbatches = 2\ngrad = false\n\n[tool.relu-doctor.scan]\nbatches = 1'
    )
    rows = csv_rows(ok(run("scan", m["mlp"].path)).stdout)
    assert [row["samples"] for row in rows] == ["32"]


def test_an_unknown_key_in_a_command_section(m: Any) -> None:
    write_config("[tool.relu-doctor.scan]\nbogus = 1")
    error_line(run("scan", m["mlp"].path), "bogus", "[tool.relu-doctor.scan]")


@pytest.mark.parametrize(
    "body", ["[tool.relu-doctor\nbatches = 1", "[tool.relu-doctor]\nbogus-key = 3"]
)
@pytest.mark.parametrize("args", [["--help"], ["scan", "--help"]])
def test_a_broken_config_does_not_break_help(body: str, args: list[str]) -> None:
    Path("pyproject.toml").write_text(body + "\n")
    r = ok(run(*args))
    assert r.stdout.startswith("Usage:")


def test_debug_from_the_config_shows_the_traceback(m: Any) -> None:
    write_config("debug = true")
    r = run("scan", "missing.pt")
    assert r.exit_code == 2
    assert "Traceback" in r.stderr
    assert r.stderr.rstrip().splitlines()[-1].startswith("Error: missing.pt: no such file")


def test_a_data_value_that_looks_like_a_flag_is_not_debug(m: Any) -> None:
    r = run("scan", m["mlp"].path, "--data", "--debug")
    error_line(r, "data file --debug not found")  # one line: no traceback


def test_a_library_error_says_the_value_came_from_the_config(m: Any) -> None:
    write_config("batches = 0")
    line = error_line(run("scan", m["mlp"].path), "--batches must be a positive integer, got 0")
    assert line.endswith("(set in [tool.relu-doctor] of pyproject.toml)")
    line = error_line(run("scan", m["mlp"].path, "--batches", "0"), "--batches")
    assert "pyproject.toml" not in line
