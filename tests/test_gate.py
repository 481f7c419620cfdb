"""``check(report, ...)``: every rule firing and not, boundaries, select/ignore, baselines,
bad arguments. Expected counts come from the planting (``tests/fixtures/planted.py``:
``deep`` has act1 3/16 dead and act2 2/8, ``all_dead`` 16/16), never from relu-doctor."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import relu_doctor
from relu_doctor.errors import InputError, UsageError
from relu_doctor.gate import Finding, check, is_healthy, read_baseline
from relu_doctor.gate.baseline import compatible_version
from tests.fixtures.gate_reports import FakeReport, FakeSite, document, fake_document, scan_planted
from tests.fixtures.planted import PlantedModels


@pytest.fixture(scope="module")
def reports(planted_models: PlantedModels) -> dict[str, Any]:
    return {n: scan_planted(planted_models, n) for n in ("deep", "all_dead", "healthy", "mlp")}


def rules_of(findings: list[Finding]) -> list[tuple[str, str | None]]:
    return [(f.rule, f.site) for f in findings]


# --- death rules -----------------------------------------------------------------------------


def test_healthy_model_has_no_findings(reports: dict[str, Any]) -> None:
    assert check(reports["healthy"]) == []
    assert is_healthy([])


def test_dead_model_fires_dead_site_does_not(reports: dict[str, Any]) -> None:
    (f,) = check(reports["deep"])
    assert f == Finding(
        rule="RD102",
        severity="error",
        model="deep",
        site=None,
        value=5 / 24,
        threshold=0.10,
        message="5 of 24 ReLU units dead (20.8%) across 2 sites, limit 10%",
        fix=relu_doctor.gate.RULES["RD102"].fix,
    )
    assert not is_healthy([f])


def test_all_dead_fires_site_and_model(reports: dict[str, Any]) -> None:
    found = check(reports["all_dead"])
    assert rules_of(found) == [("RD102", None), ("RD101", "act1")]
    site = found[1]
    assert (site.value, site.threshold) == (1.0, 0.5)
    assert site.message == "act1: 16 of 16 units dead (100.0%), limit 50%"


def test_limit_equal_to_the_fraction_passes(reports: dict[str, Any]) -> None:
    deep = reports["deep"]
    assert check(deep, max_layer_dead=0.25, max_dead=1.0) == []  # act2 is exactly 2/8
    assert rules_of(check(deep, max_layer_dead=0.2499, max_dead=1.0)) == [("RD101", "act2")]
    assert check(deep, max_dead=5 / 24) == []
    assert rules_of(check(deep, max_dead=0.2)) == [("RD102", None)]
    assert rules_of(check(deep, max_layer_dead=0.0, max_dead=0.0)) == [
        ("RD102", None),
        ("RD101", "act1"),
        ("RD101", "act2"),
    ]
    assert check(reports["all_dead"], max_layer_dead=1.0, max_dead=1.0) == []


def test_near_dead_is_off_unless_set() -> None:
    r = FakeReport("m", (FakeSite("a", units=10, near_dead=3), FakeSite("b", near_dead=1)))
    assert check(r) == []
    assert check(r, max_near_dead=0.3) == []
    (f,) = check(r, max_near_dead=0.2)
    assert (f.rule, f.site, f.value, f.threshold) == ("RD103", "a", 0.3, 0.2)
    assert f.message == "a: 3 of 10 units near-dead (30.0%), limit 20%"


def test_death_rules_skip_uncounted_and_idle_sites() -> None:
    leaky = FakeSite("leaky", dead=10, near_dead=0, counted=False, activation="LeakyReLU")
    idle = FakeSite("idle", units=0, executed=False, counted=False)
    r = FakeReport("m", (leaky, idle, FakeSite("ok")))
    assert rules_of(check(r, max_near_dead=0.0, max_dead=0.0, max_layer_dead=0.0)) == [
        ("RD403", "idle")
    ]


# --- numerics and structure ------------------------------------------------------------------


class _NanNet(nn.Module):
    """fc (4->3) -> act; fc row 1 is NaN; ``unused`` is an nn.ReLU the forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.act = nn.ReLU()
        self.unused = nn.ReLU()
        with torch.no_grad():
            self.fc.weight.abs_()
            self.fc.bias.fill_(0.1)
            self.fc.weight[1] = float("nan")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


