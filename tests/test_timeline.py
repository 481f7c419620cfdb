"""Timelines (docs/metrics.md "Timelines", docs/cli.md): several checkpoints scanned in
natural order on the very same inputs, one model at a time, with died/revived per site.

Expected died/revived come from the planted dead units of ``tests/fixtures/timeline.py`` by
set arithmetic, never from relu-doctor's output.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result

import relu_doctor
from relu_doctor.analyze.timeline import build_timeline, natural_key, natural_sorted
from relu_doctor.cli import main
from relu_doctor.output.document import Failure
from tests.fixtures import timeline as tl

SPEC = "tests.fixtures.timeline:{}"
ORDER = ["epoch1", "epoch2", "epoch10"]  # natural order, written out by hand
FAST = ["--batches", "2", "--no-grad"]


@pytest.fixture(autouse=True)
def _fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RELU_DOCTOR_TRUST", raising=False)
    tl.reset()
    yield
    tl.reset()


def run(*args: Any) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.exit_code, result.stderr, result.exception)
    return result


def expected(order: list[str]) -> dict[str, dict[str, tuple[int | None, int | None]]]:
    """died/revived per epoch and site from the planted sets."""
    out: dict[str, dict[str, tuple[int | None, int | None]]] = {}
    before: dict[str, list[int]] | None = None
    for epoch in order:
        now = tl.DEAD[epoch]
        out[epoch] = {
            site: (None, None)
            if before is None
            else (len(set(now[site]) - set(before[site])), len(set(before[site]) - set(now[site])))
            for site in now
        }
        before = now
    return out


# --- natural order ---------------------------------------------------------------------------


def test_natural_order_numbers_paths_and_case() -> None:
    assert natural_sorted(["epoch10.pt", "epoch2.pt", "epoch1.pt"]) == [
        "epoch1.pt",
        "epoch2.pt",
        "epoch10.pt",
    ]
    # folder by folder: run2 before run10 whatever the file names
    assert natural_sorted(["run10/epoch1.pt", "run2/epoch5.pt", "run2/epoch10.pt"]) == [
        "run2/epoch5.pt",
        "run2/epoch10.pt",
        "run10/epoch1.pt",
    ]
    assert natural_sorted(["b/Epoch10.pt", "b/epoch9.pt", "A/epoch3.pt"]) == [
        "A/epoch3.pt",
        "b/epoch9.pt",
        "b/Epoch10.pt",
    ]
    assert natural_sorted(["ckpt-step=1000.ckpt", "ckpt-step=200.ckpt"])[0].endswith("200.ckpt")
    # numbers by value; equal values (leading zeros) and equal letters are told apart by
    # the name itself, so the order is total and does not depend on the input order
    names = ["e02.pt", "e2.pt", "E2.pt", "e1.pt", "e10.pt", "e.pt", "model.pt", "10.pt"]
    first = natural_sorted(names)
    for seed in range(5):
        shuffled = names[:]
        random.Random(seed).shuffle(shuffled)
        assert natural_sorted(shuffled) == first
    assert first.index("e1.pt") < first.index("e2.pt") < first.index("e10.pt")
    assert first.index("e02.pt") < first.index("e10.pt")
    assert natural_key("x") != natural_key("X")


# --- died / revived --------------------------------------------------------------------------


def sites_of(doc: dict[str, Any]) -> dict[str, dict[str, tuple[int | None, int | None]]]:
    return {
        m["model"].split(":")[-1]: {s["site"]: (s["died"], s["revived"]) for s in m["sites"]}
        for m in doc["models"]
    }


def test_died_and_revived_in_natural_order() -> None:
    given = [SPEC.format(e) for e in ("epoch10", "epoch1", "epoch2")]  # not in order
    result = ok(run("scan", *given, *FAST, "--format", "json"))
    doc = json.loads(result.stdout)
    assert [m["model"].split(":")[-1] for m in doc["models"]] == ORDER
    assert sites_of(doc) == expected(ORDER)
    # model level: sums over the counted sites, the first checkpoint empty
    rows = doc["timeline"]
    assert [r["model"].split(":")[-1] for r in rows] == ORDER
    for row, epoch in zip(rows, ORDER, strict=True):
        exp = expected(ORDER)[epoch].values()
        dead = sum(len(v) for v in tl.DEAD[epoch].values())
        assert row["dead_units"] == dead and row["units"] == 14
        assert row["dead_fraction"] == pytest.approx(dead / 14)
        if epoch == ORDER[0]:
            assert (row["died"], row["revived"], row["previous"]) == (None, None, None)
        else:
            assert row["died"] == sum(d for d, _ in exp if d is not None)
            assert row["revived"] == sum(r for _, r in exp if r is not None)
            assert row["previous"].endswith(ORDER[ORDER.index(epoch) - 1])
    # the scans themselves ran in natural order
    assert list(tl.SEEN) == ORDER


def test_keep_order_keeps_the_order_given() -> None:
    order = ["epoch10", "epoch1", "epoch2"]
    given = [SPEC.format(e) for e in order]
    result = ok(run("scan", *given, *FAST, "--keep-order", "-o", "t.json"))
    doc = json.loads(Path("t.json").read_text())
    assert [m["model"].split(":")[-1] for m in doc["models"]] == order
    assert sites_of(doc) == expected(order)
    assert list(tl.SEEN) == order
    assert "Timeline" in result.stdout


def test_csv_rows_carry_died_and_revived() -> None:
    ok(run("scan", *[SPEC.format(e) for e in ORDER], *FAST, "-o", "t.csv"))
    rows = list(csv.DictReader(io.StringIO(Path("t.csv").read_text())))
    got = {(r["model"].split(":")[-1], r["site"]): (r["died"], r["revived"]) for r in rows}
    for epoch, sites in expected(ORDER).items():
        for site, (died, revived) in sites.items():
            want = ("", "") if died is None else (str(died), str(revived))
            assert got[(epoch, site)] == want


def test_single_model_has_empty_died_revived_and_no_timeline() -> None:
    result = ok(run("scan", SPEC.format("epoch2"), *FAST, "--format", "json"))
    doc = json.loads(result.stdout)
    assert "timeline" not in doc
    assert {s["died"] for s in doc["models"][0]["sites"]} == {None}


# --- the terminal ----------------------------------------------------------------------------


def timeline_lines(text: str) -> list[str]:
    start = text.index("Timeline")
    return [ln for ln in text[start:].splitlines() if ln.startswith("│")]


def test_table_shows_the_timeline_after_the_checkpoints() -> None:
    result = ok(run("scan", *[SPEC.format(e) for e in reversed(ORDER)], *FAST))
    out = result.stdout
    # the per-checkpoint tables first, in natural order, then the timeline
    positions = [out.index(f"timeline:{e}\n") for e in ORDER]
    assert positions == sorted(positions) and positions[-1] < out.index("Timeline")
    lines = timeline_lines(out)
    assert len(lines) == 3
    cells = [[c.strip() for c in ln.strip("│").split("│")] for ln in lines]
    # model, dead%, dead, died, revived, worst site
    assert cells[0][1:5] == ["21.4%", "3 / 14", "–", "–"]  # act1 {0, 1}, act2 {0}
    assert cells[1][1:5] == ["35.7%", "5 / 14", "3", "1"]  # died act1 2, 3 + act2 4
    assert cells[2][1:5] == ["7.1%", "1 / 14", "0", "4"]  # revived act1 1, 2 + act2 0, 4
    assert cells[1][5] == "act1 (37.5%)"  # 3 of 8 beats 2 of 6


def test_summary_only_prints_just_the_timeline() -> None:
    result = ok(run("scan", *[SPEC.format(e) for e in ORDER], *FAST, "--summary-only"))
    assert result.stdout.lstrip().startswith("Timeline")
    assert "┃ site" not in result.stdout and "Suggestions" not in result.stdout
    assert len(timeline_lines(result.stdout)) == 3
    # one model: its one summary row
    one = ok(run("scan", SPEC.format("epoch2"), *FAST, "--summary-only"))
    assert len(timeline_lines(one.stdout)) == 1


def test_summary_only_with_data_on_stdout_is_refused() -> None:
    result = run("scan", SPEC.format("epoch2"), *FAST, "--summary-only", "--format", "json")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --summary-only")
    assert "-o" in lines[0] or "--output" in lines[0]


# --- same inputs, one model at a time --------------------------------------------------------


def test_every_checkpoint_sees_the_same_synthetic_inputs() -> None:
    ok(run("scan", *[SPEC.format(e) for e in ORDER], "--batches", "3"))  # with gradients
    assert set(tl.SEEN) == set(ORDER)
    first = tl.SEEN[ORDER[0]]
    assert len(first) == 3 and len(set(first)) == 3  # three different batches ...
    assert all(tl.SEEN[e] == first for e in ORDER)  # ... the same for every checkpoint


def test_every_checkpoint_sees_the_same_data(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    torch.save({"x": torch.randn(40, 20, generator=g)}, tmp_path / "d.pt")
    ok(run("scan", *[SPEC.format(e) for e in ORDER], "--data", "d.pt", "--batch-size", "16"))
    first = tl.SEEN[ORDER[0]]
    assert len(first) == 3 and all(tl.SEEN[e] == first for e in ORDER)


def test_checkpoints_are_held_one_at_a_time() -> None:
    ok(run("scan", *[SPEC.format(e) for e in ORDER], *FAST))
    # when each checkpoint is built, no model of an earlier one is alive any more
    assert tl.ALIVE_AT_BUILD == [0, 0, 0]


# --- what cannot be compared -----------------------------------------------------------------


def test_a_changed_architecture_is_said_not_crashed_on() -> None:
    given = [SPEC.format("epoch1"), SPEC.format("wider"), SPEC.format("epoch2")]
    result = ok(run("scan", *given, *FAST, "--keep-order", "--format", "json"))
    doc = json.loads(result.stdout)
    wider, back = doc["models"][1], doc["models"][2]
    by_site = {s["site"]: (s["died"], s["revived"]) for s in wider["sites"]}
    assert by_site["act1"] == (None, None)  # 8 -> 10 units
    assert by_site["act3"] == (None, None)  # new
    assert by_site["act2"][0] is not None  # same 6 units: compared
    assert any("act1 (8 -> 10 units)" in w and "act3" in w for w in wider["warnings"])
    assert any("act3" in w and "gone" in w for w in back["warnings"])
    assert doc["timeline"][1]["notes"] and doc["timeline"][1]["died"] is not None
    assert "architecture changed" in result.stderr


def test_a_checkpoint_that_fails_is_compared_across(tmp_path: Path) -> None:
    bad = tmp_path / "epoch5.pt"
    bad.write_bytes(b"not a model")
    given = [SPEC.format("epoch1"), str(bad), SPEC.format("epoch2")]
    result = run("scan", *given, *FAST, "--keep-order", "-o", "t.json")
    assert result.exit_code == 2  # a model could not be scanned: still everything written
    doc = json.loads(Path("t.json").read_text())
    assert doc["models"][1]["model"] == "epoch5.pt" and "error" in doc["models"][1]
    after = doc["models"][2]
    assert sites_of({"models": [after]})["epoch2"] == expected(["epoch1", "epoch2"])["epoch2"]
    assert doc["timeline"][1]["error"]
    assert doc["timeline"][2]["previous"].endswith("epoch1")
    assert "epoch5.pt could not be scanned" in doc["timeline"][2]["notes"][0]
    assert "could not be scanned" in result.stdout  # the timeline row


def test_build_timeline_from_the_library() -> None:
    """The same analysis for reports made with relu_doctor.scan (a notebook's checkpoints)."""
    reports: list[Any] = [
        relu_doctor.scan(tl.build(e), batches=2, grad=False, input_shape=(20,), name=e)
        for e in ORDER
    ]
    items = [reports[0], Failure("broken", "boom"), reports[1], reports[2]]
    timeline = build_timeline(items)
    got = {
        r.model: {s.site: (s.died, s.revived) for s in r.sites}
        for r in timeline.items
        if not isinstance(r, Failure)
    }
    assert got == expected(ORDER)
    assert [r.model for r in timeline.rows] == ["epoch1", "broken", "epoch2", "epoch10"]
    assert timeline.rows[2].previous == "epoch1"
    assert timeline.items[2].site("act1").died == 2
