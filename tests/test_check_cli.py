"""`relu-doctor check`, `explain` and `rules` from the command line (docs/cli.md): exit codes,
every rule firing and not firing, thresholds and where they came from, select/ignore,
baselines, bad input, and what a check costs next to a scan.

Expected findings follow from the planted models (``tests/fixtures/planted.py``: ``deep``
has act1 3/16 and act2 2/8 dead, ``mlp`` act1 3/16, ``all_dead`` 16/16, ``healthy`` 0/16;
dead units have zero rows and bias -1e4) and ``tests/fixtures/check_models.py``.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from relu_doctor.cli import common
from relu_doctor.gate import RULES
from tests.fixtures import check_models
from tests.test_cli import FAST, error_line, ok, run
from tests.test_config import write_config

PLANTED = ("healthy", "mlp", "deep", "all_dead")


pytestmark = pytest.mark.usefixtures("isolated")


@pytest.fixture
def ckpt(planted_models: Any) -> dict[str, str]:
    """The planted models under ``ckpt/``, named by relative paths as a user types them."""
    Path("ckpt").mkdir()
    for name in PLANTED:
        shutil.copy(planted_models[name].path, f"ckpt/{name}.pt")
    return {name: f"ckpt/{name}.pt" for name in PLANTED}


def judged(*args: Any) -> tuple[int, dict[str, Any]]:
    """Exit code and JSON document of a check that ran (exit 0 or 1)."""
    r = run("check", *args, "--format", "json")
    assert r.exit_code in (0, 1), (r.exit_code, r.stderr, r.exception)
    return r.exit_code, json.loads(r.stdout)


def fired(*args: Any) -> list[tuple[str, str | None]]:
    """(rule, site) of every finding, models in order."""
    _, doc = judged(*args)
    return [(f["rule"], f["site"]) for m in doc["models"] for f in m["findings"]]


def finding(doc: dict[str, Any], rule: str) -> dict[str, Any]:
    (f,) = [f for m in doc["models"] for f in m["findings"] if f["rule"] == rule]
    return f


# --- exit codes and what the table shows --------------------------------------------------


def test_a_healthy_model_exits_0(ckpt: dict[str, str]) -> None:
    r = ok(run("check", ckpt["healthy"], *FAST))
    assert "No findings: every rule that ran passed." in r.stdout
    assert r.stdout.rstrip().splitlines()[-1] == "PASS: healthy.pt is healthy"
    assert "Thresholds: max-dead 0.1 (default), max-layer-dead 0.5 (default)" in r.stdout


def test_an_unhealthy_model_exits_1_with_its_findings_under_the_table(
    ckpt: dict[str, str],
) -> None:
    r = run("check", ckpt["deep"], *FAST)
    assert r.exit_code == 1, r.stderr
    out = r.stdout
    table_end = out.index("5 of 24 ReLU units dead (20.8%) across 2 sites;")
    findings = out.index("Findings (1 error, 2 warnings)")
    assert out.index("│ act2 ") < table_end < findings
    lines = [line.rstrip() for line in out[findings:].splitlines()]
    assert lines[1] == " RD102 error   5 of 24 ReLU units dead (20.8%) across 2 sites, limit 10%"
    assert lines[2].strip().startswith("fix: Find the worst sites")
    assert f"fix: {RULES['RD102'].fix}" in " ".join(out.split())  # wrapped at the width
    starts = [
        " RD102 error   5 of 24",
        " RD401 warning act1: 3 of 16",
        " RD401 warning act2: 2 of 8",
    ]
    found = [ln for ln in lines if ln.startswith(" RD")]
    assert len(found) == 3 and all(a.startswith(b) for a, b in zip(found, starts, strict=True))
    assert lines[-1] == "FAIL: deep.pt is unhealthy (1 error)"


def test_several_checkpoints_are_judged_in_natural_order(ckpt: dict[str, str]) -> None:
    order = ["healthy", "deep", "all_dead", "mlp"]
    r = run("check", *(ckpt[n] for n in order), *FAST)
    assert r.exit_code == 1
    assert r.stdout.rstrip().splitlines()[-1] == (
        "FAIL: 3 of 4 models unhealthy: all_dead.pt (2 errors), deep.pt (1 error), mlp.pt (1 error)"
    )
    r = run("check", *(ckpt[n] for n in order), *FAST, "--keep-order")
    assert r.stdout.rstrip().splitlines()[-1] == (
        "FAIL: 3 of 4 models unhealthy: deep.pt (1 error), all_dead.pt (2 errors), mlp.pt (1 error)"
    )
    code, doc = judged(*(ckpt[n] for n in order), *FAST)
    assert code == 1 and doc["check"]["healthy"] is False
    assert [(m["model"], m["healthy"]) for m in doc["models"]] == [
        ("all_dead.pt", False),
        ("deep.pt", False),
        ("healthy.pt", True),
        ("mlp.pt", False),
    ]


def test_a_model_that_cannot_be_scanned_exits_2_after_everything_else(
    ckpt: dict[str, str],
) -> None:
    Path("broken.pt").write_bytes(b"not a model")
    r = run(
        "check",
        ckpt["deep"],
        "broken.pt",
        *FAST,
        "--keep-order",
        "-o",
        "r.json",
        "--junit",
        "j.xml",
    )
    assert r.exit_code == 2  # 2 wins over the 1 of deep.pt
    assert r.stderr.splitlines()[-1].startswith("Error: 1 of 2 models could not be scanned")
    assert "FAIL: 1 of 2 models unhealthy: deep.pt (1 error); 1 of 2 could not be scanned" in (
        r.stdout
    )
    models = json.loads(Path("r.json").read_text())["models"]
    assert models[0]["model"] == "deep.pt" and models[0]["healthy"] is False
    assert models[1]["model"] == "broken.pt" and "error" in models[1]
    assert 'name="broken.pt"' in Path("j.xml").read_text()


# --- bad input: exit 2, one Error line, nothing scanned ------------------------------------


@pytest.fixture
def no_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad arguments must fail before any model is loaded."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded despite bad arguments")

    monkeypatch.setattr(common, "load_model", refuse)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--max-dead", "-0.1"], ["--max-dead must be a fraction in [0, 1]", "-0.1"]),
        (["--max-layer-dead", "1.5"], ["--max-layer-dead", "1.5"]),
        (["--max-near-dead", "2"], ["--max-near-dead", "2"]),
        (["--tolerance", "-0.01"], ["--tolerance", "-0.01"]),
        (["--max-dead", "nan"], ["--max-dead", "nan"]),
        (["--max-activation", "0"], ["--max-activation must be a number > 0"]),
        (["--select", "RD999"], ["unknown rule 'RD999' in --select", "RD101", "RD403"]),
        (["--ignore", "XY1"], ["unknown rule 'XY1' in --ignore", "known rules"]),
        (["--select", "RD103"], ["RD103", "--max-near-dead is not set"]),
        (["--select", ","], ["--select", "expected rule codes"]),
        (["--fail-on", "note"], ["--fail-on", "note"]),
        (["--baseline", "missing.json"], ["baseline missing.json does not exist"]),
        (["--junit", "nope/j.xml"], ["cannot write nope/j.xml", "does not exist"]),
        (["--sarif", "nope/s.sarif"], ["cannot write nope/s.sarif", "does not exist"]),
        (["--write-baseline", "nope/b.json"], ["cannot write nope/b.json", "does not exist"]),
        (["-o", "report.yaml"], ["cannot tell the format", ".sarif", ".xml"]),
    ],
    ids=lambda v: "_".join(v) if isinstance(v, list) and v and v[0].startswith("-") else "",
)
@pytest.mark.usefixtures("no_scan")
def test_bad_arguments(args: list[str], needles: list[str]) -> None:
    Path("m.pt").write_bytes(b"")
    error_line(run("check", "m.pt", *args), *needles)


@pytest.fixture
def scan_report(ckpt: dict[str, str]) -> dict[str, Any]:
    ok(run("scan", ckpt["healthy"], *FAST, "-o", "scan.json"))
    doc: dict[str, Any] = json.loads(Path("scan.json").read_text())
    return doc


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ("this is not json", ["is not valid JSON", "format json"]),
        ('{"a": 1}', ["is not a relu-doctor report"]),
        ('{"tool": "relu-doctor", "version": "0.1.0", "models": []}', ["has no models"]),
        ("VERSION", ["written by relu-doctor 0.2.0, this is 0.1.0", "new baseline"]),
        (b"\x80\x81PK binary", ["not a JSON text file"]),
        ("FOLDER", ["is not a file"]),
    ],
    ids=["text", "not-a-report", "no-models", "other-version", "binary", "folder"],
)
def test_bad_baselines(
    scan_report: dict[str, Any], no_scan: None, content: Any, needles: list[str]
) -> None:
    path = Path("base.json")
    if content == "VERSION":
        path.write_text(json.dumps(scan_report | {"version": "0.2.0"}))
    elif content == "FOLDER":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    error_line(run("check", "ckpt/mlp.pt", "--baseline", path), *needles)


def test_a_threshold_from_the_config_that_is_out_of_range(ckpt: dict[str, str]) -> None:
    write_config("max-dead = 2")
    line = error_line(run("check", ckpt["deep"], *FAST), "--max-dead", "got 2")
    assert line.endswith("(set in [tool.relu-doctor] of pyproject.toml)")


def test_a_baseline_without_this_models_name(ckpt: dict[str, str]) -> None:
    ok(run("scan", ckpt["healthy"], ckpt["deep"], *FAST, "-o", "two.json"))
    error_line(
        run("check", ckpt["mlp"], *FAST, "--baseline", "two.json"),
        "no model named 'mlp.pt'",
        "deep.pt, healthy.pt",  # the baseline's models, in natural order
    )


# --- each rule, firing and not -------------------------------------------------------------


def test_dead_site_and_dead_model(ckpt: dict[str, str]) -> None:
    assert fired(ckpt["all_dead"], *FAST, "--ignore", "RD4") == [("RD102", None), ("RD101", "act1")]
    assert fired(ckpt["all_dead"], *FAST, "--ignore", "RD4", "--max-layer-dead", "1") == [
        ("RD102", None)
    ]
    code, doc = judged(ckpt["deep"], *FAST, "--ignore", "RD4")
    f = finding(doc, "RD102")
    assert code == 1 and (f["value"], f["threshold"]) == (pytest.approx(5 / 24), 0.1)
    assert fired(ckpt["deep"], *FAST, "--ignore", "RD4", "--max-dead", str(5 / 24)) == []
    assert fired(ckpt["healthy"], *FAST) == []


@pytest.fixture
def rare() -> list[str]:
    model, data = check_models.save_rare(Path("."))
    return [str(model), "--data", str(data), "--batch-size", "50", "--no-grad"]


def test_near_dead_share_is_off_unless_set(rare: list[str]) -> None:
    assert fired(*rare) == []
    code, doc = judged(*rare, "--max-near-dead", "0.2")
    f = finding(doc, "RD103")
    assert (code, f["site"], f["value"], f["threshold"]) == (1, "act", 0.25, 0.2)
    assert fired(*rare, "--max-near-dead", "0.25") == []  # equal to the limit passes


def test_unbounded_activation_is_off_unless_set(rare: list[str]) -> None:
    code, doc = judged(*rare, "--max-activation", "2.5")
    f = finding(doc, "RD302")
    assert (code, f["site"], f["value"], f["threshold"]) == (1, "act", 3.0, 2.5)
    assert fired(*rare, "--max-activation", "3") == []


def test_non_finite_activations() -> None:
    nan = check_models.save_nan(Path("."))
    args = [nan, *FAST, "--max-dead", "1", "--max-layer-dead", "1"]
    code, doc = judged(*args)
    f = finding(doc, "RD301")
    assert (code, f["site"], f["value"]) == (1, "act", 1.0)
    assert f["message"] == "act: NaN or Inf reached 1 of 3 units"
    assert fired(*args, "--ignore", "RD301") == []


def test_units_dead_by_construction_from_the_weights(ckpt: dict[str, str]) -> None:
    code, doc = judged(ckpt["deep"], *FAST, "--max-dead", "1")
    assert code == 0  # warnings pass
    assert [(f["rule"], f["site"], f["value"]) for f in doc["models"][0]["findings"]] == [
        ("RD401", "act1", 3.0),
        ("RD401", "act2", 2.0),
    ]
    assert fired(ckpt["healthy"], *FAST) == []
    code, _ = judged(ckpt["deep"], *FAST, "--max-dead", "1", "--fail-on", "warning")
    assert code == 1


def test_batchnorm_predicted_dead_channels() -> None:
    bn = check_models.save_bn(Path("."))
    code, doc = judged(bn, *FAST, "--max-dead", "1")
    f = finding(doc, "RD402")
    assert (code, f["site"], f["value"]) == (0, "act", 2.0)
    assert "predicts 2 of 8 channels dead" in f["message"]
    assert "channels 1, 6" in f["message"] and f["message"].endswith("the scan measured 2 dead")
    torch.manual_seed(0)
    fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
    torch.save(fresh.eval(), "fresh_bn.pt")
    assert fired("fresh_bn.pt", *FAST) == []


def test_an_activation_module_that_never_ran() -> None:
    args = ["tests.fixtures.models:SpareActivation", "--input-shape", "4", *FAST]
    code, doc = judged(*args, "--max-dead", "1", "--max-layer-dead", "1")
    assert code == 0
    # the planted row of fc (unit 2) is RD401 at the functional site; spare never ran
    assert [(f["rule"], f["site"]) for f in doc["models"][0]["findings"]] == [
        ("RD401", "relu#1"),
        ("RD403", "spare"),
    ]
    assert fired(*args, "--max-dead", "1", "--max-layer-dead", "1", "--ignore", "RD403") == [
        ("RD401", "relu#1")
    ]


# --- select / ignore, thresholds and their origin ------------------------------------------


def test_select_and_ignore(ckpt: dict[str, str]) -> None:
    dead = ckpt["all_dead"]
    assert fired(dead, *FAST, "--select", "RD101") == [("RD101", "act1")]
    assert fired(dead, *FAST, "--select", "rd1,RD4", "--ignore", "RD102") == [
        ("RD101", "act1"),
        ("RD401", "act1"),
    ]
    assert fired(dead, *FAST, "--ignore", "RD1,RD4") == []
    code, doc = judged(dead, *FAST, "--select", "RD1", "--ignore", "RD103")
    assert doc["check"]["rules"] == ["RD101", "RD102"] and code == 1


def test_select_and_ignore_from_the_config_as_lists_or_strings(ckpt: dict[str, str]) -> None:
    write_config('ignore = "RD4, RD102"')
    assert fired(ckpt["all_dead"], *FAST) == [("RD101", "act1")]
    write_config('[tool.relu-doctor.check]\nselect = ["RD102", "RD401"]')
    assert fired(ckpt["all_dead"], *FAST) == [("RD102", None), ("RD401", "act1")]
    assert fired(ckpt["all_dead"], *FAST, "--select", "RD101") == [("RD101", "act1")]


def test_thresholds_flag_beats_check_section_beats_shared_beats_default(
    ckpt: dict[str, str],
) -> None:
    """deep is 5/24 = 20.8% dead: 0.2 fails it, 0.25 passes it."""

    def max_dead(*args: str) -> tuple[int, float, str]:
        code, doc = judged(ckpt["deep"], *FAST, *args)
        th = doc["check"]["thresholds"]["max_dead"]
        return code, th["value"], th["origin"]

    assert max_dead() == (1, 0.1, "default")
    write_config("max-dead = 0.25")
    assert max_dead() == (0, 0.25, "pyproject.toml [tool.relu-doctor]")
    write_config("max-dead = 0.25\n\n[tool.relu-doctor.check]\nmax_dead = 0.2")
    assert max_dead() == (1, 0.2, "pyproject.toml [tool.relu-doctor.check]")
    assert max_dead("--max-dead", "0.25") == (0, 0.25, "command line")
    out = " ".join(run("check", ckpt["deep"], *FAST, "--tolerance", "0.05").stdout.split())
    assert "max-dead 0.2 (pyproject.toml [tool.relu-doctor.check])" in out
    assert "max-near-dead off, max-activation off, tolerance 0.05 (command line)" in out
    _, doc = judged(ckpt["deep"], *FAST)
    assert doc["check"]["thresholds"]["max_near_dead"] == {"value": None, "origin": "default"}


# --- baselines -----------------------------------------------------------------------------


def test_regression_against_a_scan_report(ckpt: dict[str, str]) -> None:
    ok(run("scan", ckpt["healthy"], *FAST, "-o", "base.json"))
    code, doc = judged(ckpt["mlp"], *FAST, "--baseline", "base.json", "--max-dead", "1")
    f = finding(doc, "RD201")
    assert (code, f["site"], f["value"], f["threshold"]) == (1, "act1", 3 / 16, 0.02)
    assert f["message"] == (
        "act1: dead fraction 0.0% -> 18.8% since the baseline (+18.8 points, tolerance 2 points)"
    )
    assert doc["check"]["baseline"] == "base.json"
    args = [ckpt["mlp"], *FAST, "--baseline", "base.json", "--max-dead", "1", "--ignore", "RD4"]
    assert fired(*args, "--tolerance", "0.2") == []
    assert fired(*args, "--tolerance", str(3 / 16)) == []  # growth equal to the tolerance


def test_an_architecture_change_is_its_own_finding(ckpt: dict[str, str]) -> None:
    ok(run("scan", ckpt["deep"], *FAST, "-o", "deep.json"))
    args = [ckpt["mlp"], *FAST, "--baseline", "deep.json", "--max-dead", "1", "--ignore", "RD4"]
    code, doc = judged(*args)
    assert code == 0  # act1 did not grow; a vanished site warns
    assert [(f["rule"], f["site"], f["severity"]) for f in doc["models"][0]["findings"]] == [
        ("RD202", "act2", "warning")
    ]
    assert judged(*args, "--fail-on", "warning")[0] == 1
    ok(run("scan", ckpt["mlp"], *FAST, "-o", "mlp.json"))
    found = fired(ckpt["deep"], *FAST, "--baseline", "mlp.json", "--select", "RD2")
    assert found == [("RD203", "act2")]


def test_write_baseline_records_a_passing_run_for_the_next(ckpt: dict[str, str]) -> None:
    models = [ckpt["healthy"], ckpt["mlp"]]
    r = ok(run("check", *models, *FAST, "--max-dead", "0.2", "--write-baseline", "b.json"))
    assert "wrote b.json (baseline)" in r.stderr
    base = json.loads(Path("b.json").read_text())
    assert base["check"]["healthy"] is True
    assert [m["model"] for m in base["models"]] == ["healthy.pt", "mlp.pt"]
    assert fired(*models, *FAST, "--max-dead", "0.2", "--baseline", "b.json") == [
        ("RD401", "act1")  # mlp's planted rows; nothing grew
    ]
    flipped = list(reversed(models))  # matched by name, not by position
    assert (
        fired(*flipped, *FAST, "--max-dead", "0.2", "--baseline", "b.json", "--select", "RD2") == []
    )


def test_write_baseline_skips_a_failing_run(ckpt: dict[str, str]) -> None:
    r = run("check", ckpt["deep"], *FAST, "--write-baseline", "b.json")
    assert r.exit_code == 1
    assert not Path("b.json").exists()
    assert "baseline b.json not written: not every model passed" in r.stderr


# --- cost: the scan plus milliseconds ------------------------------------------------------


def test_check_loads_once_and_runs_no_forward_beyond_the_scan(
    ckpt: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    counts: Counter[str] = Counter()
    load_model, torch_load = common.load_model, torch.load

    def counted_load(*args: Any, **kwargs: Any) -> Any:
        counts["load_model"] += 1
        return load_model(*args, **kwargs)

    def counted_torch_load(*args: Any, **kwargs: Any) -> Any:
        counts["torch.load"] += 1
        return torch_load(*args, **kwargs)

    def forward(*_: Any) -> None:
        counts["forward"] += 1

    monkeypatch.setattr(common, "load_model", counted_load)
    monkeypatch.setattr(torch, "load", counted_torch_load)
    hook = torch.nn.modules.module.register_module_forward_hook(forward)
    try:
        ok(run("scan", ckpt["deep"], "--batches", "2"))
        scan = dict(counts)
        counts.clear()
        code, doc = judged(ckpt["deep"], "--batches", "2")
    finally:
        hook.remove()
    assert code == 1 and [f["rule"] for f in doc["models"][0]["findings"]] == [
        "RD102",
        "RD401",  # read from the weights of the model in memory
        "RD401",
    ]
    assert scan["load_model"] == 1 and scan["forward"] > 0
    assert dict(counts) == scan
