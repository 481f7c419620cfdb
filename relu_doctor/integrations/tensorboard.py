"""TensorBoard: ``log_to(writer)`` turns a ``SummaryWriter`` into a ``monitor()`` callback.

Nothing is imported from TensorBoard here: any object with ``add_scalar(tag, value,
global_step)`` works (``torch.utils.tensorboard.SummaryWriter``, tensorboardX).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from relu_doctor.analyze.report import ModelReport
from relu_doctor.integrations import metrics


def log_to(
    writer: Any, prefix: str = "relu_doctor", per_site: bool = True
) -> Callable[[int, ModelReport], None]:
    """A callback for ``monitor(model, callback=log_to(writer))`` (also usable by hand with
    a step and any ``ModelReport``): writes ``{prefix}/dead_fraction``, ``dead_units`` and
    per site ``dead_fraction/<site>`` (``grad_norm/<site>`` with ``grad=True``) at the
    recorded step."""
    if not callable(getattr(writer, "add_scalar", None)):
        from relu_doctor.errors import UsageError

        raise UsageError(
            f"log_to() needs a writer with add_scalar (a SummaryWriter), got "
            f"{type(writer).__name__}",
            param="writer",
        )

    def write(step: int, report: ModelReport) -> None:
        for tag, value in metrics(report, prefix, per_site).items():
            writer.add_scalar(tag, value, step)

    return write
