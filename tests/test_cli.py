"""The `relu-doctor` command line (docs/cli.md): output formats, files, exit codes and
one-line `Error:` messages.

Expected numbers come from the planted models of ``tests/fixtures/planted.py`` (dead units
have bias -1e4), never from relu-doctor's own output. Scans use 2 synthetic batches of 32,
so every site sees N = 64 samples.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

import relu_doctor
from relu_doctor.cli import main
from tests.fixtures.cli import error_line, ok
from tests.fixtures.cli import invoke as run

FAST = ["--batches", "2", "--no-grad"]
N = 64  # samples per site with FAST (2 batches of the default 32)
CSV_HEADER = (
    "model,site,kind,calls,units,samples,dead,dead_fraction,near_dead,dormant,sparsity,"
    "max_activation,dead_margin,grad_norm"
)
SITE_KEYS = CSV_HEADER.split(",")


# --- helpers -------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("isolated")


@pytest.fixture
def m(planted_models: Any) -> Any:
    return planted_models


def table_row(stdout: str, site: str) -> list[str]:
    """The cells of the table row of ``site`` (box characters dropped)."""
    for line in stdout.splitlines():
        cells = line.translate(str.maketrans("│┃|", "   ")).split()
        if cells and cells[0] == site:
            return cells
    raise AssertionError(f"no row for site {site!r} in:\n{stdout}")


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# --- scan: the table -----------------------------------------------------------------------


def test_scan_table_counts_planted_units_per_site(m: Any) -> None:
    deep = m["deep"]
    r = ok(run("scan", deep.path, *FAST))
    for site, (units, dead) in deep.sites.items():
        cells = table_row(r.stdout, site)
        assert cells[1] == "module"
        assert cells[2:4] == [str(units), str(len(dead))]
    assert f"{deep.dead} of {deep.units} ReLU units dead" in r.stdout  # 5 of 24
    assert f"0 firings in {N} samples" in r.stdout
    assert f"3/{N}" in r.stdout
    assert deep.path.name in r.stdout


def test_scan_exits_0_for_a_completely_dead_model(m: Any) -> None:
    r = ok(run("scan", m["all_dead"].path, *FAST))
    assert "16 of 16 ReLU units dead" in r.stdout
    assert table_row(r.stdout, "act1")[2:4] == ["16", "16"]


def test_scan_healthy_model_reports_no_dead_unit(m: Any) -> None:
    r = ok(run("scan", m["healthy"].path, *FAST))
    assert "0 of 16 ReLU units dead" in r.stdout
    assert table_row(r.stdout, "act1")[2:4] == ["16", "0"]


def test_scan_with_gradients_fills_grad_norm(m: Any) -> None:
    r = ok(run("scan", m["mlp"].path, "--batches", "2", "--format", "json"))
    site = json.loads(r.stdout)["models"][0]["sites"][0]
    assert site["site"] == "act1" and site["dead"] == 3
    assert site["grad_norm"] is not None and site["grad_norm"] > 0
    params = json.loads(r.stdout)["models"][0]["params"]
    assert {p["name"] for p in params} == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}


# --- formats on stdout ---------------------------------------------------------------------


def test_format_csv_on_stdout(m: Any) -> None:
    deep = m["deep"]
    r = ok(run("scan", deep.path, *FAST, "--format", "csv"))
    assert r.stdout.splitlines()[0].startswith(CSV_HEADER)
    rows = csv_rows(r.stdout)
    assert [row["site"] for row in rows] == list(deep.sites)
    for row in rows:
        units, dead = deep.sites[row["site"]]
        assert row["model"] == deep.path.name
        assert row["kind"] == "module"
        assert int(row["units"]) == units
        assert int(row["dead"]) == len(dead)
        assert int(row["samples"]) == N
        assert int(row["calls"]) == 2  # one call per batch
        assert float(row["dead_fraction"]) == pytest.approx(len(dead) / units)
        assert float(row["dead_margin"]) == pytest.approx(-1e4)
        assert row["grad_norm"] == ""  # --no-grad


def test_format_json_on_stdout(m: Any) -> None:
    deep = m["deep"]
    r = ok(run("scan", deep.path, *FAST, "--format", "json"))
    doc = json.loads(r.stdout)
    assert doc["tool"] == "relu-doctor"
    assert doc["version"] == relu_doctor.__version__
    assert len(doc["models"]) == 1
    model = doc["models"][0]
    assert {"model", "samples", "dead_fraction", "sites", "params", "suggestions"} <= set(model)
    assert model["model"] == deep.path.name
    assert model["samples"] == N
    assert model["dead_fraction"] == pytest.approx(5 / 24)
    assert isinstance(model["params"], list) and isinstance(model["suggestions"], list)
    assert [s["site"] for s in model["sites"]] == list(deep.sites)
    for site in model["sites"]:
        assert list(site)[: len(SITE_KEYS)] == SITE_KEYS
        units, dead = deep.sites[site["site"]]
        assert (site["units"], site["dead"], site["samples"]) == (units, len(dead), N)


def test_format_markdown_on_stdout(m: Any) -> None:
    deep = m["deep"]
    r = ok(
        run("scan", deep.path, m["all_dead"].path, *FAST, "--keep-order", "--format", "markdown")
    )
    text = r.stdout
    assert "### deep.pt\n\n5 of 24 ReLU units dead (20.8%) across 2 sites" in text
    assert "firing rate < 3/64 = 4.69% at 95% confidence" in text
    assert "**Suggestions**" in text  # all_dead has some
    lines = [line for line in text.split("### all_dead.pt")[0].splitlines() if line[:1] == "|"]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[: len(SITE_KEYS) - 1] == SITE_KEYS[1:]  # the model is the heading
    assert set(lines[1].replace("|", "").replace(":", "")) == {"-"}
    rows = [
        dict(zip(header, (c.strip() for c in ln.strip("|").split("|")), strict=True))
        for ln in lines[2:]
    ]
    assert {row["site"]: int(row["dead"]) for row in rows} == {"act1": 3, "act2": 2}


def test_several_models_give_one_report_each(m: Any) -> None:
    names = ["mlp", "deep", "all_dead"]
    given = ("scan", *(m[n].path for n in names), *FAST, "--format", "json", "--keep-order")
    models = json.loads(ok(run(*given)).stdout)["models"]
    assert [x["model"] for x in models] == [m[n].path.name for n in names]
    assert [sum(s["dead"] for s in x["sites"]) for x in models] == [3, 5, 16]
    assert [x["dead_fraction"] for x in models] == pytest.approx([3 / 16, 5 / 24, 1.0])


def test_several_models_as_a_table(m: Any) -> None:
    r = ok(run("scan", m["mlp"].path, m["healthy"].path, *FAST))
    assert "3 of 16 ReLU units dead" in r.stdout
    assert "0 of 16 ReLU units dead" in r.stdout
    assert m["mlp"].path.name in r.stdout and m["healthy"].path.name in r.stdout


# --- report files --------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["csv", "json", "md", "txt"])
def test_output_format_from_extension_and_table_still_prints(m: Any, ext: str) -> None:
    deep = m["deep"]
    out = Path(f"report.{ext}")
    r = ok(run("scan", deep.path, *FAST, "-o", out))
    assert table_row(r.stdout, "act1")[2:4] == ["16", "3"]  # the table is on stdout
    assert "5 of 24 ReLU units dead" in r.stdout
    text = out.read_text(encoding="utf-8")
    if ext == "csv":
        assert text.startswith(CSV_HEADER)
        assert {row["site"]: int(row["dead"]) for row in csv_rows(text)} == {"act1": 3, "act2": 2}
    elif ext == "json":
        model = json.loads(text)["models"][0]
        assert {s["site"]: s["dead"] for s in model["sites"]} == {"act1": 3, "act2": 2}
    elif ext == "md":
        assert any(line.startswith("| site | kind | calls |") for line in text.splitlines())
    else:  # the plain table, no colour codes
        assert "\x1b[" not in text
        assert table_row(text, "act2")[2:4] == ["8", "2"]
        assert "5 of 24 ReLU units dead" in text
    assert list(Path().iterdir()) == [out]  # no temporary file left next to it


def test_a_format_that_contradicts_the_extension_is_refused(m: Any) -> None:
    r = run("scan", m["mlp"].path, *FAST, "--format", "json", "-o", "x.csv")
    error_line(r, "--format json contradicts --output x.csv", "csv")
    assert not Path("x.csv").exists()


def test_format_names_a_file_whose_extension_says_nothing(m: Any) -> None:
    ok(run("scan", m["mlp"].path, *FAST, "--format", "json", "-o", "report.out"))
    assert json.loads(Path("report.out").read_text())["models"][0]["sites"][0]["dead"] == 3


def test_several_outputs_and_a_dash_for_stdout(m: Any) -> None:
    r = ok(run("scan", m["mlp"].path, *FAST, "-o", "r.json", "-o", "r.csv", "-o", "-"))
    assert table_row(r.stdout, "act1")[2:4] == ["16", "3"]  # '-' is stdout, as a table
    assert json.loads(Path("r.json").read_text())["models"][0]["sites"][0]["dead"] == 3
    assert Path("r.csv").read_text().startswith(CSV_HEADER)
    assert not Path("-").exists()
    r = ok(run("scan", m["mlp"].path, *FAST, "--format", "csv", "-o", "-", "-o", "r2.csv"))
    assert r.stdout.startswith(CSV_HEADER)


def test_output_with_unknown_extension_is_a_usage_error(m: Any) -> None:
    r = run("scan", m["mlp"].path, *FAST, "-o", "report.xyz")
    error_line(r, "report.xyz", "--format")
    assert not Path("report.xyz").exists()


def test_output_in_missing_folder_fails_before_writing(m: Any) -> None:
    r = run("scan", m["mlp"].path, *FAST, "-o", "ok.csv", "--per-unit", "missing/units.csv")
    error_line(r, "missing")
    assert list(Path().iterdir()) == []  # neither file, no folder created


def test_report_in_missing_folder(m: Any) -> None:
    r = run("scan", m["mlp"].path, *FAST, "-o", "nowhere/report.json")
    error_line(r, "nowhere")
    assert not Path("nowhere").exists()


def test_per_unit_csv_has_one_row_per_unit_and_the_planted_flags(m: Any) -> None:
    deep = m["deep"]
    r = ok(run("scan", deep.path, *FAST, "--per-unit", "units.csv"))
    assert "act1" in r.stdout  # the table still prints
    rows = csv_rows(Path("units.csv").read_text())
    assert len(rows) == deep.units == 24
    for site, (units, dead) in deep.sites.items():
        mine = [row for row in rows if row["site"] == site]
        assert [int(row["unit"]) for row in mine] == list(range(units))
        flagged = [int(row["unit"]) for row in mine if row["dead"] == "True"]
        assert flagged == dead
        for row in mine:
            assert int(row["samples"]) == N
            assert (int(row["fires"]) == 0) == (int(row["unit"]) in dead)


def test_per_unit_json(m: Any) -> None:
    ok(run("scan", m["mlp"].path, *FAST, "--per-unit", "units.json"))
    units = json.loads(Path("units.json").read_text())["units"]
    assert len(units) == 16
    assert [u["unit"] for u in units if u["dead"]] == [0, 3, 7]


def test_per_unit_txt_is_refused(m: Any) -> None:
    r = run("scan", m["mlp"].path, *FAST, "--per-unit", "units.txt")
    error_line(r, "--per-unit", ".csv")
    assert not Path("units.txt").exists()


def test_per_unit_unknown_extension_gives_advice_that_works(m: Any) -> None:
    line = error_line(run("scan", m["mlp"].path, *FAST, "--per-unit", "units.xyz"), "units.xyz")
    assert ".csv" in line
    assert ".txt" not in line and "--format" not in line


def test_output_that_is_a_directory(m: Any) -> None:
    Path("out").mkdir()
    error_line(run("scan", m["mlp"].path, *FAST, "-o", "out"), "out", "directory")


def test_a_failed_model_of_several_loses_nothing_else(m: Any) -> None:
    r = run("scan", m["mlp"].path, m["tanh"].path, *FAST, "-o", "r.csv", "--per-unit", "u.csv")
    assert r.exit_code == 2
    assert table_row(r.stdout, "act1")[2:4] == ["16", "3"]  # the model that scanned
    assert "tanh.pt\nerror: no ReLU found in tanh.pt" in r.stdout  # the other, in its place
    *each, last = r.stderr.strip().splitlines()
    assert each[-1].startswith("error: tanh.pt: no ReLU found")
    assert last == "Error: 1 of 2 models could not be scanned (tanh.pt); the others are reported"
    assert [row["model"] for row in csv_rows(Path("r.csv").read_text())] == ["mlp.pt"]
    assert Path("u.csv").exists()


def test_a_failed_model_is_an_error_entry_in_json(m: Any) -> None:
    Path("broken.pt").write_bytes(Path(m["mlp"].path).read_bytes()[:200])
    given = (m["mlp"].path, "broken.pt", m["deep"].path)
    r = run("scan", *given, *FAST, "--format", "json", "--keep-order")
    assert r.exit_code == 2
    models = json.loads(r.stdout)["models"]
    assert [x["model"] for x in models] == ["mlp.pt", "broken.pt", "deep.pt"]
    assert "truncated or corrupt" in models[1]["error"] and "sites" not in models[1]
    assert models[2]["sites"][1]["dead"] == 2


def test_a_missing_path_fails_before_anything_is_scanned(m: Any) -> None:
    r = run("scan", m["mlp"].path, "nope.pt", *FAST, "-o", "r.csv")
    error_line(r, "nope.pt: no such file")
    assert r.stdout == ""
    assert not Path("r.csv").exists()


def test_csv_of_several_models_has_a_row_per_site_of_each(m: Any) -> None:
    r = ok(run("scan", m["mlp"].path, m["deep"].path, *FAST, "--format", "csv", "--keep-order"))
    got = [(row["model"], row["site"], int(row["dead"])) for row in csv_rows(r.stdout)]
    mlp, deep = m["mlp"].path.name, m["deep"].path.name
    assert got == [(mlp, "act1", 3), (deep, "act1", 3), (deep, "act2", 2)]


# --- inputs --------------------------------------------------------------------------------


def test_input_shape_that_fits(m: Any) -> None:
    r = ok(run("scan", m["mlp"].path, *FAST, "--input-shape", "20", "--format", "csv"))
    assert [(row["site"], row["dead"], row["samples"]) for row in csv_rows(r.stdout)] == [
        ("act1", "3", str(N))
    ]


def test_batch_size_and_batches_set_the_sample_count(m: Any) -> None:
    r = ok(
        run(
            "scan",
            m["mlp"].path,
            "--no-grad",
            "--batches",
            "3",
            "--batch-size",
            "5",
            "--format",
            "json",
        )
    )
    model = json.loads(r.stdout)["models"][0]
    assert model["samples"] == 15
    assert model["sites"][0]["samples"] == 15


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--input-shape", "3,x"], ["--input-shape", "3,x"]),
        (["--input-shape", "0,3"], ["--input-shape", "0,3"]),
        (["--batches", "0"], ["--batches"]),
        (["--batch-size", "-1"], ["--batch-size"]),
        (["--eps", "-1"], ["--eps"]),
        (["--unit-dim", "5"], ["--unit-dim"]),
        (["--format", "yaml"], ["--format", "yaml"]),
    ],
    ids=["shape-x", "shape-0", "batches-0", "batch-size-neg", "eps-neg", "unit-dim", "format"],
)
def test_bad_option_values(m: Any, args: list[str], needles: list[str]) -> None:
    error_line(run("scan", m["mlp"].path, *FAST, *args), *needles)


def test_wrong_input_shape_names_the_first_layer(m: Any) -> None:
    line = error_line(run("scan", m["mlp"].path, *FAST, "--input-shape", "7"), "--input-shape")
    assert "fc1" in line and "20" in line  # the first layer and what it expects


def test_device_cuda_without_a_gpu(m: Any) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    error_line(run("scan", m["mlp"].path, *FAST, "--device", "cuda"), "cuda", "--device cpu")


@pytest.fixture
def data_files(tmp_path: Path) -> dict[str, Path]:
    import numpy as np
    import torch

    x = np.random.default_rng(0).standard_normal((40, 20)).astype("float32")
    files = {"pt": tmp_path / "x.pt", "npy": tmp_path / "x.npy", "csv": tmp_path / "x.csv"}
    torch.save(torch.from_numpy(x), files["pt"])
    np.save(files["npy"], x)
    header = ",".join(f"f{i}" for i in range(20))
    files["csv"].write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in x) + "\n")
    files["bad_csv"] = tmp_path / "bad.csv"
    files["bad_csv"].write_text(header + "\n" + ",".join(["1.0"] * 19 + ["abc"]) + "\n")
    files["empty_csv"] = tmp_path / "empty.csv"
    files["empty_csv"].write_text("")
    files["narrow"] = tmp_path / "narrow.pt"
    torch.save(torch.randn(8, 7), files["narrow"])
    return files


@pytest.mark.parametrize("kind", ["pt", "npy", "csv"])
def test_data_files(m: Any, data_files: dict[str, Path], kind: str) -> None:
    r = ok(
        run(
            "scan",
            m["mlp"].path,
            "--no-grad",
            "--data",
            data_files[kind],
            "--batch-size",
            "16",
            "--format",
            "json",
        )
    )
    model = json.loads(r.stdout)["models"][0]
    assert model["samples"] == 40  # all of the data: 16 + 16 + 8
    assert model["batches"] == 3
    assert model["sites"][0]["dead"] == 3


@pytest.mark.parametrize(
    ("kind", "needles"),
    [("bad_csv", ["bad.csv", "non-numeric", "f19"]), ("empty_csv", ["empty.csv"])],
)
def test_bad_data_files(m: Any, data_files: dict[str, Path], kind: str, needles: list[str]) -> None:
    error_line(run("scan", m["mlp"].path, *FAST, "--data", data_files[kind]), *needles)


def test_data_of_the_wrong_width_names_the_first_layer(m: Any, data_files: dict[str, Path]) -> None:
    line = error_line(run("scan", m["mlp"].path, "--no-grad", "--data", data_files["narrow"]))
    assert "fc1" in line and "20" in line


def test_data_from_a_python_factory(m: Any, tmp_path: Path) -> None:
    (tmp_path / "mydata.py").write_text(
        "import torch\n"
        "def batches():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    return [torch.randn(10, 20, generator=g) for _ in range(3)]\n"
    )
    r = ok(run("scan", m["deep"].path, "--data", "mydata.py:batches", "--format", "json"))
    model = json.loads(r.stdout)["models"][0]
    assert (model["samples"], model["batches"]) == (30, 3)
    assert {s["site"]: s["dead"] for s in model["sites"]} == {"act1": 3, "act2": 2}


@pytest.mark.parametrize("data", ["file", "factory"])
def test_every_model_of_a_timeline_sees_all_of_the_data(
    m: Any, data_files: dict[str, Path], tmp_path: Path, data: str
) -> None:
    (tmp_path / "gen.py").write_text(
        "import torch\n"
        "def batches():\n"
        "    return (torch.randn(10, 20) for _ in range(3))  # a generator: usable once\n"
    )
    spec = str(data_files["pt"]) if data == "file" else "gen.py:batches"
    r = ok(
        run("scan", m["mlp"].path, m["deep"].path, "--no-grad", "--data", spec, "--format", "json")
    )
    samples = [model["samples"] for model in json.loads(r.stdout)["models"]]
    assert samples == ([40, 40] if data == "file" else [30, 30])


def test_data_spec_that_does_not_import(m: Any) -> None:
    error_line(run("scan", m["mlp"].path, *FAST, "--data", "pkg:missing"), "pkg")


def test_missing_data_file(m: Any) -> None:
    error_line(run("scan", m["mlp"].path, *FAST, "--data", "nope.csv"), "nope.csv")


# --- models that do not load ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "needles"),
    [
        ("missing.pt", None, ["missing.pt", "no such file"]),
        ("folder", "DIR", ["folder", "directory"]),
        ("empty.pt", b"", ["empty.pt", "empty"]),
        ("random.pt", bytes(range(256)) * 8, ["random.pt"]),
        ("notes.txt", b"these are my notes\n", ["notes.txt", "text file"]),
    ],
    ids=["missing", "directory", "empty", "random-bytes", "text"],
)
def test_bad_model_files(name: str, content: Any, needles: list[str]) -> None:
    if content == "DIR":
        Path(name).mkdir()
    elif content is not None:
        Path(name).write_bytes(content)
    error_line(run("scan", name, *FAST), *needles)


def test_debug_shows_the_traceback() -> None:
    r = run("scan", "missing.pt", "--debug")
    assert r.exit_code == 2
    assert "Traceback" in r.stderr
    assert r.stderr.splitlines()[-1].startswith("Error: ")


def test_state_dict_without_arch(m: Any) -> None:
    error_line(run("scan", m["state_dict"].path, *FAST), "state dict", "--arch")


def test_state_dict_with_arch_file(m: Any) -> None:
    arch = f"{m.arch_file}:Net"
    r = ok(run("scan", m["state_dict"].path, "--arch", arch, *FAST, "--format", "csv"))
    assert [(row["site"], row["units"], row["dead"]) for row in csv_rows(r.stdout)] == [
        ("act", "16", "2")
    ]


def test_arch_that_does_not_import(m: Any) -> None:
    error_line(
        run("scan", m["state_dict"].path, "--arch", "nosuchmodule:Net", *FAST), "nosuchmodule"
    )


def test_custom_class_pickle_is_refused_without_trust(m: Any) -> None:
    line = error_line(
        run("scan", m["custom"].path, *FAST), "rd_planted_custom.Net", "--trust", "--arch"
    )
    assert "RELU_DOCTOR_TRUST" in line


def test_trust_env_0_does_not_trust(m: Any) -> None:
    r = run("scan", m["custom"].path, *FAST, env={"RELU_DOCTOR_TRUST": "0"})
    error_line(r, "rd_planted_custom.Net", "--trust")


def test_arch_with_a_whole_model(m: Any) -> None:
    error_line(run("scan", m["mlp"].path, "--arch", f"{m.arch_file}:Net", *FAST), "--arch")


def test_arch_that_does_not_fit_lists_the_keys(m: Any) -> None:
    import torch

    # deep has fc1 (16x20), fc2 (8x16), out (4x8); Net has fc1 (16x20), fc2 (4x16).
    torch.save(torch.load(m["deep"].path, weights_only=False).state_dict(), "deep_sd.pt")
    line = error_line(run("scan", "deep_sd.pt", "--arch", f"{m.arch_file}:Net", *FAST), "--arch")
    assert "out.weight" in line and "fc2.weight" in line


@pytest.mark.parametrize("how", ["flag", "env"])
def test_custom_class_pickle_loads_with_trust(
    m: Any, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.syspath_prepend(str(m.arch_dir))
    flag = ["--trust"] if how == "flag" else []
    env = {"RELU_DOCTOR_TRUST": "1"} if how == "env" else None
    r = ok(run("scan", m["custom"].path, *flag, *FAST, "--format", "csv", env=env))
    assert [(row["site"], row["dead"]) for row in csv_rows(r.stdout)] == [("act", "2")]


def test_model_without_relu_names_its_activation(m: Any) -> None:
    error_line(run("scan", m["tanh"].path, *FAST), "no ReLU", "Tanh")


# --- help and version ----------------------------------------------------------------------


def test_group_help_lists_every_command_with_help_text() -> None:
    r = ok(run("--help"))
    assert "Usage:" in r.stdout
    assert main.commands, "no commands"
    for name, command in main.commands.items():
        assert command.help and command.help.strip(), name
        line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith(name + " "))
        assert len(line.split()) > 1, line  # a short help next to the name


def test_every_command_and_option_has_help() -> None:
    for name, command in main.commands.items():
        r = ok(run(name, "--help"))
        assert "Usage:" in r.stdout
        for arg in (p for p in command.params if isinstance(p, click.Argument)):
            assert arg.metavar and arg.metavar in r.stdout.splitlines()[0], name
        for param in command.params:
            if param.param_type_name == "option":
                assert getattr(param, "help", None), f"{name} {param.name} has no help"


def test_every_help_ends_with_examples_of_its_command() -> None:
    assert {"scan", "check", "explain", "rules"} <= set(main.commands)
    group = ok(run("--help")).stdout
    for name in main.commands:
        assert f"  {name} " in group, name
        text = ok(run(name, "--help")).stdout.rstrip()
        block = text.split("\n\n")[-1].splitlines()
        assert block[0].strip() == "Examples:", (name, block)
        assert len(block) > 1
        assert all(line.strip().startswith(f"relu-doctor {name}") for line in block[1:]), block


def test_scan_help_names_the_shared_options() -> None:
    text = ok(run("scan", "--help")).stdout
    for opt in [
        "--arch",
        "--trust",
        "--input-shape",
        "--data",
        "--batch-size",
        "--batches",
        "--seed",
        "--device",
        "--mode",
        "--grad / --no-grad",
        "--eps",
        "--unit-dim",
        "--format",
        "--output",
        "--per-unit",
        "--debug",
    ]:
        assert opt in text, opt


def test_no_arguments_prints_help() -> None:
    r = ok(run())  # `relu-doctor` alone asks for help: exit 0, help on stdout
    assert r.stdout.startswith("Usage:")
    assert "Traceback" not in r.stdout + r.stderr


def test_version() -> None:
    r = ok(run("--version"))
    assert relu_doctor.__version__ in r.stdout
    assert "relu-doctor" in r.stdout


def test_scan_without_model_is_a_usage_error() -> None:
    error_line(run("scan"), "MODEL")


def test_unknown_option_is_a_usage_error(m: Any) -> None:
    error_line(run("scan", m["mlp"].path, "--bogus"), "--bogus")


# --- the real entry points (subprocesses) --------------------------------------------------


def _console_script() -> str:
    script = Path(sys.executable).with_name("relu-doctor")
    found = str(script) if script.exists() else shutil.which("relu-doctor")
    if not found:
        pytest.skip("relu-doctor console script not installed")
    return found


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RELU_DOCTOR_TRUST"}
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a real entry point in a subprocess, as a user's shell would."""
    return subprocess.run(
        argv, capture_output=True, text=True, cwd=cwd, env=_env(), timeout=120, check=False
    )


