"""Suggestions follow the evidence (docs/metrics.md "What to do about it"): each test keeps
everything fixed but one piece of evidence and shows the suggestion change with it.

Sites are built from hand-made totals: 8 units, live units peak at 2.0 on 50 of 100
samples, dead units at the margins given.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from relu_doctor.activations import RELU
from relu_doctor.analyze.advice import suggest
from relu_doctor.analyze.causes import UnitCauses
from relu_doctor.analyze.report import ModelReport, SiteReport
from relu_doctor.scanner.accumulate import UnitTotals
from relu_doctor.scanner.topology import SiteTopology

LIVE_PEAK = 2.0


def site(
    name: str,
    dead: dict[int, float],
    causes: dict[int, str] | None = None,
    *,
    upstream: str | None = None,
    norm: str | None = None,
    units: int = 8,
    samples: int = 100,
    live_fires: int = 50,
) -> SiteReport:
    """``dead``: unit -> its largest pre-activation; ``causes``: unit -> cause."""
    max_pre = np.array([dead.get(j, LIVE_PEAK) for j in range(units)], dtype=np.float64)
    fires = np.array([0 if j in dead else live_fires for j in range(units)], dtype=np.int64)
    totals = UnitTotals(
        samples=samples,
        calls=1,
        elements=samples,
        grad_calls=0,
        fires=fires,
        max_pre=max_pre,
        abs_sum=fires.astype(np.float64),
        active=fires,
        max_out=None,
        grad_norm_sum=0.0,
        nonfinite=np.zeros(units),
    )
    extras = None
    if causes is not None:
        cause = np.array([causes.get(j) for j in range(units)], dtype=object)
        note = np.array([None] * units, dtype=object)
        extras = {"causes": UnitCauses(cause, note, np.full(units, np.nan), upstream)}
    return SiteReport.from_totals(
        totals,
        RELU,
        model="m",
        site=name,
        kind="module",
        topology=SiteTopology(producer=f"{name}.fc", norm=norm),
        extras=extras,
    )


def advice(*sites: SiteReport) -> list[tuple[str, str, str]]:
    report = ModelReport(model="m", samples=sites[0].samples, batches=1, sites=tuple(sites))
    return [(s.site, s.action, s.reason) for s in suggest(report)]


def actions(found: Sequence[tuple[str, str, str]]) -> list[tuple[str, str]]:
    return [(s, a) for s, a, _ in found]


def test_margin_depth_decides_between_leaky_relu_and_reinit() -> None:
    shallow = advice(site("a", {0: -0.5}))  # a quarter of the live peak below zero
    deep = advice(site("a", {0: -5.0}))  # 2.5 live peaks below zero
    assert actions(shallow) == [("a", "leaky_relu")]
    assert "median margin -0.5, live units peak near 2" in shallow[0][2]
    assert actions(deep) == [("a", "reinit")]
    assert "far below zero (median margin -5" in deep[0][2]


def test_how_much_of_the_layer_is_dead_decides_prelu_at_moderate_margins() -> None:
    much = advice(site("a", {0: -2.0, 1: -2.0, 2: -2.0, 3: -2.0}))  # 50% dead, 1 peak down
    few = advice(site("a", {0: -2.0}))  # 12.5%
    assert actions(much) == [("a", "prelu")]
    assert much[0][2].startswith("50% of the layer is dead (4 of 8) at moderate margins")
    assert actions(few) == [("a", "reinit")]
    assert "only 12% of the layer dead" in few[0][2]


def test_collapsed_weights_call_for_reinit_even_when_the_margin_is_shallow() -> None:
    dead = {0: -0.5, 1: -0.5}
    by_margin = advice(site("a", dead, {0: "weights", 1: "weights"}))
    collapsed = advice(site("a", dead, {0: "collapsed", 1: "collapsed"}))
    mixed = advice(site("a", dead, {0: "collapsed", 1: "weights"}))
    assert actions(by_margin) == [("a", "leaky_relu")]
    assert actions(collapsed) == [("a", "reinit")]
    assert collapsed[0][2].startswith("2 of 8 units never fire and have collapsed incoming")
    assert actions(mixed) == [("a", "leaky_relu"), ("a", "reinit")]
    assert mixed[1][2].startswith("1 of 8 units never fire and have collapsed")


def test_starved_units_say_which_site_to_fix_first() -> None:
    up = site("act1", {0: -5.0, 1: -5.0, 2: -5.0}, {0: "weights", 1: "weights", 2: "weights"})
    dead = {0: -0.1}
    starved = advice(up, site("act2", dead, {0: "starved"}, upstream="act1"))
    shallow = advice(up, site("act2", dead, {0: "bias"}))
    assert actions(starved) == [("act1", "reinit"), ("act2", "upstream")]
    assert "dead unit of act1; fix act1 first" in starved[1][2]
    assert actions(shallow) == [("act1", "reinit"), ("act2", "leaky_relu")]


def _widespread(cause: str, norm: str | None = None) -> list[tuple[str, str, str]]:
    dead = {0: -5.0, 1: -5.0, 2: -5.0}
    by = dict.fromkeys(dead, cause)
    return advice(site("a", dead, by, norm=norm), site("b", dead, by, norm=norm))


def test_widespread_bias_driven_death_suggests_a_lower_learning_rate() -> None:
    bias, weights = _widespread("bias"), _widespread("weights")
    assert actions(bias) == [("*", "lower_lr"), ("a", "reinit"), ("b", "reinit")]
    assert bias[0][2].startswith("6 of 6 dead units (100%) across 2 sites died of their bias")
    assert "38% of all ReLU units are dead" in bias[0][2]
    assert bias[0][2].endswith("add a normalisation layer before the ReLU at a, b")
    assert actions(weights) == [("a", "reinit"), ("b", "reinit")]
    normalised = _widespread("bias", norm="bn")
    assert normalised[0][2].endswith(
        "already have BatchNorm: check its shift (beta) and weight decay"
    )
    one_dead = advice(site("a", {0: -5.0}, {0: "bias"}), site("b", {}))  # 1 of 16: 6%
    assert actions(one_dead) == [("a", "reinit")]


def test_a_healthy_model_is_told_there_is_nothing_to_do() -> None:
    (found,) = advice(site("a", {}), site("b", {}))
    assert found[:2] == ("*", "none")
    assert found[2] == "no ReLU unit is dead in 100 samples across 2 sites: nothing to do"
    (near,) = advice(site("a", {}, samples=1000, live_fires=5))  # rate 0.005
    assert near[2].endswith("(8 units fire on fewer than 1% of the samples; more data tells "
                            "whether they are alive)")  # fmt: skip
    assert actions(advice(site("a", {0: -5.0}))) == [("a", "reinit")]  # one dead: no "none"


def test_suggestions_are_ranked_by_the_dead_units_they_address() -> None:
    found = advice(site("a", {0: -5.0}), site("b", {0: -0.5, 1: -0.5, 2: -0.5}))
    assert actions(found) == [("b", "leaky_relu"), ("a", "reinit")]