def test_non_finite_and_not_executed_from_a_real_scan() -> None:
    report = relu_doctor.scan(_NanNet(), torch.rand(16, 4) + 0.1, grad=False, name="nan")
    found = check(report, max_dead=1.0)  # the NaN unit never fires, so it is also dead
    assert rules_of(found) == [("RD301", "act"), ("RD403", "unused")]
    assert found[0].message == "act: NaN or Inf reached 1 of 3 units"
    assert (found[0].value, found[0].severity) == (1.0, "error")
    assert found[1].message == "unused: ReLU module never ran during the scan"
    assert found[1].severity == "warning" and is_healthy([found[1]])
    assert not is_healthy([found[1]], fail_on="warning")


def test_unbounded_activation_is_off_unless_set(reports: dict[str, Any]) -> None:
    r = reports["healthy"]
    top = r.site("act1").max_activation
    assert check(r) == []
    assert check(r, max_activation=top) == []
    (f,) = check(r, max_activation=top * 0.99)
    assert (f.rule, f.site, f.value) == ("RD302", "act1", top)
    assert f.message == f"act1: largest activation {top:.4g}, limit {top * 0.99:g}"
    inf = FakeReport("m", (FakeSite("a", max_activation=math.inf),))
    (g,) = check(inf, max_activation=1e30)
    assert g.to_dict()["value"] is None and "inf" in g.message
    json.dumps(g.to_dict(), allow_nan=False)


# --- select / ignore -------------------------------------------------------------------------


def test_select_and_ignore(reports: dict[str, Any]) -> None:
    r = reports["all_dead"]
    assert rules_of(check(r, select="RD101")) == [("RD101", "act1")]
    assert rules_of(check(r, select=["RD1"], ignore=["RD102"])) == [("RD101", "act1")]
    assert check(r, ignore="RD1") == []
    assert check(r, select="RD3") == []


def test_selecting_a_rule_without_its_threshold_is_an_error(reports: dict[str, Any]) -> None:
    with pytest.raises(UsageError) as exc:
        check(reports["deep"], select="RD101,RD103")
    assert exc.value.param == "max_near_dead"
    assert str(exc.value) == (
        "RD103 (near-dead-site) is selected but max_near_dead is not set, so it could never "
        "fire; set max_near_dead or drop RD103 from select"
    )
    assert check(reports["deep"], select="RD1", max_dead=1.0) == []  # a prefix is fine
    with pytest.raises(UsageError, match="max_activation is not set"):
        check(reports["deep"], select="RD302")


def test_unknown_rule_in_select(reports: dict[str, Any]) -> None:
    with pytest.raises(UsageError) as exc:
        check(reports["deep"], ignore="RD999")
    assert exc.value.param == "ignore" and "known rules: RD101, RD102" in str(exc.value)


# --- bad arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_dead": -0.1}, "max_dead"),
        ({"max_dead": 1.5}, "max_dead"),
        ({"max_dead": "0.1"}, "max_dead"),
        ({"max_dead": True}, "max_dead"),
        ({"max_dead": math.nan}, "max_dead"),
        ({"max_layer_dead": 2}, "max_layer_dead"),
        ({"max_near_dead": -1}, "max_near_dead"),
        ({"tolerance": -0.01}, "tolerance"),
        ({"tolerance": 1.01}, "tolerance"),
    ],
)
def test_fraction_arguments_must_be_in_0_1(reports: dict[str, Any], kwargs: Any, name: str) -> None:
    with pytest.raises(UsageError) as exc:
        check(reports["deep"], **kwargs)
    assert exc.value.param == name
    (value,) = kwargs.values()
    assert (
        str(exc.value) == f"{name} must be a fraction in [0, 1] (e.g. 0.1 for 10%), got {value!r}"
    )
    flag = "--" + name.replace("_", "-")
    assert exc.value.render(lambda p, v: "--" + p.replace("_", "-")).startswith(f"{flag} must be")


