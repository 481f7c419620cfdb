"""`relu-doctor fix` (docs/cli.md, README "Repairing"): the repaired model keeps the input's
form and scans again, the report, refusals with exit 2 and one `Error:` line, "nothing to
fix". Expected counts follow from the planted models of ``tests/fixtures/planted.py``
(dead units have bias -1e4), never from relu-doctor's own output."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result

from tests.fixtures.cli import error_line, ok
from tests.fixtures.cli import invoke as run
from tests.fixtures.models import ScriptNet, positive_inputs

FAST = ["--batches", "2"]


pytestmark = pytest.mark.usefixtures("isolated")


@pytest.fixture
def m(planted_models: Any) -> Any:
    return planted_models


def dead_per_site(*args: Any) -> dict[str, int]:
    out = ok(run("scan", *args, *FAST, "--no-grad", "--format", "csv")).stdout
    return {row["site"]: int(row["dead"]) for row in csv.DictReader(io.StringIO(out))}


def proof(result: Result) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(result.stdout)
    return data


# --- pickles of torch.nn parts --------------------------------------------------------------


def test_reinit_writes_a_pickle_that_scans_without_trust(m: Any) -> None:
    r = ok(run("fix", m["deep"].path, "--to", "reinit", "-o", "fixed.pt", *FAST))
    assert "act1" in r.stdout and "3 → 0" in r.stdout and "2 → 0" in r.stdout
    assert "the function is unchanged" in r.stdout
    assert "wrote fixed.pt" in r.stderr
    assert dead_per_site("fixed.pt") == {"act1": 0, "act2": 0}  # no --trust
    assert dead_per_site(m["deep"].path) == {"act1": 3, "act2": 2}  # the input is untouched


@pytest.mark.parametrize(("to", "kind"), [("leaky_relu", "LeakyReLU"), ("prelu", "PReLU")])
def test_a_swapped_pickle_is_still_torch_nn_only(m: Any, to: str, kind: str) -> None:
    ok(run("fix", m["mlp"].path, "--to", to, "-o", "fixed.pt", *FAST))
    out = ok(run("scan", "fixed.pt", *FAST, "--format", "json")).stdout
    (site,) = json.loads(out)["models"][0]["sites"]
    assert (site["site"], site["kind"], site["dead"]) == ("act1", kind, 3)


def test_an_fx_rewrite_needs_trust_to_load_and_says_so(m: Any) -> None:
    args = ["tests.fixtures.models:FunctionalMLP", "--input-shape", "4", *FAST]
    r = ok(run("fix", *args, "--to", "leaky_relu", "--sites", "relu#1", "-o", "fx.pt"))
    assert "relu#1 → relu_1" in r.stdout
    assert "loading it needs trust: a torch.fx GraphModule" in r.stdout
    error_line(run("scan", "fx.pt", *FAST), "refusing to unpickle fx.pt", "--trust")
    dead = dead_per_site("fx.pt", "--trust", "--input-shape", "4")
    assert list(dead) == ["relu_1", "relu#1", "relu#2", "relu#3", "relu#4"]  # renumbered
    assert dead["relu_1"] == 1  # planted at -1e4, a leaky unit stays below zero


# --- state dicts ----------------------------------------------------------------------------


def test_a_checkpoint_stays_a_checkpoint(m: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(m.arch_dir))
    weights = torch.load(m["state_dict"].path, weights_only=True)
    optimizer = {"state": {0: {"exp_avg": torch.ones(16, 20)}}, "param_groups": []}
    ckpt = {
        "epoch": 7,
        "model_state_dict": {f"module.{k}": v for k, v in weights.items()},
        "optimizer": optimizer,
    }
    torch.save(ckpt, "ckpt.pt")
    arch = ["--arch", "rd_planted_custom:Net"]
    r = ok(run("fix", "ckpt.pt", *arch, "--to", "reinit", "-o", "fixed.pt", *FAST))
    assert "the checkpoint's 'optimizer' kept the optimizer state" in r.stdout
    saved = torch.load("fixed.pt", weights_only=True)
    assert saved["epoch"] == 7 and torch.equal(
        saved["optimizer"]["state"][0]["exp_avg"], torch.ones(16, 20)
    )
    assert set(saved["model_state_dict"]) == set(ckpt["model_state_dict"])
    new, old = saved["model_state_dict"], ckpt["model_state_dict"]
    assert not torch.equal(new["module.fc1.weight"][[2, 9]], old["module.fc1.weight"][[2, 9]])
    assert torch.equal(new["module.fc2.weight"][:, [2, 9]], torch.zeros(4, 2))
    assert dead_per_site("fixed.pt", *arch) == {"act": 0}


def test_a_state_dict_cannot_hold_a_swap(m: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(m.arch_dir))
    r = run(
        "fix",
        m["state_dict"].path,
        "--arch",
        "rd_planted_custom:Net",
        "--to",
        "prelu",
        "-o",
        "x.pt",
    )
    error_line(r, "a state dict for --arch rd_planted_custom:Net", "--to reinit")
    assert not Path("x.pt").exists()


def test_safetensors_stay_safetensors(m: Any) -> None:
    safetensors = pytest.importorskip("safetensors.torch")
    model = torch.load(m["mlp"].path, weights_only=False)
    safetensors.save_file(dict(model.state_dict()), "w.safetensors", metadata={"run": "42"})
    arch = ["--arch", "tests.fixtures.planted:mlp_arch"]
    ok(run("fix", "w.safetensors", *arch, "--to", "reinit", "-o", "f.safetensors", *FAST))
    from safetensors import safe_open

    with safe_open("f.safetensors", framework="pt") as f:
        assert f.metadata() == {"run": "42"}
        assert torch.equal(f.get_tensor("fc2.weight")[:, [0, 3, 7]], torch.zeros(4, 3))
    assert dead_per_site("f.safetensors", *arch) == {"act1": 0}


# --- TorchScript and torch.export -----------------------------------------------------------


def test_torchscript_reinit_yes_swap_no(tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(ScriptNet()), "net.ts")
    shape = ["--input-shape", "4", *FAST]
    r = run(
        "fix", "net.ts", "--trust", "--to", "leaky_relu", "--sites", "all", "-o", "x.ts", *shape
    )
    error_line(r, "TorchScript forward is compiled code", "swap it in the source model")
    r = ok(
        run("fix", "net.ts", "--trust", "--to", "reinit", "--sites", "all", "-o", "f.ts", *shape)
    )
    assert "default Linear/Conv initialiser" in r.stdout
    assert set(dead_per_site("f.ts", "--trust", *shape).values()) == {0}


def test_export_reinit_writes_a_program() -> None:
    x = positive_inputs(8, ScriptNet.IN)
    torch.export.save(torch.export.export(ScriptNet(), (x,)), "net.pt2")
    ok(
        run(
            "fix",
            "net.pt2",
            "--trust",
            "--to",
            "reinit",
            "--sites",
            "all",
            "--no-grad",
            "-o",
            "f.pt2",
            *FAST,
        )
    )
    assert set(dead_per_site("f.pt2", "--trust").values()) == {0}


# --- refusals, nothing to fix, outputs ------------------------------------------------------


def test_nothing_to_fix_writes_nothing(m: Any) -> None:
    r = ok(run("fix", m["healthy"].path, "--to", "reinit", "-o", "fixed.pt", *FAST))
    assert "Nothing to fix: 0 of 16 ReLU units dead" in r.stdout
    assert not Path("fixed.pt").exists()


def test_unknown_site_lists_the_known_ones(m: Any) -> None:
    r = run("fix", m["deep"].path, "--to", "reinit", "--sites", "act9", "-o", "f.pt", *FAST)
    error_line(r, "--sites: no site 'act9' in deep.pt; its sites: act1, act2 (or 'all')")


def test_a_site_without_a_consumer_cannot_be_reinitialised() -> None:
    args = ["tests.fixtures.models:MixedReLU", "--input-shape", "4", *FAST]
    r = run("fix", *args, "--to", "reinit", "--sites", "relu#1", "-o", "f.pt")
    error_line(r, "nothing could be repaired", "relu#1: no single layer consumes its output")
    assert not Path("f.pt").exists()


def test_the_input_is_overwritten_only_with_force(m: Any, tmp_path: Path) -> None:
    Path("in.pt").write_bytes(m["mlp"].path.read_bytes())
    error_line(run("fix", "in.pt", "--to", "reinit", "-o", "in.pt", *FAST), "--force")
    ok(run("fix", "in.pt", "--to", "reinit", "-o", "in.pt", "--force", *FAST))
    assert dead_per_site("in.pt") == {"act1": 0}


def test_out_and_to_are_required(m: Any) -> None:
    error_line(run("fix", m["mlp"].path, "--to", "reinit"), "Missing option '-o' / '--out'")
    error_line(
        run("fix", m["mlp"].path, "-o", "x.pt"),
        "Missing option '--to'. Choose from leaky_relu, prelu, elu, reinit.",
    )


def test_report_files_stdout_formats_and_per_unit(m: Any) -> None:
    fix = ["fix", m["mlp"].path, "--to", "reinit", "-o", "f.pt", *FAST]
    data = proof(ok(run(*fix, "--format", "json")))
    assert data["fix"]["sites"][0]["dead"] == [3, 0]
    assert [x["model"] for x in data["models"]] == ["mlp.pt", "f.pt"]
    ok(run(*fix, "--report", "p.md", "--report", "p.txt", "--per-unit", "u.csv"))
    assert "| act1 | re-initialised 3 of 16 units | 3 → 0 |" in Path("p.md").read_text()
    assert "mlp.pt → f.pt: reinit (ReDo)" in Path("p.txt").read_text()
    rows = list(csv.DictReader(io.StringIO(Path("u.csv").read_text())))
    assert {r["model"] for r in rows} == {"mlp.pt", "f.pt"} and len(rows) == 32
    r = run(*fix, "--report", "p.csv")
    error_line(r, "--report p.csv: cannot tell the format from the extension; use .txt, .json")


def test_help_names_the_outputs() -> None:
    out = ok(run("fix", "--help")).stdout
    assert "-o, --out OUT" in out and "--report FILE" in out and "--to" in out
    assert "relu-doctor fix model.pt --to reinit -o fixed.pt" in out


def test_fix_reads_its_config_section(m: Any) -> None:
    Path("pyproject.toml").write_text(
        '[tool.relu-doctor]\nbatches = 2\n\n[tool.relu-doctor.fix]\nto = "reinit"\nsites = "act1"\n'
    )
    r = ok(run("fix", m["deep"].path, "-o", "f.pt"))
    assert "Sites: the sites named." in r.stdout
    assert dead_per_site("f.pt") == {"act1": 0, "act2": 2}  # act2 was not named
