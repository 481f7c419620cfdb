"""PyTorch Lightning: ``ReluDoctorCallback`` runs ``monitor()`` over ``trainer.fit`` and logs
each recorded step's dead fractions to the trainer's loggers.

Needs ``lightning`` (or the older ``pytorch_lightning``); importing this module is the only
place relu-doctor imports it.
"""

from __future__ import annotations

from typing import Any

from relu_doctor.analyze.report import ModelReport
from relu_doctor.integrations import metrics
from relu_doctor.monitoring import Monitor

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - the older package name
    try:
        from pytorch_lightning.callbacks import (  # type: ignore[assignment,unused-ignore]
            Callback,
        )
    except ImportError:
        raise ImportError(
            "relu_doctor.integrations.lightning needs PyTorch Lightning: pip install lightning"
        ) from None


class ReluDoctorCallback(Callback):
    """Watch the LightningModule's ReLU units during ``fit``::

        trainer = Trainer(callbacks=[ReluDoctorCallback(every=100)])

    Every ``every``-th training batch is measured (``monitor(steps="manual")``: the capture
    runs from the start of the batch to its backward, so ``training_step`` may call
    ``self(x)`` or any submodule; validation is not a step), and ``{prefix}/dead_fraction``,
    ``dead_units`` and per site ``dead_fraction/<site>`` go to every logger of the trainer
    at the trainer's ``global_step`` of that batch. ``self.monitor.history()`` has
    everything after ``fit`` (``step`` there counts training batches). Under DDP statistics
    are summed over ranks; the loggers write on rank 0 as usual.
    """

    def __init__(
        self,
        every: int = 100,
        grad: bool = False,
        prefix: str = "relu_doctor",
        per_site: bool = True,
        **options: Any,
    ) -> None:
        super().__init__()
        self.every = every
        self.grad = grad
        self.prefix = prefix
        self.per_site = per_site
        self.options = options
        self.monitor: Monitor | None = None
        self._trainer: Any = None
        self._global_step: dict[int, int] = {}  # monitor step -> trainer.global_step

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._trainer = trainer
        self.monitor = Monitor(
            pl_module,
            every=self.every,
            grad=self.grad,
            callback=self._log,
            steps="manual",
            **self.options,
        )
        self.monitor.__enter__()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        if self.monitor is not None:
            if self.monitor.steps % self.every == 0:  # a step to be recorded
                self._global_step[self.monitor.steps] = trainer.global_step
            self.monitor.begin_step(batch)

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        if self.monitor is not None:
            self.monitor.end_forward()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        if self.monitor is not None:
            self.monitor.end_forward()  # a step that skipped its backward

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None:
            self.monitor.__exit__(None, None, None)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self.monitor is not None:
            self.monitor.__exit__(type(exception), exception, exception.__traceback__)

    def _log(self, step: int, report: ModelReport) -> None:
        values = metrics(report, self.prefix, self.per_site)
        at = self._global_step.pop(step, step)
        for logger in getattr(self._trainer, "loggers", ()):
            logger.log_metrics(values, step=at)
