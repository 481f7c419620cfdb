"""Small domain errors. The library raises these; only the CLI turns them into exit codes."""

from __future__ import annotations


class ReluDoctorError(Exception):
    """Base class: a problem the user can fix. The message says what is wrong and what to do."""


class LoadError(ReluDoctorError):
    """A model file or spec could not be loaded (missing, corrupt, refused, wrong format)."""


class UnsafePickleError(LoadError):
    """A pickle needs globals outside the safe allowlist and --trust was not given."""

    def __init__(self, path: str, globals_needed: list[str]) -> None:
        self.path = path
        self.globals_needed = globals_needed
        shown = ", ".join(globals_needed[:8]) + (" …" if len(globals_needed) > 8 else "")
        super().__init__(
            f"refusing to unpickle {path}: it needs code outside torch.nn ({shown}). "
            "Either save a state dict and pass --arch MODULE:CALLABLE, "
            "or pass --trust (or set RELU_DOCTOR_TRUST=1) if you trust this file."
        )


class InputError(ReluDoctorError):
    """Input data or an input shape is missing, malformed or does not fit the model."""


class CaptureError(ReluDoctorError):
    """The scan found nothing to measure, or the forward pass failed."""


class UsageError(ReluDoctorError):
    """Options that do not make sense together or are out of range."""
