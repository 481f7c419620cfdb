"""The terminal: the two consoles (stdout, stderr) and the progress display. Consoles are
made per command run, so ``COLUMNS`` and ``NO_COLOR`` are read when the command starts."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from relu_doctor.output.table import PLAIN_WIDTH

#: Seconds between two progress lines when stderr is a log, not a terminal.
LOG_EVERY = 5.0
Tick = Callable[[int, "int | None"], None]


def out_console() -> Console:
    """stdout; piped output without ``COLUMNS`` is not squeezed into 80 columns."""
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=PLAIN_WIDTH)
    return console


def err_console() -> Console:
    return Console(stderr=True, highlight=False)


def spinner(label: str) -> Any:
    """A spinner on a terminal while something without steps runs (loading a model)."""
    console = err_console()
    return console.status(Text(label)) if console.is_terminal else nullcontext()


@contextmanager
def progress_bar(label: str) -> Iterator[Tick]:
    """Batches done on stderr: a bar with a spinner and the time left on a terminal; in a log
    (CI), a plain line every few seconds."""
    console = err_console()
    if not console.is_terminal:
        yield _log_lines(label)
        return
    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task(Text(label), total=None)  # type: ignore[arg-type]
    with bar:
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _log_lines(label: str) -> Tick:
    start = last = time.monotonic()

    def tick(done: int, total: int | None) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= LOG_EVERY:
            last = now
            of = f" of {total}" if total is not None else ""
            click.echo(f"{label}: batch {done}{of} ({now - start:.0f} s)", err=True)

    return tick
