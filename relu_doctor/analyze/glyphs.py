"""A site's firing-rate distribution as a few block characters, for a table column.

The first bin holds exactly the units with firing rate 0 (the dead ones), so a tall first
bar reads as "dying" at a glance; the other bins split (0, 1] evenly. Needs only numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from relu_doctor.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

#: Bar heights from lowest to highest; an empty bin is a space.
BLOCKS = "▁▂▃▄▅▆▇█"


def histogram(firing_rates: Iterable[float], bins: int = 8) -> np.ndarray:
    """Counts per bin: bin 0 = rate exactly 0, bins 1.. = (0, 1] split evenly, right-closed.

    Right-closed so that a unit firing on every sample (rate 1) lands in the last bin and a
    unit firing once lands in bin 1, never with the dead. NaN rates (units that saw
    non-finite values) are left out.
    """
    import numpy as np

    if bins < 2:
        raise UsageError(f"a sparkline needs at least 2 bins (one for the dead units), got {bins}")
    values: Any = firing_rates if hasattr(firing_rates, "__array__") else list(firing_rates)
    rates = np.asarray(values, dtype=float).reshape(-1)
    rates = rates[~np.isnan(rates)]
    if rates.size and (rates.min() < 0.0 or rates.max() > 1.0):
        raise UsageError("firing rates must lie in [0, 1]")
    live = rates[rates > 0.0]
    # (k-1)/(bins-1) < r <= k/(bins-1)  ->  bin k, i.e. ceil(r * (bins-1)); the small
    # tolerance keeps a rate of exactly k/(bins-1), rounded up by float error, in bin k.
    index = np.clip(np.ceil(live * (bins - 1) - 1e-9).astype(int), 1, bins - 1)
    counts = np.bincount(index, minlength=bins)
    counts[0] = rates.size - live.size
    return counts


def sparkline(firing_rates: Iterable[float], bins: int = 8) -> str:
    """The histogram of ``firing_rates`` as ``bins`` block characters (see ``histogram``).

    Heights are relative to the fullest bin: a bin with ``c`` of at most ``m`` units gets
    block ``ceil(8 * c / m)``, so any non-empty bin shows at least ``▁`` and the fullest one
    is ``█``; an empty bin is a space. No rates at all: ``bins`` spaces.
    """
    counts = histogram(firing_rates, bins)
    top = int(counts.max())
    if top == 0:
        return " " * bins
    levels = len(BLOCKS)
    return "".join(
        BLOCKS[math.ceil(levels * int(c) / top) - 1] if c else " " for c in counts.tolist()
    )


def site_sparklines(report: Any, bins: int = 8) -> Mapping[str, str]:
    """``site name -> sparkline`` for every site of ``report`` that has per-unit rates.

    For the table's distribution column; sites that never ran are absent (show nothing).
    """
    units = report.units_frame()
    if units.empty:
        return {}
    return {
        str(site): sparkline(group["firing_rate"].to_numpy(dtype=float), bins)
        for site, group in units.groupby("site", sort=False)
    }
