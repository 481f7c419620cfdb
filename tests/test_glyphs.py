"""Sparklines of firing rates: exact strings for hand-made rates, then a planted model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from relu_doctor.analyze.glyphs import histogram, site_sparklines, sparkline
from relu_doctor.errors import UsageError
from tests.fixtures import reports


@pytest.mark.parametrize(
    ("rates", "expected"),
    [
        ([0.0, 0.0, 0.0, 0.0], "█       "),  # all dead: only the first bin
        ([1.0] * 5, "       █"),  # always firing: only the last bin
        # 3 dead, 1 at 0.5 (bin 4 = (3/7, 4/7]), 2 at 1.0: heights ceil(8*c/3) = 8, 3, 6
        ([0, 0, 0, 1, 1, 0.5], "█   ▃  ▆"),
        ([k / 7 for k in range(8)], "████████"),  # each bin's right edge lands in that bin
        ([1e-9, 1e-9], " █      "),  # fired once in a billion: alive, never with the dead
        ([], "        "),
        ([float("nan"), 0.0], "█       "),  # non-finite units are left out
    ],
)
def test_sparkline_exact(rates: list[float], expected: str) -> None:
    assert sparkline(rates) == expected


def test_heights_are_relative_to_the_fullest_bin() -> None:
    # 8 in the last bin, 1..7 in bins 0..6: block k for k units.
    rates = [0.0] + [1 / 7] * 2 + [2 / 7] * 3 + [3 / 7] * 4 + [4 / 7] * 5
    rates += [5 / 7] * 6 + [6 / 7] * 7 + [1.0] * 8
    assert sparkline(rates) == "▁▂▃▄▅▆▇█"
    assert histogram(rates).tolist() == [1, 2, 3, 4, 5, 6, 7, 8]


def test_bins_inputs_and_errors() -> None:
    # bins=3: {0}, (0, .5], (.5, 1] hold 1, 2, 1 units
    assert sparkline(np.array([0.0, 0.25, 0.5, 1.0]), bins=3) == "▄█▄"
    assert histogram(iter([0.0, 0.3]), bins=2).tolist() == [1, 1]  # generators are fine
    assert sparkline(np.zeros((2, 3))) == "█       "  # any shape, flattened
    with pytest.raises(UsageError, match="at least 2 bins"):
        sparkline([0.5], bins=1)
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        sparkline([1.5])
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        sparkline([-0.1])


def test_site_sparklines_of_planted_models(planted_models: Any) -> None:
    scanned = reports.planted_reports(planted_models)
    # all_dead: every act1 unit never fires.
    assert site_sparklines(scanned["all_dead"]) == {"act1": "█       "}
    # deep: 3 of 16 act1 units dead, the others fire on about half the samples; act2's live
    # units, fed non-negative inputs, fire on every sample (planted.py).
    deep = site_sparklines(scanned["deep"])
    assert list(deep) == ["act1", "act2"]
    act1 = histogram(_rates(scanned["deep"], "act1"))
    assert act1[0] == 3 and act1.sum() == 16 and act1[-1] == 0
    assert deep["act2"] == "▃      █"  # 2 dead, 6 at rate 1: ceil(8 * 2 / 6) = 3
    # healthy: no dead unit, so the first bin is empty.
    assert site_sparklines(scanned["healthy"])["act1"][0] == " "


def _rates(report: Any, site: str) -> Any:
    units = report.units_frame()
    return units.loc[units["site"] == site, "firing_rate"].to_numpy()