@pytest.mark.parametrize("value", [0, -1.0, math.nan, "big"])
def test_max_activation_must_be_positive(reports: dict[str, Any], value: Any) -> None:
    with pytest.raises(UsageError) as exc:
        check(reports["deep"], max_activation=value)
    assert exc.value.param == "max_activation"
    assert str(exc.value) == f"max_activation must be a number > 0, got {value!r}"


def test_is_healthy_rejects_an_unknown_severity() -> None:
    with pytest.raises(UsageError, match="fail_on must be one of error, warning, note"):
        is_healthy([], fail_on="fatal")  # type: ignore[arg-type]


# --- baseline --------------------------------------------------------------------------------


def test_same_model_against_its_own_baseline_is_clean(reports: dict[str, Any]) -> None:
    deep = reports["deep"]
    assert check(deep, baseline=document(deep), max_dead=1.0) == []
    assert check(deep, baseline=deep, max_dead=1.0) == []  # a ModelReport works too


def test_regression_and_architecture_change(reports: dict[str, Any]) -> None:
    base = document(reports["deep"])  # act1 3/16, act2 2/8; one model, so its name is moot
    found = check(reports["all_dead"], baseline=base, ignore="RD1")
    assert rules_of(found) == [("RD201", "act1"), ("RD202", "act2")]
    grew, gone = found
    assert (grew.value, grew.threshold, grew.severity) == (13 / 16, 0.02, "error")
    assert grew.message == (
        "act1: dead fraction 18.8% -> 100.0% since the baseline (+81.2 points, tolerance 2 points)"
    )
    assert (gone.severity, gone.value, gone.threshold) == ("warning", None, None)
    assert gone.message == "act2: in the baseline but not in this model (architecture changed?)"
    # the other way round: act2 is new, act1 got better
    back = check(reports["deep"], baseline=document(reports["all_dead"]), ignore="RD1")
    assert [(f.rule, f.site, f.severity) for f in back] == [("RD203", "act2", "note")]
    assert back[0].message == "act2: new site, not in the baseline"


def test_growth_equal_to_tolerance_passes_despite_rounding() -> None:
    base = fake_document(FakeReport("m", (FakeSite("a", units=10, dead=1),)))
    now = FakeReport("m", (FakeSite("a", units=10, dead=4),))
    assert 0.4 - 0.1 > 0.3  # float says it grew by more than 0.3 ...
    assert check(now, baseline=base, tolerance=0.3, select="RD2") == []  # ... the gate not
    (f,) = check(now, baseline=base, tolerance=0.29, select="RD2")
    assert f.rule == "RD201" and f.value == pytest.approx(0.3)


def test_regression_message_says_when_sample_counts_differ() -> None:
    base = fake_document(FakeReport("m", (FakeSite("a", dead=1),), samples=256))
    now = FakeReport("m", (FakeSite("a", dead=5),), samples=64)
    (f,) = check(now, baseline=base, max_dead=1, max_layer_dead=1)
    assert f.message.endswith("(baseline scanned 256 samples, this scan 64)")


def test_several_models_in_the_baseline_are_matched_by_name() -> None:
    a = FakeReport("a", (FakeSite("s", dead=1),))
    b = FakeReport("b", (FakeSite("s", dead=9),))
    base = fake_document(a, b)
    assert (
        check(
            FakeReport("b", (FakeSite("s", dead=9),)), baseline=base, max_dead=1, max_layer_dead=1
        )
        == []
    )
    assert (
        len(
            check(
                FakeReport("a", (FakeSite("s", dead=9),)),
                baseline=base,
                max_dead=1,
                max_layer_dead=1,
            )
        )
        == 1
    )
    with pytest.raises(InputError) as exc:
        check(FakeReport("c", (FakeSite("s"),)), baseline=base)
    assert exc.value.param == "baseline"
    assert str(exc.value) == (
        "the baseline has no model named 'c' (it has a, b); pass a baseline with one model "
        "or with this model's name"
    )


