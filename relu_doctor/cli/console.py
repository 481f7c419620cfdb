"""The terminal: the two consoles (stdout, stderr) and the progress display. Consoles are
made per command run, so ``COLUMNS`` and ``NO_COLOR`` are read when the command starts."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from relu_doctor.output.table import PLAIN_WIDTH


def out_console() -> Console:
    """stdout; piped output without ``COLUMNS`` is not squeezed into 80 columns."""
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=PLAIN_WIDTH)
    return console


def err_console() -> Console:
    return Console(stderr=True, highlight=False)


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int | None], None]]:
    """A batch progress bar on stderr, silent when stderr is not a terminal."""
    console = err_console()
    if not console.is_terminal:
        yield lambda done, total: None
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task(label, total=None)
    with bar:
        yield lambda done, total: bar.update(task, completed=done, total=total)
