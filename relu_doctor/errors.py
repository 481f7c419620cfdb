"""Domain errors. The library raises these; only the CLI turns them into exit codes.

Messages speak the caller's language: a parameter named in a message is written
``param("eps")``, which the library shows as ``eps`` and the command line as its flag
(``--eps``, see ``cli/options.py``), so no library module holds command-line words.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_PARAM = re.compile(r"⟨([a-z_]+)⟩")


def param(name: str) -> str:
    """Mark a parameter name inside an error message (rendered by ``ReluDoctorError``)."""
    return f"⟨{name}⟩"


class ReluDoctorError(Exception):
    """Base class: a problem the user can fix. The message says what is wrong and what to do.

    ``param`` names the argument at fault, when there is one (``eps``, ``data``).
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        self.template = message
        self.param = param
        super().__init__(_PARAM.sub(r"\1", message))

    def render(self, name_of: Callable[[str], str]) -> str:
        """The message with each marked parameter spelled by ``name_of`` (e.g. its flag)."""
        return _PARAM.sub(lambda m: name_of(m.group(1)), self.template)


class LoadError(ReluDoctorError):
    """A model file or spec could not be loaded (missing, corrupt, refused, wrong format)."""


class UnsafePickleError(LoadError):
    """A pickle needs globals outside the safe allowlist and trust was not given."""

    def __init__(self, path: str, globals_needed: list[str]) -> None:
        self.path = path
        self.globals_needed = globals_needed
        shown = ", ".join(globals_needed[:8]) + (" …" if len(globals_needed) > 8 else "")
        super().__init__(
            f"refusing to unpickle {path}: it needs code outside torch.nn ({shown}). "
            f"Either save a state dict and pass {param('arch')} MODULE:CALLABLE, "
            f"or pass {param('trust')} (or set RELU_DOCTOR_TRUST=1) if you trust this file.",
            param="trust",
        )


class InputError(ReluDoctorError):
    """Input data or an input shape is missing, malformed or does not fit the model."""


class CaptureError(ReluDoctorError):
    """The scan found nothing to measure, or the forward pass failed."""


class UsageError(ReluDoctorError):
    """Arguments that do not make sense together or are out of range."""
