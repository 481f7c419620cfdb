"""Docs that cannot go stale: README's demo output is what ``make demo`` prints, and the
figures of the sample models' tables are what a scan of them finds.

After an intended change of the demo output, ``RELU_DOCTOR_UPDATE_GOLDEN=1`` rewrites
README's demo block (read the diff).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import relu_doctor
from relu_doctor.cli import main

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DEMO_WIDTH = "130"
UPDATE = os.environ.get("RELU_DOCTOR_UPDATE_GOLDEN", "") not in ("", "0")
_DEMO = re.compile(r"(`make demo` first runs.*?\n```\n)(.*?)(```)", re.S)


def demo_output(samples: Path) -> str:
    """``make demo`` (``relu-doctor scan sample_models/textbook_dying.pt``) at a fixed width,
    without colour, as a user would copy it from the terminal."""
    r = CliRunner().invoke(
        main,
        ["scan", str(samples / "textbook_dying.pt")],
        env={"COLUMNS": DEMO_WIDTH, "NO_COLOR": "1"},
    )
    assert r.exit_code == 0, r.stderr
    return "\n".join(line.rstrip() for line in r.stdout.splitlines()) + "\n"


def test_readme_demo_block_is_what_make_demo_prints(samples: Path) -> None:
    text = README.read_text(encoding="utf-8")
    found = _DEMO.search(text)
    assert found, "README has no demo block after '`make demo` first runs ...'"
    actual = demo_output(samples)
    if UPDATE:
        README.write_text(text[: found.start(2)] + actual + text[found.end(2) :], encoding="utf-8")
        return
    assert found.group(2) == actual


def test_makefile_demo_scans_the_sample_of_the_readme() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "relu-doctor scan sample_models/textbook_dying.pt" in makefile


@pytest.mark.parametrize("readme", ["README.md", "sample_models/README.md"])
def test_sample_model_figures_are_what_a_scan_finds(samples: Path, readme: str) -> None:
    """Rows like ``| `cnn_dead.pt` | ... | 12 / 48 channels (25%) |`` in the tables."""
    import torch

    rows = re.findall(
        r"^\| `(\w+\.pt)` \|.*\| (\d+) / (\d+)[^|]*\|$", (ROOT / readme).read_text(), re.M
    )
    assert len(rows) >= 3, rows
    for name, dead, units in rows:
        model = torch.load(samples / name, weights_only=False)
        report = relu_doctor.scan(model, name=name)  # the demo's inputs: 8 x 32 synthetic
        assert (report.dead_units, report.total_units) == (int(dead), int(units)), name