def test_baseline_with_another_eps_is_refused() -> None:
    base = fake_document(FakeReport("m", (FakeSite("a"),), eps=0.01))
    with pytest.raises(InputError, match=r"scanned with eps=0\.01 and this report with eps=0\.0"):
        check(FakeReport("m", (FakeSite("a"),)), baseline=base)


def test_baseline_document_is_validated_when_passed_directly() -> None:
    with pytest.raises(InputError, match="not a relu-doctor report"):
        check(FakeReport("m", (FakeSite("a"),)), baseline={"models": []})


def test_findings_are_ordered_model_first_then_scan_order_then_vanished_sites() -> None:
    base = fake_document(FakeReport("m", (FakeSite("old"), FakeSite("b"))))
    now = FakeReport("m", (FakeSite("b", dead=9), FakeSite("a", dead=9)))
    found = check(now, baseline=base)
    assert rules_of(found) == [
        ("RD102", None),
        ("RD101", "b"),
        ("RD201", "b"),
        ("RD101", "a"),
        ("RD203", "a"),
        ("RD202", "old"),
    ]


# --- read_baseline ---------------------------------------------------------------------------


def test_read_baseline_round_trip(reports: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "base.json"
    path.write_text(json.dumps(document(reports["deep"])))
    doc = read_baseline(path)
    assert doc["models"][0]["model"] == "deep"
    assert check(reports["deep"], baseline=doc, max_dead=1) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "baseline {p} does not exist"),
        ("{not json", "baseline {p} is not valid JSON (line 1: Expecting property name"),
        (b"\x80\x04\x95binary", "baseline {p} is not a JSON text file"),
        ("[1, 2]", "{p} is not a relu-doctor report"),
        ('{"tool": "ruff", "models": []}', "{p} is not a relu-doctor report"),
        (
            '{"tool": "relu-doctor", "version": "0.2.0", "models": []}',
            "{p} was written by relu-doctor 0.2.0, this is 0.1.0: reports of another minor "
            "version may define their numbers differently, so make a new baseline with this "
            "version",
        ),
        ('{"tool": "relu-doctor", "version": "0.1.0", "models": []}', "{p} has no models"),
        (
            '{"tool": "relu-doctor", "version": "0.1.0", "models": [{"model": "m"}]}',
            "{p} has no models with sites",
        ),
    ],
)
def test_read_baseline_errors(tmp_path: Path, content: str | bytes | None, message: str) -> None:
    p = tmp_path / "base.json"
    if isinstance(content, bytes):
        p.write_bytes(content)
    elif content is not None:
        p.write_text(content)
    with pytest.raises(InputError) as exc:
        read_baseline(p)
    assert exc.value.param == "baseline"
    assert str(exc.value).startswith(message.format(p=p))


def test_read_baseline_refuses_a_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is not a file"):
        read_baseline(tmp_path)


def test_version_policy_accepts_patch_differences_only() -> None:
    assert compatible_version("0.1.7", "0.1.0")
    assert compatible_version("0.1.0.dev3", "0.1.0")
    assert compatible_version("0.1", "0.1.2")
    assert not compatible_version("0.2.0", "0.1.0")
    assert not compatible_version("1.1.0", "0.1.0")
    assert not compatible_version("garbage", "0.1.0")


# --- the finding as data, purity -------------------------------------------------------------


def test_finding_to_dict_is_strict_json(reports: dict[str, Any]) -> None:
    (f,) = check(reports["deep"])
    d = f.to_dict()
    assert list(d) == ["rule", "severity", "model", "site", "value", "threshold", "message", "fix"]
    assert json.loads(json.dumps(d, allow_nan=False)) == d


def test_check_is_pure(reports: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    r = reports["all_dead"]
    before = r.to_dict()
    assert relu_doctor.check(r) == check(r)  # the top-level API function
    assert r.to_dict() == before
    assert capsys.readouterr() == ("", "")