def test_console_script_scan_json(m: Any, tmp_path: Path) -> None:
    p = _cli([_console_script(), "scan", str(m["deep"].path), *FAST, "--format", "json"], tmp_path)
    assert p.returncode == 0, p.stderr
    model = json.loads(p.stdout)["models"][0]
    assert {s["site"]: s["dead"] for s in model["sites"]} == {"act1": 3, "act2": 2}


def test_python_m_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    p = _cli([sys.executable, "-m", "relu_doctor", "scan", "missing.pt"], tmp_path)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    assert p.stderr.splitlines() == [p.stderr.strip()]
    assert p.stderr.startswith("Error: ") and "missing.pt" in p.stderr


def test_python_m_version(tmp_path: Path) -> None:
    p = _cli([sys.executable, "-m", "relu_doctor", "--version"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert relu_doctor.__version__ in p.stdout


def test_a_model_with_only_comparison_sites_says_so(tmp_path: Path) -> None:
    import torch
    from torch import nn

    torch.save(nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(), nn.Linear(8, 2)), "leaky.pt")
    r = ok(run("scan", "leaky.pt", *FAST))
    assert "No ReLU or ReLU6 site" in r.stdout and "LeakyReLU" in r.stdout
    assert "0 of 0" not in r.stdout


# --- loading options ------------------------------------------------------------------------


def test_a_damaged_checkpoint_is_refused_and_no_verify_loads_it(m: Any) -> None:
    from tests.fixtures.loading import damage

    path = Path("damaged.pt")
    shutil.copy(m["mlp"].path, path)
    record = damage(path, "data/1")
    error_line(run("scan", path, *FAST), f"record {record} fails its CRC-32", "--no-verify")
    ok(run("scan", path, *FAST, "--no-verify"))


def test_a_legacy_file_says_it_cannot_be_verified(m: Any) -> None:
    import torch

    model = torch.load(m["mlp"].path, weights_only=False)
    # A whole model in the legacy format cannot be unpickled safely: save its state dict.
    torch.save(model.state_dict(), "legacy.pt", _use_new_zipfile_serialization=False)
    arch = "tests.fixtures.planted:mlp_arch"
    r = ok(run("scan", "legacy.pt", "--arch", arch, *FAST, "--format", "json"))
    warnings = json.loads(r.stdout)["models"][0]["warnings"]
    assert any("cannot be checked" in w for w in warnings), warnings


def test_strict_and_no_strict_for_a_checkpoint_with_extra_model_keys(m: Any) -> None:
    import torch

    sd = dict(torch.load(m["state_dict"].path, weights_only=True))
    sd["extra.weight"] = torch.zeros(2)
    torch.save(sd, "sd.pt")
    sys.path.insert(0, str(m.arch_dir))
    try:
        arch = "rd_planted_custom:Net"
        error_line(run("scan", "sd.pt", "--arch", arch, *FAST), "extra.weight", "--no-strict")
        r = ok(run("scan", "sd.pt", "--arch", arch, *FAST, "--no-strict", "--format", "json"))
    finally:
        sys.path.remove(str(m.arch_dir))
    model = json.loads(r.stdout)["models"][0]
    assert model["sites"][0]["dead"] == 2  # the planted units 2 and 9
    assert any("extra.weight" in w for w in model["warnings"])
