"""What CI reads from `relu-doctor check` (docs/cli.md, README "In CI"): JUnit read back by
junitparser, SARIF validated against the vendored 2.1.0 schema, GitHub annotation lines,
the Markdown job summary, the JSON additions; the README's CI snippets and the pre-commit
hook, run as a user's CI would run them.

Expected findings follow from the planted models (``tests/fixtures/planted.py``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from junitparser import Error, Failure, JUnitXml

from relu_doctor.gate import RULES
from tests.test_check_cli import PLANTED, judged
from tests.test_ci_formats import _validator
from tests.test_cli import FAST, ok, run

REPO = Path(__file__).parents[1]


pytestmark = pytest.mark.usefixtures("isolated")


@pytest.fixture
def ckpt(planted_models: Any) -> dict[str, str]:
    Path("ckpt").mkdir()
    for name in PLANTED:
        shutil.copy(planted_models[name].path, f"ckpt/{name}.pt")
    return {name: f"ckpt/{name}.pt" for name in PLANTED}


# --- JUnit, SARIF, GitHub ------------------------------------------------------------------


def test_junit_file_reads_back(ckpt: dict[str, str]) -> None:
    Path("broken.pt").write_bytes(b"not a model")
    args = [ckpt["deep"], ckpt["healthy"], "broken.pt", *FAST, "--keep-order", "--ignore", "RD4"]
    r = run("check", *args, "--junit", "out.junit")  # any extension: --junit decides
    assert r.exit_code == 2
    xml = JUnitXml.fromfile("out.junit")
    suites = {s.name: s for s in xml}
    assert list(suites) == ["deep.pt", "healthy.pt", "broken.pt"]
    deep = {c.name: c for c in suites["deep.pt"]}
    assert list(deep) == ["RD102 dead-model", "act1", "act2"]
    (fail,) = deep["RD102 dead-model"].result
    assert isinstance(fail, Failure) and fail.type == "RD102"
    assert fail.message == "5 of 24 ReLU units dead (20.8%) across 2 sites, limit 10%"
    assert deep["act1"].is_passed and deep["act2"].is_passed
    assert all(c.is_passed for c in suites["healthy.pt"])
    (case,) = list(suites["broken.pt"])
    assert case.name == "scan" and isinstance(case.result[0], Error)
    assert (xml.tests, xml.failures, xml.errors) == (6, 1, 1)


def test_junit_cases_follow_the_rules_that_ran(ckpt: dict[str, str]) -> None:
    r = run("check", ckpt["deep"], *FAST, "--ignore", "RD102", "-o", "j.xml")
    assert r.exit_code == 0
    (suite,) = JUnitXml.fromfile("j.xml")
    assert [c.name for c in suite] == ["act1", "act2"]  # no case for the ignored model rule
    act1 = next(c for c in suite if c.name == "act1")
    assert act1.system_out.startswith("RD401 (warning) act1: 3 of 16 units can never fire")


def test_sarif_file_is_valid_and_points_at_the_model_files(ckpt: dict[str, str]) -> None:
    ok(run("scan", ckpt["healthy"], *FAST, "-o", "base.json"))
    args = [ckpt["mlp"], ckpt["all_dead"], *FAST, "--keep-order", "--baseline", "base.json"]
    r = run("check", *args, "--sarif", "out.json")  # any extension: --sarif decides
    assert r.exit_code == 1
    log = json.loads(Path("out.json").read_text())
    _validator().validate(log)
    (sarif_run,) = log["runs"]
    assert [a["location"]["uri"] for a in sarif_run["artifacts"]] == [
        "ckpt/mlp.pt",
        "ckpt/all_dead.pt",
    ]
    assert [d["id"] for d in sarif_run["tool"]["driver"]["rules"]] == list(RULES.codes())
    results = [
        (x["ruleId"], x["locations"][0]["physicalLocation"]["artifactLocation"]["uri"])
        for x in sarif_run["results"]
    ]
    assert results == [
        ("RD102", "ckpt/mlp.pt"),
        ("RD201", "ckpt/mlp.pt"),
        ("RD401", "ckpt/mlp.pt"),
        ("RD102", "ckpt/all_dead.pt"),
        ("RD101", "ckpt/all_dead.pt"),
        ("RD201", "ckpt/all_dead.pt"),
        ("RD401", "ckpt/all_dead.pt"),
    ]
    (invocation,) = sarif_run["invocations"]
    assert invocation["executionSuccessful"] is True
    assert invocation["commandLine"].startswith("relu-doctor check ckpt/mlp.pt")
    r = run("check", *args, "-o", "by_extension.sarif")
    same = json.loads(Path("by_extension.sarif").read_text())
    del same["runs"][0]["invocations"], log["runs"][0]["invocations"]
    assert same == log


def test_sarif_says_which_models_could_not_be_scanned(ckpt: dict[str, str]) -> None:
    Path("broken.pt").write_bytes(b"not a model")
    r = run("check", ckpt["healthy"], "broken.pt", *FAST, "--format", "sarif")
    assert r.exit_code == 2
    log = json.loads(r.stdout)
    _validator().validate(log)
    (invocation,) = log["runs"][0]["invocations"]
    assert invocation["executionSuccessful"] is False
    (note,) = invocation["toolExecutionNotifications"]
    assert note["level"] == "error" and note["message"]["text"].startswith("broken.pt could")


def test_github_annotation_lines(ckpt: dict[str, str]) -> None:
    Path("broken.pt").write_bytes(b"not a model")
    r = run(
        "check",
        ckpt["deep"],
        ckpt["all_dead"],
        "broken.pt",
        *FAST,
        "--keep-order",
        "--format",
        "github",
    )
    assert r.exit_code == 2
    lines = r.stdout.splitlines()
    assert lines[:2] == [
        "::error file=ckpt/deep.pt,title=RD102::5 of 24 ReLU units dead (20.8%25) across 2 "
        "sites, limit 10%25",
        "::warning file=ckpt/deep.pt,title=RD401::act1: 3 of 16 units can never fire: their "
        "rows of fc1 are all zero and their bias is <= 0 (units 0, 3, 7; the scan measured 3 "
        "dead)",
    ]
    assert [ln.split("::")[1] for ln in lines] == [
        "error file=ckpt/deep.pt,title=RD102",
        "warning file=ckpt/deep.pt,title=RD401",
        "warning file=ckpt/deep.pt,title=RD401",
        "error file=ckpt/all_dead.pt,title=RD102",
        "error file=ckpt/all_dead.pt,title=RD101",
        "warning file=ckpt/all_dead.pt,title=RD401",
        "error file=broken.pt,title=relu-doctor",
    ]
    assert lines[-1].startswith("::error file=broken.pt,title=relu-doctor::broken.pt could not")
    verdict = [ln for ln in r.stderr.splitlines() if ln.startswith("FAIL:")]  # in the log
    assert len(verdict) == 1 and verdict[0].startswith("FAIL: 2 of 3 models unhealthy")
    assert ok(run("check", ckpt["healthy"], *FAST, "--format", "github")).stdout == ""


# --- Markdown, JSON, CSV -------------------------------------------------------------------


def test_markdown_job_summary(ckpt: dict[str, str]) -> None:
    r = run("check", ckpt["healthy"], ckpt["deep"], *FAST, "--format", "markdown")
    assert r.exit_code == 1
    md = r.stdout
    assert md.startswith("## relu-doctor check: ❌ FAIL: 1 of 2 models unhealthy: deep.pt")
    assert "| healthy.pt | healthy | 0 of 16 (0.0%) | 64 | no findings |" in md
    assert "| deep.pt | **unhealthy** | 5 of 24 (20.8%) | 64 | 1 error, 2 warnings |" in md
    deep = md[md.index("### deep.pt") :]
    assert (
        "| RD102 | error |  | 5 of 24 ReLU units dead (20.8%) across 2 sites, limit 10% |" in deep
    )
    assert "<details open>" in deep and "| act2 | ReLU | 8 | 2 | 25.0% | 0 |" in deep
    assert md.rstrip().endswith("tolerance 0.02 (default)")
    healthy = ok(run("check", ckpt["healthy"], *FAST, "--format", "markdown")).stdout
    assert healthy.startswith("## relu-doctor check: ✅ PASS: healthy.pt is healthy")
    assert "<details>" in healthy


def test_json_adds_the_verdict_to_the_scan_report(ckpt: dict[str, str]) -> None:
    code, doc = judged(ckpt["deep"], *FAST, "--max-near-dead", "0.5")
    scan = json.loads(ok(run("scan", ckpt["deep"], *FAST, "--format", "json")).stdout)
    assert list(doc) == ["tool", "version", "check", "models"]
    (model,) = doc["models"]
    assert {k: v for k, v in model.items() if k not in ("findings", "healthy")} == scan["models"][0]
    assert model["healthy"] is False and code == 1
    assert model["findings"][0] == {
        "rule": "RD102",
        "severity": "error",
        "model": "deep.pt",
        "site": None,
        "value": pytest.approx(5 / 24),
        "threshold": 0.1,
        "message": "5 of 24 ReLU units dead (20.8%) across 2 sites, limit 10%",
        "fix": RULES["RD102"].fix,
    }
    assert doc["check"] == {
        "healthy": False,
        "fail_on": "error",
        "rules": list(RULES.codes()),
        "thresholds": {
            "max_dead": {"value": 0.1, "origin": "default"},
            "max_layer_dead": {"value": 0.5, "origin": "default"},
            "max_near_dead": {"value": 0.5, "origin": "command line"},
            "max_activation": {"value": None, "origin": "default"},
            "tolerance": {"value": 0.02, "origin": "default"},
        },
        "baseline": None,
    }


def test_csv_and_per_unit_dumps_work_for_check_too(ckpt: dict[str, str]) -> None:
    r = run("check", ckpt["deep"], *FAST, "--format", "csv", "--per-unit", "u.csv")
    assert r.exit_code == 1
    assert r.stdout.splitlines()[0].startswith("model,site,kind")
    assert len(Path("u.csv").read_text().splitlines()) == 1 + 24


def test_scan_does_not_offer_the_check_formats(ckpt: dict[str, str]) -> None:
    assert run("scan", ckpt["deep"], "--format", "sarif").exit_code == 2
    assert run("scan", ckpt["deep"], *FAST, "-o", "x.sarif").exit_code == 2


# --- README "In CI" and the pre-commit hook, run as CI would -------------------------------


def ci_blocks() -> list[tuple[str, str]]:
    """(language, text) of each code block of README's "In CI" section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## In CI\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def commands(block: str) -> list[str]:
    """The shell lines of a block that set up folders or run relu-doctor, in order (YAML
    list markers and indentation dropped)."""
    out = []
    for line in block.splitlines():
        cmd = line.strip().removeprefix("- ").strip()
        if cmd.startswith(("relu-doctor ", "mkdir ")):
            out.append(cmd)
    return out


