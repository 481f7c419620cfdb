"""Golden outputs: what users see, pinned byte for byte (numbers to 1e-6 relative).

Each case runs the real command line in-process on a sample model, a planted test model or
a factory from ``tests/fixtures/models.py`` and compares the plain table (``-o x.txt``:
fixed width, no colour), CSV, JSON, Markdown and the per-unit dump with the files in
``tests/golden/``; the ``check`` cases pin its table with findings and verdict, JSON,
Markdown job summary and GitHub annotation lines. After an intended change of the output,
regenerate them on purpose and read the diff:

    RELU_DOCTOR_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py

Numbers are compared with a relative tolerance of 1e-6, so the last bits of a float that a
different CPU's kernels may round otherwise do not fail the test; everything else must match
exactly.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from relu_doctor.cli import main

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("RELU_DOCTOR_UPDATE_GOLDEN", "") not in ("", "0")
_NUMBER = re.compile(r"-?\d+\.\d+(?:[eE][-+]?\d+)?|-?\d+[eE][-+]?\d+")

#: case -> (model arguments, extra options). ``{planted:NAME}`` and ``{sample:FILE}`` are
#: filled in from the fixtures.
CASES: dict[str, tuple[list[str], list[str]]] = {
    "planted_mlp": (["{planted:mlp}"], []),
    "planted_deep": (["{planted:deep}"], []),
    "planted_all_dead": (["{planted:all_dead}"], ["--no-grad"]),
    "planted_healthy": (["{planted:healthy}"], []),
    "planted_two_models": (["{planted:mlp}", "{planted:deep}"], ["--batches", "2"]),
    "convnet": (["tests.fixtures.models:ConvNet"], ["--input-shape", "3,8,8"]),
    "family": (["tests.fixtures.models:FamilyModel"], ["--input-shape", "4"]),
    "relu6": (["tests.fixtures.models:ReLU6Model"], ["--input-shape", "4"]),
    "naming": (["tests.fixtures.models:NamingNet"], ["--input-shape", "4"]),
    "functional": (["tests.fixtures.models:FunctionalMLP"], ["--input-shape", "4", "--eps", "0.5"]),
    "tokens": (["tests.fixtures.models:TokenFlatten"], ["--input-shape", "5,3"]),
    "sample_fresh": (["{sample:textbook_fresh.pt}"], []),
    "sample_dying": (["{sample:textbook_dying.pt}"], []),
    "sample_dying_data": (
        ["{sample:textbook_dying.pt}"],
        ["--data", "{sample:textbook_data.pt}", "--batches", "4"],
    ),
    "sample_cnn": (["{sample:cnn_dead.pt}"], []),
    # the README's timeline: the epochs of the sample training run, given out of order
    "sample_run": ([f"{{sample:run/epoch{k}.pt}}" for k in (6, 5, 4, 3, 2, 1)], ["--no-grad"]),
}
#: Output files of each case: (suffix, options that write it).
OUTPUTS = {
    "table.txt": ["-o", "{out}"],
    "sites.csv": ["-o", "{out}"],
    "sites.json": ["-o", "{out}"],
    "sites.md": ["-o", "{out}"],
    "units.csv": ["--per-unit", "{out}"],
}
#: Cases whose per-unit dump is also pinned as JSON and Markdown.
UNIT_FORMATS = {"planted_deep": ["units.json", "units.md"]}


def _fill(arg: str, planted: Any, samples: Any) -> str:
    if arg.startswith("{planted:"):
        return str(planted[arg[9:-1]].path)
    if arg.startswith("{sample:"):
        return str(samples() / arg[8:-1])
    return arg


def same_text(actual: str, expected: str) -> bool:
    """Equal apart from numbers, which may differ by 1e-6 relative."""
    a_parts, e_parts = _NUMBER.split(actual), _NUMBER.split(expected)
    if a_parts != e_parts:
        return False
    a_nums, e_nums = _NUMBER.findall(actual), _NUMBER.findall(expected)
    return len(a_nums) == len(e_nums) and all(
        abs(float(a) - float(e)) <= 1e-6 * max(abs(float(a)), abs(float(e)), 1e-12)
        for a, e in zip(a_nums, e_nums, strict=True)
    )


def test_same_text_tolerates_only_the_last_digits() -> None:
    assert same_text("x 0.1234567891 y", "x 0.1234567892 y")
    assert not same_text("x 0.1234 y", "x 0.1235 y")
    assert not same_text("x 0.1 y", "x 0.1 z")
    assert not same_text("dead 3", "dead 4")


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_outputs(
    case: str,
    planted_models: Any,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RELU_DOCTOR_TRUST", raising=False)
    repo = Path(__file__).parents[1]
    monkeypatch.chdir(repo)  # tests.fixtures.models:Name resolves from here; no config above
    monkeypatch.syspath_prepend(str(repo))

    def sample_dir() -> Path:
        return Path(request.getfixturevalue("samples"))

    models, extra = CASES[case]
    args = [_fill(a, planted_models, sample_dir) for a in models + extra]
    outputs = [*OUTPUTS, *UNIT_FORMATS.get(case, [])]
    mismatched = []
    for suffix in outputs:
        out = tmp_path / f"{case}.{suffix}"
        opts = [o.format(out=out) for o in OUTPUTS.get(suffix, ["--per-unit", "{out}"])]
        result = CliRunner().invoke(main, ["scan", *args, *opts], env={"COLUMNS": "100"})
        assert result.exit_code == 0, (suffix, result.stderr, result.exception)
        actual = out.read_text(encoding="utf-8")
        golden = GOLDEN / f"{case}.{suffix}"
        if UPDATE:
            GOLDEN.mkdir(exist_ok=True)
            golden.write_text(actual, encoding="utf-8")
            continue
        assert golden.exists(), f"no golden file {golden.name}; set RELU_DOCTOR_UPDATE_GOLDEN=1"
        if not same_text(actual, golden.read_text(encoding="utf-8")):
            mismatched.append(suffix)
            (tmp_path / f"actual.{suffix}").write_text(actual, encoding="utf-8")
    assert not mismatched, f"{case}: {mismatched} differ from tests/golden (actual in {tmp_path})"


#: ``relu-doctor fix`` cases: (model arguments, options); the repaired model goes to
#: ``fixed.pt`` in a temporary folder, the report to the pinned files.
FIX_CASES: dict[str, tuple[list[str], list[str]]] = {
    "fix_sample_dying_reinit": (
        ["{sample:textbook_dying.pt}"],
        ["--to", "reinit", "--data", "{sample:textbook_data.pt}", "--batches", "4"],
    ),
    "fix_sample_cnn_reinit": (["{sample:cnn_dead.pt}"], ["--to", "reinit"]),
    "fix_planted_deep_leaky": (["{planted:deep}"], ["--to", "leaky_relu", "--sites", "all"]),
    "fix_planted_healthy": (["{planted:healthy}"], ["--to", "reinit"]),
}
FIX_OUTPUTS = ("proof.txt", "proof.json", "proof.md")


@pytest.mark.parametrize("case", sorted(FIX_CASES))
def test_golden_fix_reports(
    case: str,
    planted_models: Any,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RELU_DOCTOR_TRUST", raising=False)
    monkeypatch.chdir(Path(__file__).parents[1])

    def sample_dir() -> Path:
        return Path(request.getfixturevalue("samples"))

    models, extra = FIX_CASES[case]
    args = [_fill(a, planted_models, sample_dir) for a in models + extra]
    reports = [tmp_path / f"{case}.{suffix}" for suffix in FIX_OUTPUTS]
    opts = [o for r in reports for o in ("--report", str(r))]
    out = ["-o", str(tmp_path / "fixed.pt")]
    result = CliRunner().invoke(main, ["fix", *args, *out, *opts], env={"COLUMNS": "100"})
    assert result.exit_code == 0, (result.stderr, result.exception)
    mismatched = []
    for path in reports:
        actual = path.read_text(encoding="utf-8")
        golden = GOLDEN / path.name
        if UPDATE:
            golden.write_text(actual, encoding="utf-8")
            continue
        assert golden.exists(), f"no golden file {golden.name}; set RELU_DOCTOR_UPDATE_GOLDEN=1"
        if not same_text(actual, golden.read_text(encoding="utf-8")):
            mismatched.append(path.name)
            (tmp_path / f"actual.{path.name}").write_text(actual, encoding="utf-8")
    assert not mismatched, f"{case}: {mismatched} differ from tests/golden (actual in {tmp_path})"


#: check case -> (planted models, as ``ckpt/NAME.pt`` relative paths, and options).
CHECK_CASES: dict[str, tuple[list[str], list[str]]] = {
    "check_deep": (["deep"], ["--batches", "2", "--no-grad"]),
    "check_three": (
        ["healthy", "mlp", "all_dead"],
        ["--batches", "2", "--no-grad", "--max-dead", "0.15", "--max-near-dead", "0.5"],
    ),
}
#: Output of each check case: (suffix, options that write it; None: stdout).
CHECK_OUTPUTS: dict[str, list[str] | None] = {
    "check.txt": ["-o", "{out}"],
    "check.json": ["-o", "{out}"],
    "check.md": ["-o", "{out}"],
    "check.github": None,
}


@pytest.mark.parametrize("case", sorted(CHECK_CASES))
def test_golden_check_outputs(
    case: str, planted_models: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RELU_DOCTOR_TRUST", raising=False)
    monkeypatch.chdir(tmp_path)  # relative model paths, as in a CI job; no config above
    (tmp_path / "ckpt").mkdir()
    names, extra = CHECK_CASES[case]
    for name in names:
        (tmp_path / "ckpt" / f"{name}.pt").write_bytes(planted_models[name].path.read_bytes())
    models = [f"ckpt/{name}.pt" for name in names]
    mismatched = []
    for suffix, opts in CHECK_OUTPUTS.items():
        out = tmp_path / f"{case}.{suffix}"
        args = ["--format", "github"] if opts is None else [o.format(out=out) for o in opts]
        result = CliRunner().invoke(main, ["check", *models, *extra, *args], env={"COLUMNS": "100"})
        assert result.exit_code == 1, (suffix, result.stderr, result.exception)
        actual = result.stdout if opts is None else out.read_text(encoding="utf-8")
        golden = GOLDEN / f"{case}.{suffix}"
        if UPDATE:
            golden.write_text(actual, encoding="utf-8")
            continue
        assert golden.exists(), f"no golden file {golden.name}; set RELU_DOCTOR_UPDATE_GOLDEN=1"
        if not same_text(actual, golden.read_text(encoding="utf-8")):
            mismatched.append(suffix)
            (tmp_path / f"actual.{suffix}").write_text(actual, encoding="utf-8")
    assert not mismatched, f"{case}: {mismatched} differ from tests/golden (actual in {tmp_path})"
