"""Edge cases users meet (issue 15): export programs traced with a fixed batch size, tiny
scans, train mode with a lone last sample, options that do not apply, two-input models
without data, and articles in messages.

Expected numbers come from plain torch on the same inputs, never from relu-doctor's output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import Result
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import relu_doctor
from relu_doctor.errors import InputError, a_kind
from relu_doctor.output.table import summary
from relu_doctor.scanner.batches import Batch, Batches, Rebatched, TailJoined, as_batches
from tests.fixtures.cli import error_line, invoke, ok
from tests.fixtures.loading import pt2_bytes

pytestmark = pytest.mark.usefixtures("isolated")


def run(*args: Any) -> Result:
    return invoke("scan", *args)


def report_json(path: str = "r.json") -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(path).read_text())["models"][0]
    return data


def stream(*sizes: int, width: int = 3) -> Batches:
    """Batches of ``sizes`` rows whose values count up across batches: row i holds i."""
    out, start = [], 0
    for n in sizes:
        x = torch.arange(start, start + n, dtype=torch.float32)[:, None].expand(n, width)
        out.append(Batch((x,), {"extra": {"w": x[:, :1] * 10}}, x[:, 0].long(), n))
        start += n
    return Batches(iter(out), len(out))


# --- export programs traced with a fixed batch size (item 9) -------------------------------


def test_rebatching_splits_and_joins_at_any_depth() -> None:
    cut = Rebatched(stream(5, 3, 2), 4)
    got = list(cut)
    assert [b.rows for b in got] == [4, 4]
    for i, b in enumerate(got):
        rows = torch.arange(4 * i, 4 * i + 4, dtype=torch.float32)
        assert torch.equal(b.args[0][:, 0], rows)
        assert torch.equal(b.kwargs["extra"]["w"][:, 0], rows * 10)
        assert b.targets is not None and torch.equal(b.targets, rows.long())
    assert cut.dropped == 2


def test_rebatching_refuses_batches_that_change_form() -> None:
    items = Batches(
        iter(
            [Batch((torch.ones(3, 2),), {}, None, 3), Batch((), {"x": torch.ones(3, 2)}, None, 3)]
        ),
        2,
    )
    with pytest.raises(InputError, match="change form"):
        list(Rebatched(items, 4))


def test_an_export_program_with_a_fixed_batch_scans_data_of_any_length() -> None:
    Path("m.pt2").write_bytes(pt2_bytes())  # traced with a batch of 4 (tests/fixtures/loading.py)
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    np.save("x.npy", x.numpy())
    ok(
        run(
            "m.pt2",
            "--trust",
            "--data",
            "x.npy",
            "--no-grad",
            "-o",
            "r.json",
            "--per-unit",
            "u.json",
        )
    )
    data = report_json()
    assert (data["samples"], data["batches"]) == (8, 2)
    (note,) = [w for w in data["warnings"] if "export program" in w]
    assert "traced with a batch of 4" in note and "batch size 32 does not apply" in note
    assert "the last 2 samples, too few for a batch, were left out" in note
    program = torch.export.load("m.pt2")
    with torch.no_grad():  # the program itself takes 4 at a time
        fires = sum((program.module()(x[i : i + 4]) > 0).sum(dim=0) for i in (0, 4)).tolist()
    units = json.loads(Path("u.json").read_text())["units"]
    assert [u["fires"] for u in units] == fires


def test_an_export_program_with_a_fixed_batch_ignores_the_batch_size_and_says_so() -> None:
    Path("m.pt2").write_bytes(pt2_bytes())
    ok(run("m.pt2", "--trust", "--batch-size", "64", "--batches", "3", "--no-grad", "-o", "r.json"))
    data = report_json()
    assert (data["samples"], data["batches"]) == (12, 3)
    notes = [w for w in data["warnings"] if "export program" in w]
    assert notes == [
        "this export program was traced with a batch of 4 samples and takes no other, so the "
        "scan ran batches of 4 (batch size 64 does not apply)"
    ]
    ok(run("m.pt2", "--trust", "--batch-size", "4", "--no-grad", "-o", "r.json"))
    assert not report_json()["warnings"]  # nothing differed from what was asked


def test_an_export_program_takes_a_dataloader_of_another_batch_size() -> None:
    program = torch.export.load(_write_pt2())
    x = torch.randn(9, 3, generator=torch.Generator().manual_seed(1))
    report = relu_doctor.scan(program, DataLoader(TensorDataset(x), batch_size=3), grad=False)
    assert (report.samples, report.batches) == (8, 2)
    assert any("the last sample was left out" in w for w in report.warnings)


def _write_pt2() -> str:
    Path("m.pt2").write_bytes(pt2_bytes())
    return "m.pt2"


# --- tiny scans (item 11) ------------------------------------------------------------------


def test_two_samples_never_claim_a_rate_above_100_percent() -> None:
    report = relu_doctor.scan(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), torch.randn(2, 4))
    assert report.min_samples == 2
    assert report.dead_bound == 1.0 and report.bound_is_weak
    line = next(x for x in summary(report).plain.splitlines() if x.startswith("Dead = 0"))
    assert "150" not in line and "3/2" not in line
    assert line == (
        "Dead = 0 firings in only 2 samples: too few to bound the firing rate; scan more batches."
    )
    data = report.to_dict()
    assert (data["dead_bound"], data["bound_is_weak"]) == (1.0, True)


def test_the_html_page_says_the_same_about_two_samples() -> None:
    pytest.importorskip("matplotlib")
    import html

    from relu_doctor.output.html import html_page

    report = relu_doctor.scan(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), torch.randn(2, 4))
    text = html.unescape(html_page(report))
    assert "only 2 samples: too few to bound the firing rate" in text
    assert "3/2" not in text and "150" not in text


@pytest.mark.parametrize(
    ("n", "weak", "text"),
    [
        (10, True, "firing rate < 3/10 = 30% at 95% confidence, a weak bound below 30 samples"),
        (29, True, "firing rate < 3/29 = 10% at 95% confidence, a weak bound below 30 samples"),
        (
            30,
            False,
            "Dead = 0 firings in 30 samples: firing rate < 3/30 = 10.00% at 95% confidence.",
        ),
    ],
)
def test_the_bound_is_weak_below_30_samples(n: int, weak: bool, text: str) -> None:
    report = relu_doctor.scan(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), torch.randn(n, 4))
    assert report.bound_is_weak is weak
    assert report.dead_bound == pytest.approx(3 / n)
    assert text in summary(report).plain


# --- train mode with a lone last sample (item 12) ------------------------------------------


def bn_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU())


def test_a_lone_last_sample_joins_the_batch_before_it() -> None:
    assert [b.rows for b in TailJoined(stream(4, 4, 1))] == [4, 5]
    assert [b.rows for b in TailJoined(stream(4, 1, 4))] == [4, 1, 4]  # not the last one
    assert [b.rows for b in TailJoined(stream(1))] == [1]
    joined = TailJoined(stream(4, 4, 1))
    last = list(joined)[-1]
    assert torch.equal(last.args[0][:, 0], torch.arange(4.0, 9.0))
    assert joined.total == 2


def test_train_mode_scans_2k_plus_1_samples() -> None:
    x = torch.randn(33, 4, generator=torch.Generator().manual_seed(0))
    model = bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = relu_doctor.scan(model, x, batch_size=16, mode="train", grad=False)
    assert (report.samples, report.batches) == (33, 2)
    # plain torch, train mode, on the batches the scan ran: 16, then 16 + the lone one
    expected = bn_model().train()
    with torch.no_grad():
        fires = sum((expected(part) > 0).sum(dim=0) for part in (x[:16], x[16:]))
    units = report.units_frame()
    assert units["fires"].tolist() == fires.tolist()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats


def test_train_mode_on_the_command_line_with_an_odd_tail() -> None:
    torch.save(bn_model(), "bn.pt")
    np.save("x.npy", np.random.default_rng(0).normal(size=(33, 4)).astype(np.float32))
    ok(run("bn.pt", "--data", "x.npy", "--batch-size", "16", "--mode", "train", "-o", "r.json"))
    assert (report_json()["samples"], report_json()["batches"]) == (33, 2)


def test_one_sample_in_train_mode_says_what_to_do() -> None:
    torch.save(bn_model(), "bn.pt")
    np.save("x.npy", np.ones((1, 4), dtype=np.float32))
    line = error_line(run("bn.pt", "--data", "x.npy", "--mode", "train"))
    assert "BatchNorm needs at least 2 samples per batch" in line
    assert "--batch-size" in line and "--mode eval" in line


# --- small ones (item 13) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("int", "an int"),
        ("dict", "a dict"),
        ("OrderedDict", "an OrderedDict"),
        ("ndarray", "an ndarray"),
        ("str", "a str"),
    ],
)
def test_articles(word: str, expected: str) -> None:
    assert a_kind(word) == expected


def test_messages_say_an_int() -> None:
    with pytest.raises(InputError, match="data is an int;"):
        as_batches(5, 4)
    torch.save(7, "seven.pt")
    line = error_line(run(_model_file(), "--data", "seven.pt"))
    assert "holds an int;" in line
    Path("facts.py").write_text("answer = 42\n")
    line = error_line(run("facts.py:answer"))
    assert "names an int, not a callable" in line


def _model_file() -> str:
    torch.save(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), "m.pt")
    return "m.pt"


def test_input_shape_with_data_is_ignored_aloud() -> None:
    np.save("x.npy", np.ones((8, 4), dtype=np.float32))
    ok(run(_model_file(), "--data", "x.npy", "--input-shape", "3,32,32", "-o", "r.json"))
    assert report_json()["warnings"] == [
        "the input shape 3,32,32 is for synthetic inputs and was not used: the data has its own"
    ]
    report = relu_doctor.scan(
        nn.Sequential(nn.Linear(4, 3), nn.ReLU()), torch.ones(8, 4), input_shape=(9,)
    )
    assert report.warnings == (
        "the input shape 9 is for synthetic inputs and was not used: the data has its own",
    )


CONV_TWO = """
import torch
from torch import nn


class ConvTwo(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, image, scale):
        return torch.relu(self.conv(image) * scale)


def make():
    return ConvTwo()
"""


@pytest.mark.parametrize("model", ["tests.fixtures.models:TwoInputs", "convtwo.py:make"])
def test_a_two_input_model_without_data_points_to_a_batch_function(model: str) -> None:
    Path("convtwo.py").write_text(CONV_TWO)
    line = error_line(run(model))
    assert "forward takes 2 inputs" in line and "--data file.py:make_batches" in line
    assert "TypeError" not in line and "--input-shape" not in line


def test_a_two_input_model_given_single_tensors_points_to_a_batch_function() -> None:
    from tests.fixtures.models import TwoInputs

    with pytest.raises(InputError, match=r"dicts of keyword inputs") as info:
        relu_doctor.scan(TwoInputs(), torch.ones(4, 3))
    assert "do not give the arguments the forward takes" in str(info.value)