@pytest.fixture
def shim(tmp_path: Path) -> dict[str, str]:
    """An environment whose ``relu-doctor`` is this tree's ``python -m relu_doctor``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "relu-doctor"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m relu_doctor "$@"\n')
    exe.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "RELU_DOCTOR_TRUST"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run_block(lines: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The lines in bash, as a CI step runs them: stop at the first failure."""
    script = "set -e\n" + "\n".join(lines) + "\n"
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, timeout=300, check=False
    )


@pytest.mark.slow
def test_the_ci_snippets_of_the_readme(planted_models: Any, shim: dict[str, str]) -> None:
    blocks = ci_blocks()
    assert [lang for lang, _ in blocks] == ["sh", "yaml", "yaml", "yaml"]
    record, github, gitlab, precommit = (text for _, text in blocks)
    workflow, gitlab_ci = yaml.safe_load(github), yaml.safe_load(gitlab)
    steps = workflow["jobs"]["checkpoints"]["steps"]
    uses = [s.get("uses", "").split("@")[0] for s in steps]
    assert "github/codeql-action/upload-sarif" in uses and "actions/cache" in uses
    assert any("GITHUB_STEP_SUMMARY" in s.get("run", "") for s in steps)
    assert gitlab_ci["relu-doctor"]["artifacts"]["reports"]["junit"] == "reports/relu-doctor.xml"
    assert yaml.safe_load(precommit)["repos"][0]["hooks"][0]["id"] == "relu-doctor-check"
    assert any("torch==2.13.0" in s.get("run", "") for s in steps)

    Path("checkpoints").mkdir()
    for epoch in (1, 2):  # two healthy checkpoints
        shutil.copy(planted_models["healthy"].path, f"checkpoints/epoch_{epoch}.pt")
    done = run_block(commands(record), shim)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(Path("baselines/relu-doctor.json").read_text())["models"]) == 2

    check = commands(github)
    assert check[-1].startswith("relu-doctor check checkpoints/*.pt --baseline")
    done = run_block(check, shim)
    assert done.returncode == 0, done.stderr
    assert "PASS: all 2 models are healthy" in done.stdout
    summary = Path("reports/relu-doctor.md").read_text()
    assert summary.startswith("## relu-doctor check: ✅")
    _validator().validate(json.loads(Path("reports/relu-doctor.sarif").read_text()))
    assert JUnitXml.fromfile("reports/relu-doctor.xml").failures == 0

    shutil.copy(planted_models["mlp"].path, "checkpoints/epoch_2.pt")  # units died
    done = run_block(check, shim)
    assert done.returncode == 1, done.stderr
    assert "FAIL: 1 of 2 models unhealthy: epoch_2.pt (2 errors)" in done.stdout
    assert "❌" in Path("reports/relu-doctor.md").read_text()
    log = json.loads(Path("reports/relu-doctor.sarif").read_text())
    _validator().validate(log)
    assert {r["ruleId"] for r in log["runs"][0]["results"]} == {"RD102", "RD201", "RD401"}
    assert JUnitXml.fromfile("reports/relu-doctor.xml").failures == 2  # RD102 case, act1 case

    shutil.rmtree("reports")
    done = run_block(commands(gitlab), shim)
    assert done.returncode == 1, done.stderr
    assert JUnitXml.fromfile("reports/relu-doctor.xml").failures == 2
    assert json.loads(Path("reports/relu-doctor.json").read_text())["check"]["healthy"] is False


def test_the_pre_commit_hook(planted_models: Any) -> None:
    (hook,) = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert (hook["id"], hook["entry"], hook["language"]) == (
        "relu-doctor-check",
        "relu-doctor check",
        "python",
    )
    files = re.compile(hook["files"])
    assert [
        n for n in ("a.pt", "b.pth", "c.safetensors", "d.py", "e.pt.txt") if files.search(n)
    ] == [
        "a.pt",
        "b.pth",
        "c.safetensors",
    ]
    shutil.copy(planted_models["healthy"].path, "good.pt")
    shutil.copy(planted_models["all_dead"].path, "bad.pt")
    # pre-commit runs the entry with the hook's args and then the changed files that match
    program, *entry = shlex.split(hook["entry"])
    assert program == "relu-doctor"
    ok(run(*entry, *FAST, "good.pt"))
    failed = run(*entry, *FAST, "good.pt", "bad.pt")
    assert failed.exit_code == 1 and "bad.pt (2 errors)" in failed.stdout
