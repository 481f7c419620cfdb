"""What the terminal shows of a scan: --top, --only-unhealthy, --sort, --quiet, progress in
logs, help with examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relu_doctor.cli import console
from tests.test_cli import FAST, ok, run
from tests.test_table import table_lines

FAMILY = ("tests.fixtures.models:ReLU6Model", "--input-shape", "4", *FAST)


pytestmark = pytest.mark.usefixtures("isolated")


def names(stdout: str) -> list[str]:
    """Site names of the per-model tables (not the timeline's rows)."""
    sites = stdout.split("\nTimeline\n")[0]
    return [row[0].split(" after ")[0] for row in table_lines(sites)]


def test_sort_top_and_only_unhealthy_shape_the_table_not_the_files() -> None:
    # ReLU6Model: r6 2/5 dead, relu6#1 1/4, relu6#2 3/6 (tests/fixtures/models.py).
    assert names(ok(run("scan", *FAMILY)).stdout) == ["r6", "relu6#1", "relu6#2"]
    assert names(ok(run("scan", *FAMILY, "--sort", "dead")).stdout) == [
        "relu6#2",
        "r6",
        "relu6#1",
    ]
    assert names(ok(run("scan", *FAMILY, "--sort", "name")).stdout) == sorted(
        ["r6", "relu6#1", "relu6#2"]
    )
    r = ok(run("scan", *FAMILY, "--top", "2", "-o", "all.csv"))
    assert names(r.stdout) == ["r6", "relu6#2"]  # the two deadest, in network order
    assert "showing 2 of 3 sites: the 2 with the largest dead fraction" in r.stdout
    assert len(Path("all.csv").read_text().splitlines()) == 4  # header + every site


def test_only_unhealthy(planted_models: Any) -> None:
    paths = [planted_models[n].path for n in ("healthy", "mlp")]
    r = ok(run("scan", *paths, *FAST, "--only-unhealthy"))
    assert names(r.stdout) == ["act1"]  # mlp's act1 is dead in part; healthy shows nothing
    assert "showing 0 of 1 sites" in r.stdout


def test_quiet_prints_nothing_and_writes_the_files(planted_models: Any) -> None:
    r = ok(run("scan", planted_models["mlp"].path, *FAST, "-q", "-o", "r.json"))
    assert r.stdout == ""
    assert Path("r.json").exists()


def test_progress_in_a_log_is_a_plain_line(
    planted_models: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "LOG_EVERY", 0.0)
    r = ok(run("scan", planted_models["mlp"].path, *FAST))
    lines = r.stderr.splitlines()
    assert lines == ["scanning mlp.pt: batch 1 of 2 (0 s)", "scanning mlp.pt: batch 2 of 2 (0 s)"]


@pytest.mark.parametrize("command", ["scan", "fix"])
def test_every_command_help_ends_with_examples(command: str) -> None:
    text = ok(run(command, "--help")).stdout.rstrip()
    tail = text.split("Examples:")[-1].strip().splitlines()
    assert tail and all(line.strip().startswith(f"relu-doctor {command} ") for line in tail)
