"""Pictures of reports: where a network is dying, readable faster than a table of 35 sites.

matplotlib is an optional extra, so it is imported inside the functions only and its absence
is one ``UsageError`` saying how to install it. Figures are built on the Agg canvas without
pyplot: no display is ever opened and no figure is kept in a global registry. Saved files
are deterministic (no dates, a fixed SVG hash salt).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relu_doctor import __version__
from relu_doctor.errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

INSTALL_HINT = "pip install 'relu-doctor[plots]'"
#: File extension -> matplotlib format.
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
DEAD, NEAR, ALIVE, LINE = "#c62828", "#f59e0b", "#b8c7d9", "#1f3b73"
MAX_HISTOGRAMS = 6
LABEL_CHARS = 24
#: Labels of figures' parts, so callers and tests can find them (``Axes.get_label``).
SITES_AXES, SPARSITY_AXES, TIMELINE_AXES, HISTOGRAM_PREFIX = (
    "sites",
    "sparsity",
    "timeline",
    "histogram:",
)


def require_matplotlib() -> None:
    """Fail with one line that says how to install the plots extra when matplotlib is absent."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"pictures need matplotlib, an optional extra: {INSTALL_HINT}") from exc


def report_figure(report: Any) -> Figure:
    """Per-site dead / near-dead / alive shares with sparsity, and the worst sites' histograms.

    Sites are in network (report) order, executed ones only; the figure widens with the site
    count and turns long or crowded labels vertical (abbreviated past ``LABEL_CHARS``), so 35+
    sites stay readable. Histograms: firing rates of up to ``MAX_HISTOGRAMS`` sites with the
    largest dead fraction, the dead units (rate exactly 0) as their own red bar.
    """
    require_matplotlib()
    sites = [s for s in report.sites if s.executed]
    rates = _rates_by_site(report)
    worst = sorted(
        (s for s in sites if s.units and len(rates.get(s.site, ()))),
        key=lambda s: -(s.dead_fraction or 0.0),
    )[:MAX_HISTOGRAMS]
    labels = [abbreviate(s.site) for s in sites]
    width = _clamp(2.0 + 0.3 * len(sites), 8.0, 60.0)
    fontsize = 9.0 if len(sites) <= 20 else 8.0
    slots = len(sites) - 1 + 2 * _bar_pad(len(sites))
    vertical = _needs_vertical(labels, (width - 1.6) / max(slots, 1), fontsize)
    label_height = 0.3 + (fontsize * 0.6 / 72 * max(map(len, labels), default=0) if vertical else 0)
    cols = max(1, min(len(worst), 6 if width >= 16 else 3))
    rows = math.ceil(len(worst) / cols)
    fig = _new_figure(width, 3.6 + label_height + 2.4 * rows)
    grid = fig.add_gridspec(1 + rows, cols, height_ratios=[3.6 + label_height] + [2.4] * rows)
    _site_bars(fig.add_subplot(grid[0, :]), sites, labels, vertical, fontsize)
    for i, site in enumerate(worst):
        _histogram(fig.add_subplot(grid[1 + i // cols, i % cols]), site, rates[site.site])
    fig.suptitle(_text(_title(report, width)), fontsize=12)
    return _frozen(fig)


def timeline_figure(reports: Sequence[Any]) -> Figure:
    """Checkpoints x sites heatmap of dead fraction: the timeline of a run at a glance.

    Rows are the reports in the order given (one architecture, several checkpoints), columns
    the sites matched by name in order of first appearance; a site that is missing or did not
    run in a checkpoint is a blank cell. Cells carry their percentage while the grid is small.
    """
    require_matplotlib()
    import numpy as np

    reports = list(reports)
    if not reports:
        raise UsageError("a timeline needs at least one report")
    names = _merged_order([s.site for s in r.sites if s.executed] for r in reports)
    values = np.full((len(reports), len(names)), np.nan)
    column = {name: j for j, name in enumerate(names)}
    for i, r in enumerate(reports):
        for s in r.sites:
            if s.executed and s.dead_fraction is not None and s.site in column:
                values[i, column[s.site]] = s.dead_fraction
    labels = [abbreviate(n) for n in names]
    rows = [f"{abbreviate(str(r.model), 32)} ({r.dead_fraction:.0%})" for r in reports]
    width = _clamp(3.5 + 0.45 * len(names), 6.0, 60.0)
    vertical = _needs_vertical(labels, (width - 3.0) / max(len(labels), 1), 8.0)
    label_height = 0.4 + (8.0 * 0.6 / 72 * max(map(len, labels), default=0) if vertical else 0)
    fig = _new_figure(width, _clamp(1.4 + 0.35 * len(reports) + label_height, 3.0, 40.0))
    ax = fig.add_subplot(label=TIMELINE_AXES)
    _heatmap(fig, ax, values, labels, rows, vertical)
    fig.suptitle(f"dead fraction per site across {len(reports)} checkpoints", fontsize=12)
    return _frozen(fig)


def picture_format(path: str | os.PathLike[str]) -> str:
    """``png``, ``svg`` or ``pdf`` from the file name's extension; UsageError otherwise."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(
            f"cannot tell the picture format of {os.fspath(path)!r}: "
            f"name the file {', '.join(FORMATS)} (by extension)"
        )
    return fmt


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as PNG, SVG or PDF, chosen by the extension of ``path``."""
    fmt = picture_format(path)
    with _deterministic():
        fig.savefig(path, format=fmt, metadata=_metadata(fmt))
    return Path(path)


def figure_svg(fig: Figure) -> str:
    """``fig`` as SVG text, for embedding in a page (same deterministic settings)."""
    return figure_bytes(fig, "svg").decode("utf-8")


def abbreviate(name: str, limit: int = LABEL_CHARS) -> str:
    """``name`` cut in the middle to ``limit`` characters: both ends say the most."""
    if len(name) <= limit:
        return name
    head = (limit - 1) // 3
    return name[:head] + "…" + name[len(name) - (limit - 1 - head) :]


# --- building blocks ---------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _frozen(fig: Figure) -> Figure:
    """Solve the constrained layout once and keep it: each later draw would nudge it again,
    so saving the same figure twice would give different bytes."""
    fig.draw_without_rendering()
    fig.set_layout_engine("none")
    return fig


def _site_bars(
    ax: Axes, sites: Sequence[Any], labels: Sequence[str], vertical: bool, fontsize: float
) -> None:
    """Stacked shares of dead, near-dead and alive units per site; sparsity on a twin axis."""
    import numpy as np

    ax.set_label(SITES_AXES)
    x = np.arange(len(sites))
    units = np.array([max(s.units, 1) for s in sites], dtype=float)
    dead = np.array([s.dead for s in sites]) / units * 100
    near = np.array([s.near_dead for s in sites]) / units * 100
    alive = np.clip(100 - dead - near, 0, 100)
    ax.bar(x, dead, color=DEAD, label="dead")
    ax.bar(x, near, bottom=dead, color=NEAR, label="near-dead")
    ax.bar(x, alive, bottom=dead + near, color=ALIVE, label="alive")
    ax.set_ylim(0, 100)
    pad = _bar_pad(len(sites))
    ax.set_xlim(-pad, len(sites) - 1 + pad)
    ax.set_ylabel("units (%)")
    ax.set_xticks(x, [_text(label) for label in labels], rotation=90 if vertical else 0)
    ax.tick_params(axis="x", labelsize=fontsize)
    for tick, site in zip(ax.get_xticklabels(), sites, strict=True):
        if not site.counted:
            tick.set_color("#757575")
    note = "; grey: not a ReLU, not counted" if any(not s.counted for s in sites) else ""
    ax.set_xlabel(f"site (network order{note})")
    sparsity = np.array([np.nan if s.sparsity is None else s.sparsity * 100 for s in sites])
    twin = ax.twinx()
    twin.set_label(SPARSITY_AXES)
    twin.plot(x, sparsity, color=LINE, marker="o" if len(sites) <= 60 else "", ms=3, lw=1.2)
    twin.set_ylim(0, 100)
    twin.set_ylabel("sparsity (%)", color=LINE)
    handles = [*ax.get_legend_handles_labels()[0], twin.get_lines()[0]]
    ax.legend(
        handles,
        ["dead", "near-dead", "alive", "sparsity"],
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        ncols=4,
        frameon=False,
        fontsize=8,
    )
    ax.set_title("units per site", loc="left", fontsize=10)
    if not sites:
        ax.text(0.5, 0.5, "no ReLU site ran", ha="center", va="center", transform=ax.transAxes)


def _histogram(ax: Axes, site: Any, rates: np.ndarray) -> None:
    """Firing rates of one site's units; the dead (rate 0) as a red bar left of the axis."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    ax.set_label(HISTOGRAM_PREFIX + site.site)
    live = rates[rates > 0]
    counts, edges = np.histogram(live, bins=20, range=(0.0, 1.0))
    ax.bar(edges[:-1], counts, width=0.05, align="edge", color=ALIVE, edgecolor="white", lw=0.5)
    dead = int(np.count_nonzero(rates == 0))
    ax.bar([-0.045], [dead], width=0.05, color=DEAD)
    ax.set_xlim(-0.08, 1.02)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0", "25%", "50%", "75%", "100%"])
    ax.tick_params(labelsize=8)
    ax.set_xlabel("firing rate", fontsize=8)
    ax.set_ylabel("units", fontsize=8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{_text(abbreviate(site.site, 32))}: {dead}/{len(rates)} dead", fontsize=9)


def _heatmap(
    fig: Figure,
    ax: Axes,
    values: np.ndarray,
    labels: Sequence[str],
    rows: Sequence[str],
    vertical: bool,
) -> None:
    import matplotlib as mpl
    import numpy as np
    from matplotlib.ticker import PercentFormatter

    cmap = mpl.colormaps["Reds"].with_extremes(bad="white")
    image = ax.imshow(
        np.ma.masked_invalid(values),
        cmap=cmap,
        vmin=0.0,
        vmax=1.0,
        aspect="auto",
        interpolation="nearest",
    )
    n_rows, n_cols = values.shape
    ax.set_xticks(range(n_cols), [_text(x) for x in labels], rotation=90 if vertical else 0)
    ax.set_yticks(range(n_rows), [_text(r) for r in rows])
    ax.tick_params(labelsize=8)
    ax.set_xticks(np.arange(n_cols + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n_rows + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="#e0e0e0", lw=0.8)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("site (network order; blank: absent or did not run)")
    if n_rows <= 30 and n_cols <= 40:
        for (i, j), v in np.ndenumerate(values):
            if not np.isnan(v):
                color = "white" if v > 0.6 else "black"
                ax.text(j, i, f"{v:.0%}", ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=ax, label="dead fraction", format=PercentFormatter(1.0), shrink=0.9)


def _merged_order(orders: Iterable[list[str]]) -> list[str]:
    """Site names of several reports in one network order: a name first seen in a later
    report goes right after its predecessor there (a layer added mid-network stays mid)."""
    merged: list[str] = []
    for names in orders:
        previous: str | None = None
        for name in names:
            if name not in merged:
                merged.insert(merged.index(previous) + 1 if previous is not None else 0, name)
            previous = name
    return merged


def _rates_by_site(report: Any) -> Mapping[str, np.ndarray]:
    units = report.units_frame()
    if units.empty:
        return {}
    return {
        str(site): group["firing_rate"].to_numpy(dtype=float)
        for site, group in units.groupby("site", sort=False)
    }


def _title(report: Any, width: float) -> str:
    """Model and verdict; on two lines when one would not fit ``width`` inches at 12 pt."""
    executed = sum(1 for s in report.sites if s.executed)
    verdict = (
        f"{report.dead_units} of {report.total_units} ReLU units dead "
        f"({report.dead_fraction:.1%}) across {executed} site{'s' * (executed != 1)}; "
        f"{report.samples} samples"
    )
    fits = int(width * 72 / (12 * 0.6))  # characters of about 0.6 em
    model = str(report.model)
    if len(model) + 2 + len(verdict) <= fits:
        return f"{model}: {verdict}"
    return f"{abbreviate(model, fits)}\n{verdict}"


def _bar_pad(sites: int) -> float:
    """Room either side of the bars, in bar slots: a lone site is a bar, not a wall."""
    return max(0.6, (6 - sites) / 2)


def _needs_vertical(labels: Sequence[str], slot_width: float, fontsize: float) -> bool:
    """Whether side-by-side horizontal labels would overlap in slots of ``slot_width``
    inches (about 0.6 em per character, plus a gap)."""
    if not labels:
        return False
    return max(len(label) for label in labels) * fontsize * 0.6 + 8 > slot_width * 72


def _text(value: str) -> str:
    """A user string shown literally: ``$`` would otherwise start mathtext."""
    return value.replace("$", r"\$")


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def _metadata(fmt: str) -> dict[str, str | None]:
    """No dates; the tool as creator (so rebuilt files are byte-identical)."""
    creator = f"relu-doctor {__version__}"
    if fmt == "png":
        return {"Software": creator}
    if fmt == "pdf":
        return {"Creator": creator, "CreationDate": None}
    return {"Creator": creator, "Date": None}


@contextmanager
def _deterministic() -> Iterator[None]:
    import matplotlib as mpl

    with mpl.rc_context({"svg.hashsalt": "relu-doctor", "svg.fonttype": "path"}):
        yield


# --- emitters of the output-format registry -------------------------------------------------


def document_figure(doc: Any) -> Figure:
    """One model: its sites and histograms; several (checkpoints): the timeline heatmap."""
    reports = list(doc.reports)
    if not reports:
        raise UsageError("a picture needs at least one scanned model")
    return report_figure(reports[0]) if len(reports) == 1 else timeline_figure(reports)


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """``fig`` as PNG, SVG or PDF bytes, with the deterministic settings of ``save_figure``."""
    buffer = io.BytesIO()
    with _deterministic():
        fig.savefig(buffer, format=fmt, metadata=_metadata(fmt))
    return buffer.getvalue()


def png(doc: Any) -> bytes:
    return figure_bytes(document_figure(doc), "png")


def svg(doc: Any) -> bytes:
    return figure_bytes(document_figure(doc), "svg")


def pdf(doc: Any) -> bytes:
    return figure_bytes(document_figure(doc), "pdf")
